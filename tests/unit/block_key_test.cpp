// SPDX-License-Identifier: Apache-2.0
// Block keys (SegmentConfig::key_bytes) and lookups without side effects (peek_blocks,
// lookup_prefix): what an application-keyed tier shared by several engines relies on. Keys
// travel with the block to every attachment and come back with the evicted block; a peek never
// changes the eviction order, the frequency sketch or a metric.
#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>

#include "kvbm/kvbm.hpp"

#include "support/temp_segment.hpp"

namespace {

using kvbm::BlockManager;
using kvbm::HashPresence;
using kvbm::ImmutableBlock;
using kvbm::MutableBlock;
using kvbm::SegmentConfig;
using kvbm::SequenceHash;
using kvbm::testing::Child;
using kvbm::testing::Signal;
using kvbm::testing::TempSegment;

constexpr std::uint32_t kBlockSize = 16;

SequenceHash h(std::uint64_t i) {
  return SequenceHash::make(0x6b657900 + i, std::nullopt, 0);
}

// A key of `len` bytes derived from `i`, so every block's key differs.
std::vector<std::byte> key(std::uint64_t i, std::size_t len = 32) {
  std::vector<std::byte> k(len);
  for (std::size_t j = 0; j < len; ++j) {
    k[j] = static_cast<std::byte>((i * 31 + j * 7 + 1) & 0xFF);
  }
  return k;
}

std::vector<std::byte> bytes(std::span<const std::byte> s) {
  return {s.begin(), s.end()};
}

SegmentConfig keyed_lru(const TempSegment& seg, std::uint32_t blocks, std::uint32_t key_bytes) {
  SegmentConfig c = seg.config(blocks);
  c.eviction = kvbm::EvictionPolicy::kLru;
  c.block_size = kBlockSize;
  c.key_bytes = key_bytes;
  return c;
}

// Allocates, keys, stages and registers one block per hash index; returns the held blocks.
std::vector<ImmutableBlock> store(BlockManager& m,
                                  std::vector<std::uint64_t> ids,
                                  std::size_t key_len = 32) {
  auto blocks = m.allocate_blocks(ids.size());
  REQUIRE(blocks);
  std::vector<kvbm::CompleteBlock> complete;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    (*blocks)[i].set_key(key(ids[i], key_len));
    complete.push_back(std::move((*blocks)[i]).stage(h(ids[i]), kBlockSize).value());
  }
  return m.register_blocks(std::move(complete));
}

std::int64_t metric(const BlockManager& m, std::string_view name) {
  auto v = m.metrics().get(name);
  REQUIRE(v.has_value());
  return *v;
}

}  // namespace

TEST_CASE("A block's key travels with it through staging and registration to every attachment",
          "[unit][keys]") {
  TempSegment seg("key");
  auto a = seg.create(keyed_lru(seg, 8, 32));
  auto b = seg.open();
  auto blocks = a->allocate_blocks(1);
  REQUIRE(blocks);
  MutableBlock& mb = (*blocks)[0];
  mb.set_key(key(1, 20));
  CHECK(bytes(mb.key()) == key(1, 20));
  mb.set_key(key(2, 32));  // set again while Mutable: the last one counts
  CHECK(bytes(mb.key()) == key(2, 32));
  auto complete = std::move(mb).stage(h(2), kBlockSize).value();
  CHECK(bytes(complete.key()) == key(2, 32));
  ImmutableBlock held = a->register_block(std::move(complete));
  CHECK(bytes(held.key()) == key(2, 32));
  const SequenceHash hs[] = {h(2)};
  auto found = b->match_blocks(hs);
  REQUIRE(found.size() == 1);
  CHECK(bytes(found[0].key()) == key(2, 32));
  CHECK(a->verify().empty());
}

TEST_CASE("Keys of every length up to key_bytes round-trip; longer keys are refused",
          "[unit][keys]") {
  TempSegment seg("keylen");
  auto m = seg.create(keyed_lru(seg, 4, 32));
  auto blocks = m->allocate_blocks(1);
  REQUIRE(blocks);
  for (std::size_t len : {0u, 1u, 8u, 17u, 32u}) {
    (*blocks)[0].set_key(key(len, len));
    CHECK(bytes((*blocks)[0].key()) == key(len, len));
  }
  (*blocks)[0].set_key(key(9, 16));
  CHECK_THROWS_AS((*blocks)[0].set_key(key(9, 33)), std::invalid_argument);
  CHECK(bytes((*blocks)[0].key()) == key(9, 16));  // a refused key leaves the old one
}

TEST_CASE("A segment without keys has empty keys and refuses a non-empty one", "[unit][keys]") {
  TempSegment seg("nokey");
  auto m = seg.create(keyed_lru(seg, 4, 0));
  auto blocks = m->allocate_blocks(1);
  REQUIRE(blocks);
  CHECK((*blocks)[0].key().empty());
  CHECK_NOTHROW((*blocks)[0].set_key({}));
  CHECK_THROWS_AS((*blocks)[0].set_key(key(1, 8)), std::invalid_argument);
}

TEST_CASE("key_bytes is validated and compared by open_or_create", "[unit][keys]") {
  TempSegment seg("keycfg");
  SegmentConfig c = keyed_lru(seg, 4, 65);
  auto r = BlockManager::create(c);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == kvbm::Errc::kInvalidConfig);
  CHECK_THAT(r.error().message, Catch::Contains("key_bytes"));
  c.key_bytes = 64;
  c.layout_tag = 0xfeedbeef;
  auto m = seg.create(c);
  CHECK(m->config().key_bytes == 64);
  CHECK(m->config().layout_tag == 0xfeedbeef);
  auto reopened = BlockManager::open(seg.name());
  REQUIRE(reopened);
  CHECK((*reopened)->config().layout_tag == 0xfeedbeef);
  SegmentConfig other = c;
  other.layout_tag = 0xfeedbef0;
  auto refused = BlockManager::open_or_create(other);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == kvbm::Errc::kInvalidConfig);
  CHECK_THAT(refused.error().message, Catch::Contains("layout_tag"));
}

TEST_CASE("An evicted block's key comes back with the block that replaced it", "[unit][keys]") {
  TempSegment seg("keyevict");
  auto m = seg.create(keyed_lru(seg, 3, 32));
  store(*m, {10, 11, 12}).clear();  // all three Inactive, LRU order 10, 11, 12
  auto got = m->allocate_blocks_with_evictions(2);
  REQUIRE(got);
  auto& [blocks, evicted] = *got;
  REQUIRE(evicted.size() == 2);
  CHECK(evicted[0] == h(10));
  CHECK(evicted[1] == h(11));
  // The evicted ones are the last blocks, in the order of the hashes.
  CHECK(bytes(blocks[0].key()) == key(10));
  CHECK(bytes(blocks[1].key()) == key(11));
  CHECK(m->verify().empty());
}

TEST_CASE("A key written in one process is read by another; a dead writer's key goes nowhere",
          "[unit][keys][multiprocess]") {
  TempSegment seg("keyproc");
  auto m = seg.create(keyed_lru(seg, 4, 32));
  Child writer([&] {
    auto own = BlockManager::open(seg.name());
    if (!own) {
      return 2;
    }
    auto b = (*own)->allocate_blocks(1);
    (*b)[0].set_key(key(40));
    auto held = (*own)->register_block(std::move((*b)[0]).stage(h(40), kBlockSize).value());
    return 0;  // released on exit: the block stays cached (Inactive)
  });
  REQUIRE(writer.wait() == 0);
  const SequenceHash hs[] = {h(40)};
  auto found = m->match_blocks(hs);
  REQUIRE(found.size() == 1);
  CHECK(bytes(found[0].key()) == key(40));

  Signal keyed;
  Child dies([&] {
    auto own = BlockManager::open(seg.name());
    auto b = (*own)->allocate_blocks(1);
    (*b)[0].set_key(key(41));
    keyed.notify();
    for (;;) {
      ::pause();
    }
    return 0;
  });
  REQUIRE(keyed.wait() == 1);
  dies.kill();
  CHECK(m->reap_dead_processes() == 1);
  CHECK(m->verify().empty());
  const SequenceHash dead[] = {h(41)};
  CHECK(m->peek_blocks(dead) == std::vector<HashPresence>{HashPresence::kAbsent});
}

TEST_CASE("peek_blocks and lookup_prefix change nothing: eviction order, holders, metrics",
          "[unit][keys][lookup]") {
  TempSegment seg("peek");
  auto m = seg.create(keyed_lru(seg, 3, 32));
  store(*m, {1, 2, 3}).clear();  // Inactive, LRU order 1, 2, 3
  const SequenceHash hs[] = {h(1), h(2), h(3), h(4)};
  const auto before = m->metrics();
  CHECK(m->lookup_prefix(hs) == 3);
  CHECK(m->peek_blocks(hs) ==
        std::vector<HashPresence>{HashPresence::kCached, HashPresence::kCached,
                                  HashPresence::kCached, HashPresence::kAbsent});
  for (auto name : {"kvbm_match_hashes_requested_total", "kvbm_match_blocks_returned_total",
                    "kvbm_scan_hashes_requested_total", "kvbm_scan_blocks_returned_total",
                    "kvbm_allocations_total", "kvbm_inflight_immutable"}) {
    INFO(name);
    CHECK(metric(*m, name) == *before.get(name));
  }
  CHECK(m->counts().inactive == 3);
  // Still oldest first: a peek of h(1) did not make it recent (a match and release would have).
  auto got = m->allocate_blocks_with_evictions(1);
  REQUIRE(got);
  REQUIRE(got->second.size() == 1);
  CHECK(got->second[0] == h(1));
}

TEST_CASE("peek_blocks tells cached blocks from held reset-on-release ones and staged ones",
          "[unit][keys][lookup]") {
  TempSegment seg("peekstates");
  auto m = seg.create(keyed_lru(seg, 8, 32));
  auto other = seg.open();
  auto held = store(*m, {1, 2, 3});     // Primary, held
  store(*m, {4}).clear();               // Inactive
  held[1].set_reset_on_release(true);   // h(2): leaves the cache with its last holder
  auto staged = m->allocate_blocks(1);  // h(5): Staged only, not registered
  auto complete = std::move((*staged)[0]).stage(h(5), kBlockSize).value();

  const SequenceHash hs[] = {h(1), h(2), h(3), h(4), h(5), h(6)};
  const std::vector<HashPresence> want{HashPresence::kCached, HashPresence::kResetOnRelease,
                                       HashPresence::kCached, HashPresence::kCached,
                                       HashPresence::kAbsent, HashPresence::kAbsent};
  CHECK(m->peek_blocks(hs) == want);
  CHECK(other->peek_blocks(hs) == want);  // the same from another attachment
  CHECK(m->lookup_prefix(hs) == 1);       // stops at the reset-on-release block
  const SequenceHash tail[] = {h(3), h(4), h(5)};
  CHECK(other->lookup_prefix(tail) == 2);
  CHECK(m->lookup_prefix(std::span<const SequenceHash>{}) == 0);

  held[1].set_reset_on_release(false);
  CHECK(other->lookup_prefix(hs) == 4);
  CHECK(kvbm::to_string(HashPresence::kResetOnRelease) == "reset_on_release");
  CHECK(m->verify().empty());
}
