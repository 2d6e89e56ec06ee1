// SPDX-License-Identifier: Apache-2.0
// Inspection, verification and repair of a segment by a tool that does NOT attach (takes no
// process-table entry): kvbm-ctl. Reads work on a read-only mapping without the lock; verify and
// repair take the store mutex with a bounded wait and recover an interrupted operation exactly as
// a worker would.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvbm/error.hpp"

#include "segment/segment.hpp"
#include "store/block_store.hpp"

namespace kvbm::detail {

struct ProcessView {
  std::uint32_t index;
  std::int32_t pid;
  std::uint64_t incarnation;
  std::uint64_t start_ticks;
  std::uint64_t attached_ns;
  bool alive;               // its OFD liveness byte is held
  std::uint64_t exclusive;  // Mutable/Staged slots it owns
  std::uint64_t held;       // slots it holds ImmutableBlocks of
};

/// Entries in use, with a liveness verdict from an OFD probe (works on a read-only fd).
std::vector<ProcessView> list_processes(const Segment& segment);

/// One line per process entry in use whose owner is dead, with what it still holds. `skip` is
/// the caller's own entry (its own lock cannot be probed through its own description).
std::vector<std::string> dead_process_problems(const Segment& segment,
                                               std::uint32_t skip = shm::kNil);

/// Live attachments of a segment found by probing the liveness locks on its object directly
/// (works when the segment cannot be opened, e.g. damaged). 0 if the object does not exist.
std::size_t count_live_attachments(std::string_view name);

class ToolSession {
 public:
  static Result<std::unique_ptr<ToolSession>> open(std::string_view name, Access access);
  Segment& segment() { return *seg_; }
  BlockStore& store() { return *store_; }

  /// Takes the store mutex waiting at most `wait`. On EOWNERDEAD runs recovery and appends what
  /// it did to `notes`. Errors: kSystem on timeout ("held by a live process"), kCorrupted if
  /// poisoned or recovery failed.
  Result<void> lock(std::chrono::milliseconds wait, std::vector<std::string>& notes);
  void unlock();
  ~ToolSession();

 private:
  ToolSession() = default;
  std::unique_ptr<Segment> seg_;
  std::unique_ptr<BlockStore> store_;
  bool locked_ = false;
};

/// Every problem: structural invariants (under the lock) and dead-but-unreaped entries.
std::vector<std::string> verify_segment(ToolSession& session);

struct RepairReport {
  std::vector<std::string> actions;    // what was (or, dry run, would be) done
  std::vector<std::string> remaining;  // problems verify still finds afterwards
};

/// Recovers an interrupted operation, reaps dead processes, fixes slots that cannot be right
/// (never promoting Mutable/Staged to cached states), rebuilds derived structures, re-verifies.
/// A poisoned segment (unrecoverable mutex) is repaired only when no live process is attached
/// or `force` is set.
Result<RepairReport> repair_segment(std::string_view name, bool dry_run, bool force);

}  // namespace kvbm::detail
