// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl dump NAME [--json]: header, process table and every non-Reset slot (read-only).
#include <cstdio>

#include <fmt/format.h>

#include "common.hpp"

namespace kvbm::ctl {
namespace {

int run_dump(const std::string& name, bool as_json) {
  auto seg = open_ro(name);
  if (!seg) {
    return fail(seg.error());
  }
  const d::Segment& s = **seg;
  const auto* h = s.header();
  const auto procs = d::list_processes(s);
  auto slot_owner = [](const shm::SlotMeta& m) -> json {
    return m.owner == shm::kNil ? json(nullptr) : json(m.owner);
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
      json slot{{"id", i},
                {"state", state_name(m.state)},
                {"hash", has_hash(m) ? json(hash_text(m)) : json(nullptr)},
                {"holders", m.holders},
                {"owner", slot_owner(m)},
                {"duplicate_of", m.dup_primary == shm::kNil ? json(nullptr) : json(m.dup_primary)},
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
               m.owner == shm::kNil ? std::string("-") : std::to_string(m.owner),
               m.dup_primary == shm::kNil ? std::string("-") : std::to_string(m.dup_primary),
               m.reset_on_release != 0 ? "reset-on-release" : "");
  }
  return kOk;
}

}  // namespace

Command add_dump(CLI::App& app) {
  struct Options {
    std::string name;
    bool as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* dump = app.add_subcommand("dump",
                                  "Header, process table and every non-reset slot.\n  "
                                  "example: kvbm-ctl dump kv-gpu0 --json > dump.json");
  dump->add_option("NAME", o->name, "segment name")->required();
  dump->add_flag("--json", o->as_json, "machine-readable output");
  return {dump, [o] { return run_dump(o->name, o->as_json); }};
}

}  // namespace kvbm::ctl
