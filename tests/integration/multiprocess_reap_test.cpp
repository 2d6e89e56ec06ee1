// SPDX-License-Identifier: Apache-2.0
// Dead processes: leaked references, entry takeover by a new attachment, reaping a SIGKILLed
// process, allocations that reap and retry, and concurrent reapers.
#include "integration/multiprocess_support.hpp"

// --- dead processes: leaked references, entry takeover
// ---------------------------------------------

TEST_CASE("multiprocess: a process that _exit()s without releasing is reaped like a crash",
          "[multiprocess][integration]") {
  TempSegment seg("mp-leak");
  auto m = create_lru(seg, 16);
  const auto hs = seq_hashes(9, 3);
  Child c([&] {
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto held = register_hashes(*mb, hs);
    auto mut = mb->allocate_blocks(2);
    CHILD_REQUIRE(mut, 11);
    ::_exit(0);  // no destructors: the references leak
  });
  REQUIRE(c.wait() == 0);
  CHECK(m->counts().primary == 3);
  CHECK(m->counts().mutable_ == 2);
  {
    const auto problems = m->verify();
    INFO(join(problems));
    REQUIRE(problems.size() == 1);
    CHECK_THAT(problems[0], Catch::Contains("dead"));
  }
  CHECK(m->reap_dead_processes() == 1);
  const PoolCounts after = m->counts();
  CHECK(describe(after) == describe(PoolCounts{13, 0, 0, 0, 0, 3}));
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 1);
  check_consistent(*m);
}

TEST_CASE("multiprocess: a new attachment takes over and reaps a dead process's entry",
          "[multiprocess][integration]") {
  TempSegment seg("mp-takeover");
  kvbm::SegmentConfig cfg = seg.config(16);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  cfg.max_processes = 2;
  auto m = seg.create(cfg);
  const auto hs = seq_hashes(30, 2);

  Signal ready, go;
  Child victim([&] {
    Reporter rep(ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto held = register_hashes(*mb, hs);
    auto mut = mb->allocate_blocks(3);
    CHILD_REQUIRE(mut, 11);
    rep.send();
    go.wait();  // SIGKILLed here
    return rep.finish();
  });
  await(ready, victim);

  // Table full of live processes: a third attachment is refused.
  {
    auto third = BlockManager::open(seg.name());
    REQUIRE_FALSE(third.has_value());
    CHECK(third.error().code == kvbm::Errc::kProcessTableFull);
  }
  victim.kill();
  CHECK(m->counts().mutable_ == 3);
  CHECK(m->counts().primary == 2);

  // Another process attaches: it takes the dead entry over, releasing what it held first.
  Child newcomer([&] {
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 20);
    const PoolCounts c = mb->counts();
    CHILD_REQUIRE(c.mutable_ == 0 && c.primary == 0 && c.inactive == 2, 21);
    auto got = mb->match_blocks(hs);  // the dead process's registrations are still cached
    CHILD_REQUIRE(got.size() == 2, 22);
    return 0;
  });
  REQUIRE(newcomer.wait() == 0);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 1);
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  CHECK(m->reap_dead_processes() == 0);
  CHECK(m->counts().inactive == 2);
  check_consistent(*m);
}

// --- 5. reaping a SIGKILLed process -------------------------------------------------------------

TEST_CASE("multiprocess: reaping a SIGKILLed process releases exactly its references",
          "[multiprocess][integration]") {
  constexpr std::uint32_t kBlocks = 32;
  TempSegment seg("mp-reap");
  auto m = create_lru(seg, kBlocks, DuplicationPolicy::kAllow);
  const auto own = seq_hashes(10, 3);  // registered by the child
  const auto p = seq_hashes(11, 4);    // registered by the parent
  const auto x = seq_hashes(12, 2);    // staged (never registered) by the child

  // Parent: P0, P1, P3 held; P2 registered and dropped (Inactive).
  auto parent_held = register_hashes(*m, p);
  REQUIRE(parent_held.size() == 4);
  const BlockId p_ids[4] = {parent_held[0].block_id(), parent_held[1].block_id(),
                            parent_held[2].block_id(), parent_held[3].block_id()};
  parent_held.erase(parent_held.begin() + 2);
  REQUIRE(m->inspect_block(p_ids[2]).state == SlotState::kInactive);

  Signal ready, go;
  Child c([&] {
    Reporter rep(ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto registered = register_hashes(*mb, own);
    CHILD_REQUIRE(registered.size() == 3, 11);
    const std::vector<SequenceHash> pfx{p[0], p[1], p[2]};
    auto matched = mb->match_blocks(pfx);  // P2 resurrected by the child
    CHILD_REQUIRE(matched.size() == 3, 12);
    auto dup = register_hashes(*mb, {p[3]});  // a duplicate of the parent's P3
    CHILD_REQUIRE(dup.size() == 1 && dup[0].block_id() != p_ids[3], 13);
    auto mut = mb->allocate_blocks(2);
    CHILD_REQUIRE(mut, 14);
    auto to_stage = mb->allocate_blocks(2);
    CHILD_REQUIRE(to_stage, 15);
    std::vector<CompleteBlock> staged;
    for (std::size_t i = 0; i < 2; ++i) {
      auto cb = std::move((*to_stage)[i]).stage(x[i], kBlockSize);
      CHILD_REQUIRE(cb, 16);
      staged.push_back(std::move(*cb));
    }
    rep.send();
    go.wait();  // never answered: SIGKILLed here
    return rep.finish();
  });
  await(ready, c);

  // The parent also holds the first of the child's registered blocks.
  auto parent_own0 = m->match_blocks(std::span<const SequenceHash>(own.data(), 1));
  REQUIRE(parent_own0.size() == 1);
  const BlockId own_ids[3] = {parent_own0[0].block_id(), slots_with_hash(*m, own[1]).at(0),
                              slots_with_hash(*m, own[2]).at(0)};
  CHECK(m->inspect_block(own_ids[0]).holder_processes == 2);
  const auto exclusive_ids = [&] {
    auto v = slots_in_state(*m, SlotState::kMutable);
    auto s = slots_in_state(*m, SlotState::kStaged);
    v.insert(v.end(), s.begin(), s.end());
    return v;
  }();
  REQUIRE(exclusive_ids.size() == 4);
  const auto dups = slots_in_state(*m, SlotState::kDuplicate);
  REQUIRE(dups.size() == 1);
  const BlockId dup_id = dups[0];
  const PoolCounts before = m->counts();
  CHECK(describe(before) == describe(PoolCounts{kBlocks - 12, 2, 2, 7, 1, 0}));
  check_consistent(*m);

  c.kill();
  REQUIRE(c.wait() == 128 + 9);

  // Nothing is released until someone reaps; verify() reports the dead entry and what it holds.
  CHECK(describe(m->counts()) == describe(before));
  CHECK(metric(*m, "kvbm_attached_processes") == 2);
  {
    const auto problems = m->verify();
    INFO(join(problems));
    REQUIRE(problems.size() == 1);
    CHECK_THAT(problems[0], Catch::Contains("dead"));
    // 4 mutable/staged + 3 registered + 3 matched + 1 duplicate.
    CHECK_THAT(problems[0], Catch::Contains("11 blocks"));
  }

  CHECK(m->reap_dead_processes() == 1);
  for (BlockId id : exclusive_ids) {
    CHECK(m->inspect_block(id).state == SlotState::kReset);
  }
  {
    const auto i0 = m->inspect_block(own_ids[0]);
    CHECK(i0.state == SlotState::kPrimary);  // the parent still holds it
    CHECK(i0.holder_processes == 1);
    CHECK(m->inspect_block(own_ids[1]).state == SlotState::kInactive);
    CHECK(m->inspect_block(own_ids[2]).state == SlotState::kInactive);
  }
  for (int i : {0, 1, 3}) {
    const auto info = m->inspect_block(p_ids[i]);
    CHECK(info.state == SlotState::kPrimary);
    CHECK(info.holder_processes == 1);
    CHECK(info.duplicate_refs == 0);
  }
  CHECK(m->inspect_block(p_ids[2]).state == SlotState::kInactive);
  CHECK(m->inspect_block(dup_id).state == SlotState::kReset);
  const PoolCounts after = m->counts();
  CHECK(describe(after) == describe(PoolCounts{kBlocks - 7, 0, 0, 4, 0, 3}));
  CHECK(sum(after) == kBlocks);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 1);
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  check_consistent(*m);

  // Idempotent: a second reap finds nothing and changes nothing.
  CHECK(m->reap_dead_processes() == 0);
  CHECK(describe(m->counts()) == describe(after));
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 1);
  CHECK(m->verify().empty());

  // The staged hashes were never registered; the child's cached ones are still matchable.
  CHECK(m->match_blocks(x).empty());
  {
    auto got = m->match_blocks(own);
    REQUIRE(got.size() == 3);
    CHECK(got[1].block_id() == own_ids[1]);
    CHECK(got[2].block_id() == own_ids[2]);
  }
  parent_held.clear();
  parent_own0.clear();
  const PoolCounts end = m->counts();
  CHECK(end.primary == 0);
  CHECK(end.inactive == 7);
  check_consistent(*m);
}

// --- 6. allocation reaps and retries -------------------------------------------------------------

TEST_CASE("multiprocess: an allocation that comes up short reaps a dead holder and retries",
          "[multiprocess][integration]") {
  constexpr std::uint32_t kBlocks = 64;
  TempSegment seg("mp-alloc");
  auto m = create_lru(seg, kBlocks);
  const auto hs = seq_hashes(20, kBlocks / 2);

  Signal ready, go;
  Child c([&] {
    Reporter rep(ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto all = mb->allocate_blocks(kBlocks);  // every block
    CHILD_REQUIRE(all && all->size() == kBlocks, 11);
    CHILD_REQUIRE(mb->available_blocks() == 0, 12);
    // Half registered (held), a quarter staged, a quarter left mutable.
    std::vector<CompleteBlock> to_register;
    std::vector<CompleteBlock> staged;
    for (std::uint32_t i = 0; i < kBlocks * 3 / 4; ++i) {
      const SequenceHash h = i < kBlocks / 2 ? hs[i] : seq_hashes(21 + i, 1)[0];
      auto cb = std::move((*all)[i]).stage(h, kBlockSize);
      CHILD_REQUIRE(cb, 13);
      (i < kBlocks / 2 ? to_register : staged).push_back(std::move(*cb));
    }
    auto held = mb->register_blocks(std::move(to_register));
    CHILD_REQUIRE(held.size() == kBlocks / 2, 14);
    rep.send();
    go.wait();  // SIGKILLed here
    return rep.finish();
  });
  await(ready, c);
  CHECK(m->available_blocks() == 0);
  // While the holder is alive nothing can be reclaimed.
  CHECK_FALSE(m->allocate_blocks(1).has_value());
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 0);

  c.kill();
  const auto evictions_before = metric(*m, "kvbm_evictions_total");
  {
    auto got = m->allocate_blocks(kBlocks);  // reaps the dead child, then succeeds
    REQUIRE(got.has_value());
    CHECK(got->size() == kBlocks);
    std::set<BlockId> ids;
    for (const auto& b : *got) {
      ids.insert(b.block_id());
    }
    CHECK(ids.size() == kBlocks);
    CHECK(metric(*m, "kvbm_reaped_processes_total") == 1);
    // The child's registered blocks went Inactive and were evicted for this allocation.
    CHECK(metric(*m, "kvbm_evictions_total") - evictions_before == kBlocks / 2);
    CHECK(m->counts().mutable_ == kBlocks);
    check_consistent(*m);
  }
  CHECK(m->counts().reset == kBlocks);
  CHECK(m->match_blocks(hs).empty());
  CHECK(m->reap_dead_processes() == 0);
  check_consistent(*m);
}

// --- 7. concurrent reapers -----------------------------------------------------------------------

TEST_CASE("multiprocess: two processes reaping at once release a dead process exactly once",
          "[multiprocess][integration]") {
  constexpr std::uint32_t kBlocks = 512;
  constexpr int kRounds = 8;
  TempSegment seg("mp-reap2");
  auto m = create_lru(seg, kBlocks);

  for (int round = 0; round < kRounds; ++round) {
    INFO("round " << round);
    const auto hs = seq_hashes(static_cast<std::uint32_t>(100 + round), 120);
    // Round > 0: the previous round's hashes are cached; the victim matches some of them too.
    const auto prev = seq_hashes(static_cast<std::uint32_t>(100 + round - 1), 120);

    Signal v_ready, v_go;
    Child victim([&] {
      Reporter rep(v_ready);
      auto mb = open_or_null(seg.name());
      CHILD_REQUIRE(mb, 10);
      auto old = mb->match_blocks(prev);  // first, so allocations cannot evict them
      CHILD_REQUIRE(round == 0 || old.size() == prev.size(), 13);
      auto held = register_hashes(*mb, hs);
      CHILD_REQUIRE(held.size() == hs.size(), 11);
      auto again = mb->match_blocks(hs);  // second handle to each: local count only
      CHILD_REQUIRE(again.size() == hs.size(), 12);
      auto mut = mb->allocate_blocks(100);
      CHILD_REQUIRE(mut, 14);
      rep.send();
      v_go.wait();  // SIGKILLed here
      return rep.finish();
    });
    await(v_ready, victim);

    Signal r_out[2], r_go[2];
    std::vector<std::unique_ptr<Child>> reapers;
    for (int r = 0; r < 2; ++r) {
      reapers.push_back(std::make_unique<Child>([&, r] {
        Reporter rep(r_out[r]);
        auto mb = open_or_null(seg.name());
        CHILD_REQUIRE(mb, 20);
        rep.send();  // attached (before the victim dies: no takeover of its entry)
        r_go[r].wait();
        const std::size_t n = mb->reap_dead_processes();
        CHILD_REQUIRE(n <= 1, 21);
        rep.send(static_cast<char>('0' + n));
        return rep.finish();
      }));
    }
    for (int r = 0; r < 2; ++r) {
      await(r_out[r], *reapers[static_cast<std::size_t>(r)]);
    }
    CHECK(m->counts().mutable_ == 100);
    victim.kill();
    r_go[0].notify();
    r_go[1].notify();
    int total = 0;
    for (int r = 0; r < 2; ++r) {
      const char v = r_out[r].wait();
      INFO("reaper " << r << " sent '" << v << "'");
      REQUIRE((v == '0' || v == '1'));
      total += v - '0';
    }
    CHECK(total == 1);
    for (auto& r : reapers) {
      CHECK(r->wait() == 0);
    }
    const PoolCounts c = m->counts();
    CHECK(c.mutable_ == 0);
    CHECK(c.staged == 0);
    CHECK(c.primary == 0);
    CHECK(c.duplicate == 0);
    CHECK(sum(c) == kBlocks);
    CHECK(metric(*m, "kvbm_reaped_processes_total") == round + 1);
    CHECK(metric(*m, "kvbm_attached_processes") == 1);
    CHECK(m->reap_dead_processes() == 0);
    check_consistent(*m);
  }
}
