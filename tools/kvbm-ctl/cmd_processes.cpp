// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl processes NAME [--json]: the process table with liveness verdicts and the store
// lock's holder (read-only).
#include <fmt/format.h>

#include "common.hpp"

namespace kvbm::ctl {
namespace {

int run_processes(const std::string& name, bool as_json) {
  auto seg = open_ro(name);
  if (!seg) {
    return fail(seg.error());
  }
  const auto procs = d::list_processes(**seg);
  const auto holder = lock_holder(**seg);
  if (as_json) {
    json arr = json::array();
    for (const auto& p : procs) {
      arr.push_back(process_json(p, holder));
    }
    fmt::print("{}\n", arr.dump(2));
    return kOk;
  }
  print_processes_table(procs, holder);
  return kOk;
}

}  // namespace

Command add_processes(CLI::App& app) {
  struct Options {
    std::string name;
    bool as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* procs = app.add_subcommand(
      "processes",
      "Process table with liveness verdicts; marks a process that has held the store lock for "
      "1 s or more.\n  "
      "example: kvbm-ctl processes kv-gpu0");
  procs->add_option("NAME", o->name, "segment name")->required();
  add_json_flag(procs, o->as_json);
  return {procs, [o] { return run_processes(o->name, o->as_json); }};
}

}  // namespace kvbm::ctl
