// SPDX-License-Identifier: Apache-2.0
// KV events (DESIGN.md section 10): what the segment's event ring says happened to cached blocks,
// for routers that keep an index of which blocks a worker pool holds.
//
// Every event has a 64-bit sequence number, gap-free from 0: Cleared once when the segment is
// created; Stored when a block becomes cached by registration (a new Primary); Removed when a
// cached block (Primary or Inactive) leaves the cache (eviction, reset-on-release, drain, reap).
// Registering a duplicate and resurrecting an inactive block emit nothing. Events are written
// under the store lock as part of the operation, so a crash neither loses nor invents one.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "kvbm/error.hpp"
#include "kvbm/sequence_hash.hpp"

namespace kvbm {

enum class EventKind { kStored, kRemoved, kCleared };

/// "stored", "removed", "cleared".
std::string_view to_string(EventKind kind) noexcept;

struct Event {
  std::uint64_t seq = 0;
  EventKind kind = EventKind::kCleared;
  SequenceHash hash;  // zero for kCleared
  std::uint32_t block_size = 0;
  /// kStored in a segment with store_token_ids: the block's ids, when it was staged with them.
  std::vector<std::uint32_t> token_ids;
  /// kStored: the block had already left the cache (its slot was reused) when this event was
  /// read, so its token ids are gone; a later kRemoved of the same hash follows.
  bool token_ids_gone = false;
};

/// Reads a segment's event ring. Takes no process-table entry; each read holds the store lock
/// only for a bounded copy (at most 256 events). Copyable; thread-safe.
class EventReader {
 public:
  /// kNotFound, kLayoutMismatch, kCorrupted as BlockManager::open; kInvalidConfig if the
  /// segment keeps no events (event_capacity 0).
  static Result<EventReader> open(std::string_view segment);

  /// The oldest event still in the ring.
  std::uint64_t oldest_seq() const;
  /// The sequence number the next event will get.
  std::uint64_t next_seq() const;
  /// Up to `max_events` events from `from_seq` on (fewer when the ring has fewer; none when
  /// from_seq >= next_seq()). Errc::kEventsLost when from_seq < oldest_seq() (the events were
  /// overwritten); kSystem if the store lock stays held by a live process for 5 s; kCorrupted if
  /// the ring is damaged.
  Result<std::vector<Event>> read(std::uint64_t from_seq, std::size_t max_events) const;

  std::uint32_t capacity() const;
  std::uint32_t block_size() const;
  /// Whether the segment keeps token ids (SegmentConfig::store_token_ids).
  bool stores_token_ids() const;

  struct Impl;
  explicit EventReader(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  const std::shared_ptr<Impl>& impl() const { return impl_; }

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace kvbm
