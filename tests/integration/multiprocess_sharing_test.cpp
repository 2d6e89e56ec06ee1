// SPDX-License-Identifier: Apache-2.0
// Blocks shared across processes: a hash registered by one process is matched by another, a
// block held by two processes is released by the last one, duplicates and kReject across
// processes, reset-on-release set in one process and honoured by another's release.
#include "integration/multiprocess_support.hpp"

// --- 1. registration in one process, match in another ------------------------------------------

TEST_CASE("multiprocess: hashes registered by an exited process are matched by another",
          "[multiprocess][integration]") {
  TempSegment seg("mp-reg");
  auto m = create_lru(seg, 16);
  // 4 complete blocks and a partial one (which gets no hash).
  const auto hs = kvbm::hash_token_blocks(make_tokens(1, 4 * kBlockSize + 5), kBlockSize);
  REQUIRE(hs.size() == 4);

  Child a([&] {
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto blocks = register_hashes(*mb, hs);
    CHILD_REQUIRE(blocks.size() == hs.size(), 11);
    for (std::size_t i = 0; i < hs.size(); ++i) {
      CHILD_REQUIRE(blocks[i].sequence_hash() == hs[i], 12);
      const auto info = mb->inspect_block(blocks[i].block_id());
      CHILD_REQUIRE(info.state == SlotState::kPrimary, 13);
      CHILD_REQUIRE(info.holder_processes == 1, 14);
      CHILD_REQUIRE(info.hash == hs[i], 15);
    }
    return 0;  // exits normally: its handles and then its attachment are released
  });
  REQUIRE(a.wait() == 0);

  // A's blocks are idle (Inactive), its process entry was released by the clean detach.
  std::vector<BlockId> ids;
  for (const auto& h : hs) {
    const auto s = slots_with_hash(*m, h);
    REQUIRE(s.size() == 1);
    const auto info = m->inspect_block(s[0]);
    CHECK(info.state == SlotState::kInactive);
    CHECK(info.holder_processes == 0);
    ids.push_back(s[0]);
  }
  CHECK(std::set<BlockId>(ids.begin(), ids.end()).size() == ids.size());
  CHECK(m->counts().inactive == 4);
  CHECK(m->counts().reset == 12);
  CHECK(metric(*m, "kvbm_inactive_pool_size") == 4);
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 0);
  CHECK(metric(*m, "kvbm_registrations_total") == 4);
  check_consistent(*m);

  Signal b_ready;
  Signal b_go;
  Child b([&] {
    Reporter rep(b_ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 20);
    const auto before = mb->metrics().get("kvbm_inactive_pool_size");
    CHILD_REQUIRE(before && *before == 4, 21);
    auto got = mb->match_blocks(hs);
    CHILD_REQUIRE(got.size() == hs.size(), 22);
    for (std::size_t i = 0; i < hs.size(); ++i) {
      CHILD_REQUIRE(got[i].block_id() == ids[i], 23);  // resurrected in place, same ids
      CHILD_REQUIRE(got[i].sequence_hash() == hs[i], 24);
      CHILD_REQUIRE(got[i].use_count() == 1, 25);
    }
    const auto after = mb->metrics().get("kvbm_inactive_pool_size");
    CHILD_REQUIRE(after && *after == 0, 26);
    rep.send();
    b_go.wait();  // hold the blocks until the parent has looked
    return rep.finish();
  });
  await(b_ready, b);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const auto info = m->inspect_block(ids[i]);
    CHECK(info.state == SlotState::kPrimary);
    CHECK(info.holder_processes == 1);
    CHECK(info.hash == hs[i]);
  }
  CHECK(m->counts().primary == 4);
  CHECK(m->counts().inactive == 0);
  CHECK(metric(*m, "kvbm_inactive_pool_size") == 0);
  CHECK(metric(*m, "kvbm_inflight_immutable") == 4);
  CHECK(metric(*m, "kvbm_match_hashes_requested_total") == 4);
  CHECK(metric(*m, "kvbm_match_blocks_returned_total") == 4);
  CHECK(metric(*m, "kvbm_attached_processes") == 2);
  check_consistent(*m);
  b_go.notify();
  REQUIRE(b.wait() == 0);

  for (BlockId id : ids) {
    CHECK(m->inspect_block(id).state == SlotState::kInactive);
  }
  CHECK(m->counts().inactive == 4);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 0);
  CHECK(metric(*m, "kvbm_attached_processes") == 1);

  // Prefix match in a third process (the parent) stops at the first miss.
  const SequenceHash missing = seq_hashes(99, 1)[0];
  const std::vector<SequenceHash> query{hs[0], hs[1], missing, hs[3]};
  {
    auto got = m->match_blocks(query);
    REQUIRE(got.size() == 2);
    CHECK(got[0].block_id() == ids[0]);
    CHECK(got[1].block_id() == ids[1]);
    CHECK(m->inspect_block(ids[3]).state == SlotState::kInactive);
  }
  check_consistent(*m);
}

// --- 2. two processes holding the same block -----------------------------------------------------

TEST_CASE("multiprocess: a block held by two processes is released by the last one",
          "[multiprocess][integration]") {
  TempSegment seg("mp-hold");
  auto m = create_lru(seg, 8);
  const auto hs = seq_hashes(2, 2);

  Signal a_ready, a_go, b_ready, b_go;
  Child a([&] {
    Reporter rep(a_ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    {
      auto blocks = register_hashes(*mb, hs);
      CHILD_REQUIRE(blocks.size() == 2, 11);
      rep.send();   // registered and held
      a_go.wait();  // parent: "drop"
    }               // handles dropped here
    rep.send();     // dropped
    a_go.wait();    // parent: "exit"
    return rep.finish();
  });
  await(a_ready, a);
  std::vector<BlockId> ids;
  for (const auto& h : hs) {
    const auto s = slots_with_hash(*m, h);
    REQUIRE(s.size() == 1);
    ids.push_back(s[0]);
    const auto info = m->inspect_block(s[0]);
    CHECK(info.state == SlotState::kPrimary);
    CHECK(info.holder_processes == 1);
  }

  Child b([&] {
    Reporter rep(b_ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 20);
    {
      auto got = mb->match_blocks(hs);
      CHILD_REQUIRE(got.size() == 2, 21);
      CHILD_REQUIRE(got[0].block_id() == ids[0] && got[1].block_id() == ids[1], 22);
      auto copy = got[0];  // copies touch only this process's count
      CHILD_REQUIRE(got[0].use_count() == 2, 23);
      CHILD_REQUIRE(mb->inspect_block(ids[0]).holder_processes == 2, 24);
      rep.send();
      b_go.wait();
    }
    rep.send();
    b_go.wait();
    return rep.finish();
  });
  await(b_ready, b);
  for (BlockId id : ids) {
    const auto info = m->inspect_block(id);
    CHECK(info.state == SlotState::kPrimary);
    CHECK(info.holder_processes == 2);
  }
  CHECK(m->counts().primary == 2);
  check_consistent(*m);

  a_go.notify();  // A drops
  await(a_ready, a);
  for (BlockId id : ids) {
    const auto info = m->inspect_block(id);
    CHECK(info.state == SlotState::kPrimary);
    CHECK(info.holder_processes == 1);
  }
  a_go.notify();  // A exits
  REQUIRE(a.wait() == 0);
  for (BlockId id : ids) {
    CHECK(m->inspect_block(id).state == SlotState::kPrimary);
    CHECK(m->inspect_block(id).holder_processes == 1);
  }

  b_go.notify();  // B drops
  await(b_ready, b);
  for (BlockId id : ids) {
    const auto info = m->inspect_block(id);
    CHECK(info.state == SlotState::kInactive);
    CHECK(info.holder_processes == 0);
  }
  CHECK(m->counts().inactive == 2);
  CHECK(m->counts().primary == 0);
  b_go.notify();
  REQUIRE(b.wait() == 0);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 0);
  check_consistent(*m);
}

TEST_CASE("multiprocess: WeakBlock::upgrade re-acquires a block another process resurrected",
          "[multiprocess][integration]") {
  TempSegment seg("mp-weak");
  auto m = create_lru(seg, 8);
  const auto hs = seq_hashes(3, 1);
  WeakBlock weak;
  BlockId id = 0;
  {
    auto held = register_hashes(*m, hs);
    id = held[0].block_id();
    weak = held[0].downgrade();
  }
  REQUIRE(m->inspect_block(id).state == SlotState::kInactive);

  Signal ready, go;
  Child b([&] {
    Reporter rep(ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto got = mb->match_blocks(hs);
    CHILD_REQUIRE(got.size() == 1 && got[0].block_id() == id, 11);
    rep.send();
    go.wait();
    return rep.finish();
  });
  await(ready, b);
  REQUIRE(m->inspect_block(id).state == SlotState::kPrimary);
  {
    auto up = weak.upgrade();
    REQUIRE(up.has_value());
    CHECK(up->block_id() == id);
    CHECK(up->sequence_hash() == hs[0]);
    CHECK(m->inspect_block(id).holder_processes == 2);
  }
  CHECK(m->inspect_block(id).holder_processes == 1);
  go.notify();
  REQUIRE(b.wait() == 0);
  CHECK(m->inspect_block(id).state == SlotState::kInactive);
  check_consistent(*m);
}

// --- 3. duplicates across processes --------------------------------------------------------------

TEST_CASE("multiprocess: a duplicate in one process keeps another process's primary alive",
          "[multiprocess][integration]") {
  TempSegment seg("mp-dup");
  auto m = create_lru(seg, 8, DuplicationPolicy::kAllow);
  const auto hs = seq_hashes(4, 1);
  const SequenceHash h = hs[0];

  Signal a_ready, a_go, b_ready, b_go;
  Child b([&] {  // holds the primary
    Reporter rep(b_ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    {
      auto blocks = register_hashes(*mb, hs);
      CHILD_REQUIRE(blocks.size() == 1, 11);
      CHILD_REQUIRE(mb->inspect_block(blocks[0].block_id()).state == SlotState::kPrimary, 12);
      rep.send();
      b_go.wait();
    }
    rep.send();
    b_go.wait();
    return rep.finish();
  });
  await(b_ready, b);
  const auto prim = slots_with_hash(*m, h);
  REQUIRE(prim.size() == 1);
  const BlockId primary = prim[0];

  Child a([&] {  // registers the same hash: a duplicate
    Reporter rep(a_ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 20);
    {
      auto blocks = register_hashes(*mb, hs);
      CHILD_REQUIRE(blocks.size() == 1, 21);
      CHILD_REQUIRE(blocks[0].block_id() != primary, 22);
      CHILD_REQUIRE(blocks[0].sequence_hash() == h, 23);
      const auto info = mb->inspect_block(blocks[0].block_id());
      CHILD_REQUIRE(info.state == SlotState::kDuplicate, 24);
      CHILD_REQUIRE(info.hash == h, 25);
      // A lookup returns the primary, never the duplicate.
      auto matched = mb->match_blocks(hs);
      CHILD_REQUIRE(matched.size() == 1 && matched[0].block_id() == primary, 26);
      matched.clear();
      rep.send();
      a_go.wait();
    }
    rep.send();
    a_go.wait();
    return rep.finish();
  });
  await(a_ready, a);
  const auto dups = slots_in_state(*m, SlotState::kDuplicate);
  REQUIRE(dups.size() == 1);
  const BlockId dup = dups[0];
  {
    const auto pi = m->inspect_block(primary);
    CHECK(pi.state == SlotState::kPrimary);
    CHECK(pi.holder_processes == 1);  // B (A's match was dropped)
    CHECK(pi.duplicate_refs == 1);
    const auto di = m->inspect_block(dup);
    CHECK(di.state == SlotState::kDuplicate);
    CHECK(di.hash == h);
    CHECK(di.holder_processes == 1);
    CHECK(di.duplicate_refs == 0);
  }
  CHECK(metric(*m, "kvbm_duplicate_blocks_total") == 1);
  CHECK(metric(*m, "kvbm_inflight_immutable") == 2);
  check_consistent(*m);

  b_go.notify();  // B drops the primary: the duplicate's keep-alive holds it
  await(b_ready, b);
  {
    const auto pi = m->inspect_block(primary);
    CHECK(pi.state == SlotState::kPrimary);
    CHECK(pi.holder_processes == 0);
    CHECK(pi.duplicate_refs == 1);
  }
  b_go.notify();
  REQUIRE(b.wait() == 0);
  CHECK(m->inspect_block(primary).state == SlotState::kPrimary);
  check_consistent(*m);

  // A third process (the parent) matching now gets the kept-alive primary.
  {
    auto got = m->match_blocks(hs);
    REQUIRE(got.size() == 1);
    CHECK(got[0].block_id() == primary);
    CHECK(m->inspect_block(primary).holder_processes == 1);
  }
  CHECK(m->inspect_block(primary).state == SlotState::kPrimary);
  CHECK(m->inspect_block(primary).duplicate_refs == 1);

  a_go.notify();  // A drops the duplicate: duplicate -> Reset, primary -> Inactive
  await(a_ready, a);
  CHECK(m->inspect_block(dup).state == SlotState::kReset);
  {
    const auto pi = m->inspect_block(primary);
    CHECK(pi.state == SlotState::kInactive);
    CHECK(pi.duplicate_refs == 0);
    CHECK(pi.holder_processes == 0);
  }
  a_go.notify();
  REQUIRE(a.wait() == 0);
  const PoolCounts c = m->counts();
  CHECK(c.inactive == 1);
  CHECK(c.duplicate == 0);
  CHECK(c.primary == 0);
  CHECK(c.reset == 7);
  check_consistent(*m);

  // Registering the hash again while B's primary is Inactive resurrects it; the new block is its
  // duplicate and the only thing keeping it alive.
  {
    auto again = register_hashes(*m, hs);
    REQUIRE(again.size() == 1);
    CHECK(again[0].block_id() != primary);
    CHECK(m->inspect_block(again[0].block_id()).state == SlotState::kDuplicate);
    const auto pi = m->inspect_block(primary);
    CHECK(pi.state == SlotState::kPrimary);
    CHECK(pi.holder_processes == 0);
    CHECK(pi.duplicate_refs == 1);
    check_consistent(*m);
  }
  CHECK(m->inspect_block(primary).state == SlotState::kInactive);
  CHECK(m->counts().inactive == 1);
  CHECK(m->counts().reset == 7);
  check_consistent(*m);
}

TEST_CASE("multiprocess: kReject registration returns the other process's primary",
          "[multiprocess][integration]") {
  TempSegment seg("mp-reject");
  auto m = create_lru(seg, 8, DuplicationPolicy::kReject);
  const auto hs = seq_hashes(5, 2);
  auto held = register_hashes(*m, hs);  // the parent holds the primaries
  REQUIRE(held.size() == 2);

  Signal ready, go;
  Child b([&] {
    Reporter rep(ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto blocks = mb->allocate_blocks(2);
    CHILD_REQUIRE(blocks, 11);
    const BlockId staged0 = (*blocks)[0].block_id();
    std::vector<CompleteBlock> staged;
    for (std::size_t i = 0; i < 2; ++i) {
      auto c = std::move((*blocks)[i]).stage(hs[i], kBlockSize);
      CHILD_REQUIRE(c, 12);
      staged.push_back(std::move(*c));
    }
    auto got = mb->register_blocks(std::move(staged));
    CHILD_REQUIRE(got.size() == 2, 13);
    for (std::size_t i = 0; i < 2; ++i) {
      CHILD_REQUIRE(got[i].block_id() == held[i].block_id(), 14);  // captured before fork
      CHILD_REQUIRE(got[i].sequence_hash() == hs[i], 15);
    }
    CHILD_REQUIRE(mb->inspect_block(staged0).state == SlotState::kReset, 16);
    CHILD_REQUIRE(mb->counts().duplicate == 0, 17);
    rep.send();
    go.wait();
    return rep.finish();
  });
  await(ready, b);
  for (const auto& blk : held) {
    CHECK(m->inspect_block(blk.block_id()).holder_processes == 2);
  }
  CHECK(metric(*m, "kvbm_registration_dedup_total") == 2);
  CHECK(m->counts().primary == 2);
  CHECK(m->counts().reset == 6);
  check_consistent(*m);
  go.notify();
  REQUIRE(b.wait() == 0);
  for (const auto& blk : held) {
    CHECK(m->inspect_block(blk.block_id()).holder_processes == 1);
    CHECK(m->inspect_block(blk.block_id()).state == SlotState::kPrimary);
  }
  held.clear();
  CHECK(m->counts().inactive == 2);
  check_consistent(*m);
}

// --- 4. reset-on-release across processes --------------------------------------------------------

TEST_CASE("multiprocess: set_reset_on_release in one process is honoured by another's release",
          "[multiprocess][integration]") {
  TempSegment seg("mp-ror");
  auto m = create_lru(seg, 8);
  const auto hs = seq_hashes(6, 2);  // hs[0] gets the flag, hs[1] is the control

  Signal a_ready, a_go, b_ready, b_go;
  Child a([&] {
    Reporter rep(a_ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    {
      auto blocks = register_hashes(*mb, hs);
      CHILD_REQUIRE(blocks.size() == 2, 11);
      rep.send();   // registered
      a_go.wait();  // B holds them too now
      blocks[0].set_reset_on_release(true);
      CHILD_REQUIRE(mb->inspect_block(blocks[0].block_id()).reset_on_release, 12);
    }  // A drops: B still holds, nothing happens yet
    rep.send();
    a_go.wait();
    return rep.finish();
  });
  await(a_ready, a);

  Child b([&] {
    Reporter rep(b_ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 20);
    {
      auto got = mb->match_blocks(hs);
      CHILD_REQUIRE(got.size() == 2, 21);
      rep.send();
      b_go.wait();
    }  // B releases last
    rep.send();
    b_go.wait();
    return rep.finish();
  });
  await(b_ready, b);
  const BlockId flagged = slots_with_hash(*m, hs[0]).at(0);
  const BlockId control = slots_with_hash(*m, hs[1]).at(0);
  CHECK(m->inspect_block(flagged).holder_processes == 2);
  CHECK_FALSE(m->inspect_block(flagged).reset_on_release);

  a_go.notify();  // A sets the flag and drops
  await(a_ready, a);
  {
    const auto info = m->inspect_block(flagged);
    CHECK(info.state == SlotState::kPrimary);
    CHECK(info.holder_processes == 1);
    CHECK(info.reset_on_release);  // visible to every process
  }
  a_go.notify();
  REQUIRE(a.wait() == 0);

  b_go.notify();  // B releases last: the flagged block is not cached
  await(b_ready, b);
  CHECK(m->inspect_block(flagged).state == SlotState::kReset);
  CHECK(m->inspect_block(control).state == SlotState::kInactive);
  CHECK(m->match_blocks(std::span<const SequenceHash>(hs.data(), 1)).empty());
  {
    const std::vector<SequenceHash> q{hs[1]};
    auto got = m->match_blocks(q);
    REQUIRE(got.size() == 1);
    CHECK(got[0].block_id() == control);
  }
  b_go.notify();
  REQUIRE(b.wait() == 0);
  CHECK(m->counts().inactive == 1);
  CHECK(m->counts().reset == 7);
  check_consistent(*m);
}
