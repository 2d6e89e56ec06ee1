// SPDX-License-Identifier: Apache-2.0
// The kvbm_* metrics of one or more segments in the Prometheus text exposition format (0.0.4):
// per family one "# HELP" and one "# TYPE" line, then one sample per segment labelled
// pool="<segment name>". Families are never repeated, so several segments in one exposition
// stay valid (promtool check metrics). Used by `kvbm-ctl metrics`.
#pragma once

#include <span>
#include <string>

#include "kvbm/metrics.hpp"

namespace kvbm::detail {

struct PoolMetrics {
  std::string pool;  // the segment name
  MetricsSnapshot metrics;
};

std::string prometheus_text(std::span<const PoolMetrics> pools);

/// A label value escaped for the text format (backslash, double quote, newline).
std::string prometheus_escape(std::string_view value);

}  // namespace kvbm::detail
