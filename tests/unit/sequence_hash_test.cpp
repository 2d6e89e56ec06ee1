// SPDX-License-Identifier: Apache-2.0
// Unit tests for SequenceHash (PositionalLineageHash packing) and hash_token_blocks.
//
// Expected 128-bit values are written out literally. They were derived independently of the
// implementation with Python integers:
//   v = mode << 126 | pos << (M + N) | (parent & mask(M)) << N | (current & mask(min(N, M_next)))
// with (P, M, N) = (8, 59, 59) / (16, 55, 55) / (24, 51, 51).
#include "kvbm/sequence_hash.hpp"

#include <xxhash.h>

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

namespace {

using kvbm::hash_token_blocks;
using kvbm::SequenceHash;

// Both inputs have bits set above every fragment width (top nibble 0xF), so masking is visible.
constexpr std::uint64_t kCurrent = 0xFEDCBA9876543210ull;
constexpr std::uint64_t kParent = 0xF123456789ABCDEFull;

constexpr std::uint64_t mask(unsigned bits) {
  return (std::uint64_t{1} << bits) - 1;
}

struct PackCase {
  std::uint32_t position;
  std::uint32_t mode;
  std::uint64_t hi;
  std::uint64_t lo;
  std::uint64_t current_fragment;
  std::uint64_t parent_fragment;
};

void check_pack(const PackCase& c) {
  CAPTURE(c.position);
  const SequenceHash h = SequenceHash::make(kCurrent, kParent, c.position);
  CHECK(h.hi() == c.hi);
  CHECK(h.lo() == c.lo);
  CHECK(h.mode() == c.mode);
  CHECK(h.position() == c.position);
  CHECK(h.current_fragment() == c.current_fragment);
  CHECK(h.parent_fragment() == c.parent_fragment);
}

std::uint64_t xxh3(const void* data, std::size_t len, std::uint64_t seed) {
  return XXH3_64bits_withSeed(data, len, seed);
}

// Chained sequence hash computed directly from the spec, independently of hash_token_blocks.
std::uint64_t chain(std::uint64_t parent_seq, std::uint64_t block_hash, std::uint64_t salt) {
  const std::array<std::uint64_t, 2> pair = {parent_seq, block_hash};
  return xxh3(pair.data(), sizeof(pair), salt);
}

std::vector<std::uint32_t> iota_tokens(std::size_t n, std::uint32_t first = 1) {
  std::vector<std::uint32_t> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = first + static_cast<std::uint32_t>(i);
  }
  return v;
}

}  // namespace

TEST_CASE("SequenceHash mode 0 packs 8-bit position with 59-bit fragments", "[unit][hash]") {
  // current & mask(59) = 0x06DCBA9876543210, parent & mask(59) = 0x0123456789ABCDEF.
  const PackCase cases[] = {
      {0, 0, 0x00091A2B3C4D5E6Full, 0x7EDCBA9876543210ull, 0x06DCBA9876543210ull,
       0x0123456789ABCDEFull},
      {7, 0, 0x01C91A2B3C4D5E6Full, 0x7EDCBA9876543210ull, 0x06DCBA9876543210ull,
       0x0123456789ABCDEFull},
      {254, 0, 0x3F891A2B3C4D5E6Full, 0x7EDCBA9876543210ull, 0x06DCBA9876543210ull,
       0x0123456789ABCDEFull},
  };
  for (const PackCase& c : cases) {
    check_pack(c);
  }
}

TEST_CASE("SequenceHash mode 1 packs 16-bit position with 55-bit fragments", "[unit][hash]") {
  // current & mask(55) = 0x005CBA9876543210, parent & mask(55) = 0x0023456789ABCDEF.
  const PackCase cases[] = {
      {256, 1, 0x404011A2B3C4D5E6ull, 0xF7DCBA9876543210ull, 0x005CBA9876543210ull,
       0x0023456789ABCDEFull},
      {1000, 1, 0x40FA11A2B3C4D5E6ull, 0xF7DCBA9876543210ull, 0x005CBA9876543210ull,
       0x0023456789ABCDEFull},
      {65534, 1, 0x7FFF91A2B3C4D5E6ull, 0xF7DCBA9876543210ull, 0x005CBA9876543210ull,
       0x0023456789ABCDEFull},
  };
  for (const PackCase& c : cases) {
    check_pack(c);
  }
}

TEST_CASE("SequenceHash mode 2 packs 24-bit position with 51-bit fragments", "[unit][hash]") {
  // current & mask(51) = 0x0004BA9876543210, parent & mask(51) = 0x0003456789ABCDEF.
  // 2^24 - 1 has no wider successor mode, so it keeps its own 51-bit current fragment.
  const PackCase cases[] = {
      {65536, 2, 0x8040001A2B3C4D5Eull, 0x6F7CBA9876543210ull, 0x0004BA9876543210ull,
       0x0003456789ABCDEFull},
      {(1u << 24) - 1, 2, 0xBFFFFFDA2B3C4D5Eull, 0x6F7CBA9876543210ull, 0x0004BA9876543210ull,
       0x0003456789ABCDEFull},
  };
  for (const PackCase& c : cases) {
    check_pack(c);
  }
}

TEST_CASE("SequenceHash truncates the current fragment at mode boundaries", "[unit][hash]") {
  SECTION("position 255 keeps 55 current bits (the parent width of mode 1)") {
    check_pack({255, 0, 0x3FC91A2B3C4D5E6Full, 0x785CBA9876543210ull, 0x005CBA9876543210ull,
                0x0123456789ABCDEFull});
    const SequenceHash h = SequenceHash::make(kCurrent, kParent, 255);
    CHECK(h.current_fragment() == (kCurrent & mask(55)));
    CHECK(h.current_fragment() != (kCurrent & mask(59)));
    // The parent fragment is not truncated: it still uses mode 0's full 59 bits.
    CHECK(h.parent_fragment() == (kParent & mask(59)));
  }
  SECTION("position 65535 keeps 51 current bits (the parent width of mode 2)") {
    check_pack({65535, 1, 0x7FFFD1A2B3C4D5E6ull, 0xF784BA9876543210ull, 0x0004BA9876543210ull,
                0x0023456789ABCDEFull});
    const SequenceHash h = SequenceHash::make(kCurrent, kParent, 65535);
    CHECK(h.current_fragment() == (kCurrent & mask(51)));
    CHECK(h.current_fragment() != (kCurrent & mask(55)));
    CHECK(h.parent_fragment() == (kParent & mask(55)));
  }
}

TEST_CASE("SequenceHash child parent_fragment matches parent current_fragment", "[unit][hash]") {
  // All-ones-ish hashes make any width mismatch between parent and child fragments visible.
  const std::uint64_t grandparent = 0xAAAAAAAAAAAAAAAAull;
  const std::uint64_t parent_seq = 0xFFFFFFFFFFFFFFFFull;
  const std::uint64_t child_seq = 0x123456789ABCDEF0ull;
  const std::uint32_t parent_positions[] = {0,    1,     100,   254,   255,    256,
                                            1000, 65534, 65535, 65536, 100000, (1u << 24) - 2};
  for (std::uint32_t pos : parent_positions) {
    CAPTURE(pos);
    const SequenceHash parent = SequenceHash::make(parent_seq, grandparent, pos);
    const SequenceHash child = SequenceHash::make(child_seq, parent_seq, pos + 1);
    CHECK(child.position() == pos + 1);
    CHECK(child.parent_fragment() == parent.current_fragment());
  }
}

TEST_CASE("SequenceHash root has a zero parent fragment", "[unit][hash]") {
  const SequenceHash root = SequenceHash::make(kCurrent, std::nullopt, 0);
  CHECK(root.hi() == 0x0000000000000000ull);
  CHECK(root.lo() == 0x06DCBA9876543210ull);
  CHECK(root.mode() == 0u);
  CHECK(root.position() == 0u);
  CHECK(root.parent_fragment() == 0u);
  CHECK(root.current_fragment() == 0x06DCBA9876543210ull);
  // An explicit zero parent is indistinguishable from no parent, as in dynamo-tokens.
  CHECK(SequenceHash::make(kCurrent, 0, 0) == root);
}

TEST_CASE("SequenceHash rejects positions at or beyond 2^24", "[unit][hash]") {
  CHECK_THROWS_AS(SequenceHash::make(1, 2, 1u << 24), std::out_of_range);
  CHECK_THROWS_AS(SequenceHash::make(1, std::nullopt, 0xFFFFFFFFu), std::out_of_range);
  CHECK_THROWS_WITH(SequenceHash::make(1, 2, 1u << 24), Catch::Contains("16777216"));
  CHECK_NOTHROW(SequenceHash::make(1, 2, (1u << 24) - 1));
}

TEST_CASE("SequenceHash value semantics, std::hash and formatting", "[unit][hash]") {
  const SequenceHash h = SequenceHash::make(kCurrent, kParent, 255);

  SECTION("from_parts round trips hi/lo and decodes identically") {
    const SequenceHash copy = SequenceHash::from_parts(h.hi(), h.lo());
    CHECK(copy == h);
    CHECK(copy.position() == 255u);
    CHECK(copy.current_fragment() == h.current_fragment());
    CHECK(copy.parent_fragment() == h.parent_fragment());
    static_assert(SequenceHash::from_parts(1, 2).hi() == 1 &&
                  SequenceHash::from_parts(1, 2).lo() == 2);
  }

  SECTION("operator== compares all 128 bits") {
    CHECK(SequenceHash::from_parts(h.hi(), h.lo() ^ 1) != h);
    CHECK(SequenceHash::from_parts(h.hi() ^ (1ull << 63), h.lo()) != h);
    CHECK(SequenceHash() == SequenceHash::from_parts(0, 0));
    CHECK(SequenceHash::make(kCurrent, kParent, 254) != SequenceHash::make(kCurrent, kParent, 253));
  }

  SECTION("std::hash works in an unordered_set") {
    std::unordered_set<SequenceHash> set;
    set.insert(h);
    set.insert(SequenceHash::from_parts(h.hi(), h.lo()));
    set.insert(SequenceHash::make(kCurrent, kParent, 256));
    set.insert(SequenceHash());
    CHECK(set.size() == 3u);
    CHECK(set.count(SequenceHash::make(kCurrent, kParent, 255)) == 1u);
    CHECK(set.count(SequenceHash::make(kCurrent, kParent, 7)) == 0u);
    CHECK(std::hash<SequenceHash>{}(h) ==
          std::hash<SequenceHash>{}(SequenceHash::from_parts(h.hi(), h.lo())));
  }

  SECTION("to_string and fmt produce position:32 lowercase hex digits") {
    CHECK(h.to_string() == "255:3fc91a2b3c4d5e6f785cba9876543210");
    CHECK(fmt::format("{}", h) == h.to_string());
    // make(1, 2, 3): position 3 << 118 and parent 2 << 59, i.e. bit 54 of hi and bit 60 of lo.
    const SequenceHash small = SequenceHash::make(1, 2, 3);
    CHECK(small.hi() == 0x00C0000000000000ull);
    CHECK(small.lo() == 0x1000000000000001ull);
    CHECK(fmt::format("{}", small) == "3:00c00000000000001000000000000001");
    CHECK(SequenceHash().to_string() == "0:00000000000000000000000000000000");
    CHECK(SequenceHash::make(kCurrent, kParent, (1u << 24) - 1).to_string() ==
          "16777215:bfffffda2b3c4d5e6f7cba9876543210");
  }
}

TEST_CASE("XXH3 links and matches its reference value", "[unit][hash]") {
  CHECK(xxh3(nullptr, 0, 0) == 0x2D06800538D394C2ull);
}

TEST_CASE("hash_token_blocks hashes only complete blocks", "[unit][hash]") {
  SECTION("no tokens -> no hashes") {
    CHECK(hash_token_blocks({}, 4).empty());
  }
  SECTION("fewer tokens than a block -> no hashes") {
    const auto tokens = iota_tokens(3);
    CHECK(hash_token_blocks(tokens, 4).empty());
  }
  SECTION("a trailing partial block gets no hash and does not affect complete ones") {
    const auto exact = iota_tokens(8);
    const auto partial = iota_tokens(11);
    const auto a = hash_token_blocks(exact, 4);
    const auto b = hash_token_blocks(partial, 4);
    REQUIRE(a.size() == 2u);
    REQUIRE(b.size() == 2u);
    CHECK(a == b);
  }
  SECTION("block_size 0 throws") {
    const auto tokens = iota_tokens(4);
    CHECK_THROWS_AS(hash_token_blocks(tokens, 0), std::invalid_argument);
    CHECK_THROWS_AS(hash_token_blocks({}, 0), std::invalid_argument);
  }
}

TEST_CASE("hash_token_blocks chains XXH3 sequence hashes", "[unit][hash]") {
  const std::uint64_t salt = 0x5EEDull;
  const auto tokens = iota_tokens(13, 100);  // 3 complete blocks of 4, 1 trailing token
  const auto hashes = hash_token_blocks(tokens, 4, salt);
  REQUIRE(hashes.size() == 3u);

  const std::uint64_t b0 = xxh3(tokens.data(), 16, salt);
  const std::uint64_t b1 = xxh3(tokens.data() + 4, 16, salt);
  const std::uint64_t b2 = xxh3(tokens.data() + 8, 16, salt);
  const std::uint64_t s0 = b0;
  const std::uint64_t s1 = chain(s0, b1, salt);
  const std::uint64_t s2 = chain(s1, b2, salt);

  CHECK(hashes[0] == SequenceHash::make(s0, std::nullopt, 0));
  CHECK(hashes[1] == SequenceHash::make(s1, s0, 1));
  CHECK(hashes[2] == SequenceHash::make(s2, s1, 2));

  // The same facts through the accessors, without going through make().
  for (std::uint32_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(hashes[i].mode() == 0u);
    CHECK(hashes[i].position() == i);
  }
  CHECK(hashes[0].parent_fragment() == 0u);
  CHECK(hashes[0].current_fragment() == (s0 & mask(59)));
  CHECK(hashes[1].parent_fragment() == (s0 & mask(59)));
  CHECK(hashes[1].current_fragment() == (s1 & mask(59)));
  CHECK(hashes[2].parent_fragment() == hashes[1].current_fragment());
  CHECK(hashes[2].current_fragment() == (s2 & mask(59)));
}

TEST_CASE("hash_token_blocks matches dynamo-tokens reference constants", "[unit][hash]") {
  // From dynamo-tokens' own tests: salt 1337, block_size 4, tokens 1..12.
  //   HASH_1_4 = SEQ_HASH_1_4 = 14643705804678351452, SEQ_HASH_5_8 = 4945711292740353085,
  //   SEQ_HASH_9_12 = 12583592247330656132.
  const std::uint64_t seq[] = {14643705804678351452ull, 4945711292740353085ull,
                               12583592247330656132ull};
  const auto tokens = iota_tokens(12);
  REQUIRE(xxh3(tokens.data(), 16, 1337) == seq[0]);

  const auto hashes = hash_token_blocks(tokens, 4, 1337);
  REQUIRE(hashes.size() == 3u);
  CHECK(hashes[0].hi() == 0x0000000000000000ull);
  CHECK(hashes[0].lo() == 0x0338E4D7FB2DCA5Cull);
  CHECK(hashes[1].hi() == 0x0059C726BFD96E52ull);
  CHECK(hashes[1].lo() == 0xE4A2B2379D6D3C3Dull);
  CHECK(hashes[2].hi() == 0x00A51591BCEB69E1ull);
  CHECK(hashes[2].lo() == 0xEEA1E67A6C80CF84ull);
  for (std::size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(hashes[i].current_fragment() == (seq[i] & mask(59)));
    CHECK(hashes[i].parent_fragment() == (i == 0 ? 0 : seq[i - 1] & mask(59)));
  }
}

TEST_CASE("hash_token_blocks salt and content sensitivity", "[unit][hash]") {
  const auto tokens = iota_tokens(12);

  SECTION("different salt -> different hashes") {
    const auto a = hash_token_blocks(tokens, 4, 0);
    const auto b = hash_token_blocks(tokens, 4, 1);
    REQUIRE(a.size() == 3u);
    REQUIRE(b.size() == 3u);
    for (std::size_t i = 0; i < a.size(); ++i) {
      CAPTURE(i);
      CHECK(a[i] != b[i]);
    }
  }

  SECTION("shared complete-block prefixes hash identically") {
    auto other = tokens;
    other.resize(10);  // blocks 0 and 1 shared, then a partial block
    other.insert(other.end(), {777, 778, 779, 780, 781, 782});
    const auto a = hash_token_blocks(tokens, 4);
    const auto b = hash_token_blocks(other, 4);
    REQUIRE(a.size() == 3u);
    REQUIRE(b.size() == 4u);
    CHECK(a[0] == b[0]);
    CHECK(a[1] == b[1]);
    CHECK(a[2] != b[2]);
  }

  SECTION("changing a token in block 1 changes hashes 1.. but not 0") {
    auto changed = tokens;
    changed[5] ^= 0x80000000u;
    const auto a = hash_token_blocks(tokens, 4);
    const auto b = hash_token_blocks(changed, 4);
    REQUIRE(b.size() == 3u);
    CHECK(a[0] == b[0]);
    CHECK(a[1] != b[1]);
    CHECK(a[2] != b[2]);
    // Block 2's tokens are unchanged; only its lineage differs.
    CHECK(a[2].parent_fragment() != b[2].parent_fragment());
  }

  SECTION("block size changes the hashes") {
    const auto a = hash_token_blocks(tokens, 4);
    const auto b = hash_token_blocks(tokens, 6);
    REQUIRE(b.size() == 2u);
    CHECK(a[0] != b[0]);
  }
}
