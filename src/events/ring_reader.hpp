// SPDX-License-Identifier: Apache-2.0
// What EventReader (include/kvbm/events.hpp) and the publisher share: the unattached view of a
// segment's event ring, and the snapshot of the cached blocks a publisher sends to resynchronise
// its subscribers. Everything here reads under the store mutex (lock_unattached), a bounded
// amount per hold, and checks every index it takes from shared memory.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "kvbm/events.hpp"

#include "segment/segment.hpp"
#include "store/block_store.hpp"

namespace kvbm {

struct EventReader::Impl {
  std::unique_ptr<detail::Segment> seg;
  std::unique_ptr<detail::BlockStore> store;
  std::mutex mu;  // one thread at a time in the store's recovery path
};

namespace detail {

/// Events per hold of the store lock.
inline constexpr std::size_t kEventsPerLock = 256;

struct CachedBlock {
  SequenceHash hash;
  std::vector<std::uint32_t> token_ids;  // empty when the block was staged without ids
};

/// The cached blocks (Primary and Inactive slots) in ascending position, and the sequence number
/// of the first event after them, taken together under one hold of the store lock: a stream that
/// starts with this snapshot and goes on from `resume_seq` never removes a block it did not
/// store.
struct Snapshot {
  std::uint64_t resume_seq = 0;
  std::vector<CachedBlock> blocks;
};

[[nodiscard]] Result<Snapshot> take_snapshot(EventReader::Impl& reader);

}  // namespace detail
}  // namespace kvbm
