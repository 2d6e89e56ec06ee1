// SPDX-License-Identifier: Apache-2.0
#include "eviction/tiny_lfu.hpp"

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace kvbm::detail {
namespace {

constexpr std::size_t kSecretSize = 192;

// Hash function i = XXH3-64 with the secret derived from seed i (i = 0 is the default secret),
// over the key's 16 little-endian bytes, as kvbm-logical does.
const std::array<std::array<unsigned char, kSecretSize>, 4>& secrets() {
  static const auto s = [] {
    std::array<std::array<unsigned char, kSecretSize>, 4> out{};
    for (unsigned i = 0; i < 4; ++i) {
      XXH3_generateSecret_fromSeed(out[i].data(), i);
    }
    return out;
  }();
  return s;
}

std::uint64_t hash_i(unsigned i, std::uint64_t hi, std::uint64_t lo) {
  unsigned char key[16];
  std::memcpy(key, &lo, 8);  // u128 little-endian: low word first
  std::memcpy(key + 8, &hi, 8);
  return XXH3_64bits_withSecret(key, sizeof(key), secrets()[i].data(), kSecretSize);
}

// Which of the word's 16 counters: the hash's top 4 bits. (kvbm-logical takes `hash & 15`, but
// with a power-of-two table the index `hash % len` already fixes those bits, so only one counter
// per word is ever used, counters saturate, and the halving decay can never trigger.)
unsigned nibble_shift(std::uint64_t h) {
  return static_cast<unsigned>(h >> 60) * 4;
}

}  // namespace

void TinyLfu::init(shm::SketchHeader* header, std::uint32_t capacity) {
  header->table_len = table_len_for(capacity);
  header->sample_size = std::min<std::uint64_t>(std::uint64_t{capacity} * 10, 0xFFFFFFFFull);
  header->size = 0;
  std::memset(header + 1, 0, header->table_len * sizeof(std::uint64_t));
}

void TinyLfu::increment(std::uint64_t hi, std::uint64_t lo) {
  bool grew = false;
  for (unsigned i = 0; i < 4; ++i) {
    const std::uint64_t h = hash_i(i, hi, lo);
    std::uint64_t& word = table_[h % h_->table_len];
    const unsigned shift = nibble_shift(h);
    if (((word >> shift) & 0xF) != 0xF) {
      word += std::uint64_t{1} << shift;
      grew = true;
    }
  }
  if (grew && ++h_->size >= h_->sample_size) {
    halve();
  }
}

std::uint32_t TinyLfu::estimate(std::uint64_t hi, std::uint64_t lo) const {
  std::uint32_t m = 15;
  for (unsigned i = 0; i < 4; ++i) {
    const std::uint64_t h = hash_i(i, hi, lo);
    const std::uint64_t word = table_[h % h_->table_len];
    m = std::min(m, static_cast<std::uint32_t>((word >> nibble_shift(h)) & 0xF));
  }
  return m;
}

void TinyLfu::halve() {
  std::uint64_t odd = 0;
  for (std::uint64_t i = 0; i < h_->table_len; ++i) {
    odd += static_cast<std::uint64_t>(__builtin_popcountll(table_[i] & 0x1111111111111111ull));
    table_[i] = (table_[i] >> 1) & 0x7777777777777777ull;
  }
  const std::uint64_t half = h_->size >> 1;
  const std::uint64_t dec = odd >> 2;
  h_->size = half > dec ? half - dec : 0;  // saturating (the Rust original could underflow)
}

}  // namespace kvbm::detail
