// SPDX-License-Identifier: Apache-2.0
// IndexEntry: one bucket of the open-addressing hash index (sequence hash -> the one Primary or
// Inactive slot of that hash). Linear probing with backward-shift deletion, so no tombstones.
// Capacity is fixed at creation (2 x block_count). The index is derived: recovery rebuilds it from
// the slots. Written by: BlockStore under the store mutex.
#pragma once

#include <cstdint>

#include "shm/layout.hpp"

namespace kvbm::shm {

struct IndexEntry {
  std::uint32_t slot;  // kNil = empty bucket
  std::uint32_t tag;   // 32 bits of the hash's mix, compared before touching the slot
};
static_assert(ShmRegion<IndexEntry>);
static_assert(sizeof(IndexEntry) == 8);

}  // namespace kvbm::shm
