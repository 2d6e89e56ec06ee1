// SPDX-License-Identifier: Apache-2.0
// Attaching: a fork child cannot use its parent's attachment, payload bytes are shared, and
// concurrent open_or_create calls attach every process to one segment.
#include "integration/multiprocess_support.hpp"

// --- fork, payload
// ----------------------------------------------------------------------------------

TEST_CASE("multiprocess: a fork child cannot use the parent's attachment or handles",
          "[multiprocess][integration]") {
  TempSegment seg("mp-fork");
  auto m = create_lru(seg, 8);
  const auto hs = seq_hashes(7, 1);
  auto held = register_hashes(*m, hs);
  auto mut = m->allocate_blocks(1);
  REQUIRE(mut);
  const BlockId held_id = held[0].block_id();
  const BlockId mut_id = (*mut)[0].block_id();
  const std::uint32_t parent_index = m->process_index();

  Child c([&] {
    auto refused = [](auto&& f) {
      try {
        f();
      } catch (const std::logic_error&) {
        return true;
      }
      return false;
    };
    CHILD_REQUIRE(refused([&] { (void)m->counts(); }), 10);
    CHILD_REQUIRE(refused([&] { (void)m->allocate_blocks(1); }), 11);
    CHILD_REQUIRE(refused([&] { (void)m->match_blocks(hs); }), 12);
    CHILD_REQUIRE(refused([&] { (void)m->reap_dead_processes(); }), 13);
    CHILD_REQUIRE(refused([&] { (void)held[0].use_count(); }), 14);
    {
      auto copy = held[0];  // inherited handles: copies and destructors do nothing shared
    }
    held.clear();
    mut->clear();
    // Its own attachment works and is a different process entry.
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 15);
    CHILD_REQUIRE(mb->process_index() != parent_index, 16);
    const auto info = mb->inspect_block(held_id);
    CHILD_REQUIRE(info.state == SlotState::kPrimary && info.holder_processes == 1, 17);
    CHILD_REQUIRE(mb->inspect_block(mut_id).state == SlotState::kMutable, 18);
    CHILD_REQUIRE(mb->reap_dead_processes() == 0, 19);  // the parent's entry is alive
    return 0;
  });
  REQUIRE(c.wait() == 0);

  // The child's exit (and the inherited liveness fd it closed) left the parent's state intact.
  CHECK(m->inspect_block(held_id).state == SlotState::kPrimary);
  CHECK(m->inspect_block(held_id).holder_processes == 1);
  CHECK(held[0].use_count() == 1);
  CHECK(m->inspect_block(mut_id).state == SlotState::kMutable);
  CHECK(m->reap_dead_processes() == 0);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 0);
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  check_consistent(*m);
  held.clear();
  mut.reset();
  CHECK(m->counts().inactive == 1);
  CHECK(m->counts().reset == 7);
  check_consistent(*m);
}

TEST_CASE("multiprocess: payload bytes written by one process are read by another",
          "[multiprocess][integration]") {
  TempSegment seg("mp-payload");
  kvbm::SegmentConfig cfg = seg.config(8);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  cfg.bytes_per_block = 64;
  auto m = seg.create(cfg);
  const auto hs = seq_hashes(8, 2);

  Child a([&] {
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto blocks = mb->allocate_blocks(2);
    CHILD_REQUIRE(blocks, 11);
    std::vector<CompleteBlock> staged;
    for (std::size_t i = 0; i < 2; ++i) {
      auto bytes = (*blocks)[i].data();
      CHILD_REQUIRE(bytes.size() == 64, 12);
      for (std::size_t j = 0; j < bytes.size(); ++j) {
        bytes[j] = static_cast<std::byte>(i * 100 + j);
      }
      auto c = std::move((*blocks)[i]).stage(hs[i], kBlockSize);
      CHILD_REQUIRE(c, 13);
      staged.push_back(std::move(*c));
    }
    auto held = mb->register_blocks(std::move(staged));
    CHILD_REQUIRE(held.size() == 2, 14);
    return 0;  // the blocks stay cached (Inactive), bytes included
  });
  REQUIRE(a.wait() == 0);

  Child b([&] {
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 20);
    auto got = mb->match_blocks(hs);
    CHILD_REQUIRE(got.size() == 2, 21);
    for (std::size_t i = 0; i < 2; ++i) {
      const auto bytes = got[i].data();
      CHILD_REQUIRE(bytes.size() == 64, 22);
      for (std::size_t j = 0; j < bytes.size(); ++j) {
        CHILD_REQUIRE(bytes[j] == static_cast<std::byte>(i * 100 + j), 23);
      }
    }
    return 0;
  });
  REQUIRE(b.wait() == 0);
  check_consistent(*m);
}

TEST_CASE("multiprocess: concurrent open_or_create attaches every process to one segment",
          "[multiprocess][integration]") {
  constexpr int kProcs = 4;
  TempSegment seg("mp-ooc");  // not created: the children race to create it
  kvbm::SegmentConfig cfg = seg.config(32);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  const auto hs = seq_hashes(40, 1);

  std::vector<Signal> go(kProcs);
  std::vector<Signal> ready(kProcs);
  Signal hold;
  std::vector<std::unique_ptr<Child>> kids;
  for (int i = 0; i < kProcs; ++i) {
    const auto k = static_cast<std::size_t>(i);
    kids.push_back(std::make_unique<Child>([&, k] {
      Reporter rep(ready[k]);
      go[k].wait();
      auto r = BlockManager::open_or_create(cfg);
      if (!r) {
        std::fprintf(stderr, "open_or_create: %s\n", fmt::format("{}", r.error()).c_str());
      }
      CHILD_REQUIRE(r, 10);
      auto mb = *r;
      CHILD_REQUIRE(mb->total_blocks() == 32, 11);
      auto own = register_hashes(*mb, hs);  // everyone registers the same hash
      CHILD_REQUIRE(own.size() == 1 && own[0].sequence_hash() == hs[0], 12);
      rep.send();
      hold.wait();
      return rep.finish();
    }));
  }
  for (auto& g : go) {
    g.notify();
  }
  for (int i = 0; i < kProcs; ++i) {
    await(ready[static_cast<std::size_t>(i)], *kids[static_cast<std::size_t>(i)]);
  }
  auto m = seg.open();
  CHECK(metric(*m, "kvbm_attached_processes") == kProcs + 1);
  const PoolCounts c = m->counts();
  CHECK(c.primary == 1);
  CHECK(c.duplicate == kProcs - 1);  // kAllow: one primary, the others its duplicates
  CHECK(slots_with_hash(*m, hs[0]).size() == kProcs);
  const auto prims = slots_in_state(*m, SlotState::kPrimary);
  REQUIRE(prims.size() == 1);
  CHECK(m->inspect_block(prims[0]).duplicate_refs == kProcs - 1);
  CHECK(m->inspect_block(prims[0]).holder_processes == 1);
  check_consistent(*m);
  for (int i = 0; i < kProcs; ++i) {
    hold.notify();
  }
  for (auto& k : kids) {
    CHECK(k->wait() == 0);
  }
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 0);
  CHECK(describe(m->counts()) == describe(PoolCounts{31, 0, 0, 0, 0, 1}));
  check_consistent(*m);
}
