// SPDX-License-Identifier: Apache-2.0
#include "store/event_log.hpp"

#include <algorithm>

namespace kvbm::detail {

void EventLog::init(Segment& segment) {
  auto* ring = segment.events();
  if (ring == nullptr) {
    return;
  }
  new (ring) shm::EventRingHeader();
  ring->capacity = segment.config().event_capacity;
  ring->block_size = segment.config().block_size;
  ring->next_seq.store(0, std::memory_order_relaxed);
  ring->oldest_seq.store(0, std::memory_order_relaxed);
  EventLog(segment).append(shm::EventKindCode::kCleared, 0, 0, shm::kNil, 0);
}

void EventLog::append(shm::EventKindCode kind,
                      std::uint64_t hash_hi,
                      std::uint64_t hash_lo,
                      std::uint32_t slot,
                      std::uint32_t generation) noexcept {
  const std::uint64_t seq = ring_->next_seq.load(std::memory_order_relaxed);
  const std::uint64_t cap = ring_->capacity;
  if (seq >= cap) {
    const std::uint64_t oldest = seq - cap + 1;
    if (ring_->oldest_seq.load(std::memory_order_relaxed) < oldest) {
      ring_->oldest_seq.store(oldest, std::memory_order_relaxed);
    }
  }
  auto& r = records_[seq & (cap - 1)];
  r.seq = seq;
  r.hash_hi = hash_hi;
  r.hash_lo = hash_lo;
  r.kind = static_cast<std::uint32_t>(kind);
  r.slot = slot;
  r.generation = generation;
  r.reserved = 0;
  r.reserved2 = 0;
  ring_->next_seq.store(seq + 1, std::memory_order_release);
}

void EventLog::rollback_to(std::uint64_t next) noexcept {
  if (ring_ == nullptr) {
    return;
  }
  ring_->next_seq.store(next, std::memory_order_relaxed);
  // Records past `next` that the rolled-back operation wrote replaced older ones: those stay
  // lost (oldest_seq only grows), and it never passes next_seq.
  if (ring_->oldest_seq.load(std::memory_order_relaxed) > next) {
    ring_->oldest_seq.store(next, std::memory_order_relaxed);
  }
}

}  // namespace kvbm::detail
