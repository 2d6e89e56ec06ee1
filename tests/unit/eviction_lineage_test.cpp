// SPDX-License-Identifier: Apache-2.0
// Lineage structure: leaves only, ghosts, branching, a 1000-deep chain, key collisions,
// re-leafing anywhere in the order (against a model, and across a recovery), long key-index
// probe runs and the node arena's 2N bound.
#include "unit/eviction_support.hpp"

// =============================================================================================
// 3. Lineage structure
// =============================================================================================

TEST_CASE("lineage: only leaves are evicted; a parent outlives its cached children",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-leaf");
    auto m = seg.create(config_for(seg, 8, be));
    Names n;
    const auto A = n("A", root(0xA));
    const auto B = n("B", child(0xB, A));
    const auto C = n("C", child(0xC, B));
    const auto D = n("D", child(0xD, C));
    const auto X = n("X", root(0x10));
    for (const auto& h : {A, X, B, C, D}) {  // the chain's root is the oldest entry
      insert(*m, h);
    }
    std::vector<MutableBlock> keep;
    Order got;
    for (int i = 0; i < 5; ++i) {
      got.push_back(n.of(evict(*m, 1, keep).at(0)));
      KVBM_CLEAN(*m);
    }
    // X's tick is older than D's, but A (older still) is interior until B is gone.
    CHECK(got == Order{"X", "D", "C", "B", "A"});
  }
}

TEST_CASE("lineage: a child inserted before its parent (ghost placeholders)", "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-ooo");
    auto m = seg.create(config_for(seg, 8, be));
    Names n;
    const auto A = n("A", root(0xA));
    const auto B = n("B", child(0xB, A));
    const auto C = n("C", child(0xC, B));
    const auto X = n("X", root(0x10));
    SECTION("tip first: C, B, X, A") {
      for (const auto& h : {C, B, X, A}) {
        insert(*m, h);
        KVBM_CLEAN(*m);
      }
      // B and A are promoted ghosts with children: never leaves while C is cached.
      CHECK(n.of(drain(*m)) ==
            (be.lineage_tick() ? Order{"C", "B", "X", "A"} : Order{"C", "X", "B", "A"}));
    }
    SECTION("a gap: A and C cached, B never inserted") {
      insert(*m, A);
      insert(*m, C);  // its parent B is a placeholder, not linked to A
      insert(*m, X);
      KVBM_CLEAN(*m);
      CHECK(n.of(drain(*m)) == Order{"A", "C", "X"});
    }
    SECTION("a gap closed later") {
      insert(*m, A);
      insert(*m, C);
      insert(*m, X);
      insert(*m, B);  // promotes the placeholder and links it under A
      KVBM_CLEAN(*m);
      CHECK(n.of(drain(*m)) == Order{"C", "X", "B", "A"});  // B is newer than X
    }
  }
}

TEST_CASE("lineage: a parent with two children goes only after both", "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-branch");
    auto m = seg.create(config_for(seg, 8, be));
    Names n;
    const auto P = n("P", root(0x50));
    const auto C1 = n("C1", child(0x51, P));
    const auto C2 = n("C2", child(0x52, P));
    const auto G = n("G", child(0x53, C2));
    const auto X = n("X", root(0x60));
    SECTION("both children cached") {
      for (const auto& h : {P, C1, C2, X}) {
        insert(*m, h);
      }
      CHECK(n.of(drain(*m)) ==
            (be.lineage_tick() ? Order{"C1", "C2", "P", "X"} : Order{"C1", "C2", "X", "P"}));
    }
    SECTION("one child has its own child") {
      for (const auto& h : {P, C1, C2, G, X}) {
        insert(*m, h);
      }
      std::vector<MutableBlock> keep;
      Order got;
      for (int i = 0; i < 5; ++i) {
        got.push_back(n.of(evict(*m, 1, keep).at(0)));
        KVBM_CLEAN(*m);
      }
      CHECK(got == (be.lineage_tick() ? Order{"C1", "G", "C2", "P", "X"}
                                      : Order{"C1", "G", "X", "C2", "P"}));
    }
    SECTION("the last child held: the parent is a leaf again only when it is out") {
      for (const auto& h : {P, C1, C2, X}) {
        insert(*m, h);
      }
      ImmutableBlock c2 = hit(*m, C2);
      std::vector<MutableBlock> keep;
      CHECK(n.of(evict(*m, 1, keep)) == Order{"C1"});
      CHECK(n.of(evict(*m, 1, keep)) ==
            (be.lineage_tick() ? Order{"P"} : Order{"X"}));  // P re-leafed (original tick)
      KVBM_CLEAN(*m);
    }
  }
}

TEST_CASE("lineage: a 1000-deep chain is evicted tip to root", "[eviction][unit]") {
  constexpr int kDepth = 1000;
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-deep");
    auto m = seg.create(config_for(seg, 1024, be));
    std::vector<SequenceHash> chain{root(0xC0000)};
    for (int i = 1; i < kDepth; ++i) {  // crosses the 8-bit / 16-bit position boundary at 255
      chain.push_back(child(0xC0000 + static_cast<std::uint64_t>(i), chain.back()));
    }
    REQUIRE(chain.back().position() == kDepth - 1);
    REQUIRE(chain[256].parent_fragment() == chain[255].current_fragment());
    const std::vector<SequenceHash> reversed(chain.rbegin(), chain.rend());

    SECTION("inserted root first") {
      for (const auto& h : chain) {
        insert(*m, h);
      }
      KVBM_CLEAN(*m);
      CHECK(drain(*m) == reversed);
      KVBM_CLEAN(*m);
    }
    SECTION("inserted tip first (a chain of promoted ghosts)") {
      for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
        insert(*m, *it);
      }
      KVBM_CLEAN(*m);
      CHECK(drain(*m) == reversed);
      KVBM_CLEAN(*m);
    }
    SECTION("a hit in the middle, held: the rest goes tip to root around it") {
      for (const auto& h : chain) {
        insert(*m, h);
      }
      ImmutableBlock mid = hit(*m, chain[500]);
      KVBM_CLEAN(*m);
      std::vector<SequenceHash> expected;
      for (int i = kDepth - 1; i >= 0; --i) {
        if (i != 500) {
          expected.push_back(chain[static_cast<std::size_t>(i)]);
        }
      }
      CHECK(drain(*m) == expected);
      KVBM_CLEAN(*m);
      mid = ImmutableBlock();
      CHECK(drain(*m) == std::vector<SequenceHash>{chain[500]});
    }
    SECTION("a hit in the middle dropped again: still tip to root") {
      for (const auto& h : chain) {
        insert(*m, h);
      }
      (void)hit(*m, chain[500]);
      (void)hit(*m, chain[10]);
      KVBM_CLEAN(*m);
      CHECK(drain(*m) == reversed);
    }
    SECTION("all but the ends held: one eviction prunes 998 ghosts, the root is a leaf again") {
      for (const auto& h : chain) {
        insert(*m, h);
      }
      const std::vector<SequenceHash> middle(chain.begin() + 1, chain.end() - 1);
      const std::vector<ImmutableBlock> held = m->match_blocks(middle);  // 998 linked ghosts
      REQUIRE(held.size() == middle.size());
      CHECK(m->counts().inactive == 2);
      KVBM_CLEAN(*m);
      std::vector<MutableBlock> keep;
      CHECK(evict(*m, 1, keep) == std::vector<SequenceHash>{chain.back()});
      KVBM_CLEAN(*m);
      CHECK(evict(*m, 1, keep) == std::vector<SequenceHash>{chain.front()});
      KVBM_CLEAN(*m);
      CHECK(m->counts().inactive == 0);
    }
  }
}

TEST_CASE("lineage: a key collision keeps both blocks cached, matchable and evictable",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-coll");
    auto m = seg.create(config_for(seg, 8, be));
    Names n;
    const auto P1 = n("P1", root(0x111));
    const auto P2 = n("P2", root(0x222));
    const auto A1 = n("A1", child(0xC011, P1));  // same position and current fragment ...
    const auto A2 = n("A2", child(0xC011, P2));  // ... different parent: a different hash
    const auto C = n("C", child(0xD, A1));       // a child of the key (of both)
    REQUIRE(A1 != A2);
    REQUIRE(A1.position() == A2.position());
    REQUIRE(A1.current_fragment() == A2.current_fragment());
    REQUIRE(C == child(0xD, A2));

    auto matches_own_block = [&](SequenceHash h, BlockId id) {
      auto got = m->match_blocks(one(h));
      REQUIRE(got.size() == 1);
      CHECK(got[0].block_id() == id);
      CHECK(got[0].sequence_hash() == h);
    };

    SECTION("two colliding roots of nothing") {
      const BlockId a1 = insert(*m, A1);
      const BlockId a2 = insert(*m, A2);
      KVBM_CLEAN(*m);
      CHECK(m->counts().inactive == 2);
      matches_own_block(A1, a1);
      KVBM_CLEAN(*m);
      matches_own_block(A2, a2);
      KVBM_CLEAN(*m);
      matches_own_block(A1, a1);
      KVBM_CLEAN(*m);
      CHECK(m->counts().inactive == 2);
      auto victims = drain(*m);
      CHECK(std::set<std::string>{n.of(victims[0]), n.of(victims[1])} ==
            std::set<std::string>{"A1", "A2"});
      CHECK(victims.size() == 2);
      KVBM_CLEAN(*m);
    }
    SECTION("with parents and a child") {
      std::map<std::string, BlockId> ids;
      for (const auto& h : {P1, A1, P2, A2, C}) {
        ids[n.of(h)] = insert(*m, h);
        KVBM_CLEAN(*m);
      }
      CHECK(m->counts().inactive == 5);
      for (const auto& h : {A2, A1, C, P1, P2}) {
        matches_own_block(h, ids[n.of(h)]);
        KVBM_CLEAN(*m);
      }
      std::vector<MutableBlock> keep;
      Order got;
      for (int i = 0; i < 5; ++i) {
        got.push_back(n.of(evict(*m, 1, keep).at(0)));
        KVBM_CLEAN(*m);
      }
      CHECK(std::multiset<std::string>(got.begin(), got.end()) ==
            std::multiset<std::string>{"P1", "A1", "P2", "A2", "C"});
      // C is below the key's node, which is below P-something: C before both of those.
      const auto pos = [&](const char* s) { return std::find(got.begin(), got.end(), s); };
      CHECK(pos("C") < pos("A1"));
      CHECK(pos("A1") < pos("P1"));
    }
    SECTION("the second hash takes over the ghost of the first, which then comes back") {
      insert(*m, A1);
      insert(*m, C);
      ImmutableBlock a1 = hit(*m, A1);    // A1's node stays as a ghost (C is below it)
      const BlockId a2 = insert(*m, A2);  // promotes that ghost
      KVBM_CLEAN(*m);
      const BlockId a1_id = a1.block_id();
      a1 = ImmutableBlock();  // A1 re-enters: its key is taken by a Real node of another hash
      KVBM_CLEAN(*m);
      CHECK(m->counts().inactive == 3);
      matches_own_block(A1, a1_id);
      KVBM_CLEAN(*m);
      matches_own_block(A2, a2);
      KVBM_CLEAN(*m);
      auto victims = drain(*m);
      KVBM_CLEAN(*m);
      Order got = n.of(victims);
      CHECK(std::multiset<std::string>(got.begin(), got.end()) ==
            std::multiset<std::string>{"A1", "A2", "C"});
    }
    SECTION("documented order: a block that finds its key taken is evicted first") {
      insert(*m, A1);
      insert(*m, P2);
      insert(*m, A2);  // collides with A1
      KVBM_CLEAN(*m);
      CHECK(lineage_overflow(*m) == 1);
      CHECK(n.of(drain(*m)) == Order{"A2", "A1", "P2"});
    }
  }
}

TEST_CASE("lineage: random operations on colliding keys never break the pool", "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-collfuzz");
    constexpr std::uint32_t kN = 12;
    auto m = seg.create(config_for(seg, kN, be));
    // Few currents and few parents: many hashes share a (position, fragment) key.
    std::vector<SequenceHash> hs;
    for (std::uint64_t p = 0; p < 3; ++p) {
      const SequenceHash r = root(0x900 + p);
      hs.push_back(r);
      for (std::uint64_t c = 0; c < 3; ++c) {
        const SequenceHash a = child(0xA00 + c, r);
        hs.push_back(a);
        hs.push_back(child(0xB00 + p, a));  // collides across c
      }
    }
    std::mt19937_64 rng(7);
    std::unordered_map<SequenceHash, std::vector<ImmutableBlock>> held;
    std::vector<MutableBlock> keep;
    for (int step = 0; step < 1500; ++step) {
      INFO("step " << step);
      const SequenceHash h = hs[rng() % hs.size()];
      switch (rng() % 4) {
        case 0: {  // register (evicting if needed)
          auto got = m->allocate_blocks_with_evictions(1);
          if (!got) {
            break;
          }
          auto staged = std::move(got->first.front()).stage(h, kBs);
          REQUIRE(staged);
          held[h].push_back(m->register_block(std::move(*staged)));
          break;
        }
        case 1: {  // drop a handle
          auto it = held.find(h);
          if (it != held.end() && !it->second.empty()) {
            it->second.pop_back();
          }
          break;
        }
        case 2: {  // hit
          for (auto& b : m->match_blocks(one(h))) {
            CHECK(b.sequence_hash() == h);
            held[h].push_back(std::move(b));
          }
          break;
        }
        default: {  // evict 1-3 blocks
          auto got = m->allocate_blocks_with_evictions(1 + rng() % 3);
          if (got) {
            for (const auto& v : got->second) {
              CHECK(m->match_blocks(one(v)).empty());  // really gone
            }
          }
          break;
        }
      }
      const auto problems = m->verify();
      INFO(join(problems));
      REQUIRE(problems.empty());
    }
    held.clear();
    // Everything cached is matchable, then evictable.
    for (const auto& h : hs) {
      for (auto& b : m->match_blocks(one(h))) {
        CHECK(b.sequence_hash() == h);
      }
    }
    const auto cached = m->counts().inactive;
    CHECK(drain(*m).size() == cached);
    CHECK(m->counts().inactive == 0);
    CHECK(m->counts().reset == kN);
    KVBM_CLEAN(*m);
  }
}

TEST_CASE("lineage: running out of tree nodes (ghosts piling up) never breaks the pool",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    TempSegment seg("ev-nodes");
    constexpr std::uint32_t kN = 8;  // 2N + 16 = 32 nodes
    auto m = seg.create(config_for(seg, kN, be));
    std::vector<SequenceHash> chain{root(0xE000)};
    insert(*m, chain.back());
    // Each round extends the chain by 7 cached blocks, then resurrects the 7 oldest and resets
    // them (reset-on-release): their nodes stay as ghosts (each has a child) -> +7 ghosts.
    std::uint64_t overflowed = 0;
    for (int round = 0; round < 8; ++round) {
      INFO("round " << round);
      for (int i = 0; i < 7; ++i) {
        chain.push_back(child(0xE000 + chain.size(), chain.back()));
        insert(*m, chain.back());
        KVBM_CLEAN(*m);
        overflowed = std::max(overflowed, lineage_overflow(*m));
      }
      CHECK(m->counts().inactive == 8);
      const std::vector<SequenceHash> older(chain.end() - 8, chain.end() - 1);
      {
        auto got = m->match_blocks(older);
        REQUIRE(got.size() == 7);
        for (auto& b : got) {
          b.set_reset_on_release(true);
        }
      }
      KVBM_CLEAN(*m);
      CHECK(m->counts().inactive == 1);
      CHECK(m->counts().reset == 7);
    }
    CHECK(overflowed > 0);  // the scenario did run out of nodes
    // Fill the pool with blocks that hang below the ghost chain, then evict everything.
    std::vector<SequenceHash> cached{chain.back()};
    for (int i = 0; i < 7; ++i) {
      chain.push_back(child(0xF000 + chain.size(), chain.back()));
      insert(*m, chain.back());
      cached.push_back(chain.back());
      KVBM_CLEAN(*m);
    }
    for (const auto& h : cached) {
      CHECK(m->match_blocks(one(h)).size() == 1);
      KVBM_CLEAN(*m);
    }
    auto victims = drain(*m);
    KVBM_CLEAN(*m);
    CHECK(victims.size() == 8);
    CHECK(std::unordered_set<SequenceHash>(victims.begin(), victims.end()) ==
          std::unordered_set<SequenceHash>(cached.begin(), cached.end()));
    CHECK(m->counts().reset == kN);
  }
}

namespace {

/// A seeded workload that makes leaves appear everywhere in the Tick heap, each checked against
/// PoolModel: chains inserted in shuffled order (placeholders promoted later, so a parent can be
/// newer than its child), interior hits dropped again (a parent renewed after its children),
/// leaf hits held and released (removals from the middle of the heap, whose parent then
/// becomes a leaf in that place), branches, and single evictions. With `crash_at` >= 0 the
/// store mutex holder is killed before that step and the run continues on the recovered pool.
void run_releafing(const Backend& be, std::uint64_t seed, int crash_at) {
  INFO("backend " << be.name << " seed " << seed << " crash at " << crash_at);
  constexpr std::uint32_t kBlocks = 400;
  TempSegment seg("ev-releaf");
  auto m = seg.create(config_for(seg, kBlocks, be));
  PoolModel model(be, {3, 8, 15}, 1u << 16);
  std::mt19937_64 rng(seed);
  auto pick = [&rng](std::size_t n) { return static_cast<std::size_t>(rng() % n); };

  // 80 chains of 3 (some branching: a second child of the middle block) and 40 lone roots.
  std::vector<SequenceHash> all;
  for (std::uint64_t c = 0; c < 80; ++c) {
    const SequenceHash a = root(0x10000 + c);
    const SequenceHash b = child(0x20000 + c, a);
    all.insert(all.end(), {a, b, child(0x30000 + c, b)});
    if (c % 4 == 0) {
      all.push_back(child(0x40000 + c, b));
    }
  }
  for (std::uint64_t r = 0; r < 40; ++r) {
    all.push_back(root(0x50000 + r));
  }
  std::shuffle(all.begin(), all.end(), rng);
  for (const auto& h : all) {
    insert(*m, h);
    model.insert(h);
  }
  KVBM_CLEAN(*m);

  std::unordered_map<SequenceHash, ImmutableBlock> held;
  std::vector<MutableBlock> keep;
  auto cached = [&] {
    std::vector<SequenceHash> v;
    for (const auto& h : all) {
      if (model.cached(h)) {
        v.push_back(h);
      }
    }
    return v;
  };
  int evicted = 0;
  for (int step = 0; step < 600; ++step) {
    INFO("step " << step);
    if (step == crash_at) {
      crash_holding_store_mutex(seg.name());
      expect_one_recovery(*m);
    }
    const auto now = cached();
    const std::size_t op = pick(10);
    if (op < 3 && !now.empty()) {  // hit and drop again: re-enters with a new tick
      const SequenceHash h = now[pick(now.size())];
      model.remove(h);
      (void)hit(*m, h);
      model.insert(h);
    } else if (op < 6 && !now.empty()) {  // hit and hold
      const SequenceHash h = now[pick(now.size())];
      model.remove(h);
      held.emplace(h, hit(*m, h));
    } else if (op < 8 && !held.empty()) {  // release a held block
      auto it = held.begin();
      std::advance(it, static_cast<std::ptrdiff_t>(pick(held.size())));
      const SequenceHash h = it->first;
      held.erase(it);
      model.insert(h);
    } else if (!now.empty()) {  // evict one; its block is registered again under its hash
      const auto victim = model.pop();
      REQUIRE(victim);
      const auto got = evict(*m, 1, keep);
      REQUIRE(got.size() == 1);
      REQUIRE(got[0] == *victim);
      keep.clear();
      ++evicted;
      insert(*m, *victim);
      model.insert(*victim);
    }
    REQUIRE(model.ambiguous() == 0);
    const auto problems = m->verify();
    INFO(join(problems));
    REQUIRE(problems.empty());
    REQUIRE(m->counts().inactive == model.size());
  }
  CHECK(evicted > 50);
  for (const auto& h : all) {  // release what is still held, in a known order
    if (held.erase(h) != 0) {
      model.insert(h);
    }
  }
  std::vector<SequenceHash> expected;
  while (auto v = model.pop()) {
    expected.push_back(*v);
  }
  CHECK(drain(*m) == expected);
  KVBM_CLEAN(*m);
}

}  // namespace

TEST_CASE("lineage: eviction order after re-leafing anywhere in the order, against the model",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  run_releafing(be, 41, -1);
  run_releafing(be, 42, -1);
}

TEST_CASE("lineage: re-leafing anywhere in the order, with a crash recovery in the middle",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  run_releafing(be, 43, 300);
}

TEST_CASE("lineage: keys sharing one home bucket (probe runs past the recorded distance)",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    constexpr std::uint32_t kBlocks = 48;
    TempSegment seg("ev-keyrun");
    auto m = seg.create(config_for(seg, kBlocks, be));
    const std::uint32_t buckets = kvbm::detail::lineage_geometry(kBlocks).key_capacity;
    // 36 roots and 8 children of the first root whose keys all have the same home bucket: one
    // run of 44 entries, so distances beyond the bucket's maximum (31) are recorded as "31 or
    // more" and erasing from the middle moves such entries.
    const auto home = [&](SequenceHash h) {
      return kvbm::detail::lineage_key_home(h.position(), h.current_fragment(), buckets);
    };
    const std::uint32_t target = home(root(1));
    std::vector<SequenceHash> hs;
    for (std::uint64_t x = 1; hs.size() < 36; ++x) {
      if (home(root(x)) == target) {
        hs.push_back(root(x));
      }
    }
    for (std::uint64_t x = 1; hs.size() < 44; ++x) {
      if (home(child(x, hs.front())) == target) {
        hs.push_back(child(x, hs.front()));
      }
    }
    PoolModel model(be, {3, 8, 15}, 1u << 16);
    std::vector<BlockId> ids;
    for (const auto& h : hs) {
      ids.push_back(insert(*m, h));
      model.insert(h);
    }
    KVBM_CLEAN(*m);
    CHECK(lineage_overflow(*m) == 0);
    std::mt19937_64 rng(5);
    std::vector<std::pair<SequenceHash, ImmutableBlock>> held;
    for (int step = 0; step < 200; ++step) {
      INFO("step " << step);
      const SequenceHash h = hs[rng() % hs.size()];
      if (model.cached(h)) {
        model.remove(h);
        ImmutableBlock b = hit(*m, h);
        if (rng() % 2 == 0) {
          held.emplace_back(h, std::move(b));
        } else {
          b = ImmutableBlock();
          model.insert(h);
        }
      } else if (!held.empty()) {
        model.insert(held.back().first);
        held.pop_back();
      }
      const auto problems = m->verify();
      INFO(join(problems));
      REQUIRE(problems.empty());
    }
    while (!held.empty()) {
      model.insert(held.back().first);
      held.pop_back();
    }
    for (std::size_t i = 0; i < hs.size(); ++i) {
      auto got = m->match_blocks(one(hs[i]));
      REQUIRE(got.size() == 1);
      CHECK(got[0].block_id() == ids[i]);
      model.remove(hs[i]);
      got.clear();
      model.insert(hs[i]);
    }
    KVBM_CLEAN(*m);
    std::vector<SequenceHash> expected;
    while (auto v = model.pop()) {
      expected.push_back(*v);
    }
    CHECK(drain(*m) == expected);
    KVBM_CLEAN(*m);
  }
}

TEST_CASE("lineage: the node arena holds 2N nodes: every block a leaf below its own placeholder",
          "[eviction][unit]") {
  const Backend be = GENERATE(kTick, kLeafFifo);
  {
    INFO("backend " << be.name);
    constexpr std::uint32_t kBlocks = 64;  // 2N + 16 = 144 nodes
    TempSegment seg("ev-arena");
    auto m = seg.create(config_for(seg, kBlocks, be));
    // Each block at position 1 below a parent never cached: N Real nodes + N placeholders.
    std::vector<SequenceHash> hs;
    for (std::uint64_t i = 0; i < kBlocks; ++i) {
      hs.push_back(child(0x7000 + i, root(0x8000 + i)));
      insert(*m, hs.back());
    }
    KVBM_CLEAN(*m);
    CHECK(lineage_overflow(*m) == 0);
    crash_holding_store_mutex(seg.name());
    expect_one_recovery(*m);
    CHECK(lineage_overflow(*m) == 0);
    CHECK(drain(*m) == hs);  // all leaves: entry order in both leaf orders
    KVBM_CLEAN(*m);
  }
}
