// SPDX-License-Identifier: Apache-2.0
#include "common.hpp"

#include <fmt/format.h>

#include "metrics_reader.hpp"
#include "segment/slot_state_names.hpp"

namespace kvbm::ctl {

int exit_code_for(const Error& e) {
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

int fail(const Error& e) {
  fmt::print(stderr, "kvbm-ctl: {}\n", e.message);
  return exit_code_for(e);
}

Result<std::unique_ptr<d::Segment>> open_ro(const std::string& name) {
  return d::Segment::open(name, d::Access::kReadOnly);
}

std::string_view state_name(std::uint8_t s) {
  return d::slot_state_name(s);
}

bool has_hash(const shm::SlotMeta& m) {
  return m.state != static_cast<std::uint8_t>(shm::SlotState::kReset) &&
         m.state != static_cast<std::uint8_t>(shm::SlotState::kMutable);
}

std::string hash_text(const shm::SlotMeta& m) {
  return has_hash(m) ? SequenceHash::from_parts(m.hash_hi, m.hash_lo).to_string() : "-";
}

json counts_json(const d::Segment& seg) {
  const PoolCounts c = d::read_counts(seg);
  // In shm::SlotState order, named from the one table.
  const std::size_t by_state[] = {c.reset,   c.mutable_,  c.staged,
                                  c.primary, c.duplicate, c.inactive};
  json j = json::object();
  for (std::size_t s = 0; s < d::kSlotStateNames.size(); ++s) {
    j[std::string(d::kSlotStateNames[s].lower)] = by_state[s];
  }
  return j;
}

std::optional<LockHolder> lock_holder(const d::Segment& seg) {
  const shm::HolderView h = seg.control()->mutex.current_holder();
  if (h.pid == 0) {
    return std::nullopt;
  }
  return LockHolder{h.pid, h.held_ms};
}

json lock_holder_json(const std::optional<LockHolder>& holder) {
  if (!holder) {
    return nullptr;
  }
  return json{{"pid", holder->pid}, {"held_ms", holder->held_ms}, {"too_long", holder->too_long()}};
}

std::string lock_holder_text(const std::optional<LockHolder>& holder) {
  if (!holder) {
    return "free";
  }
  return fmt::format("held by pid {} for {} ms{}", holder->pid, holder->held_ms,
                     holder->too_long()
                         ? ": longer than 1 s, every worker waits for it (is it stopped or stuck?)"
                         : "");
}

namespace {

// Whether live entry `p` is the store lock's holder (a dead entry's pid may have been reused).
bool holds_lock(const d::ProcessView& p, const std::optional<LockHolder>& holder) {
  return holder && p.alive && static_cast<std::uint32_t>(p.pid) == holder->pid;
}

}  // namespace

json process_json(const d::ProcessView& p, const std::optional<LockHolder>& holder) {
  return json{{"index", p.index},
              {"pid", p.pid},
              {"alive", p.alive},
              {"incarnation", p.incarnation},
              {"start_ticks", p.start_ticks},
              {"attached_ns", p.attached_ns},
              {"mutable_or_staged", p.exclusive},
              {"registered_held", p.held},
              {"lock_held_ms", holds_lock(p, holder) ? json(holder->held_ms) : json(nullptr)}};
}

json metrics_json(const d::Segment& seg) {
  json m = json::object();
  for (const auto& [name, value] : d::read_metrics(seg).all()) {
    m[std::string(name.substr(5))] = value;  // without the "kvbm_" prefix
  }
  return m;
}

void print_processes_table(const std::vector<d::ProcessView>& procs,
                           const std::optional<LockHolder>& holder) {
  // Only a long hold is worth a mark: any process holds the lock for microseconds now and then.
  const std::optional<LockHolder> long_hold = holder && holder->too_long() ? holder : std::nullopt;
  bool marked = false;
  if (procs.empty()) {
    fmt::print("  (no process attached)\n");
  } else {
    fmt::print("  {:>5}  {:>8}  {:<6}  {:>11}  {:>15}  {:>11}\n", "entry", "pid", "state",
               "incarnation", "mutable/staged", "registered");
  }
  for (const auto& p : procs) {
    const bool holds = holds_lock(p, long_hold);
    marked = marked || holds;
    fmt::print("  {:>5}  {:>8}  {:<6}  {:>11}  {:>15}  {:>11}{}\n", p.index, p.pid,
               p.alive ? "alive" : "DEAD", p.incarnation, p.exclusive, p.held,
               holds ? fmt::format("  HOLDS THE STORE LOCK for {} ms", long_hold->held_ms) : "");
  }
  if (long_hold && !marked) {
    fmt::print(
        "  store lock held by pid {} for {} ms (no process entry: a tool or an event "
        "reader)\n",
        long_hold->pid, long_hold->held_ms);
  }
}

CLI::Option* add_json_flag(CLI::App* command, bool& as_json) {
  return command->add_flag("--json", as_json, "machine-readable output (one JSON document)");
}

void print_json(const json& j) {
  fmt::print("{}\n", j.dump(2));
}

std::size_t live_processes(const std::vector<d::ProcessView>& procs) {
  std::size_t live = 0;
  for (const auto& p : procs) {
    live += p.alive ? 1 : 0;
  }
  return live;
}

}  // namespace kvbm::ctl
