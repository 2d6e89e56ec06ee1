// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl dump NAME [--state S,...] [--process IDX] [--limit N] [--json]: header, process table
// and the non-Reset slots (read-only). The filters keep the output of a large segment small:
// only slots in the given states, only slots process entry IDX owns or holds, at most N slots
// (the rest are counted, never printed).
#include <cstdio>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "common.hpp"
#include "segment/slot_state_names.hpp"

namespace kvbm::ctl {
namespace {

struct DumpOptions {
  std::string name;
  std::vector<std::string> states;  // lower-case state names; empty = every non-Reset state
  std::optional<std::uint32_t> process;
  std::optional<std::uint64_t> limit;
  bool as_json = false;
};

/// The state values selected by --state (each name checked by the option's validator).
std::set<std::uint8_t> selected_states(const std::vector<std::string>& names) {
  std::set<std::uint8_t> out;
  for (std::size_t s = 0; s < d::kSlotStateNames.size(); ++s) {
    const std::string_view lower = d::kSlotStateNames[s].lower;
    if (names.empty() ? s != 0 : std::find(names.begin(), names.end(), lower) != names.end()) {
      out.insert(static_cast<std::uint8_t>(s));
    }
  }
  return out;
}

int run_dump(const DumpOptions& o) {
  auto seg = open_ro(o.name);
  if (!seg) {
    return fail(seg.error());
  }
  const d::Segment& s = **seg;
  if (o.process && *o.process >= s.max_processes()) {
    fmt::print(stderr, "kvbm-ctl: --process {}: the segment has process entries 0..{}\n",
               *o.process, s.max_processes() - 1);
    return kUsage;
  }
  const auto* h = s.header();
  const auto procs = d::list_processes(s);
  const std::set<std::uint8_t> states = selected_states(o.states);
  // A damaged state value is shown whatever the filter, unless a process filter excludes it.
  auto wanted = [&](const shm::SlotMeta& m) {
    const bool valid = m.state < d::kSlotStateNames.size();
    if (valid && states.count(m.state) == 0) {
      return false;
    }
    if (!valid && !o.states.empty()) {
      return false;
    }
    if (o.process) {
      const bool owns = m.owner == *o.process;
      const bool holds = *o.process < 64 && ((m.holders >> *o.process) & 1) != 0;
      return owns || holds;
    }
    return true;
  };
  auto slot_owner = [](const shm::SlotMeta& m) -> json {
    return m.owner == shm::kNil ? json(nullptr) : json(m.owner);
  };
  std::uint64_t shown = 0, omitted = 0;
  auto take = [&]() {
    if (o.limit && shown >= *o.limit) {
      ++omitted;
      return false;
    }
    ++shown;
    return true;
  };
  if (o.as_json) {
    // Streamed: one slot object at a time, so a 1M-block segment never builds one huge document.
    json header{{"name", s.config().name},
                {"layout", fmt::format("{}.{}", h->layout_major, h->layout_minor)},
                {"abi_fingerprint", fmt::format("{:016x}", h->abi_fingerprint)},
                {"segment_bytes", h->segment_bytes},
                {"block_count", s.block_count()},
                {"epoch", h->epoch.load()},
                {"init_state", h->init_state.load()},
                {"intent_armed", (s.control()->intent.seq.load() & 1) != 0},
                {"lock_holder", lock_holder_json(lock_holder(s))}};
    json procs_json = json::array();
    for (const auto& p : procs) {
      procs_json.push_back(process_json(p, lock_holder(s)));
    }
    std::fputs(fmt::format("{{\"header\":{},\"processes\":{},\"slots\":[", header.dump(),
                           procs_json.dump())
                   .c_str(),
               stdout);
    for (std::uint32_t i = 0; i < s.block_count(); ++i) {
      const auto& m = s.slots()[i];
      if (!wanted(m) || !take()) {
        continue;
      }
      json slot{{"id", i},
                {"state", state_name(m.state)},
                {"hash", has_hash(m) ? json(hash_text(m)) : json(nullptr)},
                {"holders", m.holders},
                {"owner", slot_owner(m)},
                {"duplicate_of", m.dup_primary == shm::kNil ? json(nullptr) : json(m.dup_primary)},
                {"reset_on_release", m.reset_on_release != 0}};
      std::fputs((shown == 1 ? "" : ","), stdout);
      std::fputs(slot.dump().c_str(), stdout);
    }
    // "omitted": matching slots left out by --limit.
    std::fputs(fmt::format("],\"omitted\":{}}}\n", omitted).c_str(), stdout);
    return kOk;
  }
  fmt::print("header: layout {}.{}, fingerprint {:016x}, {} bytes, epoch {}, intent {}\n",
             h->layout_major, h->layout_minor, h->abi_fingerprint, h->segment_bytes,
             h->epoch.load(), (s.control()->intent.seq.load() & 1) != 0 ? "ARMED" : "idle");
  fmt::print("store lock: {}\nprocesses:\n", lock_holder_text(lock_holder(s)));
  print_processes_table(procs, lock_holder(s));
  fmt::print(
      "slots ({}):\n  {:>8}  {:<9}  {:<44}  {:>18}  {:>5}  {:>6}  {}\n",
      o.states.empty() ? std::string("non-reset") : fmt::format("{}", fmt::join(o.states, ",")),
      "id", "state", "hash", "holders", "owner", "dup-of", "flags");
  for (std::uint32_t i = 0; i < s.block_count(); ++i) {
    const auto& m = s.slots()[i];
    if (!wanted(m) || !take()) {
      continue;
    }
    fmt::print("  {:>8}  {:<9}  {:<44}  {:>#18x}  {:>5}  {:>6}  {}\n", i, state_name(m.state),
               hash_text(m), m.holders,
               m.owner == shm::kNil ? std::string("-") : std::to_string(m.owner),
               m.dup_primary == shm::kNil ? std::string("-") : std::to_string(m.dup_primary),
               m.reset_on_release != 0 ? "reset-on-release" : "");
  }
  if (omitted > 0) {
    fmt::print("  ... {} more slot(s) not shown (--limit {})\n", omitted, *o.limit);
  }
  return kOk;
}

}  // namespace

Command add_dump(CLI::App& app) {
  auto o = std::make_shared<DumpOptions>();
  auto* dump = app.add_subcommand(
      "dump",
      "Header, process table and the non-reset slots, optionally filtered.\n"
      "  example: kvbm-ctl dump kv-gpu0 --state mutable,staged --process 3 --limit 100");
  dump->add_option("NAME", o->name, "segment name")->required();
  std::vector<std::string> names;
  for (const auto& st : d::kSlotStateNames) {
    names.emplace_back(st.lower);
  }
  dump->add_option("--state", o->states,
                   "only slots in these states (comma-separated: " +
                       fmt::format("{}", fmt::join(names, ",")) + ")")
      ->delimiter(',')
      ->check(CLI::IsMember(names));
  dump->add_option("--process", o->process,
                   "only slots process entry IDX owns (mutable/staged) or holds (registered)");
  dump->add_option("--limit", o->limit, "print at most N slots (the rest are counted)")
      ->check(CLI::NonNegativeNumber);
  add_json_flag(dump, o->as_json);
  return {dump, [o] { return run_dump(*o); }};
}

}  // namespace kvbm::ctl
