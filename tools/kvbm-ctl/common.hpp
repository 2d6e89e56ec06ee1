// SPDX-License-Identifier: Apache-2.0
// What every kvbm-ctl command shares: the exit codes, opening a segment read-only and turning an
// error into the right exit code, and the JSON/text renderings that several commands print.
//
// A command lives in its own cmd_<name>.cpp and defines `Command add_<name>(CLI::App&)`, which
// declares its subcommand (options, help text) and returns what to run when it is chosen;
// main.cpp adds it with one KVBM_CTL_COMMAND(<name>) line.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kvbm/kvbm.hpp"

#include "segment/processes.hpp"
#include "segment/segment.hpp"
#include "shm/control.hpp"

namespace kvbm::ctl {

namespace d = kvbm::detail;
using nlohmann::json;

// Exit codes (DESIGN.md section 6).
constexpr int kOk = 0, kProblems = 1, kUsage = 2, kNotFound = 3, kLayout = 4;

/// A subcommand declared on the app, and what runs when it was chosen.
struct Command {
  CLI::App* sub;
  std::function<int()> run;
};

int exit_code_for(const Error& e);
/// Prints the error to stderr and returns its exit code.
int fail(const Error& e);

/// Maps the segment read-only: never takes a process-table entry or the store mutex.
Result<std::unique_ptr<d::Segment>> open_ro(const std::string& name);

/// Lower-case slot-state name ("reset", ..., "inactive"), "invalid" for a damaged value.
std::string_view state_name(std::uint8_t s);
/// A Mutable slot has no hash yet (its field holds the empty marker, or is being staged).
bool has_hash(const shm::SlotMeta& m);
std::string hash_text(const shm::SlotMeta& m);

json counts_json(const d::Segment& seg);

/// Who holds the store lock, read lock-free from the segment (the holder record beside the
/// mutex): nullopt when it is free.
struct LockHolder {
  std::uint32_t pid;      // in the holder's PID namespace, as in its process entry
  std::uint32_t held_ms;  // how long this hold has lasted
  /// A hold this long is reported (DESIGN.md section 12): it blocks every worker.
  bool too_long() const { return held_ms >= shm::RobustMutex::kLongHoldMs; }
};
std::optional<LockHolder> lock_holder(const d::Segment& seg);
/// {"pid", "held_ms", "too_long"}, or null when the lock is free.
json lock_holder_json(const std::optional<LockHolder>& holder);
/// One line for a person: "free" or "held by pid N for X ms" (and why a long hold matters).
std::string lock_holder_text(const std::optional<LockHolder>& holder);

/// A process entry; "lock_held_ms" is how long it has held the store lock (null: it does not).
json process_json(const d::ProcessView& p, const std::optional<LockHolder>& holder);
/// The section 5 metrics without the "kvbm_" prefix.
json metrics_json(const d::Segment& seg);
/// The process table. An entry that has held the store lock for 1 s or more is marked; so is
/// such a holder without a process entry (a tool or an event reader), on a line of its own.
void print_processes_table(const std::vector<d::ProcessView>& procs,
                           const std::optional<LockHolder>& holder);

/// `--json` on a printing command: one JSON document on stdout instead of the text (errors stay
/// on stderr with their exit codes). Every command that prints takes it.
CLI::Option* add_json_flag(CLI::App* command, bool& as_json);
/// Prints `j` on stdout as one indented document and a newline.
void print_json(const json& j);
std::size_t live_processes(const std::vector<d::ProcessView>& procs);

}  // namespace kvbm::ctl
