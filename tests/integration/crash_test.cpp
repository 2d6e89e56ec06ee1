// SPDX-License-Identifier: Apache-2.0
// Crash consistency, proven by enumeration: a worker is SIGKILLed at every named crash point of
// a workload that runs every operation (attach, allocate, stage, register with duplicates and
// resurrection, match, scattered match, weak upgrade, reset-on-release, release, eviction,
// unstage, drain, detach), then a survivor (holding blocks of its own) recovers and reaps, and
// every invariant is checked. Also: deaths inside recovery and inside reaping, and a negative
// control showing that the checks catch a recovery that does not roll back.
// After every crash the KV event ring must agree with slot state: replaying it gives exactly the
// cached (Primary or Inactive) hashes, with sequence numbers gap-free and kvbm_events_total equal
// to their count, so a crash neither lost nor invented an event.
#include <signal.h>
#include <stdlib.h>

#include <set>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "kvbm/kvbm.hpp"

#include "store/crash_point.hpp"
#include "support/temp_segment.hpp"

namespace {

using kvbm::BlockManager;
using kvbm::SequenceHash;
using kvbm::testing::Child;
using kvbm::testing::TempSegment;

constexpr std::uint32_t kBlocks = 24;
constexpr int kKilled = 128 + SIGKILL;

SequenceHash H(int i) {
  return SequenceHash::make(1000 + i, std::nullopt, 0);
}

// Token ids of H(i), for the blocks staged with ids.
std::vector<std::uint32_t> T(int i) {
  return std::vector<std::uint32_t>(16, static_cast<std::uint32_t>(7000 + i));
}

// The survivor's own state, which every crash must leave intact.
struct Bystander {
  std::shared_ptr<BlockManager> m;
  std::vector<kvbm::ImmutableBlock> held;  // H0 (held), H1 and H4 were dropped: Inactive
  std::optional<kvbm::MutableBlock> mut;
};

Bystander make_bystander(const TempSegment& seg, kvbm::DuplicationPolicy dup) {
  auto cfg = seg.config(kBlocks);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  cfg.duplication = dup;
  cfg.store_token_ids = true;
  Bystander b{seg.create(cfg), {}, {}};
  auto blocks = b.m->allocate_blocks(3).value();
  std::vector<kvbm::CompleteBlock> complete;
  const int hs[] = {0, 1, 4};
  for (int i = 0; i < 3; ++i) {
    complete.push_back(std::move(blocks[i]).stage(H(hs[i]), 16).value());
  }
  auto imm = b.m->register_blocks(std::move(complete));
  b.held.push_back(imm[0]);  // keep H0; H1, H4 become Inactive
  imm.clear();
  b.mut = std::move(b.m->allocate_blocks(1).value()[0]);
  return b;
}

// Every operation of the library, in one process. Returns 0 when it ran to the end.
int workload(const std::string& name) {
  auto m = BlockManager::open(name).value();
  {
    auto blocks = m->allocate_blocks(4).value();
    std::vector<kvbm::CompleteBlock> complete;
    for (int i = 0; i < 4; ++i) {  // H0: active elsewhere, H1: inactive, H2/H3: new
      const auto ids = T(i);
      complete.push_back(i % 2 == 0 ? std::move(blocks[i]).stage(H(i), 16, ids).value()
                                    : std::move(blocks[i]).stage(H(i), 16).value());
    }
    auto imm = m->register_blocks(std::move(complete));
    auto prefix = m->match_blocks(std::vector<SequenceHash>{H(2), H(3), H(4), H(9)});
    auto scattered = m->match_blocks_scattered(std::vector<SequenceHash>{H(9), H(4), H(2)});
    auto scanned = m->scan_matches(std::vector<SequenceHash>{H(1), H(3)}, true);
    kvbm::WeakBlock weak = imm[2].downgrade();
    imm[3].set_reset_on_release(true);
    imm.clear();
    prefix.clear();
    scattered.clear();
    scanned.clear();
    auto again = weak.upgrade();  // resurrects H2 from the inactive pool
  }
  {
    auto staged = m->allocate_blocks(1).value()[0].block_id();
    auto one = m->allocate_blocks(1).value();
    auto c = std::move(one[0]).stage(H(7), 16).value();
    auto back = std::move(c).reset();  // Staged -> Mutable
    (void)staged;
  }
  {
    // Everything left: the free list first, then evictions of the inactive hashes.
    const std::size_t n = m->available_blocks();
    auto all = m->allocate_blocks_with_evictions(n).value();
  }
  {
    auto blocks = m->allocate_blocks(2).value();
    std::vector<kvbm::CompleteBlock> complete;
    const auto ids = T(5);
    complete.push_back(std::move(blocks[0]).stage(H(5), 16, ids).value());
    complete.push_back(std::move(blocks[1]).stage(H(6), 16).value());
    auto imm = m->register_blocks(std::move(complete));
  }
  (void)m->reset_inactive_pool();  // the bystander's blocks are in use: kBlocksInUse
  return 0;
}

// The ring replayed from its start must give exactly the cached hashes of the slots.
std::string check_ring(const std::string& name, BlockManager& m) {
  auto reader = kvbm::EventReader::open(name);
  if (!reader) {
    return "EventReader::open: " + reader.error().message;
  }
  if (reader->oldest_seq() != 0) {
    return "the ring lost events";
  }
  auto events = reader->read(0, 1u << 20);
  if (!events) {
    return "read: " + events.error().message;
  }
  if (events->size() != reader->next_seq() ||
      static_cast<std::int64_t>(events->size()) != m.metrics().events_total) {
    return fmt::format("{} events read, next_seq {}, kvbm_events_total {}", events->size(),
                       reader->next_seq(), m.metrics().events_total);
  }
  std::set<std::pair<std::uint64_t, std::uint64_t>> stored;
  for (std::size_t i = 0; i < events->size(); ++i) {
    const kvbm::Event& e = (*events)[i];
    const auto key = std::pair{e.hash.hi(), e.hash.lo()};
    if (e.seq != i) {
      return fmt::format("event {} has seq {}", i, e.seq);
    }
    switch (e.kind) {
      case kvbm::EventKind::kCleared:
        if (i != 0) {
          return fmt::format("Cleared at seq {}", i);
        }
        break;
      case kvbm::EventKind::kStored:
        if (!stored.insert(key).second) {
          return fmt::format("seq {}: {} stored twice", i, e.hash);
        }
        if (!e.token_ids.empty() &&
            e.token_ids != T(static_cast<int>(e.hash.current_fragment()) - 1000)) {
          return fmt::format("seq {}: wrong token ids for {}", i, e.hash);
        }
        break;
      case kvbm::EventKind::kRemoved:
        if (stored.erase(key) != 1) {
          return fmt::format("seq {}: {} removed but not stored", i, e.hash);
        }
        break;
    }
  }
  std::set<std::pair<std::uint64_t, std::uint64_t>> cached;
  for (kvbm::BlockId id = 0; id < m.total_blocks(); ++id) {
    const auto info = m.inspect_block(id);
    if (info.state == kvbm::SlotState::kPrimary || info.state == kvbm::SlotState::kInactive) {
      cached.insert({info.hash.hi(), info.hash.lo()});
    }
  }
  if (stored != cached) {
    return fmt::format("the ring says {} blocks are cached, the slots {}", stored.size(),
                       cached.size());
  }
  return {};
}

// After a death: the survivor recovers (on its next lock) and reaps; nothing of its own is lost
// and every invariant holds. Returns a description of what is wrong, empty when all is right.
std::string check_after_crash(Bystander& b, const std::string& name) {
  try {
    b.m->reap_dead_processes();
    std::vector<std::string> problems = b.m->verify();
    if (!problems.empty()) {
      return "verify: " + problems.front();
    }
    const auto c = b.m->counts();
    const std::size_t sum = c.reset + c.mutable_ + c.staged + c.primary + c.duplicate + c.inactive;
    if (sum != kBlocks) {
      return fmt::format("counts add up to {}", sum);
    }
    const auto mt = b.m->metrics();
    if (mt.reset_pool_size != static_cast<std::int64_t>(c.reset) ||
        mt.inactive_pool_size != static_cast<std::int64_t>(c.inactive) ||
        mt.inflight_mutable != static_cast<std::int64_t>(c.mutable_) ||
        mt.inflight_immutable != static_cast<std::int64_t>(c.primary + c.duplicate) ||
        mt.attached_processes != 1) {
      return "gauges do not match the counts";
    }
    // Only the survivor's blocks are held.
    if (c.mutable_ != 1 || c.staged != 0 || c.primary != 1 || c.duplicate != 0) {
      return fmt::format("held blocks left over: mutable {} staged {} primary {} duplicate {}",
                         c.mutable_, c.staged, c.primary, c.duplicate);
    }
    const auto held = b.m->inspect_block(b.held[0].block_id());
    if (held.state != kvbm::SlotState::kPrimary || held.hash != H(0) ||
        held.holder_processes != 1) {
      return "the survivor's registered block changed";
    }
    if (b.m->inspect_block(b.mut->block_id()).state != kvbm::SlotState::kMutable) {
      return "the survivor's mutable block changed";
    }
    auto matched = b.m->match_blocks(std::vector<SequenceHash>{H(0)});
    if (matched.size() != 1 || matched[0].block_id() != b.held[0].block_id()) {
      return "the survivor's block is not matchable";
    }
    if (std::string ring = check_ring(name, *b.m); !ring.empty()) {
      return "event ring: " + ring;
    }
    // Nothing leaked: every block not held by the survivor can be allocated.
    if (b.m->available_blocks() != kBlocks - 2 || !b.m->allocate_blocks(kBlocks - 2)) {
      return "blocks leaked";
    }
    if (std::string ring = check_ring(name, *b.m); !ring.empty()) {
      return "event ring after evicting everything: " + ring;
    }
  } catch (const std::exception& e) {
    return std::string("survivor call failed: ") + e.what();
  }
  return {};
}

struct Round {
  int child_exit;
  std::string problem;
};

Round crash_round(kvbm::DuplicationPolicy dup, std::uint64_t at, std::uint64_t recovery_at) {
  TempSegment seg("crash");
  Bystander b = make_bystander(seg, dup);
  const std::string name = seg.name();
  Child worker([&] {
    kvbm::detail::set_crash_point_for_test(at, nullptr);
    return workload(name);
  });
  const int exit = worker.wait();
  if (recovery_at > 0) {
    // A second process dies inside the recovery of the first one's interrupted operation.
    Child recoverer([&] {
      kvbm::detail::set_crash_point_for_test(recovery_at, "recover");
      auto m = BlockManager::open(name);
      return m ? 0 : 1;
    });
    recoverer.wait();
  }
  return Round{exit, check_after_crash(b, name)};
}

}  // namespace

TEST_CASE("A worker killed at every crash point loses only what it held", "[crash][integration]") {
  for (auto dup : {kvbm::DuplicationPolicy::kAllow, kvbm::DuplicationPolicy::kReject}) {
    std::uint64_t points = 0;
    for (std::uint64_t at = 1;; ++at) {
      REQUIRE(at < 5000);
      const Round r = crash_round(dup, at, 0);
      INFO("policy " << (dup == kvbm::DuplicationPolicy::kAllow ? "allow" : "reject")
                     << ", crash point " << at);
      REQUIRE(r.problem.empty());
      if (r.child_exit == 0) {
        points = at - 1;  // the workload ran to the end: every point was enumerated
        break;
      }
      REQUIRE(r.child_exit == kKilled);
    }
    // The workload passes through a meaningful number of points (guards against a silently
    // disabled KVBM_CRASH_POINT).
    CHECK(points > 100);
  }
}

TEST_CASE("A second death inside recovery still converges", "[crash][integration]") {
  for (std::uint64_t at = 1; at < 400; at += 7) {
    for (std::uint64_t rec = 1; rec <= 3; ++rec) {
      const Round r = crash_round(kvbm::DuplicationPolicy::kAllow, at, rec);
      INFO("crash point " << at << ", recovery point " << rec << ": " << r.problem);
      REQUIRE(r.problem.empty());
      if (r.child_exit == 0) {
        return;
      }
    }
  }
}

TEST_CASE("A reaper killed half-way is finished by the next", "[crash][integration]") {
  for (std::uint64_t at = 1;; ++at) {
    REQUIRE(at < 2000);
    TempSegment seg("reap");
    Bystander b = make_bystander(seg, kvbm::DuplicationPolicy::kAllow);
    const std::string name = seg.name();
    kvbm::testing::Signal ready;
    Child victim([&] {  // holds registered (incl. a duplicate), staged and mutable blocks
      auto m = BlockManager::open(name).value();
      auto blocks = m->allocate_blocks(6).value();
      std::vector<kvbm::CompleteBlock> complete;
      for (int i = 0; i < 4; ++i) {
        complete.push_back(std::move(blocks[i]).stage(H(i), 16).value());
      }
      auto imm = m->register_blocks(std::move(complete));
      auto staged = std::move(blocks[4]).stage(H(8), 16).value();
      auto matched = m->match_blocks(std::vector<SequenceHash>{H(4)});
      ready.notify();
      ::pause();
      return 0;
    });
    REQUIRE(ready.wait() == 1);
    victim.kill();
    Child reaper([&] {
      kvbm::detail::set_crash_point_for_test(at, "reap");
      auto m = BlockManager::open(name).value();  // attach does not reap the victim's entry...
      m->reap_dead_processes();                   // ...this does
      return 0;
    });
    const int exit = reaper.wait();
    const std::string problem = check_after_crash(b, name);
    INFO("reap crash point " << at << ": " << problem);
    REQUIRE(problem.empty());
    if (exit == 0) {
      CHECK(at > 5);
      break;
    }
    REQUIRE(exit == kKilled);
  }
}

TEST_CASE("Without rollback the checks catch the damage (negative control)",
          "[crash][integration]") {
  kvbm::detail::g_rollback_enabled = false;
  int detected = 0;
  int rounds = 0;
  for (std::uint64_t at = 1; at < 400; ++at) {
    const Round r = crash_round(kvbm::DuplicationPolicy::kAllow, at, 0);
    ++rounds;
    detected += r.problem.empty() ? 0 : 1;
    if (r.child_exit == 0) {
      break;
    }
  }
  kvbm::detail::g_rollback_enabled = true;
  INFO(detected << " of " << rounds << " rounds detected");
  CHECK(detected > 0);
}
