// SPDX-License-Identifier: Apache-2.0
// The eviction order is the same after a forced crash recovery (and keeps following the
// policy after it), and across processes: blocks inserted by one process are evicted in the
// same order by another; a block held by two processes enters the pool at the last release.
#include "unit/eviction_support.hpp"

// =============================================================================================
// 6. The order survives a forced crash recovery
// =============================================================================================

namespace {

struct Workload {
  Names names;
  SequenceHash A = names("A", root(0xA0));
  SequenceHash B = names("B", child(0xB0, A));
  SequenceHash C = names("C", child(0xC0, B));
  SequenceHash X = names("X", root(0x10));
  SequenceHash Y = names("Y", child(0x11, X));
  SequenceHash Z = names("Z", child(0x12, X));
  SequenceHash R = names("R", root(0x20));
  SequenceHash S = names("S", root(0x30));
  SequenceHash T = names("T", child(0x31, S));

  /// Interleaved chains, a branch, hits at leaves, interior nodes and roots (MultiLRU: several
  /// levels). Deterministic; every handle dropped.
  void phase1(BlockManager& m) const {
    for (const auto& h : {A, X, B, Y, R, C}) {
      insert(m, h);
    }
    { ImmutableBlock r = hit(m, R), r2 = hit(m, R); }  // R re-enters, touched twice more
  }
  void phase2(BlockManager& m) const {
    insert(m, Z);
    insert(m, T);  // before its parent S
    insert(m, S);
    (void)hit(m, C);  // a leaf re-enters
    (void)hit(m, A);  // an interior node re-enters (its ghost is promoted back)
    { ImmutableBlock x = hit(m, X), y = hit(m, Y); }
  }
  /// Blocks held across the crash: leaves only (their parents are leaves again meanwhile).
  std::vector<ImmutableBlock> hold(BlockManager& m) const {
    std::vector<ImmutableBlock> held;
    held.push_back(hit(m, Z));
    held.push_back(hit(m, C));
    return held;
  }
};

}  // namespace

TEST_CASE("every backend's eviction order is the same after a crash recovery as without it",
          "[eviction][unit]") {
  const Backend be = GENERATE(kLru, kFifo, kMulti, kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    const Workload w;
    TempSegment crashed_seg("ev-crash");
    TempSegment twin_seg("ev-twin");
    auto crashed = crashed_seg.create(config_for(crashed_seg, 16, be, {2, 3, 4}));
    auto twin = twin_seg.create(config_for(twin_seg, 16, be, {2, 3, 4}));
    for (BlockManager* m : {crashed.get(), twin.get()}) {
      w.phase1(*m);
      w.phase2(*m);
    }
    auto held_crashed = w.hold(*crashed);
    auto held_twin = w.hold(*twin);

    crash_holding_store_mutex(crashed_seg.name());
    expect_one_recovery(*crashed);
    CHECK(metric(*twin, "kvbm_recoveries_total") == 0);
    CHECK(crashed->counts().inactive == twin->counts().inactive);

    const Order twin_order = w.names.of(drain(*twin));
    CHECK(w.names.of(drain(*crashed)) == twin_order);
    KVBM_CLEAN(*crashed);
    // The held blocks come back in the same order too.
    held_crashed.clear();
    held_twin.clear();
    CHECK(w.names.of(drain(*crashed)) == w.names.of(drain(*twin)));
    KVBM_CLEAN(*crashed);
  }
}

TEST_CASE("after a recovery, new entries and hits keep following the policy", "[eviction][unit]") {
  const Backend be = GENERATE(kLru, kFifo, kMulti, kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    const Workload w;
    TempSegment crashed_seg("ev-crash2");
    TempSegment twin_seg("ev-twin2");
    auto crashed = crashed_seg.create(config_for(crashed_seg, 16, be, {2, 3, 4}));
    auto twin = twin_seg.create(config_for(twin_seg, 16, be, {2, 3, 4}));
    w.phase1(*crashed);
    w.phase1(*twin);
    crash_holding_store_mutex(crashed_seg.name());
    expect_one_recovery(*crashed);
    w.phase2(*crashed);
    w.phase2(*twin);
    KVBM_CLEAN(*crashed);
    CHECK(w.names.of(drain(*crashed)) == w.names.of(drain(*twin)));
  }
}

TEST_CASE("a 1000-deep lineage chain keeps its order across a recovery", "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-crashdeep");
    auto m = seg.create(config_for(seg, 1024, be));
    std::vector<SequenceHash> chain{root(0xD0000)};
    for (int i = 1; i < 1000; ++i) {
      chain.push_back(child(0xD0000 + static_cast<std::uint64_t>(i), chain.back()));
    }
    for (const auto& h : {chain[3], chain[0], chain[2], chain[1]}) {  // some out of order
      insert(*m, h);
    }
    for (std::size_t i = 4; i < chain.size(); ++i) {
      insert(*m, chain[i]);
    }
    insert(*m, root(0x77));  // a lone root entered last
    crash_holding_store_mutex(seg.name());
    expect_one_recovery(*m);
    std::vector<SequenceHash> expected(chain.rbegin(), chain.rend());
    if (be.lineage_tick()) {
      expected.push_back(root(0x77));  // the chain's ticks are all older
    } else {
      expected.insert(expected.begin() + 1, root(0x77));  // a leaf after the tip became one
    }
    CHECK(drain(*m) == expected);
  }
}

// Known failures (see the report): the lineage tree is rebuilt from the Inactive slots alone, so
// history-dependent structure is not restored.

TEST_CASE("lineage: a held interior hit keeps protecting its parent across a recovery",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    Names n;
    const auto A = n("A", root(0xA));
    const auto B = n("B", child(0xB, A));
    const auto C = n("C", child(0xC, B));
    const auto X = n("X", root(0x10));
    TempSegment crashed_seg("ev-crashmid");
    TempSegment twin_seg("ev-twinmid");
    auto crashed = crashed_seg.create(config_for(crashed_seg, 8, be));
    auto twin = twin_seg.create(config_for(twin_seg, 8, be));
    std::vector<ImmutableBlock> held;
    for (BlockManager* m : {crashed.get(), twin.get()}) {
      for (const auto& h : {A, B, C, X}) {
        insert(*m, h);
      }
      held.push_back(hit(*m, B));  // B's node stays a ghost between A and C (spec 7.5)
    }
    const Order twin_order = n.of(drain(*twin));
    CHECK(twin_order == (be.lineage_tick() ? Order{"C", "A", "X"} : Order{"C", "X", "A"}));
    crash_holding_store_mutex(crashed_seg.name());
    expect_one_recovery(*crashed);
    CHECK(n.of(drain(*crashed)) == twin_order);
  }
}

TEST_CASE("lineage: colliding keys keep their eviction order across a recovery",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    Names n;
    const auto A1 = n("A1", child(0xC011, root(0x111)));
    const auto A2 = n("A2", child(0xC011, root(0x222)));
    TempSegment crashed_seg("ev-crashcoll");
    TempSegment twin_seg("ev-twincoll");
    auto crashed = crashed_seg.create(config_for(crashed_seg, 8, be));
    auto twin = twin_seg.create(config_for(twin_seg, 8, be));
    for (BlockManager* m : {crashed.get(), twin.get()}) {
      insert(*m, A1);     // in the tree
      insert(*m, A2);     // its key is taken: overflow
      (void)hit(*m, A1);  // A1 leaves and re-enters (newer than A2), back in the tree
      KVBM_CLEAN(*m);
    }
    const Order twin_order = n.of(drain(*twin));
    CHECK(twin_order == Order{"A2", "A1"});
    crash_holding_store_mutex(crashed_seg.name());
    expect_one_recovery(*crashed);
    CHECK(n.of(drain(*crashed)) == twin_order);
  }
}

// =============================================================================================
// 7. Different processes insert and evict
// =============================================================================================

TEST_CASE("blocks inserted by another process are evicted in the same order", "[eviction][unit]") {
  const Backend be = GENERATE(kLru, kFifo, kMulti, kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    const Workload w;
    TempSegment twin_seg("ev-mptwin");
    auto twin = twin_seg.create(config_for(twin_seg, 16, be, {2, 3, 4}));
    w.phase1(*twin);
    w.phase2(*twin);
    const Order expected = w.names.of(drain(*twin));

    SECTION("a child does everything, then exits") {
      TempSegment seg("ev-mp");
      auto m = seg.create(config_for(seg, 16, be, {2, 3, 4}));
      const std::string name = seg.name();
      Child c([name, &w]() -> int {
        ::alarm(20);
        auto o = BlockManager::open(name);
        if (!o) {
          return 1;
        }
        w.phase1(**o);
        w.phase2(**o);
        return 0;
      });
      REQUIRE(c.wait() == 0);
      CHECK(metric(*m, "kvbm_attached_processes") == 1);  // detached cleanly
      KVBM_CLEAN(*m);
      CHECK(w.names.of(drain(*m)) == expected);
      KVBM_CLEAN(*m);
    }
    SECTION("the parent starts, a child continues (hitting the parent's blocks)") {
      TempSegment seg("ev-mp2");
      auto m = seg.create(config_for(seg, 16, be, {2, 3, 4}));
      w.phase1(*m);
      const std::string name = seg.name();
      Child c([name, &w]() -> int {
        ::alarm(20);
        auto o = BlockManager::open(name);
        if (!o) {
          return 1;
        }
        w.phase2(**o);
        return 0;
      });
      REQUIRE(c.wait() == 0);
      KVBM_CLEAN(*m);
      CHECK(w.names.of(drain(*m)) == expected);
    }
  }
}

TEST_CASE("a block held by two processes enters the pool at the last release", "[eviction][unit]") {
  const Backend be = GENERATE(kLru, kFifo, kMulti, kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-mphold");
    auto m = seg.create(config_for(seg, 4, be));
    Names n;
    const auto P = n("P", root(0x41));
    const auto Q = n("Q", root(0x42));
    const auto R = n("R", root(0x43));
    ImmutableBlock p = put(*m, P);
    insert(*m, Q);
    Signal holding, release;
    Signal done;
    const std::string name = seg.name();
    Child c([&, name]() -> int {
      ::alarm(20);
      auto o = BlockManager::open(name);
      if (!o) {
        holding.notify(kFailed);
        return 1;
      }
      auto got = (*o)->match_blocks(one(P));
      holding.notify(got.size() == 1 ? kReady : kFailed);
      release.wait();
      got.clear();  // the last release: P enters the pool now
      done.notify(kReady);
      return 0;
    });
    REQUIRE(holding.wait() == kReady);
    p = ImmutableBlock();  // the child still holds P
    CHECK(m->counts().inactive == 1);
    insert(*m, R);
    release.notify();
    REQUIRE(done.wait() == kReady);
    REQUIRE(c.wait() == 0);
    KVBM_CLEAN(*m);
    CHECK(n.of(drain(*m)) == Order{"Q", "R", "P"});
  }
}
