// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl repair NAME [--dry-run] [--force]: recovers an interrupted operation, releases dead
// processes' blocks and rebuilds the indexes, so that verify passes afterwards. Beside live
// workers it does only what is safe there (reaping, recovery) and otherwise refuses without
// --force, saying why.
#include <fmt/format.h>

#include "common.hpp"
#include "progress.hpp"
#include "tool/inspect.hpp"

namespace kvbm::ctl {
namespace {

int run_repair(const std::string& name, bool dry_run, bool force, bool as_json) {
  auto report = [&] {
    Progress progress("repair " + name);  // stderr, only if it takes long
    return d::repair_segment(name, dry_run, force);
  }();
  if (!report) {
    return fail(report.error());
  }
  if (as_json) {
    // ok: nothing remains to be fixed (for --dry-run: nothing the repair would leave).
    print_json(json{{"name", name},
                    {"dry_run", dry_run},
                    {"actions", report->actions},
                    {"remaining", report->remaining},
                    {"ok", report->remaining.empty()}});
    return report->remaining.empty() ? kOk : kProblems;
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

}  // namespace

Command add_repair(CLI::App& app) {
  struct Options {
    std::string name;
    bool dry_run = false, force = false, as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* repair = app.add_subcommand(
      "repair",
      "Recover an interrupted operation, release dead processes' blocks, rebuild the\n"
      "indexes; verify passes afterwards.\n  example: kvbm-ctl repair kv-gpu0 --dry-run");
  repair->add_option("NAME", o->name, "segment name")->required();
  repair->add_flag("--dry-run", o->dry_run, "only say what would be done");
  repair->add_flag("--force", o->force,
                   "also fix damaged slots and structures while live processes are attached\n"
                   "(without it, repair beside live workers only reaps dead processes)");
  add_json_flag(repair, o->as_json);
  return {repair, [o] { return run_repair(o->name, o->dry_run, o->force, o->as_json); }};
}

}  // namespace kvbm::ctl
