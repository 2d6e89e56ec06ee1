// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl: inspect, verify and repair kvbm segments. Read-only commands (info, dump, processes,
// verify, metrics, list) never take a process-table entry and never wait for the store mutex
// longer than 2 s. Exit codes: 0 ok, 1 problems found or operation failed, 2 usage error,
// 3 segment not found, 4 layout mismatch.
//
// This file only builds the CLI11 app and dispatches; each command is its own cmd_<name>.cpp.
#include <exception>
#include <vector>

#include <fmt/format.h>

#include "common.hpp"

namespace kvbm::ctl {

// Declares add_<name>() (defined in cmd_<name>.cpp) and adds that command to the app.
#define KVBM_CTL_COMMAND(name)   \
  Command add_##name(CLI::App&); \
  commands.push_back(add_##name(app))

// Not in an unnamed namespace: the block-scope declarations must name kvbm::ctl::add_<name>.
std::vector<Command> add_commands(CLI::App& app) {
  std::vector<Command> commands;
  // One line per command, in the order --help lists them.
  KVBM_CTL_COMMAND(create);
  KVBM_CTL_COMMAND(info);
  KVBM_CTL_COMMAND(dump);
  KVBM_CTL_COMMAND(processes);
  KVBM_CTL_COMMAND(verify);
  KVBM_CTL_COMMAND(repair);
  KVBM_CTL_COMMAND(reap);
  KVBM_CTL_COMMAND(metrics);
  KVBM_CTL_COMMAND(serve_metrics);
  KVBM_CTL_COMMAND(top);
  KVBM_CTL_COMMAND(list);
  KVBM_CTL_COMMAND(destroy);
  KVBM_CTL_COMMAND(events);
  return commands;
}

#undef KVBM_CTL_COMMAND

}  // namespace kvbm::ctl

int main(int argc, char** argv) {
  using namespace kvbm::ctl;
  CLI::App app{
      "kvbm-ctl: inspect, verify and repair kvbm shared-memory KV-cache segments.\n"
      "Exit codes: 0 ok, 1 problems found or operation failed, 2 usage error,\n"
      "3 segment not found, 4 layout mismatch."};
  app.set_version_flag("--version", fmt::format("kvbm-ctl {}", kvbm::version()),
                       "print the kvbm version and exit");
  app.require_subcommand(1);
  const std::vector<Command> commands = add_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kUsage;
  }
  try {
    for (const Command& c : commands) {
      if (app.got_subcommand(c.sub)) {
        return c.run();
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "kvbm-ctl: {}\n", e.what());
    return kProblems;
  }
  return kUsage;
}
