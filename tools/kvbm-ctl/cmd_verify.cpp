// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl verify NAME: checks every invariant; exit 1 and one line per problem if any.
#include <fmt/format.h>

#include "common.hpp"
#include "progress.hpp"
#include "tool/inspect.hpp"

namespace kvbm::ctl {
namespace {

int run_verify(const std::string& name, bool as_json) {
  auto session = d::ToolSession::open(name, d::Access::kReadWrite);
  if (!session) {
    return fail(session.error());
  }
  std::vector<std::string> problems;
  {
    Progress progress("verify " + name);  // stderr, only if it takes long
    problems = d::verify_segment(**session);
  }
  if (as_json) {
    print_json(json{{"ok", problems.empty()}, {"problems", problems}});
    return problems.empty() ? kOk : kProblems;
  }
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

}  // namespace

Command add_verify(CLI::App& app) {
  struct Options {
    std::string name;
    bool as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* verify = app.add_subcommand("verify",
                                    "Check every invariant; exit 1 and list problems.\n"
                                    "  example: kvbm-ctl verify kv-gpu0");
  verify->add_option("NAME", o->name, "segment name")->required();
  add_json_flag(verify, o->as_json);
  return {verify, [o] { return run_verify(o->name, o->as_json); }};
}

}  // namespace kvbm::ctl
