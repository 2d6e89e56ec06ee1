// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl metrics NAME [--format prometheus|json]: segment-wide metrics (read-only).
#include <fmt/format.h>

#include "common.hpp"
#include "metrics_reader.hpp"

namespace kvbm::ctl {
namespace {

int run_metrics(const std::string& name, const std::string& format) {
  auto seg = open_ro(name);
  if (!seg) {
    return fail(seg.error());
  }
  const auto snap = d::read_metrics(**seg);
  if (format == "json") {
    fmt::print("{}\n", metrics_json(**seg).dump(2));
    return kOk;
  }
  for (const auto& [n, v] : snap.all()) {
    const bool gauge = MetricsSnapshot::is_gauge(n);
    fmt::print("# TYPE {} {}\n{}{{pool=\"{}\"}} {}\n", n, gauge ? "gauge" : "counter", n, name, v);
  }
  return kOk;
}

}  // namespace

Command add_metrics(CLI::App& app) {
  struct Options {
    std::string name;
    std::string format = "prometheus";
  };
  auto o = std::make_shared<Options>();
  auto* metrics = app.add_subcommand(
      "metrics",
      "Segment-wide metrics (Prometheus text format or JSON).\n  example: kvbm-ctl "
      "metrics kv-gpu0 > /var/lib/node_exporter/kvbm.prom");
  metrics->add_option("NAME", o->name, "segment name")->required();
  metrics->add_option("--format", o->format, "prometheus or json")
      ->check(CLI::IsMember({"prometheus", "json"}));
  return {metrics, [o] { return run_metrics(o->name, o->format); }};
}

}  // namespace kvbm::ctl
