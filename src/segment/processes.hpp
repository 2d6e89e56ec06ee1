// SPDX-License-Identifier: Apache-2.0
// The process table as seen from outside the store: which entries are in use, whether their
// owners are alive (an OFD probe of each liveness byte, which works on a read-only fd) and what
// they hold (counted from the slots, lock-free). Used by the library (verify, dead entries) and
// by kvbm-ctl; never takes a process-table entry or the store mutex.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "segment/segment.hpp"

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

/// Entries in use whose owner is dead (an OFD probe each; no slot scan). `skip` as above.
std::size_t count_dead_processes(const Segment& segment, std::uint32_t skip = shm::kNil);

/// Live attachments of a segment found by probing the liveness locks on its object directly
/// (works when the segment cannot be opened, e.g. damaged). 0 if the object does not exist.
std::size_t count_live_attachments(std::string_view name);

}  // namespace kvbm::detail
