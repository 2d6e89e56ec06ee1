// SPDX-License-Identifier: Apache-2.0
// TinyLFU: exactly which calls touch the sketch (seen through MultiLRU levels), agreement with
// the spec 7.7 model under a flood of one-off registrations, and decay.
#include "unit/eviction_support.hpp"

// =============================================================================================
// 8. TinyLFU: exactly which calls touch the sketch (seen through MultiLRU levels)
// =============================================================================================

TEST_CASE("TinyLFU is touched exactly per the DESIGN rule", "[eviction][unit]") {
  TempSegment seg("ev-lfu");
  auto m = seg.create(config_for(seg, 16, kMulti, {1, 2, 3}));
  Names n;
  std::uint64_t next = 0x5000;
  auto fresh = [&] { return root(next++); };

  SECTION("a first registration touches once: f = 1 -> level 1 with t1 = 1") {
    const auto h = fresh();
    CHECK(estimate_of(*m, h) == 0);
    const BlockId id = insert(*m, h);
    CHECK(estimate_of(*m, h) == 1);
    CHECK(level_of(*m, id) == 1);
  }
  SECTION("registering a present hash does not touch (active, or inactive and resurrected)") {
    const auto h = fresh();
    ImmutableBlock a = put(*m, h);
    ImmutableBlock dup = put(*m, h);  // Allow: a duplicate of an active primary
    CHECK(dup.block_id() != a.block_id());
    const BlockId id = a.block_id();
    a = ImmutableBlock();
    dup = ImmutableBlock();
    CHECK(estimate_of(*m, h) == 1);
    CHECK(level_of(*m, id) == 1);
    (void)put(*m, h);  // resurrects the inactive primary, then a duplicate
    CHECK(estimate_of(*m, h) == 1);
    CHECK(level_of(*m, id) == 1);
    // A batch naming the hash twice: only the first is a first registration.
    const auto g = fresh();
    auto blocks = m->allocate_blocks(2);
    REQUIRE(blocks);
    std::vector<CompleteBlock> staged;
    for (auto& b : *blocks) {
      auto s = std::move(b).stage(g, kBs);
      REQUIRE(s);
      staged.push_back(std::move(*s));
    }
    (void)m->register_blocks(std::move(staged));
    CHECK(estimate_of(*m, g) == 1);
  }
  SECTION("under kReject, registering a present hash does not touch") {
    TempSegment rseg("ev-lfurej");
    SegmentConfig c = config_for(rseg, 8, kMulti, {1, 2, 3});
    c.duplication = DuplicationPolicy::kReject;
    auto r = rseg.create(c);
    const auto h = fresh();
    ImmutableBlock a = put(*r, h);
    ImmutableBlock b = put(*r, h);
    CHECK(b.block_id() == a.block_id());
    const BlockId id = a.block_id();
    a = ImmutableBlock();
    b = ImmutableBlock();
    (void)put(*r, h);
    CHECK(estimate_of(*r, h) == 1);
    CHECK(level_of(*r, id) == 1);
  }
  SECTION("a registration after eviction is a first registration again") {
    const auto h = fresh();
    insert(*m, h);
    CHECK(drain(*m) == std::vector<SequenceHash>{h});
    const BlockId id = insert(*m, h);
    CHECK(estimate_of(*m, h) == 2);
    CHECK(level_of(*m, id) == 2);
  }
  SECTION("match_blocks touches once per returned block, active or inactive, not past a miss") {
    const auto h = fresh();
    const auto h2 = fresh();
    const auto missing = fresh();
    const BlockId id = insert(*m, h);
    insert(*m, h2);
    {
      const std::array<SequenceHash, 3> three{h, h, h};
      auto got = m->match_blocks(three);  // resurrects, then twice the active primary
      CHECK(got.size() == 3);
      CHECK(estimate_of(*m, h) == 4);
      const std::array<SequenceHash, 3> stop{h, missing, h2};
      CHECK(m->match_blocks(stop).size() == 1);
      CHECK(estimate_of(*m, h) == 5);
      CHECK(estimate_of(*m, missing) == 0);
      CHECK(estimate_of(*m, h2) == 1);
    }
    CHECK(level_of(*m, id) == 3);
  }
  SECTION("match_blocks_scattered touches once per returned block, not a miss") {
    const auto h = fresh();
    const auto h2 = fresh();
    const auto missing = fresh();
    const BlockId id = insert(*m, h);
    const BlockId id2 = insert(*m, h2);
    {
      const std::array<SequenceHash, 4> hs{h, missing, h2, h};
      auto got = m->match_blocks_scattered(hs);
      CHECK(got[0].has_value());
      CHECK_FALSE(got[1].has_value());
      CHECK(got[2].has_value());
      CHECK(got[3].has_value());
    }
    CHECK(estimate_of(*m, h) == 3);
    CHECK(estimate_of(*m, h2) == 2);
    CHECK(estimate_of(*m, missing) == 0);
    CHECK(level_of(*m, id) == 3);
    CHECK(level_of(*m, id2) == 2);
  }
  SECTION("scan_matches(false) does not touch; (true) touches each hash found once") {
    const auto h = fresh();
    const auto missing = fresh();
    const BlockId id = insert(*m, h);
    const std::array<SequenceHash, 3> hs{h, missing, h};
    CHECK(m->scan_matches(hs, false).size() == 1);
    CHECK(estimate_of(*m, h) == 1);
    CHECK(level_of(*m, id) == 1);
    CHECK(m->scan_matches(hs, true).size() == 1);
    CHECK(estimate_of(*m, h) == 2);
    CHECK(estimate_of(*m, missing) == 0);
    CHECK(level_of(*m, id) == 2);
  }
  SECTION("WeakBlock::upgrade never touches (fast path or resurrection)") {
    const auto h = fresh();
    ImmutableBlock b = put(*m, h);
    const BlockId id = b.block_id();
    const WeakBlock weak = b.downgrade();
    { auto u = weak.upgrade(); }  // fast path: this process holds the slot
    b = ImmutableBlock();
    { auto u = weak.upgrade(); }  // resurrects from the inactive pool
    CHECK(estimate_of(*m, h) == 1);
    CHECK(level_of(*m, id) == 1);
  }
  SECTION("level boundaries: f < t1 -> 0, f < t2 -> 1, f < t3 -> 2, else 3") {
    TempSegment tseg("ev-lfulev");
    auto t = tseg.create(config_for(tseg, 16, kMulti, {2, 4, 6}));
    const std::array<int, 8> expected{0, 1, 1, 2, 2, 3, 3, 3};  // by f = 1..8
    for (int f = 8; f >= 1; --f) {                              // the hottest enters first
      const auto h = n(fmt::format("f{}", f), fresh());
      ImmutableBlock b = put(*t, h);
      for (int i = 1; i < f; ++i) {
        (void)hit(*t, h);
      }
      const BlockId id = b.block_id();
      b = ImmutableBlock();
      CHECK(estimate_of(*t, h) == static_cast<std::uint32_t>(f));
      CHECK(level_of(*t, id) == expected[static_cast<std::size_t>(f - 1)]);
    }
    // Black-box: entered f8..f1, evicted by level, oldest first within a level.
    CHECK(n.of(drain(*t)) == Order{"f1", "f3", "f2", "f5", "f4", "f8", "f7", "f6"});
  }
  SECTION("a hash touched while it is inactive keeps its level until it re-enters") {
    const auto h = fresh();
    const auto later = fresh();
    const BlockId id = insert(*m, h);  // level 1
    insert(*m, later);                 // level 1, newer
    touch_directly(*m, h);
    touch_directly(*m, h);
    CHECK(level_of(*m, id) == 1);
    SECTION("it is still the oldest entry of level 1") {
      CHECK(drain(*m) == std::vector<SequenceHash>{h, later});
    }
    SECTION("hit and dropped again, it is re-levelled") {
      (void)hit(*m, h);  // f = 4 -> re-enters at level 3
      CHECK(level_of(*m, id) == 3);
      CHECK(drain(*m) == std::vector<SequenceHash>{later, h});
    }
  }
}

namespace {

/// Registers `count` fresh hashes (one touch each) in batches of 63, mirrored in `model`; keeps
/// every 97th hash in `sample`.
void flood(BlockManager& m, SketchModel& model, int count, std::vector<SequenceHash>& sample) {
  static std::uint64_t next = 0x100000;
  while (count > 0) {
    const int batch = std::min(count, 63);
    count -= batch;
    auto got = m.allocate_blocks_with_evictions(static_cast<std::size_t>(batch));
    REQUIRE(got);
    std::vector<CompleteBlock> staged;
    for (auto& b : got->first) {
      const SequenceHash h = root(next++);
      model.increment(h);
      if (next % 97 == 0) {
        sample.push_back(h);
      }
      auto s = std::move(b).stage(h, kBs);
      REQUIRE(s);
      staged.push_back(std::move(*s));
    }
    (void)m.register_blocks(std::move(staged));
  }
}

}  // namespace

TEST_CASE("TinyLFU under a flood of one-off registrations agrees with the spec 7.7 model",
          "[eviction][unit]") {
  constexpr std::uint32_t kCapacity = 1u << 10;  // the smallest sketch: 256 words
  TempSegment seg("ev-flood");
  auto m = seg.create(config_for(seg, 64, kMulti, {2, 4, 6}, kCapacity));
  SketchModel model(kCapacity);
  // A hot hash, f = 6, held (not evictable) while the sketch fills up.
  const SequenceHash hot = root(0x4070);
  ImmutableBlock hot_block = put(*m, hot);
  model.increment(hot);
  for (int i = 0; i < 5; ++i) {
    (void)hit(*m, hot);
    model.increment(hot);
  }
  REQUIRE(model.estimate(hot) == 6);
  REQUIRE(estimate_of(*m, hot) == 6);
  std::vector<SequenceHash> sample;
  flood(*m, model, 12000, sample);
  KVBM_CLEAN(*m);
  CHECK(estimate_of(*m, hot) == model.estimate(hot));
  for (const auto& h : sample) {
    CHECK(estimate_of(*m, h) == model.estimate(h));
  }
  // The hot hash enters the pool at the level of its current estimate.
  const BlockId id = hot_block.block_id();
  const int f = static_cast<int>(model.estimate(hot));
  hot_block = ImmutableBlock();
  CHECK(level_of(*m, id) == (f < 2 ? 0 : f < 4 ? 1 : f < 6 ? 2 : 3));
}

// Regression: with index = hash % len and nibble = hash & 15 (spec 7.7) and a power-of-two
// table, the nibble is a function of the index, so each hash function reaches only
// table_len of the 16 x table_len counters. At most 15 x table_len increments can grow a counter,
// fewer than the capacity x 10 = 40 x table_len that trigger the halving: the sketch saturates
// and never decays, and every block ends up on the hottest level.
TEST_CASE("TinyLFU decays: after a flood of one-off registrations a cold hash is cold again",
          "[eviction][unit]") {
  constexpr std::uint32_t kCapacity = 1u << 10;
  TempSegment seg("ev-decay");
  auto m = seg.create(config_for(seg, 64, kMulti, {3, 8, 15}, kCapacity));
  SketchModel model(kCapacity);
  std::vector<SequenceHash> sample;
  flood(*m, model, 3 * 10 * static_cast<int>(kCapacity), sample);  // 3 x the decay period
  CHECK(model.halvings() >= 1);  // what the spec's own algorithm does: 0
  KVBM_CLEAN(*m);
  (void)drain(*m);
  // H is hot (registered, then matched 9 times), C is registered once. H enters first.
  const SequenceHash H = root(0x4080);
  const SequenceHash C = root(0x4090);
  {
    ImmutableBlock b = put(*m, H);
    for (int i = 0; i < 9; ++i) {
      (void)hit(*m, H);
    }
  }
  const BlockId c_id = insert(*m, C);
  INFO("estimate of the cold hash: " << estimate_of(*m, C));
  // Without decay every counter would sit at 15 after the flood. With it the cold hash reads
  // only the sketch's background noise (at this size, ~10 increments per counter per decay
  // period), below the hot hash, and it is evicted first.
  CHECK(estimate_of(*m, C) < 15);
  CHECK(estimate_of(*m, C) < estimate_of(*m, H));
  CHECK(level_of(*m, c_id) < 3);
  CHECK(drain(*m) == std::vector<SequenceHash>{C, H});  // the cold block goes first
}
