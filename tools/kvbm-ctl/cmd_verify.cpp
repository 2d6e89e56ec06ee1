// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl verify NAME [--exclusive]: checks every invariant; exit 1 and one line per problem if
// any. Paced by default (gives the store lock up every few microseconds); --exclusive holds
// the store lock for the whole walk.
#include <fmt/format.h>

#include "common.hpp"
#include "progress.hpp"
#include "tool/inspect.hpp"

namespace kvbm::ctl {
namespace {

int run_verify(const std::string& name, bool exclusive, bool as_json) {
  auto session = d::ToolSession::open(name, d::Access::kReadWrite);
  if (!session) {
    return fail(session.error());
  }
  VerifyReport report;
  {
    Progress progress("verify " + name);  // stderr, only if it takes long
    report = d::verify_segment(**session, exclusive ? VerifyMode::kExclusive : VerifyMode::kPaced);
  }
  const auto& problems = report.problems;
  if (as_json) {
    print_json(json{{"ok", problems.empty()},
                    {"problems", problems},
                    {"complete", report.complete},
                    {"notes", report.notes},
                    {"exclusive", exclusive},
                    {"yields", report.yields},
                    {"restarts", report.restarts},
                    {"operations", report.operations}});
    return problems.empty() ? kOk : kProblems;
  }
  if (problems.empty()) {
    if (report.complete) {
      fmt::print("{}: consistent ({} blocks)\n", name, (*session)->segment().block_count());
    } else {
      fmt::print("{}: no problem found ({} blocks), but not every invariant was compared\n", name,
                 (*session)->segment().block_count());
    }
  } else {
    fmt::print("{}: {} problem(s)\n", name, problems.size());
    for (const auto& p : problems) {
      fmt::print("  - {}\n", p);
    }
  }
  for (const auto& n : report.notes) {
    fmt::print("  note: {}\n", n);
  }
  return problems.empty() ? kOk : kProblems;
}

}  // namespace

Command add_verify(CLI::App& app) {
  struct Options {
    std::string name;
    bool exclusive = false;
    bool as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* verify = app.add_subcommand(
      "verify",
      "Check every invariant; exit 1 and list problems.\n"
      "  Workers keep running: verify gives the store lock up for a moment every ~3 us of\n"
      "  holding it, and walks again if an operation ran meanwhile. A segment never quiet for a\n"
      "  whole walk (3 tries) gets the checks each chunk can make on its own (every slot's\n"
      "  fields, owners and holders, duplicates, the hash index, free-list links), without the\n"
      "  global counts; a note says so (--json: \"complete\": false). --exclusive compares\n"
      "  everything in one hold of the lock, which stalls every worker for the whole walk\n"
      "  (about 0.2 s per million blocks).\n"
      "  example: kvbm-ctl verify kv-gpu0\n"
      "  example: kvbm-ctl verify kv-gpu0 --exclusive --json");
  verify->add_option("NAME", o->name, "segment name")->required();
  verify->add_flag("--exclusive", o->exclusive,
                   "hold the store lock for the whole walk: always compares the global counts, "
                   "but workers wait for all of it");
  add_json_flag(verify, o->as_json);
  return {verify, [o] { return run_verify(o->name, o->exclusive, o->as_json); }};
}

}  // namespace kvbm::ctl
