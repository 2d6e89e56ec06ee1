// SPDX-License-Identifier: Apache-2.0
// SketchHeader: the TinyLFU count-min sketch of the MultiLRU backend (spec 7.7), followed in its
// region by `table_len` u64 words of sixteen 4-bit counters each. Shared by all processes:
// frequency seen by one worker raises a block's level for every worker.
// Written by: the store-mutex holder on a hash's first registration and on match hits. Not
// journaled: a counter increment cut short by a crash only makes an estimate slightly off, which
// the sketch tolerates by design (it is approximate and decays).
#pragma once

#include <cstdint>

#include "shm/layout.hpp"

namespace kvbm::shm {

struct alignas(kCacheLine) SketchHeader {
  std::uint64_t table_len;    // max(1, capacity / 4)
  std::uint64_t sample_size;  // halve every counter after this many increments
  std::uint64_t size;         // increments since the last halving
};
static_assert(ShmRegion<SketchHeader>);

/// Words of the counter table that follows the header for a sketch of `capacity`: the segment
/// layout sizes the region with it, TinyLfu::init writes it into table_len.
inline constexpr std::uint64_t sketch_table_len(std::uint32_t capacity) {
  return capacity / 4 == 0 ? 1 : capacity / 4;
}

}  // namespace kvbm::shm
