// SPDX-License-Identifier: Apache-2.0
// ControlBlock: the store mutex, its intent record, the heads of the derived lists, the state
// counts and the segment-wide counters.
// Written by: the store-mutex holder (everything but the mutex word itself). Counters and counts
// are atomics so kvbm-ctl can read them without the lock (relaxed; a snapshot taken under the lock
// is consistent).
#pragma once

#include <atomic>
#include <cstdint>

#include "shm/intent.hpp"
#include "shm/layout.hpp"
#include "shm/robust_mutex.hpp"
#include "shm/slot.hpp"

namespace kvbm::shm {

/// Segment-wide counters (DESIGN.md section 5), index into ControlBlock::counters.
enum Counter : std::uint32_t {
  kAllocations = 0,
  kAllocationsFromReset,
  kEvictions,
  kRegistrations,
  kDuplicateBlocks,
  kRegistrationDedup,
  kStagings,
  kMatchHashesRequested,
  kMatchBlocksReturned,
  kScanHashesRequested,
  kScanBlocksReturned,
  kReapedProcesses,
  kRecoveries,
  kEvents,
  kCounterCount,
};
static_assert(kCounterCount <= kCounterSlots);

/// An index-linked list through SlotMeta::prev/next. Derived.
struct SlotList {
  std::uint32_t head;
  std::uint32_t tail;
  std::uint64_t length;
};

/// The state_counts entry of a slot state. Mutable and Staged slots are counted together under
/// kMutable: staging happens without the mutex, so the split lives in the process entries
/// (ProcEntry::stagings / destaged). kStaged's entry stays 0.
constexpr std::uint8_t state_count_index(std::uint8_t state) {
  return state == static_cast<std::uint8_t>(SlotState::kStaged)
             ? static_cast<std::uint8_t>(SlotState::kMutable)
             : state;
}

struct alignas(kCacheLine) ControlBlock {
  RobustMutex mutex;
  alignas(kCacheLine) Intent intent;
  alignas(kCacheLine) SlotList free_list;      // Reset slots, FIFO: pop head, push tail
  SlotList inactive_list;                      // LRU/FIFO backends: Inactive slots by tick
  SlotList level_lists[4];                     // MultiLRU backend: cold .. very hot, each by tick
  std::uint64_t next_tick;                     // monotonic order key for list positions
  std::atomic<std::uint64_t> state_counts[8];  // slots per state_count_index (derived)
  std::atomic<std::uint64_t> counters[kCounterSlots];
};
static_assert(ShmRegion<ControlBlock>);

}  // namespace kvbm::shm
