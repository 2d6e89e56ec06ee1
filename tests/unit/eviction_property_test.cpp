// SPDX-License-Identifier: Apache-2.0
// Seeded property tests: random workloads against the in-test models, step by step, for
// every backend.
#include "unit/eviction_support.hpp"

// =============================================================================================
// 5. Property tests: random workloads against the models, step by step
// =============================================================================================

namespace {

struct PropertyParams {
  Backend be;
  std::uint64_t seed;
  int steps;
  std::uint32_t blocks;
  std::array<std::uint8_t, 3> thresholds;
  std::uint32_t frequency_capacity;
};

std::uint64_t seed_override(std::uint64_t fallback) {
  if (const char* s = std::getenv("KVBM_EVICTION_SEED")) {
    return std::strtoull(s, nullptr, 0);
  }
  return fallback;
}

void run_property(const PropertyParams& p) {
  INFO("backend " << p.be.name << " seed " << p.seed
                  << " (rerun one seed with KVBM_EVICTION_SEED=<seed>)");
  TempSegment seg("ev-prop");
  auto m = seg.create(config_for(seg, p.blocks, p.be, p.thresholds, p.frequency_capacity));
  PoolModel model(p.be, p.thresholds, p.frequency_capacity);
  std::mt19937_64 rng(p.seed);
  auto pick = [&rng](std::size_t n) { return static_cast<std::size_t>(rng() % n); };

  struct Known {
    SequenceHash hash;
    int parent;  // index into known, -1 for a root
  };
  std::vector<Known> known;
  struct Held {
    ImmutableBlock block;
    SequenceHash hash;
    bool dup;
  };
  std::vector<Held> held;
  std::unordered_map<SequenceHash, int> refs;  // handles keeping the primary (incl. duplicates)
  std::unordered_map<SequenceHash, BlockId> primary;  // slot of each present hash
  std::unordered_map<SequenceHash, WeakBlock> weak;
  std::vector<MutableBlock> mutables;
  int dups = 0;
  struct {
    int evicted = 0, resurrected = 0, duplicates = 0, refused = 0, matched = 0;
  } stats;

  auto present = [&](SequenceHash h) {
    auto it = refs.find(h);
    return (it != refs.end() && it->second > 0) || model.cached(h);
  };
  auto active_primaries = [&] {
    std::size_t n = 0;
    for (const auto& [h, r] : refs) {
      n += r > 0 ? 1 : 0;
    }
    return n;
  };
  auto free_blocks = [&] {
    return p.blocks - model.size() - active_primaries() - static_cast<std::size_t>(dups) -
           mutables.size();
  };
  auto hold = [&](ImmutableBlock b, SequenceHash h, bool dup) {
    REQUIRE(b.sequence_hash() == h);
    if (!dup) {
      REQUIRE(b.block_id() == primary.at(h));
      weak[h] = b.downgrade();
    }
    refs[h] += 1;
    dups += dup ? 1 : 0;
    held.push_back(Held{std::move(b), h, dup});
  };
  // Drops held[i]; the primary enters the pool if that was its last handle.
  auto drop_at = [&](std::size_t i) {
    Held doomed = std::move(held[i]);
    held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
    const SequenceHash h = doomed.hash;
    doomed.block = ImmutableBlock();  // the release happens here
    dups -= doomed.dup ? 1 : 0;
    if (--refs[h] == 0) {
      model.insert(h);
    }
  };
  // A lookup hit on `h` as the library must do it: touch (if asked), resurrect if inactive.
  auto lookup = [&](SequenceHash h, bool touch) {
    if (touch) {
      model.touch(h);
    }
    if (model.cached(h)) {
      model.remove(h);
      ++stats.resurrected;
    }
  };
  auto victims_for = [&](std::size_t count) {
    std::vector<SequenceHash> v;
    const std::size_t from_reset = std::min(count, free_blocks());
    for (std::size_t i = from_reset; i < count; ++i) {
      auto victim = model.pop();
      REQUIRE(victim);
      v.push_back(*victim);
      ++stats.evicted;
    }
    return std::make_pair(from_reset, v);
  };
  auto new_hash = [&]() {
    const auto v = rng() & 0x0000FFFFFFFFFFFFull;
    const std::size_t r = pick(10);
    if (known.empty() || r < 3) {
      known.push_back(Known{root(v), -1});
    } else {
      // Extend the newest hash (long chains) or any known one (trees).
      const std::size_t parent = r < 5 ? known.size() - 1 : pick(known.size());
      known.push_back(Known{child(v, known[parent].hash), static_cast<int>(parent)});
    }
    return known.back().hash;
  };
  auto path_to = [&](std::size_t i) {
    std::vector<SequenceHash> path;
    for (int k = static_cast<int>(i); k >= 0; k = known[static_cast<std::size_t>(k)].parent) {
      path.push_back(known[static_cast<std::size_t>(k)].hash);
    }
    std::reverse(path.begin(), path.end());
    return path;
  };

  for (int step = 0; step < p.steps; ++step) {
    INFO("step " << step);
    // Lookups keep their results (half the time) or drop them at once (a hit that re-enters);
    // when most blocks are held, drop one.
    const std::size_t before = held.size();
    const bool release_now = pick(2) == 0;
    const std::size_t op = held.size() > p.blocks * 6 / 10 ? 30 : pick(100);
    if (op < 30) {  // register a new or known hash, on a block that may come from an eviction
      if (free_blocks() + model.size() == 0) {
        continue;
      }
      const SequenceHash h =
          known.empty() || pick(10) < 7 ? new_hash() : known[pick(known.size())].hash;
      const auto expected = victims_for(1).second;
      auto got = m->allocate_blocks_with_evictions(1);
      REQUIRE(got);
      REQUIRE(got->second == expected);
      for (const auto& v : expected) {
        CHECK(got->first[0].block_id() == primary.at(v));
        primary.erase(v);
      }
      auto staged = std::move(got->first[0]).stage(h, kBs);
      REQUIRE(staged);
      const BlockId id = staged->block_id();
      ImmutableBlock b = m->register_block(std::move(*staged));
      if (present(h)) {  // Allow: a duplicate (an inactive primary is resurrected first)
        lookup(h, /*touch=*/false);
        REQUIRE(b.block_id() == id);
        REQUIRE(id != primary.at(h));
        hold(std::move(b), h, true);
        ++stats.duplicates;
      } else {
        model.touch(h);  // first registration in the segment
        primary[h] = id;
        hold(std::move(b), h, false);
      }
    } else if (op < 60) {  // drop a handle
      if (held.empty()) {
        continue;
      }
      drop_at(pick(held.size()));
    } else if (op < 70) {  // match_blocks on a path from a root (prefix, stops at a miss)
      if (known.empty()) {
        continue;
      }
      const auto path = path_to(pick(known.size()));
      std::size_t expected = 0;
      while (expected < path.size() && present(path[expected])) {
        lookup(path[expected], /*touch=*/true);
        ++expected;
      }
      auto got = m->match_blocks(path);
      REQUIRE(got.size() == expected);
      stats.matched += static_cast<int>(expected);
      for (std::size_t i = 0; i < got.size(); ++i) {
        hold(std::move(got[i]), path[i], false);
      }
    } else if (op < 75) {  // match_blocks_scattered, repeats allowed
      if (known.empty()) {
        continue;
      }
      std::vector<SequenceHash> hs;
      for (std::size_t k = 1 + pick(4); k > 0; --k) {
        hs.push_back(known[pick(known.size())].hash);
      }
      std::vector<bool> expected;
      std::unordered_set<SequenceHash> now_held;  // a repeat finds the primary just acquired
      for (const auto& h : hs) {
        expected.push_back(present(h) || now_held.count(h) != 0);
        if (expected.back()) {
          lookup(h, /*touch=*/true);
          now_held.insert(h);
        }
      }
      auto got = m->match_blocks_scattered(hs);
      REQUIRE(got.size() == hs.size());
      for (std::size_t i = 0; i < hs.size(); ++i) {
        REQUIRE(got[i].has_value() == expected[i]);
        if (got[i]) {
          hold(std::move(*got[i]), hs[i], false);
        }
      }
    } else if (op < 80) {  // scan_matches, touching or not
      if (known.empty()) {
        continue;
      }
      const bool touch = pick(2) == 0;
      std::vector<SequenceHash> hs;
      for (std::size_t k = 1 + pick(5); k > 0; --k) {
        hs.push_back(known[pick(known.size())].hash);
      }
      std::vector<SequenceHash> expected;
      std::unordered_set<SequenceHash> seen;
      for (const auto& h : hs) {
        if (seen.insert(h).second && present(h)) {
          lookup(h, touch);
          expected.push_back(h);
        }
      }
      auto got = m->scan_matches(hs, touch);
      REQUIRE(got.size() == expected.size());
      for (const auto& h : expected) {
        auto it = got.find(h);
        REQUIRE(it != got.end());
        hold(std::move(it->second), h, false);
      }
    } else if (op < 84) {  // WeakBlock::upgrade (never touches)
      if (weak.empty()) {
        continue;
      }
      auto it = weak.begin();
      std::advance(it, static_cast<std::ptrdiff_t>(pick(weak.size())));
      const SequenceHash h = it->first;
      const bool expected = present(h);
      if (expected) {
        lookup(h, /*touch=*/false);
      }
      auto got = it->second.upgrade();
      REQUIRE(got.has_value() == expected);
      if (got) {
        hold(std::move(*got), h, false);
      }
    } else if (op < 96) {  // allocate 1-4 blocks with evictions
      // Sometimes one more than the pool can give: refused, with no side effect.
      const std::size_t count = pick(10) == 0 ? free_blocks() + model.size() + 1 : 1 + pick(4);
      if (free_blocks() + model.size() < count) {
        const auto counts_before = m->counts();
        CHECK_FALSE(m->allocate_blocks_with_evictions(count));
        ++stats.refused;
        CHECK(m->counts().inactive == counts_before.inactive);
        CHECK(m->counts().reset == counts_before.reset);
      } else {
        auto [from_reset, expected] = victims_for(count);
        auto got = m->allocate_blocks_with_evictions(count);
        REQUIRE(got);
        REQUIRE(got->first.size() == count);
        REQUIRE(got->second == expected);
        for (std::size_t i = 0; i < expected.size(); ++i) {
          CHECK(got->first[from_reset + i].block_id() == primary.at(expected[i]));
          primary.erase(expected[i]);
        }
        if (pick(3) == 0) {
          for (auto& b : got->first) {
            mutables.push_back(std::move(b));
          }
        }
      }
    } else {  // release the mutable blocks kept
      mutables.clear();
    }

    if (op >= 60 && op < 84 && release_now) {
      while (held.size() > before) {
        drop_at(before);  // in the order they were acquired
      }
    }

    const auto problems = m->verify();
    INFO(join(problems));
    REQUIRE(problems.empty());
    const auto c = m->counts();
    REQUIRE(c.inactive == model.size());
    REQUIRE(c.reset == free_blocks());
    REQUIRE(model.ambiguous() == 0);
  }

  // The workload reached what it is meant to exercise.
  if (std::getenv("KVBM_EVICTION_STATS") != nullptr) {
    fmt::print(stderr,
               "{} seed {}: evicted {} resurrected {} duplicates {} refused {} matched {} "
               "interior hits {} max ghosts {} levels {:#x} halvings {}\n",
               p.be.name, p.seed, stats.evicted, stats.resurrected, stats.duplicates, stats.refused,
               stats.matched, model.interior_hits(), model.max_ghosts(), model.levels_used(),
               model.sketch().halvings());
  }
  CHECK(stats.evicted > 200);
  CHECK(stats.resurrected > 100);
  CHECK(stats.duplicates > 20);
  CHECK(stats.refused > 0);
  if (p.be.lineage()) {
    CHECK(model.interior_hits() > 20);
    CHECK(model.max_ghosts() > 3);
  }
  if (p.be.policy == EvictionPolicy::kMultiLru) {
    CHECK(__builtin_popcount(model.levels_used()) >= 3);
  }
  // The sketch (MultiLRU) agrees with the model for every hash seen.
  if (p.be.policy == EvictionPolicy::kMultiLru) {
    for (const auto& k : known) {
      REQUIRE(estimate_of(*m, k.hash) == model.sketch().estimate(k.hash));
    }
  }
  // Finally everything: held blocks released, then the whole pool in model order.
  while (!held.empty()) {
    drop_at(held.size() - 1);
  }
  mutables.clear();
  std::vector<SequenceHash> expected;
  while (auto v = model.pop()) {
    expected.push_back(*v);
  }
  CHECK(drain(*m) == expected);
  KVBM_CLEAN(*m);
}

}  // namespace

TEST_CASE("property: LRU and FIFO against the entry-order model", "[eviction][unit]") {
  for (const Backend& be : {kLru, kFifo}) {
    for (std::uint64_t seed : {1ull, 2ull, 3ull}) {
      run_property({be, seed_override(seed), 3000, 48, {3, 8, 15}, 1u << 16});
    }
  }
}

TEST_CASE("property: MultiLRU against the level model (sketch modelled from spec 7.7)",
          "[eviction][unit]") {
  // A small sketch (1024 counters' worth) so hashes share counters, and low thresholds so every
  // level is used.
  run_property({kMulti, seed_override(11), 3000, 48, {1, 2, 3}, 1u << 10});
  run_property({kMulti, seed_override(12), 3000, 48, {2, 4, 6}, 1u << 10});
  run_property({kMulti, seed_override(13), 3000, 64, {3, 8, 15}, 1u << 12});
}

TEST_CASE("property: lineage Tick against the brute-force leaf model", "[eviction][unit]") {
  for (std::uint64_t seed : {21ull, 22ull, 23ull}) {
    run_property({kTick, seed_override(seed), 3000, 48, {3, 8, 15}, 1u << 16});
  }
}

TEST_CASE("property: lineage FIFO against the brute-force leaf model", "[eviction][unit]") {
  for (std::uint64_t seed : {31ull, 32ull, 33ull}) {
    run_property({kLeafFifo, seed_override(seed), 3000, 48, {3, 8, 15}, 1u << 16});
  }
}
