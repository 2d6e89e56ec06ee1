// SPDX-License-Identifier: Apache-2.0
// HashIndex: view over the segment's open-addressing table (sequence hash -> the one Primary or
// Inactive slot of that hash). Linear probing, backward-shift deletion (no tombstones, so probe
// lengths never degrade). An entry's home bucket is derived from its 32-bit tag alone
// (fastrange of the tag), so deletion moves entries without reading their slots: at a million
// blocks every slot read is a cache miss. Callers hold the store mutex.
#pragma once

#include <cstdint>

#include "kvbm/sequence_hash.hpp"

#include "segment/damage.hpp"
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
  HashIndex(shm::IndexEntry* buckets,
            std::uint32_t capacity,
            shm::SlotMeta* slots,
            std::uint32_t slot_count)
      : b_(buckets), cap_(capacity), slots_(slots), n_(slot_count) {}

  // Every probe sequence is bounded by the capacity and every bucket's slot is checked before
  // use (segment/damage.hpp): a damaged table ends the probe instead of looping or reading
  // outside the slot table.
  std::uint32_t find(std::uint64_t hi, std::uint64_t lo) const {
    const auto tag = static_cast<std::uint32_t>(hash_mix(hi, lo));
    std::uint32_t i = home(tag);
    for (std::uint32_t probes = 0; within(probes, cap_, "hash index probe length"); ++probes) {
      const shm::IndexEntry e = b_[i];
      if (e.slot == shm::kNil) {
        return shm::kNil;
      }
      const std::uint32_t s = checked(e.slot, n_, "hash index bucket slot");
      if (e.tag == tag && slots_[s].hash_lo == lo && slots_[s].hash_hi == hi) {
        return s;
      }
      i = next(i);
    }
    return shm::kNil;
  }

  /// Requires: the hash is absent and the table is not full (capacity >= 2 x block_count).
  void insert(std::uint64_t hi, std::uint64_t lo, std::uint32_t slot) {
    const auto tag = static_cast<std::uint32_t>(hash_mix(hi, lo));
    std::uint32_t i = home(tag);
    for (std::uint32_t probes = 0; b_[i].slot != shm::kNil; ++probes) {
      if (!within(probes, cap_, "hash index probe length")) {
        return;
      }
      i = next(i);
    }
    b_[i] = shm::IndexEntry{slot, tag};
  }

  /// Removes the bucket pointing at `slot` (found through its hash); no-op if absent.
  void erase(std::uint64_t hi, std::uint64_t lo, std::uint32_t slot) {
    std::uint32_t i = home(static_cast<std::uint32_t>(hash_mix(hi, lo)));
    for (std::uint32_t probes = 0; b_[i].slot != slot; ++probes) {
      if (b_[i].slot == shm::kNil || !within(probes, cap_, "hash index probe length")) {
        return;
      }
      i = next(i);
    }
    // Backward shift: pull later entries of the cluster into the hole when their home allows.
    std::uint32_t hole = i;
    std::uint32_t probes = 0;
    for (std::uint32_t j = next(hole);; j = next(j)) {
      const shm::IndexEntry e = b_[j];
      if (e.slot == shm::kNil || !within(++probes, cap_, "hash index cluster length")) {
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
  std::uint32_t n_;
};

}  // namespace kvbm::detail
