// SPDX-License-Identifier: Apache-2.0
// SequenceHash: the 128-bit PositionalLineageHash of dynamo-tokens, and hash_token_blocks, which
// computes one per complete block of a token sequence (bit-compatible with dynamo-tokens).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace kvbm {

/// Packs [mode:2][position:P][parent_fragment:M][current_fragment:N] into 128 bits, with
/// (P, M, N) = (8, 59, 59) for positions < 256, (16, 55, 55) below 65536, else (24, 51, 51).
/// Two hashes are equal only if all 128 bits are equal.
class SequenceHash {
 public:
  SequenceHash() = default;  // all-zero value

  /// Throws std::out_of_range if position >= 2^24.
  static SequenceHash make(std::uint64_t current,
                           std::optional<std::uint64_t> parent,
                           std::uint32_t position);
  static constexpr SequenceHash from_parts(std::uint64_t hi, std::uint64_t lo) {
    SequenceHash h;
    h.hi_ = hi;
    h.lo_ = lo;
    return h;
  }

  constexpr std::uint64_t hi() const { return hi_; }
  constexpr std::uint64_t lo() const { return lo_; }
  std::uint32_t mode() const { return static_cast<std::uint32_t>(hi_ >> 62); }
  std::uint32_t position() const;
  std::uint64_t current_fragment() const;
  std::uint64_t parent_fragment() const;
  /// "<position>:<32 lowercase hex digits of hi then lo>"
  std::string to_string() const;

  friend bool operator==(const SequenceHash&, const SequenceHash&) = default;

 private:
  std::uint64_t hi_ = 0;
  std::uint64_t lo_ = 0;
};

/// One SequenceHash per COMPLETE block of `tokens` (a trailing partial block gets none).
/// block_hash = XXH3_64(seed = salt, the block's u32 tokens little-endian); the sequence hash of
/// block 0 is its block_hash, of block i > 0 XXH3_64(seed = salt, [parent_seq LE, block_hash LE]).
/// Throws std::invalid_argument if block_size == 0.
std::vector<SequenceHash> hash_token_blocks(std::span<const std::uint32_t> tokens,
                                            std::uint32_t block_size,
                                            std::uint64_t salt = 0);

}  // namespace kvbm

template <>
struct std::hash<kvbm::SequenceHash> {
  std::size_t operator()(const kvbm::SequenceHash& h) const noexcept {
    // The hash bits are already uniformly distributed; fold and mix once.
    std::uint64_t x = h.hi() ^ (h.lo() * 0x9E3779B97F4A7C15ull);
    x ^= x >> 32;
    return static_cast<std::size_t>(x);
  }
};

template <>
struct fmt::formatter<kvbm::SequenceHash> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const kvbm::SequenceHash& h, Ctx& ctx) const {
    std::string text = h.to_string();
    return fmt::formatter<std::string_view>::format(text, ctx);
  }
};
