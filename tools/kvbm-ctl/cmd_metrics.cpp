// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl metrics NAME [--format prometheus|json] [--json]: segment-wide metrics (read-only).
#include <fmt/format.h>

#include "common.hpp"
#include "metrics_reader.hpp"
#include "tool/prometheus_text.hpp"

namespace kvbm::ctl {
namespace {

int run_metrics(const std::string& name, bool as_json) {
  auto seg = open_ro(name);
  if (!seg) {
    return fail(seg.error());
  }
  if (as_json) {
    fmt::print("{}\n", metrics_json(**seg).dump(2));
    return kOk;
  }
  const d::PoolMetrics pool{name, d::read_metrics(**seg)};
  fmt::print("{}", d::prometheus_text(std::span(&pool, 1)));
  return kOk;
}

}  // namespace

Command add_metrics(CLI::App& app) {
  struct Options {
    std::string name;
    std::string format = "prometheus";
    bool as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* metrics = app.add_subcommand(
      "metrics",
      "Segment-wide metrics: Prometheus text format (with # HELP and # TYPE lines, label\n"
      "pool=\"NAME\") or JSON (the names without the kvbm_ prefix).\n"
      "  example: kvbm-ctl metrics kv-gpu0 > /var/lib/node_exporter/kvbm.prom");
  metrics->add_option("NAME", o->name, "segment name")->required();
  metrics->add_option("--format", o->format, "prometheus or json")
      ->check(CLI::IsMember({"prometheus", "json"}));
  add_json_flag(metrics, o->as_json);  // a synonym of --format json
  return {metrics, [o] { return run_metrics(o->name, o->as_json || o->format == "json"); }};
}

}  // namespace kvbm::ctl
