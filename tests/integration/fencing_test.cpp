// SPDX-License-Identifier: Apache-2.0
// Fencing (a process wrongly declared dead gets clear errors, never corrupts) and the optional
// background reaper.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <catch2/catch.hpp>

#include "kvbm/kvbm.hpp"

#include "support/temp_segment.hpp"
#include "testing/hooks.hpp"

namespace {
using kvbm::BlockManager;
using kvbm::SequenceHash;
using kvbm::testing::Child;
using kvbm::testing::Peer;
using kvbm::testing::Signal;
using kvbm::testing::TempSegment;

SequenceHash H(int i) {
  return SequenceHash::make(500 + i, std::nullopt, 0);
}

kvbm::Errc fenced_code(const std::function<void()>& call) {
  try {
    call();
  } catch (const kvbm::SegmentError& e) {
    return e.error().code;
  }
  return kvbm::Errc::kSystem;  // did not throw
}
}  // namespace

TEST_CASE("A process whose entry was reclaimed is fenced and harmless", "[fencing][integration]") {
  TempSegment seg("fence");
  auto cfg = seg.config(16);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  auto owner = seg.create(cfg);  // keeps the segment; plays the other worker
  auto victim = seg.open();
  auto mut = victim->allocate_blocks(2).value();
  auto staged = std::move(mut[1]).stage(H(1), 16).value();
  auto imm = victim->register_block(std::move(staged));
  const auto imm_id = imm.block_id();
  const auto mut_id = mut[0].block_id();

  // The victim loses its liveness lock (e.g. a daemonising helper closed every fd): to the
  // others it is dead, and they reap it.
  Peer::drop_liveness(*victim);
  REQUIRE(owner->reap_dead_processes() == 1);
  CHECK(owner->inspect_block(mut_id).state == kvbm::SlotState::kReset);
  CHECK(owner->inspect_block(imm_id).state == kvbm::SlotState::kInactive);
  // Another process now takes those blocks.
  auto taken = owner->allocate_blocks_with_evictions(16).value();
  REQUIRE(taken.first.size() == 16);

  // Every later call of the fenced process fails clearly...
  CHECK(fenced_code([&] { (void)victim->allocate_blocks(1); }) == kvbm::Errc::kFenced);
  CHECK(fenced_code([&] { (void)victim->match_blocks(std::vector<SequenceHash>{H(1)}); }) ==
        kvbm::Errc::kFenced);
  CHECK(fenced_code([&] { victim->counts(); }) == kvbm::Errc::kFenced);
  CHECK(fenced_code([&] { imm.set_reset_on_release(true); }) == kvbm::Errc::kFenced);
  // Staging takes no lock, yet a fenced process's stage of a slot that is now another
  // process's Mutable block fails too, and leaves that block alone.
  CHECK(fenced_code([&] { (void)std::move(mut[0]).stage(H(9), 16); }) == kvbm::Errc::kFenced);
  CHECK(owner->inspect_block(mut_id).state == kvbm::SlotState::kMutable);
  // ...and its handles' destructors do not touch blocks that now belong to someone else.
  mut.clear();
  imm = kvbm::ImmutableBlock();
  victim.reset();
  for (const auto& b : taken.first) {
    CHECK(owner->inspect_block(b.block_id()).state == kvbm::SlotState::kMutable);
  }
  CHECK(owner->verify().empty());
  CHECK(owner->counts().mutable_ == 16);
}

TEST_CASE("The background reaper frees a dead worker's blocks without any allocation",
          "[reaper][integration]") {
  TempSegment seg("bgreap");
  auto cfg = seg.config(32);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  auto m = seg.create(cfg);
  m->start_background_reaper(std::chrono::milliseconds(50));
  Signal ready, never;
  const std::string name = seg.name();
  Child worker([&] {
    auto w = BlockManager::open(name).value();
    auto blocks = w->allocate_blocks(5).value();
    ready.notify();
    never.wait();
    return 0;
  });
  REQUIRE(ready.wait() == 1);
  REQUIRE(m->counts().mutable_ == 5);
  worker.kill();
  // Wait for the effect with a deadline: the reaper runs every 50 ms, the bound is 1 s.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (m->counts().mutable_ != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(m->counts().mutable_ == 0);
  CHECK(m->metrics().reaped_processes_total == 1);
  CHECK(m->verify().empty());
  m->stop_background_reaper();
}

TEST_CASE("Without the background reaper a dead worker's blocks stay until reaped",
          "[reaper][integration]") {
  TempSegment seg("noreap");
  auto cfg = seg.config(32);
  auto m = seg.create(cfg);
  Signal ready, never;
  const std::string name = seg.name();
  Child worker([&] {
    auto w = BlockManager::open(name).value();
    auto blocks = w->allocate_blocks(5).value();
    ready.notify();
    never.wait();
    return 0;
  });
  REQUIRE(ready.wait() == 1);
  worker.kill();
  CHECK(m->counts().mutable_ == 5);
  CHECK(m->verify().size() == 1);
  CHECK(m->reap_dead_processes() == 1);
  CHECK(m->counts().mutable_ == 0);
}

TEST_CASE("A stray hash write of a fenced stager is overwritten by the slot's real owner",
          "[fencing][integration]") {
  TempSegment seg("stray");
  auto cfg = seg.config(8);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  auto m = seg.create(cfg);
  auto blocks = m->allocate_blocks(2).value();
  const auto id = blocks[0].block_id();
  // A fenced process that still believed it owned this slot got as far as claiming its hash
  // field (the first step of a lock-free stage) before it lost the race.
  REQUIRE(Peer::stray_stage_hash(*m, id, H(66)));
  CHECK(m->inspect_block(id).state == kvbm::SlotState::kMutable);
  // The owner's stage notices (the field is not empty) and stages under the lock instead.
  auto staged = std::move(blocks[0]).stage(H(1), 16).value();
  CHECK(m->inspect_block(id).hash == H(1));
  CHECK(m->counts().staged == 1);
  // Once staged, a stray claim cannot land any more.
  CHECK_FALSE(Peer::stray_stage_hash(*m, id, H(67)));
  auto imm = m->register_block(std::move(staged));
  CHECK(imm.sequence_hash() == H(1));
  CHECK(m->inspect_block(id).hash == H(1));
  CHECK(m->match_blocks(std::vector<SequenceHash>{H(1)}).size() == 1);
  CHECK(m->match_blocks(std::vector<SequenceHash>{H(66)}).empty());
  // A block whose field is still empty stages on the fast path.
  auto other = std::move(blocks[1]).stage(H(2), 16).value();
  CHECK(m->inspect_block(other.block_id()).hash == H(2));
  CHECK(m->verify().empty());
}
