// SPDX-License-Identifier: Apache-2.0
// InactiveBackend: the eviction order of the inactive pool. Its state lives in the segment and is
// derived: rebuild() restores it from the Inactive slots (and the per-slot tick/level fields the
// backend keeps), so the order survives recovery. Called only by BlockStore under the store mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "segment/walk_pacer.hpp"

namespace kvbm::shm {
struct LineageHeader;
}

namespace kvbm::detail {

class Segment;

/// Records a slot's before-image in the current intent (the store's log), for backends that
/// change a slot field themselves (the lineage FIFO order renews a re-leafed block's tick).
using SlotLogger = std::function<void(std::uint32_t)>;

class InactiveBackend {
 public:
  virtual ~InactiveBackend() = default;
  /// `slot` has just become Inactive (its tick is set). O(1) or O(log n).
  virtual void insert(std::uint32_t slot) = 0;
  /// `slot` is Inactive and leaves the pool (a hit: resurrection). O(1) or O(log n).
  virtual void remove(std::uint32_t slot) = 0;
  /// Removes and returns the next victim, kNil if the pool is empty.
  virtual std::uint32_t pop_victim() = 0;
  /// The victim that the (ahead+1)-th next pop_victim() would return, if the backend can tell
  /// cheaply without changing anything (kNil otherwise). Only a hint: evictions prefetch its
  /// slot and hash-index bucket a few victims ahead.
  virtual std::uint32_t peek_victim(std::uint32_t /*ahead*/) const { return 0xFFFFFFFFu; }
  virtual std::uint64_t size() const = 0;
  /// Rebuilds the backend's structures from the Inactive slots.
  virtual void rebuild() = 0;
  /// A frequency event for `hash` (first registration, match hit, touching scan). Only the
  /// MultiLRU backend counts them.
  virtual void touch(std::uint64_t /*hi*/, std::uint64_t /*lo*/) {}
  /// Appends a line per broken invariant of the backend's structures; `pacer.step()` once per
  /// node it visits (it may yield the store mutex, or throw to abandon the walk).
  virtual void verify(std::vector<std::string>& problems, WalkPacer& pacer) const = 0;
};

/// The backend selected by the segment's config.
std::unique_ptr<InactiveBackend> make_inactive_backend(Segment& segment, SlotLogger log);
/// Creator only: an empty lineage region for `block_count` blocks.
void init_lineage_region(shm::LineageHeader* header, std::uint32_t block_count);
/// The lineage key index's home bucket for the key (position, fragment) in an index of
/// `key_capacity` buckets (exposed for tests that build colliding keys).
std::uint32_t lineage_key_home(std::uint32_t position,
                               std::uint64_t fragment,
                               std::uint32_t key_capacity);

}  // namespace kvbm::detail
