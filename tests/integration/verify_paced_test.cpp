// SPDX-License-Identifier: Apache-2.0
// The paced verify (VerifyMode::kPaced, store/paced_verify.hpp): on a quiet segment it reports
// exactly what the exclusive walk reports, its local pass (what a segment never quiet for a whole
// walk gets) reports a subset that includes every per-slot problem, and beside a worker process
// that operates without pause it gives the lock up, walks again, and reports no false problem.
// No timing is asserted: worker latency behind verify is measured by kvbm-bench case 7.
#include <sys/mman.h>

#include "attachment.hpp"
#include "integration/multiprocess_support.hpp"
#include "store/paced_verify.hpp"
#include "testing/hooks.hpp"

namespace {

using namespace multiprocess_test;

using kvbm::VerifyMode;
using kvbm::VerifyReport;
namespace d = kvbm::detail;

/// Only the local pass, as a segment never quiet for a whole walk gets it.
d::PacedVerifyResult local_pass(BlockManager& m) {
  auto& att = kvbm::testing::Peer::attachment(m);
  std::optional<d::StoreLock> lock(att.lock());
  const d::MutexHold hold{[&] { lock.reset(); }, [&] { lock.emplace(att.lock()); }};
  d::PacedVerifyOptions options;
  options.whole_attempts = 0;
  return d::paced_verify(att.store(), hold, options);
}

/// Writes into slot `id`'s metadata under the store mutex, without the intent record: damage no
/// rollback knows about (as Peer::corrupt_slot_state does).
template <class F>
void damage_slot(BlockManager& m, BlockId id, F&& f) {
  auto& att = kvbm::testing::Peer::attachment(m);
  auto lock = att.lock();
  f(att.segment().slots()[id]);
}

std::set<std::string> as_set(const std::vector<std::string>& v) {
  return {v.begin(), v.end()};
}

}  // namespace

TEST_CASE("paced verify: on a quiet segment it finds what the exclusive verify finds",
          "[verify][integration]") {
  TempSegment seg("vp-quiet");
  auto m = create_lru(seg, 64);
  // 8 held (Primary), 16 released (Inactive), 40 Reset.
  auto held = register_hashes(*m, seq_hashes(1, 8));
  register_hashes(*m, seq_hashes(2, 16));
  const auto primary = slots_in_state(*m, SlotState::kPrimary);
  const auto inactive = slots_in_state(*m, SlotState::kInactive);
  const auto reset = slots_in_state(*m, SlotState::kReset);
  REQUIRE(primary.size() == 8);
  REQUIRE(inactive.size() == 16);
  REQUIRE(reset.size() == 40);
  {
    const VerifyReport clean = m->verify(VerifyMode::kPaced);
    CHECK(clean.problems.empty());
    CHECK(clean.complete);
    CHECK(clean.notes.empty());
    const auto local = local_pass(*m);
    CHECK(local.problems.empty());
    CHECK_FALSE(local.complete);
    CHECK(local.notes.size() == 1);
  }
  // A Reset slot in the middle of the free list (not its head or tail).
  const std::uint32_t head =
      kvbm::testing::Peer::attachment(*m).segment().control()->free_list.head;
  BlockId middle = reset[20] == head ? reset[21] : reset[20];

  SECTION("an invalid state value") {
    kvbm::testing::Peer::corrupt_slot_state(*m, inactive[3], 0x7F);
  }
  SECTION("a Reset slot turned Mutable, owned by an entry nobody uses") {
    damage_slot(*m, reset[5], [](kvbm::shm::SlotMeta& s) {
      s.state = static_cast<std::uint8_t>(kvbm::shm::SlotState::kMutable);
      s.owner = 7;
    });
  }
  SECTION("holder bits on a Reset slot") {
    damage_slot(*m, reset[9], [](kvbm::shm::SlotMeta& s) { s.holders = 0xF0; });
  }
  SECTION("a Primary held by an entry not in use") {
    damage_slot(*m, primary[2], [](kvbm::shm::SlotMeta& s) { s.holders |= 1ull << 9; });
  }
  SECTION("a cached slot with another hash") {
    damage_slot(*m, inactive[6], [](kvbm::shm::SlotMeta& s) { s.hash_lo ^= 0x5A5A0000; });
  }
  SECTION("a wrong back link in the free list") {
    damage_slot(*m, middle, [&](kvbm::shm::SlotMeta& s) { s.prev = middle; });
  }
  SECTION("a keep-alive count on an Inactive slot") {
    damage_slot(*m, inactive[1], [](kvbm::shm::SlotMeta& s) { s.keepalive = 3; });
  }
  const auto exclusive = m->verify(VerifyMode::kExclusive);
  const auto paced = m->verify(VerifyMode::kPaced);
  const auto local = local_pass(*m);
  INFO("exclusive:\n"
       << join(exclusive.problems) << "paced:\n"
       << join(paced.problems) << "local:\n"
       << join(local.problems));
  REQUIRE_FALSE(exclusive.problems.empty());
  // Nothing ran meanwhile: the paced walk completes and says the same, line for line.
  CHECK(paced.complete);
  CHECK(paced.restarts == 0);
  CHECK(paced.problems == exclusive.problems);
  CHECK(m->verify() == exclusive.problems);
  // The local pass: no line the exclusive walk does not have, every per-slot line it has.
  CHECK_FALSE(local.problems.empty());
  const auto all = as_set(exclusive.problems);
  for (const auto& p : local.problems) {
    INFO(p);
    CHECK(all.count(p) == 1);
  }
  const auto found = as_set(local.problems);
  for (const auto& p : exclusive.problems) {
    if (p.rfind("slot ", 0) == 0 || p.rfind("hash index: slot ", 0) == 0) {
      INFO(p);
      CHECK(found.count(p) == 1);
    }
  }
}

TEST_CASE("multiprocess: a paced verify lets a busy worker in and reports no false problem",
          "[verify][multiprocess][integration]") {
  TempSegment seg("vp-busy");
  // Large enough for a walk of many chunks (each a few microseconds).
  constexpr std::uint32_t kBlocks = 1u << 16;
  auto m = create_lru(seg, kBlocks);
  for (std::uint32_t seed = 1; seed <= 4; ++seed) {
    register_hashes(*m, seq_hashes(seed, 4096));  // released: Inactive
  }
  const auto cached = seq_hashes(1, 64);
  // Set by the parent when it has seen what it waits for; the worker runs until then.
  auto* stop = static_cast<std::atomic<bool>*>(::mmap(nullptr, sizeof(std::atomic<bool>),
                                                      PROT_READ | PROT_WRITE,
                                                      MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(stop != MAP_FAILED);
  new (stop) std::atomic<bool>(false);
  Signal started;
  Child worker([&] {
    Reporter rep(started);
    auto w = open_or_null(seg.name());
    CHILD_REQUIRE(w, 10);
    std::uint32_t next = 1000;
    bool sent = false;
    // Every kind of operation, without pause: allocate and drop, register (new and known
    // hashes), match (resurrects an Inactive block), release.
    for (std::uint64_t round = 0; !stop->load(std::memory_order_relaxed); ++round) {
      CHILD_REQUIRE(round < 50'000'000, 11);  // the parent never stopped us
      {
        auto blocks = w->allocate_blocks(2);
        CHILD_REQUIRE(blocks, 12);
      }
      auto blocks = w->allocate_blocks(2);
      CHILD_REQUIRE(blocks, 13);
      auto a = std::move((*blocks)[0]).stage(seq_hashes(next++, 1)[0], kBlockSize);
      auto b = std::move((*blocks)[1]).stage(cached[round % cached.size()], kBlockSize);
      CHILD_REQUIRE(a && b, 14);
      std::vector<CompleteBlock> batch;
      batch.push_back(std::move(*a));
      batch.push_back(std::move(*b));
      auto imm = w->register_blocks(std::move(batch));
      CHILD_REQUIRE(imm.size() == 2, 15);
      const std::vector<SequenceHash> q = {cached[(round * 7) % cached.size()]};
      CHILD_REQUIRE(w->match_blocks(q).size() == 1, 16);
      if (!sent) {
        rep.send();
        sent = true;
      }
    }
    return rep.finish();
  });
  await(started, worker);
  std::uint64_t walks = 0, yielded = 0, restarted = 0, incomplete = 0;
  bool let_worker_in = false;
  for (; walks < 300 && !let_worker_in; ++walks) {
    const VerifyReport r = m->verify(VerifyMode::kPaced);
    INFO("walk " << walks << ":\n" << join(r.problems) << join(r.notes));
    REQUIRE(r.problems.empty());
    CHECK(r.complete == r.notes.empty());
    CHECK(r.complete == (r.restarts < 3));
    yielded += r.yields > 0 ? 1 : 0;
    restarted += r.restarts;
    incomplete += r.complete ? 0 : 1;
    // The walk gave the lock up and the worker's operations ran in between.
    let_worker_in = r.yields > 0 && r.operations > 0;
  }
  stop->store(true);
  REQUIRE(worker.wait() == 0);
  ::munmap(stop, sizeof(std::atomic<bool>));
  INFO(fmt::format("walks {}, with yields {}, restarts {}, incomplete {}", walks, yielded,
                   restarted, incomplete));
  CHECK(let_worker_in);
  CHECK(restarted > 0);  // an operation ran into a whole walk, which started again
  // Quiet again: the paced walk completes, and agrees with the exclusive one.
  const VerifyReport quiet = m->verify(VerifyMode::kPaced);
  CHECK(quiet.complete);
  CHECK(quiet.problems.empty());
  CHECK(m->verify(VerifyMode::kExclusive).problems.empty());
  check_consistent(*m);
}
