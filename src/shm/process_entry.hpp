// SPDX-License-Identifier: Apache-2.0
// ProcEntry: one process-table entry per attached BlockManager. Liveness is NOT stored here: it is
// the OFD byte lock at offset kLivenessLockBase + index on the segment file, held for the life of
// the attachment and dropped by the kernel when the process dies. This entry records who claimed
// it (diagnostics) and the incarnation that fences a process whose entry was reclaimed.
// Written by: the attaching process (claim, detach) and a reaper holding the entry's byte lock,
// always under the store mutex; except `stagings`, which the attached process increments without
// the mutex when it stages a block. Read by: anyone, kvbm-ctl without the lock.
#pragma once

#include <atomic>
#include <cstdint>

#include "shm/layout.hpp"

namespace kvbm::shm {

enum class ProcState : std::uint32_t { kFree = 0, kLive = 1 };

/// OFD lock byte offsets on the segment file (locks may lie beyond EOF).
inline constexpr std::uint64_t kInitLockOffset = 1ull << 40;
inline constexpr std::uint64_t kLivenessLockBase = (1ull << 40) + 4096;

struct alignas(kCacheLine) ProcEntry {
  std::atomic<std::uint32_t> state;        // ProcState
  std::atomic<std::int32_t> pid;           // namespace-relative; diagnostics only
  std::atomic<std::uint64_t> incarnation;  // ++ on every claim and every release of the entry
  std::atomic<std::uint64_t> start_ticks;  // /proc/self/stat field 22; diagnostics
  std::atomic<std::uint64_t> attached_ns;  // CLOCK_REALTIME at claim
  std::atomic<std::uint64_t> pidns_inode;  // /proc/self/ns/pid inode at claim
  // Staging is the one transition taken without the store mutex, so its accounting is per
  // process: this entry's Staged slots = stagings - destaged. stagings counts every stage (and
  // is added to kvbm_stagings_total while the entry is in use, folded into the counter when the
  // entry is freed); destaged counts this entry's Staged slots that left Staged (registered,
  // released, unstaged). Both are zeroed when the entry is claimed.
  std::atomic<std::uint64_t> stagings;  // += 1 before the slot shows Staged (lock-free)
  std::atomic<std::uint64_t> destaged;  // += n after n slots left Staged (under the mutex, or
                                        // by a lock-free stage that lost its slot)
};
static_assert(ShmRegion<ProcEntry>);
static_assert(sizeof(ProcEntry) == kCacheLine);

}  // namespace kvbm::shm
