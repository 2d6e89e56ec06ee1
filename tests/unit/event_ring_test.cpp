// SPDX-License-Identifier: Apache-2.0
// The KV event ring (DESIGN.md section 10): which operation emits which event, that duplicates
// and resurrections emit nothing, sequence numbers gap-free from 0, token ids carried with
// Stored events, wrap-around and lost events, and a reader that takes no process entry.
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include <catch2/catch.hpp>

#include "kvbm/kvbm.hpp"

#include "support/temp_segment.hpp"

namespace {

using kvbm::BlockManager;
using kvbm::Event;
using kvbm::EventKind;
using kvbm::EventReader;
using kvbm::SegmentConfig;
using kvbm::SequenceHash;
using kvbm::testing::Child;
using kvbm::testing::Signal;
using kvbm::testing::TempSegment;

SequenceHash h(std::uint64_t i) {
  return SequenceHash::make(0xe7e00 + i, std::nullopt, 0);
}

std::vector<std::uint32_t> tokens(std::uint64_t i, std::uint32_t n = 16) {
  std::vector<std::uint32_t> t(n);
  for (std::uint32_t j = 0; j < n; ++j) {
    t[j] = static_cast<std::uint32_t>(i * 1000 + j);
  }
  return t;
}

SegmentConfig lru(const TempSegment& seg, std::uint32_t blocks) {
  SegmentConfig c = seg.config(blocks);
  c.eviction = kvbm::EvictionPolicy::kLru;
  return c;
}

kvbm::ImmutableBlock put(BlockManager& m, std::uint64_t i) {
  auto b = std::move(m.allocate_blocks(1).value()[0]);
  return m.register_block(std::move(b).stage(h(i), 16).value());
}

// Events from `from` to the end of the ring.
std::vector<Event> tail(const EventReader& r, std::uint64_t from) {
  auto ev = r.read(from, 1u << 20);
  REQUIRE(ev.has_value());
  std::uint64_t seq = from;
  for (const Event& e : *ev) {
    REQUIRE(e.seq == seq++);  // gap-free
  }
  return std::move(*ev);
}

std::vector<std::pair<EventKind, SequenceHash>> kinds(const std::vector<Event>& ev) {
  std::vector<std::pair<EventKind, SequenceHash>> out;
  for (const Event& e : ev) {
    out.emplace_back(e.kind, e.hash);
  }
  return out;
}

using P = std::pair<EventKind, SequenceHash>;

}  // namespace

TEST_CASE("A new segment's ring holds one Cleared event", "[events]") {
  TempSegment seg("ev");
  auto m = seg.create(lru(seg, 8));
  auto r = EventReader::open(seg.name()).value();
  CHECK(r.oldest_seq() == 0);
  CHECK(r.next_seq() == 1);
  CHECK(r.capacity() == 65536);
  auto ev = tail(r, 0);
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == EventKind::kCleared);
  CHECK(ev[0].hash == SequenceHash());
  CHECK(m->metrics().get("kvbm_events_total") == 1);
  // The reader is not an attachment.
  CHECK(m->metrics().attached_processes == 1);
  CHECK(tail(r, 1).empty());
  CHECK(tail(r, 7).empty());  // beyond the end: nothing yet
}

TEST_CASE("event_capacity is validated and 0 keeps no events", "[events]") {
  TempSegment seg("ev");
  for (std::uint32_t bad : {1u, 100u, 128u, 255u, 3000u, 1u << 25}) {
    SegmentConfig c = lru(seg, 8);
    c.event_capacity = bad;
    INFO(bad);
    auto v = kvbm::validate_config(c);
    REQUIRE_FALSE(v.has_value());
    CHECK(v.error().code == kvbm::Errc::kInvalidConfig);
    CHECK(v.error().message.find("event_capacity") != std::string::npos);
  }
  SegmentConfig c = lru(seg, 8);
  c.event_capacity = 0;
  auto m = seg.create(c);
  auto held = put(*m, 1);
  CHECK(m->metrics().get("kvbm_events_total") == 0);
  auto r = EventReader::open(seg.name());
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == kvbm::Errc::kInvalidConfig);
  auto missing = EventReader::open("kvbm-no-such-segment-ev");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == kvbm::Errc::kNotFound);
}

TEST_CASE("Registration stores; duplicates, drops and resurrections emit nothing", "[events]") {
  TempSegment seg("ev");
  auto m = seg.create(lru(seg, 8));
  auto r = EventReader::open(seg.name()).value();
  auto a = put(*m, 1);
  auto dup = put(*m, 1);  // a Duplicate of the same hash
  CHECK(dup.block_id() != a.block_id());
  CHECK(kinds(tail(r, 1)) == std::vector<P>{{EventKind::kStored, h(1)}});
  a = kvbm::ImmutableBlock();
  dup = kvbm::ImmutableBlock();                                   // -> Inactive: still cached
  auto again = m->match_blocks(std::vector<SequenceHash>{h(1)});  // resurrection
  REQUIRE(again.size() == 1);
  again.clear();
  CHECK(r.next_seq() == 2);
  CHECK(m->metrics().get("kvbm_events_total") == 2);

  // An unregistered block (Mutable, Staged, unstaged) emits nothing.
  {
    auto b = std::move(m->allocate_blocks(1).value()[0]);
    auto c = std::move(b).stage(h(2), 16).value();
    auto back = std::move(c).reset();
  }
  CHECK(r.next_seq() == 2);
}

TEST_CASE("Reject policy: a rejected duplicate emits nothing", "[events]") {
  TempSegment seg("ev");
  SegmentConfig c = lru(seg, 8);
  c.duplication = kvbm::DuplicationPolicy::kReject;
  auto m = seg.create(c);
  auto r = EventReader::open(seg.name()).value();
  auto a = put(*m, 1);
  auto b = put(*m, 1);
  CHECK(b.block_id() == a.block_id());
  CHECK(kinds(tail(r, 1)) == std::vector<P>{{EventKind::kStored, h(1)}});
}

TEST_CASE("Eviction, reset-on-release and drain remove", "[events]") {
  TempSegment seg("ev");
  auto m = seg.create(lru(seg, 4));
  auto r = EventReader::open(seg.name()).value();
  for (int i = 1; i <= 4; ++i) {
    put(*m, i);  // dropped at once: Inactive
  }
  std::uint64_t from = r.next_seq();
  CHECK(from == 5);
  {
    auto taken = m->allocate_blocks(2).value();  // evicts h1, h2 (LRU)
    CHECK(kinds(tail(r, from)) ==
          std::vector<P>{{EventKind::kRemoved, h(1)}, {EventKind::kRemoved, h(2)}});
  }
  from = r.next_seq();
  {
    auto held = put(*m, 5);
    held.set_reset_on_release(true);
    CHECK(kinds(tail(r, from)) == std::vector<P>{{EventKind::kStored, h(5)}});
    from = r.next_seq();
  }  // last drop: Primary -> Reset
  CHECK(kinds(tail(r, from)) == std::vector<P>{{EventKind::kRemoved, h(5)}});
  from = r.next_seq();
  REQUIRE(m->reset_inactive_pool().has_value());
  auto drained = kinds(tail(r, from));  // in eviction order
  CHECK(drained == std::vector<P>{{EventKind::kRemoved, h(3)}, {EventKind::kRemoved, h(4)}});
  CHECK(m->metrics().get("kvbm_events_total") == static_cast<std::int64_t>(r.next_seq()));
}

TEST_CASE("Reaping a dead process removes what only it kept", "[events]") {
  TempSegment seg("ev");
  auto m = seg.create(lru(seg, 8));
  auto r = EventReader::open(seg.name()).value();
  const std::string name = seg.name();
  Signal ready;
  Child child([&] {
    auto cm = BlockManager::open(name).value();
    auto kept = put(*cm, 1);
    auto gone = put(*cm, 2);
    gone.set_reset_on_release(true);
    ready.notify();
    ::pause();
    return 0;
  });
  REQUIRE(ready.wait() == 1);
  child.kill();
  const std::uint64_t from = r.next_seq();
  CHECK(m->reap_dead_processes() == 1);
  // h1 goes Inactive (still cached, nothing emitted); h2 was reset-on-release.
  CHECK(kinds(tail(r, from)) == std::vector<P>{{EventKind::kRemoved, h(2)}});
}

TEST_CASE("Stored events carry the token ids of store_token_ids segments", "[events]") {
  TempSegment seg("ev");
  SegmentConfig c = lru(seg, 4);
  c.store_token_ids = true;
  auto m = seg.create(c);
  auto r = EventReader::open(seg.name()).value();
  CHECK(r.stores_token_ids());

  auto stage_ids = [&](std::uint64_t i) {
    auto b = std::move(m->allocate_blocks(1).value()[0]);
    const auto ids = tokens(i);
    return m->register_block(std::move(b).stage(h(i), 16, ids).value());
  };
  auto a = stage_ids(1);
  auto b = put(*m, 2);  // staged without ids
  auto ev = tail(r, 1);
  REQUIRE(ev.size() == 2);
  CHECK(ev[0].token_ids == tokens(1));
  CHECK(ev[0].block_size == 16);
  CHECK_FALSE(ev[0].token_ids_gone);
  CHECK(ev[1].token_ids.empty());
  CHECK_FALSE(ev[1].token_ids_gone);

  // A wrong number of ids hands the block back, recording nothing.
  {
    auto blk = std::move(m->allocate_blocks(1).value()[0]);
    const auto id = blk.block_id();
    const auto few = tokens(3, 3);
    auto res = std::move(blk).stage(h(3), 16, few);
    REQUIRE_FALSE(res.has_value());
    CHECK(res.error().expected == 16);
    CHECK(res.error().actual == 3);
    CHECK(res.error().block.block_id() == id);
    // Ids of a stage that was undone do not stick to the next stage without ids.
    const auto ids = tokens(4);
    auto staged = std::move(res.error().block).stage(h(4), 16, ids).value();
    auto again = std::move(staged).reset();
    auto imm = m->register_block(std::move(again).stage(h(5), 16).value());
    auto last = tail(r, 3);
    REQUIRE(last.size() == 1);
    CHECK(last[0].hash == h(5));
    CHECK(last[0].token_ids.empty());
  }
  // Once a stored block's slot is reused, its ids are gone: the event says so and a Removed of
  // the same hash follows.
  a = kvbm::ImmutableBlock();
  b = kvbm::ImmutableBlock();
  auto taken = m->allocate_blocks(4);  // evicts h1, h2 and h5
  REQUIRE(taken.has_value());
  for (auto& blk : *taken) {
    const auto ids = tokens(9);
    const auto id = blk.block_id();
    (void)m->register_block(std::move(blk).stage(h(10 + id), 16, ids).value());
  }
  ev = tail(r, 1);
  REQUIRE(ev[0].hash == h(1));
  CHECK(ev[0].token_ids_gone);
  CHECK(ev[0].token_ids.empty());
  bool removed_later = false;
  for (const Event& e : ev) {
    removed_later |= e.kind == EventKind::kRemoved && e.hash == h(1);
  }
  CHECK(removed_later);
}

TEST_CASE("The ring wraps: old events are reported lost, never misread", "[events]") {
  TempSegment seg("ev");
  SegmentConfig c = lru(seg, 4);
  c.event_capacity = 256;
  auto m = seg.create(c);
  auto r = EventReader::open(seg.name()).value();
  // Each put of a new hash into a full pool evicts one: Stored + Removed.
  for (int i = 0; i < 300; ++i) {
    put(*m, i);
  }
  const std::uint64_t next = r.next_seq();
  CHECK(next == static_cast<std::uint64_t>(m->metrics().events_total));
  CHECK(next == 1 + 300 + 296);
  CHECK(r.oldest_seq() == next - 256);
  auto lost = r.read(0, 10);
  REQUIRE_FALSE(lost.has_value());
  CHECK(lost.error().code == kvbm::Errc::kEventsLost);
  CHECK(r.read(r.oldest_seq() - 1, 10).error().code == kvbm::Errc::kEventsLost);
  auto all = tail(r, r.oldest_seq());  // more than one locked chunk
  REQUIRE(all.size() == 256);
  // The newest event is the last Stored; the one before it the eviction it caused.
  CHECK(all.back().kind == EventKind::kStored);
  CHECK(all.back().hash == h(299));
  CHECK(all[all.size() - 2].kind == EventKind::kRemoved);
  CHECK(all[all.size() - 2].hash == h(295));
  // max_events bounds a read.
  CHECK(r.read(r.oldest_seq(), 5).value().size() == 5);
}
