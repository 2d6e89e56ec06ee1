// SPDX-License-Identifier: Apache-2.0
// Segment-wide counters and gauges (DESIGN.md section 5). Counters only grow; gauges are derived
// from slot state and the process table at snapshot time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace kvbm {

struct MetricsSnapshot {
  std::int64_t allocations_total = 0;
  std::int64_t allocations_from_reset_total = 0;
  std::int64_t evictions_total = 0;
  std::int64_t registrations_total = 0;
  std::int64_t duplicate_blocks_total = 0;
  std::int64_t registration_dedup_total = 0;
  std::int64_t stagings_total = 0;
  std::int64_t match_hashes_requested_total = 0;
  std::int64_t match_blocks_returned_total = 0;
  std::int64_t scan_hashes_requested_total = 0;
  std::int64_t scan_blocks_returned_total = 0;
  std::int64_t reaped_processes_total = 0;
  std::int64_t recoveries_total = 0;
  std::int64_t events_total = 0;  // KV events written to the segment's ring (section 10)
  // Tokens asked for / found by match_blocks, as vLLM's prefix-cache metrics count them: a hash
  // stands for one complete block of block_size tokens (hit rate = hits / queries).
  std::int64_t prefix_cache_queries_total = 0;
  std::int64_t prefix_cache_hits_total = 0;
  // gauges
  std::int64_t reset_pool_size = 0;
  std::int64_t inactive_pool_size = 0;
  std::int64_t inflight_mutable = 0;
  std::int64_t inflight_immutable = 0;
  std::int64_t attached_processes = 0;
  std::int64_t capacity_blocks = 0;  // block_count of the segment
  std::int64_t dead_processes = 0;   // entries whose process died and that are not reaped yet

  /// Value by full name ("kvbm_allocations_total"); nullopt for an unknown name.
  std::optional<std::int64_t> get(std::string_view name) const;
  /// Every metric as (full name, value), counters first, in a stable order.
  std::vector<std::pair<std::string_view, std::int64_t>> all() const;
  /// True for the gauges (the names without the "_total" suffix).
  static bool is_gauge(std::string_view name);
  /// One-line description of a metric (the Prometheus HELP text); empty for an unknown name.
  static std::string_view help(std::string_view name);
};

struct PoolCounts {
  std::size_t reset = 0, mutable_ = 0, staged = 0, primary = 0, duplicate = 0, inactive = 0;
};

}  // namespace kvbm
