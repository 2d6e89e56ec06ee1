// SPDX-License-Identifier: Apache-2.0
// The metrics beyond the store's counters: prefix-cache queries and hits in tokens (as vLLM
// counts them), capacity, dead processes (a SIGKILLed child, before and after reaping), and the
// HELP text of every name.
#include "integration/multiprocess_support.hpp"

using namespace multiprocess_test;

TEST_CASE("metrics: prefix-cache queries and hits count tokens of match_blocks",
          "[metrics][integration]") {
  TempSegment seg("metrics-prefix");
  auto m = create_lru(seg, 32);
  const auto hs = seq_hashes(3, 4);  // 4 blocks of kBlockSize tokens
  CHECK(metric(*m, "kvbm_prefix_cache_queries_total") == 0);
  CHECK(metric(*m, "kvbm_prefix_cache_hits_total") == 0);
  {
    auto held = register_hashes(*m, std::span(hs).first(2));
    auto got = m->match_blocks(hs);  // prefix of 2 of the 4
    REQUIRE(got.size() == 2);
  }
  CHECK(metric(*m, "kvbm_prefix_cache_queries_total") == 4 * kBlockSize);
  CHECK(metric(*m, "kvbm_prefix_cache_hits_total") == 2 * kBlockSize);
  // A miss at the first hash: asked for, nothing found.
  const auto other = seq_hashes(4, 3);
  CHECK(m->match_blocks(other).empty());
  CHECK(metric(*m, "kvbm_prefix_cache_queries_total") == 7 * kBlockSize);
  CHECK(metric(*m, "kvbm_prefix_cache_hits_total") == 2 * kBlockSize);
  // Scattered matches and scans are not prefix-cache lookups.
  (void)m->match_blocks_scattered(hs);
  (void)m->scan_matches(hs, false);
  CHECK(metric(*m, "kvbm_prefix_cache_queries_total") == 7 * kBlockSize);
  // Another process's lookups count in the same segment-wide metric.
  Child c([&] {
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    CHILD_REQUIRE(mb->match_blocks(hs).size() == 2, 11);
    return 0;
  });
  REQUIRE(c.wait() == 0);
  CHECK(metric(*m, "kvbm_prefix_cache_queries_total") == 11 * kBlockSize);
  CHECK(metric(*m, "kvbm_prefix_cache_hits_total") == 4 * kBlockSize);
}

TEST_CASE("metrics: capacity and dead processes", "[metrics][integration]") {
  TempSegment seg("metrics-dead");
  auto m = create_lru(seg, 24);
  CHECK(metric(*m, "kvbm_capacity_blocks") == 24);
  CHECK(metric(*m, "kvbm_dead_processes") == 0);  // this process's own entry is alive
  Signal ready, never;
  Child victim([&] {
    Reporter rep(ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    auto held = register_hashes(*mb, seq_hashes(8, 2));
    rep.send();
    never.wait();  // SIGKILLed here
    return rep.finish();
  });
  await(ready, victim);
  CHECK(metric(*m, "kvbm_dead_processes") == 0);  // alive
  CHECK(metric(*m, "kvbm_attached_processes") == 2);
  victim.kill();
  CHECK(metric(*m, "kvbm_dead_processes") == 1);
  CHECK(metric(*m, "kvbm_attached_processes") == 2);  // dead but unreaped counts as attached
  REQUIRE(m->reap_dead_processes() == 1);
  CHECK(metric(*m, "kvbm_dead_processes") == 0);
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  CHECK(metric(*m, "kvbm_capacity_blocks") == 24);
}

TEST_CASE("metrics: every name has HELP text and a type", "[metrics]") {
  kvbm::MetricsSnapshot snap;
  std::size_t gauges = 0;
  for (const auto& [name, value] : snap.all()) {
    INFO(name);
    CHECK(name.starts_with("kvbm_"));
    CHECK_FALSE(kvbm::MetricsSnapshot::help(name).empty());
    CHECK(kvbm::MetricsSnapshot::help(name).find('\n') == std::string_view::npos);
    gauges += kvbm::MetricsSnapshot::is_gauge(name) ? 1 : 0;
  }
  CHECK(gauges == 7);
  CHECK(kvbm::MetricsSnapshot::help("kvbm_no_such_metric").empty());
  CHECK(snap.get("kvbm_capacity_blocks").has_value());
  CHECK(snap.get("kvbm_dead_processes").has_value());
}
