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
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kvbm/kvbm.hpp"

#include "segment/processes.hpp"
#include "segment/segment.hpp"

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
json process_json(const d::ProcessView& p);
/// The section 5 metrics without the "kvbm_" prefix.
json metrics_json(const d::Segment& seg);
void print_processes_table(const std::vector<d::ProcessView>& procs);

/// `--json` on a printing command: one JSON document on stdout instead of the text (errors stay
/// on stderr with their exit codes). Every command that prints takes it.
CLI::Option* add_json_flag(CLI::App* command, bool& as_json);
/// Prints `j` on stdout as one indented document and a newline.
void print_json(const json& j);
std::size_t live_processes(const std::vector<d::ProcessView>& procs);

}  // namespace kvbm::ctl
