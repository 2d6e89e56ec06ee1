// SPDX-License-Identifier: Apache-2.0
// TinyLFU: view over the segment's count-min sketch (4-bit counters, 4 hash functions keyed by
// the 128-bit sequence hash, halving decay after capacity x 10 increments). Same hash functions
// as kvbm-logical's TinyLFUSketch; the counter within a word comes from other bits (see .cpp).
// Callers hold the store mutex.
#pragma once

#include <cstdint>

#include "shm/sketch.hpp"

namespace kvbm::detail {

class TinyLfu {
 public:
  explicit TinyLfu(shm::SketchHeader* header)
      : h_(header), table_(reinterpret_cast<std::uint64_t*>(header + 1)) {}

  static std::uint64_t table_len_for(std::uint32_t capacity) {
    return shm::sketch_table_len(capacity);
  }
  /// Creator only.
  static void init(shm::SketchHeader* header, std::uint32_t capacity);

  void increment(std::uint64_t hi, std::uint64_t lo);
  /// Minimum of the key's four counters, 0..15.
  std::uint32_t estimate(std::uint64_t hi, std::uint64_t lo) const;

 private:
  void halve();
  shm::SketchHeader* h_;
  std::uint64_t* table_;
};

}  // namespace kvbm::detail
