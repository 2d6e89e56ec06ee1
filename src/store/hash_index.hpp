// SPDX-License-Identifier: Apache-2.0
// HashIndex: view over the segment's open-addressing table (sequence hash -> the one Primary or
// Inactive slot of that hash). Linear probing, backward-shift deletion (no tombstones, so probe
// lengths never degrade). An entry's home bucket is derived from its 32-bit tag alone
// (fastrange of the tag), so deletion moves entries without reading their slots: at a million
// blocks every slot read is a cache miss. Callers hold the store mutex.
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
    const auto tag = static_cast<std::uint32_t>(hash_mix(hi, lo));
    for (std::uint32_t i = home(tag);; i = next(i)) {
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
    const auto tag = static_cast<std::uint32_t>(hash_mix(hi, lo));
    std::uint32_t i = home(tag);
    while (b_[i].slot != shm::kNil) {
      i = next(i);
    }
    b_[i] = shm::IndexEntry{slot, tag};
  }

  /// Removes the bucket pointing at `slot` (found through its hash); no-op if absent.
  void erase(std::uint64_t hi, std::uint64_t lo, std::uint32_t slot) {
    std::uint32_t i = home(static_cast<std::uint32_t>(hash_mix(hi, lo)));
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
      const std::uint32_t h = home(e.tag);
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
  /// Starts loading the bucket a lookup of this hash reads first (an eviction about to erase it).
  void prefetch(std::uint64_t hi, std::uint64_t lo) const {
    __builtin_prefetch(&b_[home(tag_of(hi, lo))], 1);
  }
  static std::uint32_t tag_of(std::uint64_t hi, std::uint64_t lo) {
    return static_cast<std::uint32_t>(hash_mix(hi, lo));
  }

 private:
  std::uint32_t home(std::uint32_t tag) const {
    return static_cast<std::uint32_t>((std::uint64_t{tag} * cap_) >> 32);
  }
  std::uint32_t next(std::uint32_t i) const { return i + 1 == cap_ ? 0 : i + 1; }

  shm::IndexEntry* b_;
  std::uint32_t cap_;
  shm::SlotMeta* slots_;
};

}  // namespace kvbm::detail
