// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl serve-metrics [NAME...] [--listen 127.0.0.1:9464] [--json]: an HTTP endpoint
// (/metrics) for Prometheus to scrape, on prometheus-cpp's pull library. Each scrape maps the
// segments read-only and reads their metrics at that moment (no process entry, no lock, nothing
// cached between scrapes); every series carries pool="<segment name>". Without names, every
// kvbm segment on the host at scrape time. Runs until SIGINT or SIGTERM, then exits 0.
#include <dirent.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <memory>

#include <fmt/format.h>
#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include "common.hpp"
#include "metrics_reader.hpp"
#include "segment/shm_object.hpp"

namespace kvbm::ctl {
namespace {

/// The kvbm segments in /dev/shm now: objects with the kvbm magic that open as this layout.
std::vector<std::string> host_segments() {
  std::vector<std::string> out;
  DIR* dir = ::opendir("/dev/shm");
  if (dir == nullptr) {
    return out;
  }
  while (dirent* e = ::readdir(dir)) {
    const std::string n = e->d_name;
    if (n == "." || n == ".." || n.ends_with(".payload") || !validate_segment_name(n)) {
      continue;
    }
    // Never opened for blocking I/O; a FIFO or a foreign object is skipped.
    auto obj = d::ShmObject::open(n, d::ShmObject::Mode::kReadOnly);
    if (obj && d::has_kvbm_magic(obj->fd())) {
      out.push_back(n);
    }
  }
  ::closedir(dir);
  std::sort(out.begin(), out.end());
  return out;
}

class SegmentCollector : public prometheus::Collectable {
 public:
  explicit SegmentCollector(std::vector<std::string> names) : names_(std::move(names)) {}

  // Called by the server's threads for each scrape; keeps no state between calls.
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<std::pair<std::string, MetricsSnapshot>> pools;
    for (const std::string& name : names_.empty() ? host_segments() : names_) {
      // A segment that is gone, damaged or of another layout has no series in this scrape.
      if (auto seg = open_ro(name)) {
        pools.emplace_back(name, d::read_metrics(**seg));
      }
    }
    std::vector<prometheus::MetricFamily> families;
    if (pools.empty()) {
      return families;
    }
    for (const auto& [metric, unused] : pools.front().second.all()) {
      const bool gauge = MetricsSnapshot::is_gauge(metric);
      prometheus::MetricFamily f;
      f.name = std::string(metric);
      f.help = std::string(MetricsSnapshot::help(metric));
      f.type = gauge ? prometheus::MetricType::Gauge : prometheus::MetricType::Counter;
      for (const auto& [pool, snap] : pools) {
        prometheus::ClientMetric m;
        m.label.push_back({"pool", pool});
        const auto value = static_cast<double>(*snap.get(metric));
        (gauge ? m.gauge.value : m.counter.value) = value;
        f.metric.push_back(std::move(m));
      }
      families.push_back(std::move(f));
    }
    return families;
  }

 private:
  std::vector<std::string> names_;
};

struct ServeOptions {
  std::vector<std::string> names;
  std::string listen = "127.0.0.1:9464";
  bool as_json = false;
};

int run_serve(const ServeOptions& o) {
  for (const std::string& name : o.names) {
    if (auto seg = open_ro(name); !seg) {
      return fail(seg.error());  // a typo is reported now, not as a silently missing pool
    }
  }
  // SIGINT/SIGTERM are blocked before the server's threads start (they inherit the mask), so
  // only sigwait below receives them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(o.listen, 2);
  } catch (const std::exception& e) {
    fmt::print(stderr,
               "kvbm-ctl: cannot listen on {} (address in use, not a local address, or not "
               "HOST:PORT): {}\n",
               o.listen, e.what());
    return kProblems;
  }
  const auto ports = exposer->GetListeningPorts();
  auto collector = std::make_shared<SegmentCollector>(o.names);
  exposer->RegisterCollectable(collector);
  const std::string host = o.listen.substr(0, o.listen.rfind(':'));
  const std::string url =
      fmt::format("http://{}:{}/metrics", host, ports.empty() ? 0 : ports.front());
  const std::string what = o.names.empty() ? std::string("every kvbm segment")
                                           : fmt::format("{}", fmt::join(o.names, ", "));
  if (o.as_json) {
    fmt::print("{}\n", json{{"url", url}, {"segments", o.names}}.dump());
  } else {
    fmt::print("serving the metrics of {} on {} (SIGINT or SIGTERM stops)\n", what, url);
  }
  std::fflush(stdout);
  int sig = 0;
  while (::sigwait(&stop, &sig) != 0) {
  }
  exposer.reset();  // stops the server threads before returning
  if (!o.as_json) {
    fmt::print("stopped ({})\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  }
  return kOk;
}

}  // namespace

Command add_serve_metrics(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  auto* serve = app.add_subcommand(
      "serve-metrics",
      "HTTP /metrics endpoint for Prometheus: the metrics of the named segments (every kvbm\n"
      "segment on the host when none is named), read at each scrape, label pool=\"NAME\".\n"
      "Runs until SIGINT or SIGTERM.\n"
      "  example: kvbm-ctl serve-metrics kv-gpu0 kv-cpu --listen 0.0.0.0:9464");
  serve->add_option("NAME", o->names, "segment names (default: every kvbm segment)");
  serve->add_option("--listen", o->listen, "HOST:PORT to listen on (port 0: any free port)")
      ->capture_default_str();
  add_json_flag(serve, o->as_json);
  return {serve, [o] { return run_serve(*o); }};
}

}  // namespace kvbm::ctl
