// SPDX-License-Identifier: Apache-2.0
// The KV event ring (SegmentConfig::event_capacity > 0) and the per-slot token records
// (SegmentConfig::store_token_ids). DESIGN.md section 10.
//
// EventRing: a header and `capacity` fixed-size records; event `seq` lives in record
// seq & (capacity - 1). Sequence numbers are gap-free from 0 (the Cleared written at creation).
// Written by: the store-mutex holder only, inside a BlockStore::Txn, as part of the operation
// that changes the slot (the intent record logs `next_seq` when it is armed, so rolling back a
// dead holder's operation also takes back the events it wrote: a crash neither loses nor invents
// an event). Read by: EventReader and the publisher, under the store mutex, a bounded number of
// records per hold; every index read from here is checked before use.
//
// TokenRecord: one per slot, [generation][count][block_size ids]. Written by: the owner of the
// slot while it is Mutable (MutableBlock::stage with token ids), without the store mutex, ids
// first, then count, then `generation` (release). The ids belong to the block only while the
// slot still has that generation and is Primary or Inactive: a slot changes generation whenever
// it becomes Mutable, so stale ids of an earlier life never match; unstaging clears the record.
#pragma once

#include <atomic>
#include <cstdint>

#include "shm/layout.hpp"

namespace kvbm::shm {

enum class EventKindCode : std::uint32_t { kStored = 1, kRemoved = 2, kCleared = 3 };

inline constexpr std::uint32_t kMinEventCapacity = 256;  // > events one chunk can write
inline constexpr std::uint32_t kMaxEventCapacity = 1u << 24;

struct alignas(kCacheLine) EventRingHeader {
  std::uint32_t capacity;  // power of two
  std::uint32_t block_size;
  std::atomic<std::uint64_t> next_seq;    // seq of the next event to write
  std::atomic<std::uint64_t> oldest_seq;  // oldest seq whose record is intact (only grows)
  std::uint64_t reserved[5];
};
static_assert(ShmRegion<EventRingHeader>);
static_assert(sizeof(EventRingHeader) == kCacheLine);

struct EventRecord {
  std::uint64_t seq;  // the event's own sequence number (checked by readers)
  std::uint64_t hash_hi;
  std::uint64_t hash_lo;
  std::uint32_t kind;        // EventKindCode
  std::uint32_t slot;        // Stored: the slot whose token record holds the ids
  std::uint32_t generation;  // Stored: the slot's generation when it was stored
  std::uint32_t reserved;
  std::uint64_t reserved2;
};
static_assert(ShmRegion<EventRecord>);
static_assert(sizeof(EventRecord) == 48);

/// Token record header; `block_size` u32 ids follow.
struct TokenRecord {
  std::atomic<std::uint32_t> generation;  // slot generation the ids belong to; kNil = none
  std::uint32_t count;
};
static_assert(ShmRegion<TokenRecord>);
static_assert(sizeof(TokenRecord) == 8);

constexpr std::uint64_t token_record_bytes(std::uint32_t block_size) {
  return align_up(sizeof(TokenRecord) + std::uint64_t{block_size} * 4, 8);
}
constexpr std::uint64_t event_ring_bytes(std::uint32_t capacity) {
  return capacity == 0 ? 0
                       : sizeof(EventRingHeader) + std::uint64_t{capacity} * sizeof(EventRecord);
}

}  // namespace kvbm::shm
