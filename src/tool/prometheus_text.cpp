// SPDX-License-Identifier: Apache-2.0
#include "tool/prometheus_text.hpp"

#include <fmt/format.h>

namespace kvbm::detail {

std::string prometheus_escape(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string prometheus_text(std::span<const PoolMetrics> pools) {
  std::string out;
  if (pools.empty()) {
    return out;
  }
  // Every snapshot lists the same names in the same order.
  const auto names = pools.front().metrics.all();
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string_view name = names[i].first;
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name,
                   MetricsSnapshot::help(name), name,
                   MetricsSnapshot::is_gauge(name) ? "gauge" : "counter");
    for (const PoolMetrics& p : pools) {
      fmt::format_to(std::back_inserter(out), "{}{{pool=\"{}\"}} {}\n", name,
                     prometheus_escape(p.pool), *p.metrics.get(name));
    }
  }
  return out;
}

}  // namespace kvbm::detail
