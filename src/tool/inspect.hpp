// SPDX-License-Identifier: Apache-2.0
// Inspection, verification and repair of a segment by a tool that does NOT attach (takes no
// process-table entry): kvbm-ctl. Reads work on a read-only mapping without the lock; verify and
// repair take the store mutex with a bounded wait and recover an interrupted operation exactly as
// a worker would. The process listing lives in segment/processes.hpp, the repair steps in
// store/repair.hpp; this is the session around them.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvbm/error.hpp"
#include "kvbm/verify.hpp"

#include "segment/processes.hpp"
#include "segment/segment.hpp"
#include "store/block_store.hpp"

namespace kvbm::detail {

class ToolSession {
 public:
  [[nodiscard]] static Result<std::unique_ptr<ToolSession>> open(std::string_view name,
                                                                 Access access);
  Segment& segment() { return *seg_; }
  BlockStore& store() { return *store_; }

  /// Takes the store mutex waiting at most `wait`. On EOWNERDEAD runs recovery and appends what
  /// it did to `notes`. Errors: kSystem on timeout ("held by a live process"), kCorrupted if
  /// poisoned or recovery failed.
  [[nodiscard]] Result<void> lock(std::chrono::milliseconds wait, std::vector<std::string>& notes);
  void unlock();
  /// The store mutex while lock() holds it, else nullptr.
  const StoreLock* held() const { return lock_ ? &*lock_ : nullptr; }
  ~ToolSession();

 private:
  ToolSession() = default;
  std::unique_ptr<Segment> seg_;
  std::unique_ptr<BlockStore> store_;
  std::optional<StoreLock> lock_;  // released before store_ and seg_ go
};

/// Every problem: structural invariants (in one hold of the lock) and dead-but-unreaped entries.
std::vector<std::string> verify_segment(ToolSession& session);
/// verify_segment() walked as `mode` says (kPaced: store/paced_verify.hpp). A lock that cannot
/// be taken (again) is a problem of an incomplete report.
VerifyReport verify_segment(ToolSession& session, VerifyMode mode);

/// `kvbm-ctl reap`: under the store mutex (bounded wait; recovers a dead holder's operation
/// first), releases every dead process entry with the library's own reaping. Safe beside live
/// workers. Returns one line per thing done (empty: nothing to reap).
[[nodiscard]] Result<std::vector<std::string>> reap_segment(std::string_view name);

struct RepairReport {
  std::vector<std::string> actions;    // what was (or, dry run, would be) done
  std::vector<std::string> remaining;  // problems verify still finds afterwards
};

/// Recovers an interrupted operation, reaps dead processes, fixes slots that cannot be right
/// (never promoting Mutable/Staged to cached states), rebuilds derived structures, re-verifies.
/// Beside live workers (without `force`) it only reaps dead processes and recovers a dead lock
/// holder's operation, which workers do themselves; anything more (damaged slots or structures,
/// a poisoned segment) would change what live workers are using, and is refused (kBlocksInUse,
/// saying what and why) unless no live process is attached or `force` is set.
[[nodiscard]] Result<RepairReport> repair_segment(std::string_view name, bool dry_run, bool force);

}  // namespace kvbm::detail
