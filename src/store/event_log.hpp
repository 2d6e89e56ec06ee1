// SPDX-License-Identifier: Apache-2.0
// EventLog: the writer of the segment's KV event ring (shm/event_ring.hpp). Used by BlockStore
// only, under the store mutex inside a Txn: BlockStore appends an event in the same step that
// changes the slot, the Txn logs next_seq when it arms the intent, and recovery rolls next_seq
// back with the slots, so the ring always agrees with slot state.
#pragma once

#include <cstdint>

#include "segment/segment.hpp"
#include "shm/event_ring.hpp"

namespace kvbm::detail {

class EventLog {
 public:
  explicit EventLog(Segment& segment)
      : ring_(segment.events()), records_(segment.event_records()) {}

  /// Creator only: an empty ring holding the Cleared event (seq 0).
  static void init(Segment& segment);

  bool enabled() const noexcept { return ring_ != nullptr; }
  std::uint64_t next_seq() const noexcept {
    return ring_ == nullptr ? 0 : ring_->next_seq.load(std::memory_order_relaxed);
  }
  /// Appends one event; the record of seq - capacity is overwritten (oldest_seq moves past it
  /// first, so a reader never takes the new record for the old one). Requires enabled().
  void append(shm::EventKindCode kind,
              std::uint64_t hash_hi,
              std::uint64_t hash_lo,
              std::uint32_t slot,
              std::uint32_t generation) noexcept;
  /// Recovery: forget the events of a rolled-back operation.
  void rollback_to(std::uint64_t next) noexcept;

 private:
  shm::EventRingHeader* ring_;
  shm::EventRecord* records_;
};

}  // namespace kvbm::detail
