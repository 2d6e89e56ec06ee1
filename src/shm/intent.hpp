// SPDX-License-Identifier: Apache-2.0
// Intent: the one undo record of the store mutex. Before an operation changes a slot it appends
// the slot's before-image; the record is armed (seq odd) for the whole mutation and disarmed (seq
// even) when the slots are consistent again. Whoever next gets EOWNERDEAD restores the images in
// reverse order (so the oldest image of a slot wins), restores the counters it changed (each
// logged on first change), then rebuilds every
// derived structure from the slots. Batches larger than kIntentMaxSlots commit in chunks between
// whole per-block steps; a committed chunk belongs to the dead process and is reaped.
// Written by: the store-mutex holder only.
#pragma once

#include <atomic>
#include <cstdint>

#include "shm/layout.hpp"
#include "shm/slot.hpp"

namespace kvbm::shm {

inline constexpr std::uint32_t kIntentMaxSlots = 64;
inline constexpr std::uint32_t kCounterSlots = 16;

enum class IntentOp : std::uint32_t {
  kNone = 0,
  kAllocate,
  kStage,
  kUnstage,
  kReleaseExclusive,
  kRegister,
  kAcquire,
  kRelease,
  kSetResetOnRelease,
  kDrain,
  kReap,
  kDetach,
};

struct alignas(kCacheLine) Intent {
  std::atomic<std::uint64_t> seq;  // odd = armed
  std::uint32_t op;                // IntentOp, for diagnostics
  std::uint32_t actor;             // process entry of the operation's caller
  std::uint32_t count;             // images recorded
  std::uint32_t proc_target;       // process entry whose state the op changes, or kNil
  std::uint32_t proc_state_before;
  std::uint32_t reserved;
  std::uint64_t proc_incarnation_before;
  std::uint64_t events_next_before;  // the event ring's next_seq when armed (rolled back to)
  std::uint32_t counters_logged;     // bit c: counters_before[c] holds counter c's value at arming
  std::uint32_t reserved2;
  std::uint64_t counters_before[kCounterSlots];
  std::uint32_t slot[kIntentMaxSlots];
  SlotImage before[kIntentMaxSlots];
};
static_assert(ShmRegion<Intent>);

}  // namespace kvbm::shm
