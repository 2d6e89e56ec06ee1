// SPDX-License-Identifier: Apache-2.0
// Eviction order: the spec's exact orders of LRU, FIFO, MultiLRU and Lineage, hits that leave
// the pool and re-enter it, and the order of allocate_blocks_with_evictions' results.
#include "unit/eviction_support.hpp"

// =============================================================================================
// 1. The spec's exact orders
// =============================================================================================

TEST_CASE("interleaved chains A<-B, X<-Y inserted A,B,X,Y: the spec's order for every backend",
          "[eviction][unit]") {
  const Backend be = GENERATE(kLru, kFifo, kMulti, kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-inter");
    auto m = seg.create(config_for(seg, 4, be));
    Names n;
    const auto A = n("A", root(0xA));
    const auto B = n("B", child(0xB, A));
    const auto X = n("X", root(0x10));
    const auto Y = n("Y", child(0x11, X));
    for (const auto& h : {A, B, X, Y}) {
      insert(*m, h);
    }
    KVBM_CLEAN(*m);
    CHECK(m->counts().inactive == 4);
    Order expected;
    if (be.lineage_tick()) {
      expected = {"B", "A", "Y", "X"};  // a whole chain tip -> root before the next one
    } else if (be.lineage_fifo()) {
      expected = {"B", "Y", "A", "X"};  // in the order the nodes became leaves
    } else {
      expected = {"A", "B", "X", "Y"};  // order of entry into the pool (MultiLRU: all cold)
    }
    CHECK(n.of(drain(*m)) == expected);
    KVBM_CLEAN(*m);
    CHECK(m->counts().inactive == 0);
  }
}

TEST_CASE("a block's place is the time it entered the pool (its last release), not registration",
          "[eviction][unit]") {
  const Backend be = GENERATE(kLru, kFifo, kMulti, kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-entry");
    auto m = seg.create(config_for(seg, 4, be));
    Names n;
    std::vector<ImmutableBlock> held;
    for (const char* name : {"P", "Q", "R", "S"}) {
      held.push_back(put(*m, n(name, root(0x100 + static_cast<std::uint64_t>(name[0])))));
    }
    // Drop order R, P, S, Q; a second handle on S keeps it until it is dropped too.
    ImmutableBlock s2 = held[3];
    for (int i : {2, 0, 3, 1}) {
      held[i] = ImmutableBlock();
    }
    CHECK(m->counts().inactive == 3);
    s2 = ImmutableBlock();
    KVBM_CLEAN(*m);
    CHECK(n.of(drain(*m)) == Order{"R", "P", "Q", "S"});
  }
}

TEST_CASE("LRU and FIFO evict in entry order, one at a time or in one call", "[eviction][unit]") {
  const Backend be = GENERATE(kLru, kFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-lru");
    auto m = seg.create(config_for(seg, 8, be));
    Names n;
    std::vector<SequenceHash> hs;
    for (int i = 0; i < 8; ++i) {
      hs.push_back(n(fmt::format("h{}", i), root(0x700 + static_cast<std::uint64_t>(i * 7 % 8))));
      insert(*m, hs.back());
    }
    std::vector<MutableBlock> keep;
    std::vector<SequenceHash> victims;
    for (std::size_t k : {1, 2, 1, 4}) {
      auto v = evict(*m, k, keep);
      REQUIRE(v.size() == k);
      victims.insert(victims.end(), v.begin(), v.end());
      KVBM_CLEAN(*m);
    }
    CHECK(victims == hs);
  }
}

TEST_CASE("MultiLRU: the coldest level first, LRU within a level, level fixed at entry",
          "[eviction][unit]") {
  TempSegment seg("ev-mlru");
  auto m = seg.create(config_for(seg, 8, kMulti, {1, 2, 3}));
  Names n;
  // f = 1 (registration) -> level 1; each match of a held block adds 1.
  auto enter = [&](const char* name, std::uint64_t v, int extra_matches) {
    const SequenceHash h = n(name, root(v));
    ImmutableBlock b = put(*m, h);
    for (int i = 0; i < extra_matches; ++i) {
      (void)hit(*m, h);
    }
    return h;  // every handle dropped here: the block enters the pool now
  };
  enter("H", 0x1, 2);   // f = 3 -> level 3
  enter("W1", 0x2, 1);  // f = 2 -> level 2
  enter("C1", 0x3, 0);  // f = 1 -> level 1
  enter("W2", 0x4, 1);
  enter("C2", 0x5, 0);
  enter("H2", 0x6, 5);  // f = 6 -> level 3
  KVBM_CLEAN(*m);

  SECTION("cold before warm before hot, oldest first within a level") {
    std::vector<MutableBlock> keep;
    Order got;
    for (int i = 0; i < 6; ++i) {
      got.push_back(n.of(evict(*m, 1, keep).at(0)));
      KVBM_CLEAN(*m);
    }
    CHECK(got == Order{"C1", "C2", "W1", "W2", "H", "H2"});
  }
  SECTION("a resurrected block is re-levelled when it is dropped again") {
    const SequenceHash C1 = root(0x3);
    {
      ImmutableBlock a = hit(*m, C1);  // f = 2
      ImmutableBlock b = hit(*m, C1);  // f = 3
    }                                  // re-enters at level 3, after H2
    CHECK(n.of(drain(*m)) == Order{"C2", "W1", "W2", "H", "H2", "C1"});
  }
  SECTION("touches while a block is inactive do not move it") {
    const SequenceHash C1 = root(0x3);
    for (int i = 0; i < 10; ++i) {
      touch_directly(*m, C1);
    }
    CHECK(estimate_of(*m, C1) == 11);
    CHECK(n.of(drain(*m)) == Order{"C1", "C2", "W1", "W2", "H", "H2"});
  }
}

// =============================================================================================
// 2. Hits remove entries; a dropped hit re-enters per the policy
// =============================================================================================

TEST_CASE("a matched block is not evicted; dropped again it re-enters at the back",
          "[eviction][unit]") {
  const Backend be = GENERATE(kLru, kFifo, kMulti, kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-hit");
    auto m = seg.create(config_for(seg, 3, be));
    Names n;
    const auto P = n("P", root(0x21));
    const auto Q = n("Q", root(0x22));
    const auto R = n("R", root(0x23));
    for (const auto& h : {P, Q, R}) {
      insert(*m, h);
    }
    SECTION("while held, the hit is out of the pool") {
      ImmutableBlock q = hit(*m, Q);
      CHECK(m->counts().inactive == 2);
      CHECK(n.of(drain(*m)) == Order{"P", "R"});
      KVBM_CLEAN(*m);
      CHECK(m->match_blocks(one(Q)).size() == 1);  // still cached
      q = ImmutableBlock();
      CHECK(n.of(drain(*m)) == Order{"Q"});
    }
    SECTION("dropped again it is the newest entry (every backend gives it a new entry time)") {
      (void)hit(*m, Q);
      KVBM_CLEAN(*m);
      CHECK(n.of(drain(*m)) == Order{"P", "R", "Q"});
    }
    SECTION("scan_matches and WeakBlock::upgrade hits are the same") {
      WeakBlock w = m->match_blocks(one(P)).at(0).downgrade();  // P re-enters after R
      { auto s = m->scan_matches(one(Q), false); }              // Q after P
      { auto u = w.upgrade(); }                                 // P after Q
      CHECK(n.of(drain(*m)) == Order{"R", "Q", "P"});
    }
  }
}

TEST_CASE("lineage: a re-entering node gets a new tick (Tick) or goes to the back (FIFO)",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-retick");
    auto m = seg.create(config_for(seg, 4, be));
    Names n;
    const auto A = n("A", root(0xA));
    const auto B = n("B", child(0xB, A));
    const auto X = n("X", root(0x10));
    for (const auto& h : {A, B, X}) {
      insert(*m, h);
    }
    SECTION("no hit") {
      CHECK(n.of(drain(*m)) == (be.lineage_tick() ? Order{"B", "A", "X"} : Order{"B", "X", "A"}));
    }
    SECTION("interior A hit and dropped again: a ghost promoted back, with a new tick") {
      (void)hit(*m, A);
      KVBM_CLEAN(*m);
      CHECK(n.of(drain(*m)) == Order{"B", "X", "A"});
    }
    SECTION("leaf B held: A is a leaf again, with its original tick (Tick) or at the back (FIFO)") {
      ImmutableBlock b = hit(*m, B);
      KVBM_CLEAN(*m);
      CHECK(n.of(drain(*m)) == (be.lineage_tick() ? Order{"A", "X"} : Order{"X", "A"}));
    }
    SECTION("leaf B hit and dropped again") {
      (void)hit(*m, B);
      KVBM_CLEAN(*m);
      CHECK(n.of(drain(*m)) == Order{"X", "B", "A"});  // B is the newest; A only after it
    }
  }
}

// =============================================================================================
// 4. allocate_blocks_with_evictions: reset blocks first, then victims, hashes in the same order
// =============================================================================================

TEST_CASE("allocate_blocks_with_evictions returns reset blocks, then victims in eviction order",
          "[eviction][unit]") {
  const Backend be = GENERATE(kLru, kFifo, kMulti, kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-alloc");
    auto m = seg.create(config_for(seg, 8, be));
    Names n;
    const auto A = n("A", root(0xA));
    const auto B = n("B", child(0xB, A));
    const auto X = n("X", root(0x10));
    const auto Y = n("Y", child(0x11, X));
    const auto R = n("R", root(0x20));
    const auto S = n("S", root(0x30));
    std::unordered_map<SequenceHash, BlockId> id;
    for (const auto& h : {A, B, X, Y, R, S}) {
      id[h] = insert(*m, h);  // blocks 0..5; the free list keeps 6, 7
    }
    Order all;
    if (be.lineage_tick()) {
      all = {"B", "A", "Y", "X", "R", "S"};
    } else if (be.lineage_fifo()) {
      all = {"B", "Y", "R", "S", "A", "X"};
    } else {
      all = {"A", "B", "X", "Y", "R", "S"};
    }

    CHECK_FALSE(m->allocate_blocks_with_evictions(9));  // more than the segment
    CHECK(m->counts().inactive == 6);
    {
      auto none = m->allocate_blocks_with_evictions(0);
      REQUIRE(none);
      CHECK(none->first.empty());
      CHECK(none->second.empty());
    }
    {
      auto two = m->allocate_blocks_with_evictions(2);  // the reset pool only: no eviction
      REQUIRE(two);
      CHECK(two->second.empty());
      REQUIRE(two->first.size() == 2);
      CHECK(two->first[0].block_id() == 6);
      CHECK(two->first[1].block_id() == 7);
      two->first[0] = MutableBlock();  // back to the free list: 6, then 7
      two->first[1] = MutableBlock();
    }

    auto got = m->allocate_blocks_with_evictions(5);
    REQUIRE(got);
    REQUIRE(got->first.size() == 5);
    REQUIRE(got->second.size() == 3);
    CHECK(got->first[0].block_id() == 6);
    CHECK(got->first[1].block_id() == 7);
    CHECK(n.of(got->second) == Order(all.begin(), all.begin() + 3));
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(got->first[2 + i].block_id() == id[got->second[i]]);
    }
    KVBM_CLEAN(*m);

    // Not enough: nothing happens, the order is unchanged.
    CHECK_FALSE(m->allocate_blocks_with_evictions(4));
    CHECK(m->counts().inactive == 3);
    auto rest = m->allocate_blocks_with_evictions(3);
    REQUIRE(rest);
    CHECK(n.of(rest->second) == Order(all.begin() + 3, all.end()));
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(rest->first[i].block_id() == id[rest->second[i]]);
    }
    const auto met = m->metrics();
    CHECK(met.evictions_total == 6);
    KVBM_CLEAN(*m);
  }
}
