// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl top NAME [--interval 1] [--once] [--json]: a live view of one segment, refreshed
// every interval: blocks by pool, operation rates, the prefix-cache hit rate, the processes and a
// process that has held the store lock for 1 s or more (JSON: "lock_holder", any hold).
// Read-only (no process entry, no lock). --once prints one frame (totals since creation, no
// rates) and exits; --json prints each frame as one JSON line. SIGINT or SIGTERM stops it.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <optional>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "common.hpp"
#include "metrics_reader.hpp"
#include "segment/slot_state_names.hpp"

namespace kvbm::ctl {
namespace {

struct TopOptions {
  std::string name;
  double interval = 1.0;
  bool once = false;
  bool as_json = false;
};

struct Sample {
  std::chrono::steady_clock::time_point at;
  MetricsSnapshot metrics;
};

// Per-second rate of a counter between two samples; nullopt without a previous sample.
std::optional<double> rate(const Sample& now,
                           const std::optional<Sample>& before,
                           std::string_view counter) {
  if (!before) {
    return std::nullopt;
  }
  const double seconds = std::chrono::duration<double>(now.at - before->at).count();
  if (seconds <= 0) {
    return std::nullopt;
  }
  return static_cast<double>(*now.metrics.get(counter) - *before->metrics.get(counter)) / seconds;
}

// Hits / queries in tokens, over the interval (or since creation without a previous sample).
std::optional<double> hit_rate(const Sample& now, const std::optional<Sample>& before) {
  auto q = *now.metrics.get("kvbm_prefix_cache_queries_total");
  auto h = *now.metrics.get("kvbm_prefix_cache_hits_total");
  if (before) {
    q -= *before->metrics.get("kvbm_prefix_cache_queries_total");
    h -= *before->metrics.get("kvbm_prefix_cache_hits_total");
  }
  if (q <= 0) {
    return std::nullopt;
  }
  return static_cast<double>(h) / static_cast<double>(q);
}

constexpr std::string_view kRates[][2] = {
    {"allocations", "kvbm_allocations_total"},
    {"evictions", "kvbm_evictions_total"},
    {"registrations", "kvbm_registrations_total"},
    {"matched_blocks", "kvbm_match_blocks_returned_total"},
    {"reaped_processes", "kvbm_reaped_processes_total"},
};

json frame_json(const d::Segment& s,
                const Sample& now,
                const std::optional<Sample>& before,
                const std::vector<d::ProcessView>& procs,
                const std::optional<LockHolder>& holder) {
  json rates = json::object();
  for (const auto& r : kRates) {
    const auto v = rate(now, before, r[1]);
    rates[std::string(r[0])] = v ? json(*v) : json(nullptr);
  }
  const auto hr = hit_rate(now, before);
  json p = json::array();
  for (const auto& v : procs) {
    p.push_back(process_json(v, holder));
  }
  return json{{"name", s.config().name},
              {"time", std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count()},
              {"block_count", s.block_count()},
              {"counts", counts_json(s)},
              {"rates_per_second", rates},
              {"prefix_cache_hit_rate", hr ? json(*hr) : json(nullptr)},
              {"processes", p},
              {"lock_holder", lock_holder_json(holder)}};
}

void print_frame(const d::Segment& s,
                 const Sample& now,
                 const std::optional<Sample>& before,
                 const std::vector<d::ProcessView>& procs,
                 const std::optional<LockHolder>& holder) {
  const auto& c = s.config();
  const auto now_time = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  fmt::print("kvbm {}  {} blocks x {} tokens, eviction {}   {:%H:%M:%S}\n", c.name, s.block_count(),
             c.block_size, to_string(c.eviction), fmt::localtime(now_time));
  const json counts = counts_json(s);
  fmt::print("pools    ");
  for (const auto& st : d::kSlotStateNames) {
    const auto n = counts[std::string(st.lower)].get<std::uint64_t>();
    fmt::print(" {} {} ({:.0f}%)", st.lower, n,
               100.0 * n / std::max<std::uint32_t>(1, s.block_count()));
  }
  fmt::print("\nrates/s  ");
  for (const auto& r : kRates) {
    const auto v = rate(now, before, r[1]);
    fmt::print(" {} {}", r[0], v ? fmt::format("{:.1f}", *v) : std::string("-"));
  }
  const auto hr = hit_rate(now, before);
  fmt::print("\nprefix-cache hit rate {} ({})\n",
             hr ? fmt::format("{:.1f}%", 100 * *hr) : std::string("- (no lookups)"),
             before ? "this interval" : "since creation");
  if (holder && holder->too_long()) {
    fmt::print("STORE LOCK {}\n", lock_holder_text(holder));
  }
  fmt::print("processes ({} attached, {} dead)\n", procs.size(),
             procs.size() - live_processes(procs));
  print_processes_table(procs, holder);
}

int run_top(const TopOptions& o) {
  auto seg = open_ro(o.name);
  if (!seg) {
    return fail(seg.error());
  }
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  const bool tty = ::isatty(STDOUT_FILENO) == 1;
  std::optional<Sample> before;
  for (;;) {
    const d::Segment& s = **seg;
    const Sample now{std::chrono::steady_clock::now(), d::read_metrics(s)};
    const auto procs = d::list_processes(s);
    const auto holder = lock_holder(s);
    if (o.as_json) {
      fmt::print("{}\n", frame_json(s, now, before, procs, holder).dump());
    } else {
      if (tty && !o.once) {
        fmt::print("\x1b[H\x1b[2J");  // home, clear: redraw in place
      }
      print_frame(s, now, before, procs, holder);
      if (!tty && !o.once) {
        fmt::print("\n");
      }
    }
    std::fflush(stdout);
    if (o.once) {
      return kOk;
    }
    before = now;
    const auto ns = static_cast<long>(o.interval * 1e9);
    const timespec wait{ns / 1000000000L, ns % 1000000000L};
    const int sig = ::sigtimedwait(&stop, nullptr, &wait);
    if (sig == SIGINT || sig == SIGTERM) {
      return kOk;
    }
  }
}

}  // namespace

Command add_top(CLI::App& app) {
  auto o = std::make_shared<TopOptions>();
  auto* top = app.add_subcommand(
      "top",
      "Live view of a segment: pools, rates, prefix-cache hit rate, processes, and a process\n"
      "  that has held the store lock for 1 s or more.\n"
      "  example: kvbm-ctl top kv-gpu0 --interval 2     (kvbm-ctl top kv-gpu0 --once: one frame)");
  top->add_option("NAME", o->name, "segment name")->required();
  top->add_option("--interval", o->interval, "seconds between frames")
      ->capture_default_str()
      ->check(CLI::Range(0.05, 3600.0));
  top->add_flag("--once", o->once, "print one frame (totals since creation) and exit");
  add_json_flag(top, o->as_json);
  return {top, [o] { return run_top(*o); }};
}

}  // namespace kvbm::ctl
