// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl info NAME [--json]: config, pool counts, the store lock's holder, processes and
// metrics (read-only).
#include <fmt/format.h>

#include "common.hpp"
#include "metrics_reader.hpp"
#include "segment/slot_state_names.hpp"

namespace kvbm::ctl {
namespace {

std::uint64_t metadata_bytes_per_block(const d::Segment& seg) {
  const auto& r = seg.header()->regions;
  // Everything that grows with the block count, except the TinyLFU sketch (sized by
  // frequency_capacity, not by blocks).
  return (r[shm::kRegionSlots].bytes + r[shm::kRegionIndex].bytes + r[shm::kRegionLineage].bytes +
          r[shm::kRegionKeys].bytes) /
         seg.block_count();
}

int run_info(const std::string& name, bool as_json) {
  auto seg = open_ro(name);
  if (!seg) {
    return fail(seg.error());
  }
  const d::Segment& s = **seg;
  const auto& c = s.config();
  const auto procs = d::list_processes(s);
  const auto holder = lock_holder(s);
  if (as_json) {
    json procs_json = json::array();
    for (const auto& p : procs) {
      procs_json.push_back(process_json(p, holder));
    }
    json j{{"name", c.name},
           {"block_count", c.block_count},
           {"block_size", c.block_size},
           {"max_processes", c.max_processes},
           {"eviction", to_string(c.eviction)},
           {"lineage_order", to_string(c.lineage_order)},
           {"duplication", to_string(c.duplication)},
           {"default_reset_on_release", c.default_reset_on_release},
           {"bytes_per_block", c.bytes_per_block},
           {"key_bytes", c.key_bytes},
           {"layout_tag", c.layout_tag},
           {"event_capacity", c.event_capacity},
           {"store_token_ids", c.store_token_ids},
           {"segment_bytes", s.header()->segment_bytes},
           {"metadata_bytes_per_block", metadata_bytes_per_block(s)},
           {"epoch", s.header()->epoch.load()},
           {"counts", counts_json(s)},
           {"processes", procs_json},
           {"lock_holder", lock_holder_json(holder)},
           {"metrics", metrics_json(s)}};
    fmt::print("{}\n", j.dump(2));
    return kOk;
  }
  fmt::print("segment      {}  (/dev/shm/{})\n", c.name, c.name);
  fmt::print("blocks       {} x {} tokens, eviction {}, duplication {}\n", c.block_count,
             c.block_size, to_string(c.eviction), to_string(c.duplication));
  fmt::print("memory       {:.1f} MiB metadata ({} B/block)", s.header()->segment_bytes / 1048576.0,
             metadata_bytes_per_block(s));
  if (c.bytes_per_block > 0) {
    fmt::print(", {:.1f} MiB payload ({} B/block)", c.bytes_per_block * c.block_count / 1048576.0,
               c.bytes_per_block);
  }
  fmt::print("\nevents       ring of {} records{}\n", c.event_capacity,
             c.store_token_ids ? ", token ids kept" : "");
  fmt::print("epoch        {}\n", s.header()->epoch.load());
  fmt::print("store lock   {}\n", lock_holder_text(holder));
  const auto counts = counts_json(s);
  fmt::print("blocks by state\n");
  for (const auto& state : d::kSlotStateNames) {
    const std::string k(state.lower);
    fmt::print("  {:<10} {:>10}\n", k, counts[k].get<std::uint64_t>());
  }
  fmt::print("processes ({} of {} entries in use)\n", procs.size(), c.max_processes);
  print_processes_table(procs, holder);
  fmt::print("metrics\n");
  for (const auto& [n, v] : d::read_metrics(s).all()) {
    fmt::print("  {:<36} {:>12}\n", n, v);
  }
  return kOk;
}

}  // namespace

Command add_info(CLI::App& app) {
  struct Options {
    std::string name;
    bool as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* info = app.add_subcommand("info",
                                  "Config, pool counts, processes and metrics.\n  "
                                  "example: kvbm-ctl info kv-gpu0 --json");
  info->add_option("NAME", o->name, "segment name")->required();
  add_json_flag(info, o->as_json);
  return {info, [o] { return run_info(o->name, o->as_json); }};
}

}  // namespace kvbm::ctl
