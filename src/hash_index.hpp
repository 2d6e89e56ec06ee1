// SPDX-License-Identifier: Apache-2.0
// HashIndex: view over the segment's open-addressing table (sequence hash -> the one Primary or
// Inactive slot of that hash). Linear probing, bucket = fastrange(mix(hash)), backward-shift
// deletion (no tombstones, so probe lengths never degrade). Callers hold the store mutex.
#pragma once

#include <cstdint>

#include "kvbm/sequence_hash.hpp"

#include "shm/hash_index_entry.hpp"
#include "shm/slot.hpp"

namespace kvbm::detail {

inline std::uint64_t hash_mix(std::uint64_t hi, std::uint64_t lo) {
  std::uint64_t x = lo ^ (hi * 0x9E3779B97F4A7C15ull);
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  return x;
}

class HashIndex {
 public:
  HashIndex(shm::IndexEntry* buckets, std::uint32_t capacity, shm::SlotMeta* slots)
      : b_(buckets), cap_(capacity), slots_(slots) {}

  std::uint32_t find(std::uint64_t hi, std::uint64_t lo) const {
    const std::uint64_t m = hash_mix(hi, lo);
    const auto tag = static_cast<std::uint32_t>(m);
    for (std::uint32_t i = home(m);; i = next(i)) {
      const shm::IndexEntry e = b_[i];
      if (e.slot == shm::kNil) {
        return shm::kNil;
      }
      if (e.tag == tag && slots_[e.slot].hash_lo == lo && slots_[e.slot].hash_hi == hi) {
        return e.slot;
      }
    }
  }

  /// Requires: the hash is absent and the table is not full (capacity >= 2 x block_count).
  void insert(std::uint64_t hi, std::uint64_t lo, std::uint32_t slot) {
    const std::uint64_t m = hash_mix(hi, lo);
    std::uint32_t i = home(m);
    while (b_[i].slot != shm::kNil) {
      i = next(i);
    }
    b_[i] = shm::IndexEntry{slot, static_cast<std::uint32_t>(m)};
  }

  /// Removes the bucket pointing at `slot` (found through its hash); no-op if absent.
  void erase(std::uint64_t hi, std::uint64_t lo, std::uint32_t slot) {
    const std::uint64_t m = hash_mix(hi, lo);
    std::uint32_t i = home(m);
    while (b_[i].slot != slot) {
      if (b_[i].slot == shm::kNil) {
        return;
      }
      i = next(i);
    }
    // Backward shift: pull later entries of the cluster into the hole when their home allows.
    std::uint32_t hole = i;
    for (std::uint32_t j = next(hole);; j = next(j)) {
      const shm::IndexEntry e = b_[j];
      if (e.slot == shm::kNil) {
        break;
      }
      const std::uint32_t h = home_of(e.slot);
      const bool movable = hole <= j ? (h <= hole || h > j) : (h <= hole && h > j);
      if (movable) {
        b_[hole] = e;
        hole = j;
      }
    }
    b_[hole] = shm::IndexEntry{shm::kNil, 0};
  }

  void clear() {
    for (std::uint32_t i = 0; i < cap_; ++i) {
      b_[i] = shm::IndexEntry{shm::kNil, 0};
    }
  }

  std::uint32_t capacity() const { return cap_; }
  const shm::IndexEntry& bucket(std::uint32_t i) const { return b_[i]; }
  std::uint32_t home_of(std::uint32_t slot) const {
    return home(hash_mix(slots_[slot].hash_hi, slots_[slot].hash_lo));
  }
  static std::uint32_t tag_of(std::uint64_t hi, std::uint64_t lo) {
    return static_cast<std::uint32_t>(hash_mix(hi, lo));
  }

 private:
  std::uint32_t home(std::uint64_t m) const {
    return static_cast<std::uint32_t>((static_cast<unsigned __int128>(m) * cap_) >> 64);
  }
  std::uint32_t next(std::uint32_t i) const { return i + 1 == cap_ ? 0 : i + 1; }

  shm::IndexEntry* b_;
  std::uint32_t cap_;
  shm::SlotMeta* slots_;
};

}  // namespace kvbm::detail
