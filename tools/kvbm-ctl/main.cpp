// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl: inspect, verify and repair kvbm segments. Read-only commands (info, dump, processes,
// verify, metrics, list) never take a process-table entry and never wait for the store mutex
// longer than 2 s. Exit codes: 0 ok, 1 problems found or operation failed, 2 usage error,
// 3 segment not found, 4 layout mismatch.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvbm/kvbm.hpp"

#include "metrics_reader.hpp"
#include "segment/processes.hpp"
#include "segment/segment.hpp"
#include "store/block_store.hpp"
#include "tool/inspect.hpp"

namespace {

using kvbm::Errc;
using nlohmann::json;
namespace d = kvbm::detail;

constexpr int kOk = 0, kProblems = 1, kUsage = 2, kNotFound = 3, kLayout = 4;

int exit_code_for(const kvbm::Error& e) {
  switch (e.code) {
    case Errc::kNotFound:
      return kNotFound;
    case Errc::kLayoutMismatch:
      return kLayout;
    case Errc::kInvalidConfig:
      return kUsage;
    default:
      return kProblems;
  }
}

int fail(const kvbm::Error& e) {
  fmt::print(stderr, "kvbm-ctl: {}\n", e.message);
  return exit_code_for(e);
}

const char* state_name(std::uint8_t s) {
  static const char* const kNames[] = {"reset",   "mutable",   "staged",
                                       "primary", "duplicate", "inactive"};
  return s < kvbm::shm::kSlotStateCount ? kNames[s] : "invalid";
}

// A Mutable slot has no hash yet (its field holds the empty marker, or is being staged).
bool has_hash(const kvbm::shm::SlotMeta& m) {
  return m.state != static_cast<std::uint8_t>(kvbm::shm::SlotState::kReset) &&
         m.state != static_cast<std::uint8_t>(kvbm::shm::SlotState::kMutable);
}

std::string hash_text(const kvbm::shm::SlotMeta& m) {
  return has_hash(m) ? kvbm::SequenceHash::from_parts(m.hash_hi, m.hash_lo).to_string() : "-";
}

json counts_json(const d::Segment& seg) {
  const kvbm::PoolCounts c = d::read_counts(seg);
  return json{{"reset", c.reset},     {"mutable", c.mutable_},    {"staged", c.staged},
              {"primary", c.primary}, {"duplicate", c.duplicate}, {"inactive", c.inactive}};
}

json process_json(const d::ProcessView& p) {
  return json{{"index", p.index},
              {"pid", p.pid},
              {"alive", p.alive},
              {"incarnation", p.incarnation},
              {"start_ticks", p.start_ticks},
              {"attached_ns", p.attached_ns},
              {"mutable_or_staged", p.exclusive},
              {"registered_held", p.held}};
}

json metrics_json(const d::Segment& seg) {
  json m = json::object();
  for (const auto& [name, value] : d::read_metrics(seg).all()) {
    m[std::string(name.substr(5))] = value;  // without the "kvbm_" prefix
  }
  return m;
}

kvbm::Result<std::unique_ptr<d::Segment>> open_ro(const std::string& name) {
  return d::Segment::open(name, d::Access::kReadOnly);
}

std::uint64_t metadata_bytes_per_block(const d::Segment& seg) {
  const auto& r = seg.header()->regions;
  // Everything that grows with the block count, except the TinyLFU sketch (sized by
  // frequency_capacity, not by blocks).
  return (r[kvbm::shm::kRegionSlots].bytes + r[kvbm::shm::kRegionIndex].bytes +
          r[kvbm::shm::kRegionLineage].bytes + r[kvbm::shm::kRegionKeys].bytes) /
         seg.block_count();
}

void print_processes_table(const std::vector<d::ProcessView>& procs) {
  if (procs.empty()) {
    fmt::print("  (no process attached)\n");
    return;
  }
  fmt::print("  {:>5}  {:>8}  {:<6}  {:>11}  {:>15}  {:>11}\n", "entry", "pid", "state",
             "incarnation", "mutable/staged", "registered");
  for (const auto& p : procs) {
    fmt::print("  {:>5}  {:>8}  {:<6}  {:>11}  {:>15}  {:>11}\n", p.index, p.pid,
               p.alive ? "alive" : "DEAD", p.incarnation, p.exclusive, p.held);
  }
}

// --- commands -----------------------------------------------------------------------------------

int cmd_info(const std::string& name, bool as_json) {
  auto seg = open_ro(name);
  if (!seg) {
    return fail(seg.error());
  }
  const d::Segment& s = **seg;
  const auto& c = s.config();
  const auto procs = d::list_processes(s);
  if (as_json) {
    json procs_json = json::array();
    for (const auto& p : procs) {
      procs_json.push_back(process_json(p));
    }
    json j{{"name", c.name},
           {"block_count", c.block_count},
           {"block_size", c.block_size},
           {"max_processes", c.max_processes},
           {"eviction", kvbm::to_string(c.eviction)},
           {"lineage_order", kvbm::to_string(c.lineage_order)},
           {"duplication", kvbm::to_string(c.duplication)},
           {"default_reset_on_release", c.default_reset_on_release},
           {"bytes_per_block", c.bytes_per_block},
           {"key_bytes", c.key_bytes},
           {"layout_tag", c.layout_tag},
           {"segment_bytes", s.header()->segment_bytes},
           {"metadata_bytes_per_block", metadata_bytes_per_block(s)},
           {"epoch", s.header()->epoch.load()},
           {"counts", counts_json(s)},
           {"processes", procs_json},
           {"metrics", metrics_json(s)}};
    fmt::print("{}\n", j.dump(2));
    return kOk;
  }
  fmt::print("segment      {}  (/dev/shm/{})\n", c.name, c.name);
  fmt::print("blocks       {} x {} tokens, eviction {}, duplication {}\n", c.block_count,
             c.block_size, kvbm::to_string(c.eviction), kvbm::to_string(c.duplication));
  fmt::print("memory       {:.1f} MiB metadata ({} B/block)", s.header()->segment_bytes / 1048576.0,
             metadata_bytes_per_block(s));
  if (c.bytes_per_block > 0) {
    fmt::print(", {:.1f} MiB payload ({} B/block)", c.bytes_per_block * c.block_count / 1048576.0,
               c.bytes_per_block);
  }
  fmt::print("\nepoch        {}\n", s.header()->epoch.load());
  const auto counts = counts_json(s);
  fmt::print("blocks by state\n");
  for (const char* k : {"reset", "mutable", "staged", "primary", "duplicate", "inactive"}) {
    fmt::print("  {:<10} {:>10}\n", k, counts[k].get<std::uint64_t>());
  }
  fmt::print("processes ({} of {} entries in use)\n", procs.size(), c.max_processes);
  print_processes_table(procs);
  fmt::print("metrics\n");
  for (const auto& [n, v] : d::read_metrics(s).all()) {
    fmt::print("  {:<36} {:>12}\n", n, v);
  }
  return kOk;
}

int cmd_processes(const std::string& name, bool as_json) {
  auto seg = open_ro(name);
  if (!seg) {
    return fail(seg.error());
  }
  const auto procs = d::list_processes(**seg);
  if (as_json) {
    json arr = json::array();
    for (const auto& p : procs) {
      arr.push_back(process_json(p));
    }
    fmt::print("{}\n", arr.dump(2));
    return kOk;
  }
  print_processes_table(procs);
  return kOk;
}

int cmd_dump(const std::string& name, bool as_json) {
  auto seg = open_ro(name);
  if (!seg) {
    return fail(seg.error());
  }
  const d::Segment& s = **seg;
  const auto* h = s.header();
  const auto procs = d::list_processes(s);
  auto slot_owner = [](const kvbm::shm::SlotMeta& m) -> json {
    return m.owner == kvbm::shm::kNil ? json(nullptr) : json(m.owner);
  };
  if (as_json) {
    // Streamed: one slot object at a time, so a 1M-block segment never builds one huge document.
    json header{{"name", s.config().name},
                {"layout", fmt::format("{}.{}", h->layout_major, h->layout_minor)},
                {"abi_fingerprint", fmt::format("{:016x}", h->abi_fingerprint)},
                {"segment_bytes", h->segment_bytes},
                {"block_count", s.block_count()},
                {"epoch", h->epoch.load()},
                {"init_state", h->init_state.load()},
                {"intent_armed", (s.control()->intent.seq.load() & 1) != 0}};
    json procs_json = json::array();
    for (const auto& p : procs) {
      procs_json.push_back(process_json(p));
    }
    std::fputs(fmt::format("{{\"header\":{},\"processes\":{},\"slots\":[", header.dump(),
                           procs_json.dump())
                   .c_str(),
               stdout);
    bool first = true;
    for (std::uint32_t i = 0; i < s.block_count(); ++i) {
      const auto& m = s.slots()[i];
      if (m.state == 0) {
        continue;
      }
      json slot{
          {"id", i},
          {"state", state_name(m.state)},
          {"hash", has_hash(m) ? json(hash_text(m)) : json(nullptr)},
          {"holders", m.holders},
          {"owner", slot_owner(m)},
          {"duplicate_of", m.dup_primary == kvbm::shm::kNil ? json(nullptr) : json(m.dup_primary)},
          {"reset_on_release", m.reset_on_release != 0}};
      std::fputs((first ? "" : ","), stdout);
      std::fputs(slot.dump().c_str(), stdout);
      first = false;
    }
    std::fputs("]}\n", stdout);
    return kOk;
  }
  fmt::print("header: layout {}.{}, fingerprint {:016x}, {} bytes, epoch {}, intent {}\n",
             h->layout_major, h->layout_minor, h->abi_fingerprint, h->segment_bytes,
             h->epoch.load(), (s.control()->intent.seq.load() & 1) != 0 ? "ARMED" : "idle");
  fmt::print("processes:\n");
  print_processes_table(procs);
  fmt::print("slots (non-reset):\n  {:>8}  {:<9}  {:<44}  {:>18}  {:>5}  {:>6}  {}\n", "id",
             "state", "hash", "holders", "owner", "dup-of", "flags");
  for (std::uint32_t i = 0; i < s.block_count(); ++i) {
    const auto& m = s.slots()[i];
    if (m.state == 0) {
      continue;
    }
    fmt::print("  {:>8}  {:<9}  {:<44}  {:>#18x}  {:>5}  {:>6}  {}\n", i, state_name(m.state),
               hash_text(m), m.holders,
               m.owner == kvbm::shm::kNil ? std::string("-") : std::to_string(m.owner),
               m.dup_primary == kvbm::shm::kNil ? std::string("-") : std::to_string(m.dup_primary),
               m.reset_on_release != 0 ? "reset-on-release" : "");
  }
  return kOk;
}

int cmd_verify(const std::string& name) {
  auto session = d::ToolSession::open(name, d::Access::kReadWrite);
  if (!session) {
    return fail(session.error());
  }
  const auto problems = d::verify_segment(**session);
  if (problems.empty()) {
    fmt::print("{}: consistent ({} blocks)\n", name, (*session)->segment().block_count());
    return kOk;
  }
  fmt::print("{}: {} problem(s)\n", name, problems.size());
  for (const auto& p : problems) {
    fmt::print("  - {}\n", p);
  }
  return kProblems;
}

int cmd_repair(const std::string& name, bool dry_run, bool force) {
  {
    auto seg = open_ro(name);
    if (!seg) {
      return fail(seg.error());
    }
    std::size_t live = 0;
    for (const auto& p : d::list_processes(**seg)) {
      live += p.alive ? 1 : 0;
    }
    if (live > 0 && !force && !dry_run) {
      fmt::print(stderr,
                 "kvbm-ctl: {} live process(es) are attached to '{}'; repair while they run only "
                 "with --force (dead processes are also reaped by the workers themselves)\n",
                 live, name);
      return kProblems;
    }
  }
  auto report = d::repair_segment(name, dry_run, force);
  if (!report) {
    return fail(report.error());
  }
  if (report->actions.empty()) {
    fmt::print("{}: nothing to repair\n", name);
  }
  for (const auto& a : report->actions) {
    fmt::print("{}{}\n", dry_run ? "would: " : "", a);
  }
  if (!report->remaining.empty()) {
    fmt::print("{}: {} problem(s) remain after repair\n", name, report->remaining.size());
    for (const auto& p : report->remaining) {
      fmt::print("  - {}\n", p);
    }
    return kProblems;
  }
  if (!dry_run) {
    fmt::print("{}: repaired; verify passes\n", name);
  }
  return kOk;
}

int cmd_metrics(const std::string& name, const std::string& format) {
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
    const bool gauge = kvbm::MetricsSnapshot::is_gauge(n);
    fmt::print("# TYPE {} {}\n{}{{pool=\"{}\"}} {}\n", n, gauge ? "gauge" : "counter", n, name, v);
  }
  return kOk;
}

int cmd_list(bool as_json) {
  json arr = json::array();
  DIR* dir = ::opendir("/dev/shm");
  if (dir == nullptr) {
    fmt::print(stderr, "kvbm-ctl: cannot read /dev/shm\n");
    return kProblems;
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    std::string n = e->d_name;
    if (n == "." || n == ".." || n.ends_with(".payload")) {
      continue;
    }
    int fd = ::open(("/dev/shm/" + n).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      continue;
    }
    std::uint64_t magic = 0;
    const bool is_kvbm = ::pread(fd, &magic, 8, 0) == 8 && magic == kvbm::shm::kMagic;
    ::close(fd);
    if (is_kvbm) {
      names.push_back(n);
    }
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  if (!as_json) {
    fmt::print("{:<32} {:>10} {:>6} {:>9}  {}\n", "name", "blocks", "procs", "eviction", "status");
  }
  for (const auto& n : names) {
    auto seg = open_ro(n);
    if (!seg) {
      if (as_json) {
        arr.push_back(json{{"name", n}, {"error", seg.error().message}});
      } else {
        fmt::print("{:<32} {:>10} {:>6} {:>9}  {}\n", n, "?", "?", "?", seg.error().message);
      }
      continue;
    }
    const auto procs = d::list_processes(**seg);
    if (as_json) {
      arr.push_back(json{{"name", n},
                         {"block_count", (*seg)->block_count()},
                         {"processes", procs.size()},
                         {"eviction", kvbm::to_string((*seg)->config().eviction)}});
    } else {
      fmt::print("{:<32} {:>10} {:>6} {:>9}  ok\n", n, (*seg)->block_count(), procs.size(),
                 kvbm::to_string((*seg)->config().eviction));
    }
  }
  if (as_json) {
    fmt::print("{}\n", arr.dump(2));
  }
  return kOk;
}

int cmd_destroy(const std::string& name, bool force) {
  auto seg = open_ro(name);
  if (seg) {
    std::size_t live = 0;
    for (const auto& p : d::list_processes(**seg)) {
      live += p.alive ? 1 : 0;
    }
    if (live > 0 && !force) {
      fmt::print(stderr,
                 "kvbm-ctl: {} live process(es) are attached to '{}'; use --force to unlink it "
                 "anyway (they keep their mappings)\n",
                 live, name);
      return kProblems;
    }
  } else if (seg.error().code == Errc::kNotFound) {
    return fail(seg.error());
  } else if (!force &&
             (seg.error().code == Errc::kLayoutMismatch || d::count_live_attachments(name) > 0)) {
    // Not a kvbm segment of this layout, or a damaged one that live processes still use.
    fmt::print(stderr, "kvbm-ctl: {}\nkvbm-ctl: refusing to remove it without --force\n",
               seg.error().message);
    return exit_code_for(seg.error());
  }
  auto done = kvbm::BlockManager::destroy(name);
  if (!done) {
    return fail(done.error());
  }
  fmt::print("destroyed {}\n", name);
  return kOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "kvbm-ctl: inspect, verify and repair kvbm shared-memory KV-cache segments.\n"
      "Exit codes: 0 ok, 1 problems found or operation failed, 2 usage error,\n"
      "3 segment not found, 4 layout mismatch."};
  app.require_subcommand(1);
  std::string name;
  bool as_json = false;

  kvbm::SegmentConfig config;
  std::string eviction = "lineage", order = "tick", duplication = "allow", mode = "0600";
  auto* create = app.add_subcommand("create",
                                    "Create a segment.\n  example: kvbm-ctl create "
                                    "kv-gpu0 --blocks 65536 --eviction lru");
  create->add_option("NAME", config.name, "segment name")->required();
  create->add_option("--blocks", config.block_count, "number of blocks (> 0)")
      ->required()
      ->check(CLI::Range(1u, 0x7FFFFFFEu));
  create->add_option("--block-size", config.block_size, "tokens per block (power of two, 1..1024)")
      ->default_val(16);
  create->add_option("--max-processes", config.max_processes, "process-table entries (1..64)")
      ->default_val(64)
      ->check(CLI::Range(1u, 64u));
  create->add_option("--eviction", eviction, "inactive-pool eviction order")
      ->check(CLI::IsMember({"lineage", "lru", "multi-lru", "fifo"}));
  create->add_option("--lineage-order", order, "leaf order of lineage eviction")
      ->check(CLI::IsMember({"tick", "fifo"}));
  create->add_option("--duplication", duplication, "registering a present hash")
      ->check(CLI::IsMember({"allow", "reject"}));
  create->add_option("--bytes-per-block", config.bytes_per_block, "payload bytes per block");
  create->add_option("--key-bytes", config.key_bytes, "application key bytes per block (0..64)")
      ->check(CLI::Range(0u, 64u));
  create->add_flag("--reset-on-release", config.default_reset_on_release,
                   "released blocks go to the reset pool instead of the inactive pool");
  create->add_option("--mode", mode, "file mode of the shm object(s), e.g. 0660");

  auto* info = app.add_subcommand("info",
                                  "Config, pool counts, processes and metrics.\n  "
                                  "example: kvbm-ctl info kv-gpu0 --json");
  auto* dump = app.add_subcommand("dump",
                                  "Header, process table and every non-reset slot.\n  "
                                  "example: kvbm-ctl dump kv-gpu0 --json > dump.json");
  auto* procs = app.add_subcommand("processes",
                                   "Process table with liveness verdicts.\n  "
                                   "example: kvbm-ctl processes kv-gpu0");
  for (auto* sub : {info, dump, procs}) {
    sub->add_option("NAME", name, "segment name")->required();
    sub->add_flag("--json", as_json, "machine-readable output");
  }
  auto* verify = app.add_subcommand("verify",
                                    "Check every invariant; exit 1 and list problems.\n"
                                    "  example: kvbm-ctl verify kv-gpu0");
  verify->add_option("NAME", name, "segment name")->required();
  bool dry_run = false, force = false;
  auto* repair = app.add_subcommand(
      "repair",
      "Recover an interrupted operation, release dead processes' blocks, rebuild the\n"
      "indexes; verify passes afterwards.\n  example: kvbm-ctl repair kv-gpu0 --dry-run");
  repair->add_option("NAME", name, "segment name")->required();
  repair->add_flag("--dry-run", dry_run, "only say what would be done");
  repair->add_flag("--force", force, "repair even while live processes are attached");
  std::string format = "prometheus";
  auto* metrics = app.add_subcommand(
      "metrics",
      "Segment-wide metrics (Prometheus text format or JSON).\n  example: kvbm-ctl "
      "metrics kv-gpu0 > /var/lib/node_exporter/kvbm.prom");
  metrics->add_option("NAME", name, "segment name")->required();
  metrics->add_option("--format", format, "prometheus or json")
      ->check(CLI::IsMember({"prometheus", "json"}));
  auto* list = app.add_subcommand("list", "kvbm segments on this host.\n  example: kvbm-ctl list");
  list->add_flag("--json", as_json, "machine-readable output");
  auto* destroy = app.add_subcommand("destroy",
                                     "Unlink a segment (and its payload).\n  "
                                     "example: kvbm-ctl destroy kv-gpu0");
  destroy->add_option("NAME", name, "segment name")->required();
  destroy->add_flag("--force", force, "destroy even while live processes are attached");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kUsage;
  }
  try {
    if (app.got_subcommand(create)) {
      config.eviction = eviction == "lru"         ? kvbm::EvictionPolicy::kLru
                        : eviction == "multi-lru" ? kvbm::EvictionPolicy::kMultiLru
                        : eviction == "fifo"      ? kvbm::EvictionPolicy::kFifo
                                                  : kvbm::EvictionPolicy::kLineage;
      config.lineage_order =
          order == "fifo" ? kvbm::LineageOrder::kFifo : kvbm::LineageOrder::kTick;
      config.duplication = duplication == "reject" ? kvbm::DuplicationPolicy::kReject
                                                   : kvbm::DuplicationPolicy::kAllow;
      try {
        std::size_t used = 0;
        config.permissions = static_cast<std::uint32_t>(std::stoul(mode, &used, 8));
        if (used != mode.size()) {
          throw std::invalid_argument(mode);
        }
      } catch (...) {
        fmt::print(stderr, "kvbm-ctl: --mode '{}' is not an octal file mode\n", mode);
        return kUsage;
      }
      if (auto ok = d::validate_config(config); !ok) {
        return fail(ok.error());
      }
      auto seg =
          d::Segment::create(config, d::BlockStore::init_regions);  // creating does not attach
      if (!seg) {
        return fail(seg.error());
      }
      fmt::print("created {}: {} blocks x {} tokens, {:.1f} MiB\n", config.name, config.block_count,
                 config.block_size, (*seg)->header()->segment_bytes / 1048576.0);
      return kOk;
    }
    if (app.got_subcommand(info))
      return cmd_info(name, as_json);
    if (app.got_subcommand(dump))
      return cmd_dump(name, as_json);
    if (app.got_subcommand(procs))
      return cmd_processes(name, as_json);
    if (app.got_subcommand(verify))
      return cmd_verify(name);
    if (app.got_subcommand(repair))
      return cmd_repair(name, dry_run, force);
    if (app.got_subcommand(metrics))
      return cmd_metrics(name, format);
    if (app.got_subcommand(list))
      return cmd_list(as_json);
    if (app.got_subcommand(destroy))
      return cmd_destroy(name, force);
  } catch (const std::exception& e) {
    fmt::print(stderr, "kvbm-ctl: {}\n", e.what());
    return kProblems;
  }
  return kUsage;
}
