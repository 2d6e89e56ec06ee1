// SPDX-License-Identifier: Apache-2.0
// Reaping dead processes: the one loop shared by the library (BlockManager::reap_dead_processes,
// the background reaper), `kvbm-ctl reap` and `kvbm-ctl repair`. Safe beside live workers: an
// entry is released only by whoever wins its OFD liveness byte (a non-blocking try), which the
// kernel frees only when the owner died, and which keeps other reapers and attachers out of the
// entry while it is released under the store mutex.
#pragma once

#include <cstdint>
#include <functional>

#include "segment/segment.hpp"
#include "store/block_store.hpp"

namespace kvbm::detail {

/// Under the store mutex (`held`): releases everything process entry `entry` held, in one
/// transaction, if the entry is still in use (a racing reaper may have done it). `actor` is the
/// reaper's own entry, kNil for a tool that is not attached. True if it released the entry;
/// then `*released` (if given) is how many slots the entry let go of.
bool reap_entry_locked(BlockStore& store,
                       const StoreLock& held,
                       std::uint32_t entry,
                       std::uint32_t actor,
                       std::uint64_t* released = nullptr) noexcept;

/// For every entry in use other than `skip` whose liveness byte this call wins: calls
/// `reap(entry)` while holding the byte (the callback takes the store mutex its caller's way, or
/// already holds it, and calls reap_entry_locked), then lets the byte go. Returns how many
/// entries `reap` released. An exception from `reap` releases the byte and propagates.
std::size_t reap_dead_entries(Segment& segment,
                              std::uint32_t skip,
                              const std::function<bool(std::uint32_t entry)>& reap);

}  // namespace kvbm::detail
