// SPDX-License-Identifier: Apache-2.0
// The plain timing harness of kvbm-bench: a monotonic clock, repetition statistics (median and
// nearest-rank p10/p90), and the result table (printed to stdout, optionally as Markdown).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kvbm_bench {

/// CLOCK_MONOTONIC in ns: comparable across processes of the host.
inline std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Stats {
  double median = 0;
  double p10 = 0;
  double p90 = 0;
  std::size_t n = 0;
};

/// Median (mean of the two middle values for an even count) and nearest-rank p10/p90.
inline Stats stats_of(std::vector<double> v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) {
    return s;
  }
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  s.median = n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  auto rank = [&](double p) {
    std::size_t k = static_cast<std::size_t>(p * static_cast<double>(n) + 0.999999);
    return v[std::clamp<std::size_t>(k, 1, n) - 1];
  };
  s.p10 = rank(0.10);
  s.p90 = rank(0.90);
  return s;
}

enum class Unit { kNsPerBlock, kMs, kUs, kRatio, kBytesPerBlock };

/// One line of the result table.
struct Row {
  std::string id;    // "1", "4b", ...
  std::string name;  // what is measured
  Unit unit = Unit::kNsPerBlock;
  std::optional<Stats> kvbm;
  std::optional<Stats> base;
  std::string base_label;  // what the baseline column measured, when it is not the obvious twin
  std::string target;      // as written in DESIGN/brief, e.g. "<= 60 ns, <= 1.0x"
  std::optional<bool> met;
  bool show_ratio = true;
  std::string miss_reason;  // filled when met == false
};

inline Row make_row(std::string id,
                    std::string name,
                    Unit unit,
                    std::optional<Stats> kvbm = std::nullopt,
                    std::optional<Stats> base = std::nullopt) {
  Row r;
  r.id = std::move(id);
  r.name = std::move(name);
  r.unit = unit;
  r.kvbm = kvbm;
  r.base = base;
  return r;
}

}  // namespace kvbm_bench
