// SPDX-License-Identifier: Apache-2.0
// SequenceHash packing and hash_token_blocks; bit-compatible with dynamo-tokens'
// PositionalLineageHash and TokenBlockSequence hashing.
#include "kvbm/sequence_hash.hpp"

#include <xxhash.h>

#include <algorithm>
#include <array>
#include <bit>
#include <stdexcept>

namespace kvbm {

// Tokens and chained hashes are hashed as their in-memory bytes, which must be little-endian to
// match dynamo-tokens (bytemuck::cast_slice on little-endian hosts).
static_assert(std::endian::native == std::endian::little,
              "hash_token_blocks assumes a little-endian host");

namespace {

// __extension__ keeps -Wpedantic quiet about the GCC/Clang 128-bit integer.
__extension__ typedef unsigned __int128 u128;

constexpr std::uint32_t kModeShift = 126;
constexpr std::uint32_t kMaxPosition = (1u << 24) - 1;

struct Layout {
  std::uint32_t position_bits;
  std::uint32_t parent_bits;
  std::uint32_t current_bits;
};

// Indexed by mode; 2 + P + M + N == 128 for each.
constexpr std::array<Layout, 3> kLayouts = {{{8, 59, 59}, {16, 55, 55}, {24, 51, 51}}};

constexpr std::uint32_t select_mode(std::uint64_t position) {
  if (position < (1u << 8)) {
    return 0;
  }
  if (position < (1u << 16)) {
    return 1;
  }
  return 2;  // Also for 2^24 (the successor of the last valid position), as dynamo-tokens does.
}

constexpr u128 mask(std::uint32_t bits) {
  return (u128{1} << bits) - 1;
}

u128 to_u128(std::uint64_t hi, std::uint64_t lo) {
  return (u128{hi} << 64) | lo;
}

// Mode 3 is never produced by make(); clamp so from_parts() garbage cannot index out of bounds.
const Layout& layout_of(std::uint64_t hi) {
  std::uint32_t mode = static_cast<std::uint32_t>(hi >> 62);
  return kLayouts[mode < kLayouts.size() ? mode : kLayouts.size() - 1];
}

}  // namespace

SequenceHash SequenceHash::make(std::uint64_t current,
                                std::optional<std::uint64_t> parent,
                                std::uint32_t position) {
  if (position > kMaxPosition) {
    throw std::out_of_range(fmt::format(
        "SequenceHash position {} exceeds maximum supported value {}", position, kMaxPosition));
  }
  const std::uint32_t mode = select_mode(position);
  const Layout& layout = kLayouts[mode];
  // The child at position + 1 stores our hash as its parent with its own (possibly narrower)
  // parent width; truncating here keeps child.parent_fragment() == current_fragment() across the
  // mode boundaries at 255 and 65535.
  const std::uint32_t next_parent_bits =
      kLayouts[select_mode(std::uint64_t{position} + 1)].parent_bits;
  const std::uint32_t current_bits = std::min(layout.current_bits, next_parent_bits);

  const u128 parent_part = u128{parent.value_or(0)} & mask(layout.parent_bits);
  const u128 current_part = u128{current} & mask(current_bits);
  const u128 value = (u128{mode} << kModeShift) |
                     (u128{position} << (layout.parent_bits + layout.current_bits)) |
                     (parent_part << layout.current_bits) | current_part;
  return from_parts(static_cast<std::uint64_t>(value >> 64), static_cast<std::uint64_t>(value));
}

std::uint32_t SequenceHash::position() const {
  const Layout& layout = layout_of(hi_);
  const u128 value = to_u128(hi_, lo_);
  return static_cast<std::uint32_t>((value >> (layout.parent_bits + layout.current_bits)) &
                                    mask(layout.position_bits));
}

std::uint64_t SequenceHash::current_fragment() const {
  const Layout& layout = layout_of(hi_);
  return static_cast<std::uint64_t>(to_u128(hi_, lo_) & mask(layout.current_bits));
}

std::uint64_t SequenceHash::parent_fragment() const {
  const Layout& layout = layout_of(hi_);
  return static_cast<std::uint64_t>((to_u128(hi_, lo_) >> layout.current_bits) &
                                    mask(layout.parent_bits));
}

std::string SequenceHash::to_string() const {
  return fmt::format("{}:{:016x}{:016x}", position(), hi_, lo_);
}

std::vector<SequenceHash> hash_token_blocks(std::span<const std::uint32_t> tokens,
                                            std::uint32_t block_size,
                                            std::uint64_t salt) {
  if (block_size == 0) {
    throw std::invalid_argument("hash_token_blocks: block_size must be > 0");
  }
  const std::size_t num_blocks = tokens.size() / block_size;
  std::vector<SequenceHash> out;
  out.reserve(num_blocks);

  std::uint64_t parent_seq = 0;
  for (std::size_t i = 0; i < num_blocks; ++i) {
    const std::uint32_t* block = tokens.data() + i * block_size;
    const std::uint64_t block_hash =
        XXH3_64bits_withSeed(block, sizeof(std::uint32_t) * block_size, salt);
    std::uint64_t seq = block_hash;
    if (i > 0) {
      // Same bytes as dynamo-tokens' cast_slice(&[parent, block_hash]).
      std::array<std::uint64_t, 2> pair = {parent_seq, block_hash};
      seq = XXH3_64bits_withSeed(pair.data(), sizeof(pair), salt);
    }
    out.push_back(
        SequenceHash::make(seq, i == 0 ? std::nullopt : std::optional<std::uint64_t>(parent_seq),
                           static_cast<std::uint32_t>(i)));
    parent_seq = seq;
  }
  return out;
}

}  // namespace kvbm
