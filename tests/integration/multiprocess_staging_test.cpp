// SPDX-License-Identifier: Apache-2.0
// Lock-free staging seen from other processes: verify() stays clean and the staging counts
// stay exact while another process stages without the store mutex.
#include "integration/multiprocess_support.hpp"

// --- lock-free staging ------------------------------------------------------------------------

TEST_CASE("multiprocess: verify() stays clean while another process stages without the lock",
          "[multiprocess][integration]") {
  TempSegment seg("mp-stage");
  auto m = create_lru(seg, 256);
  Signal started;
  Child c([&] {
    Reporter rep(started);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    std::uint64_t next = 1;
    for (int round = 0; round < 3000; ++round) {
      auto blocks = mb->allocate_blocks(8);
      CHILD_REQUIRE(blocks, 11);
      std::vector<CompleteBlock> staged;
      for (auto& b : *blocks) {
        auto r = std::move(b).stage(SequenceHash::make(next++, std::nullopt, 0), kBlockSize);
        CHILD_REQUIRE(r, 12);
        staged.push_back(std::move(*r));
      }
      // Half the rounds register, half drop the staged blocks: both leave Staged.
      if (round % 2 == 0) {
        auto held = mb->register_blocks(std::move(staged));
        CHILD_REQUIRE(held.size() == 8, 13);
      }
      if (round == 0) {
        rep.send();
      }
    }
    return rep.finish();
  });
  await(started, c);
  // Check the whole segment again and again until the child is done: every check runs while
  // the child may be between the two compare-and-swaps of a stage.
  int checks = 0;
  int status = 0;
  while (::waitpid(c.pid(), &status, WNOHANG) == 0) {
    const auto problems = m->verify();
    INFO(join(problems));
    REQUIRE(problems.empty());
    const PoolCounts counts = m->counts();
    REQUIRE(sum(counts) == m->total_blocks());
    ++checks;
  }
  CHECK(checks > 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  CHECK(metric(*m, "kvbm_stagings_total") == 3000 * 8);
  check_consistent(*m);
}

TEST_CASE(
    "multiprocess: stagings of a detached or dead process stay counted, its Staged "
    "blocks go",
    "[multiprocess][integration]") {
  TempSegment seg("mp-stagings");
  auto m = create_lru(seg, 16);
  Child tidy([&] {
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto blocks = mb->allocate_blocks(2);
    CHILD_REQUIRE(blocks, 11);
    auto a = std::move((*blocks)[0]).stage(SequenceHash::make(1, std::nullopt, 0), kBlockSize);
    auto b = std::move((*blocks)[1]).stage(SequenceHash::make(2, std::nullopt, 0), kBlockSize);
    CHILD_REQUIRE(a && b, 12);
    return 0;  // drops and detaches
  });
  REQUIRE(tidy.wait() == 0);
  CHECK(metric(*m, "kvbm_stagings_total") == 2);
  CHECK(m->counts().staged == 0);

  Signal ready;
  Child doomed([&] {
    Reporter rep(ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto blocks = mb->allocate_blocks(4);
    CHILD_REQUIRE(blocks, 11);
    std::vector<CompleteBlock> staged;
    for (std::uint64_t i = 0; i < 3; ++i) {
      auto r =
          std::move((*blocks)[i]).stage(SequenceHash::make(10 + i, std::nullopt, 0), kBlockSize);
      CHILD_REQUIRE(r, 12);
      staged.push_back(std::move(*r));
    }
    auto held = mb->register_block(std::move(staged[0]));
    rep.send();
    for (;;) {
      ::pause();  // SIGKILLed here, holding 1 Mutable, 2 Staged, 1 Primary
    }
  });
  await(ready, doomed);
  doomed.kill();
  CHECK(metric(*m, "kvbm_stagings_total") == 5);
  CHECK(describe(m->counts()) == describe(PoolCounts{12, 1, 2, 1, 0, 0}));
  CHECK(m->reap_dead_processes() == 1);
  CHECK(metric(*m, "kvbm_stagings_total") == 5);
  CHECK(describe(m->counts()) == describe(PoolCounts{15, 0, 0, 0, 0, 1}));
  check_consistent(*m);
}
