// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl reap NAME: releases what dead processes still hold, now, with the library's own
// reaping (the same loop as BlockManager::reap_dead_processes). Safe beside live workers: an
// entry is released only once its liveness lock proves its owner dead. Takes no process entry.
#include <fmt/format.h>

#include "common.hpp"
#include "tool/inspect.hpp"

namespace kvbm::ctl {
namespace {

int run_reap(const std::string& name, bool as_json) {
  auto done = d::reap_segment(name);
  if (!done) {
    return fail(done.error());
  }
  if (as_json) {
    print_json(json{{"name", name}, {"reaped", *done}});
    return kOk;
  }
  if (done->empty()) {
    fmt::print("{}: no dead process to reap\n", name);
    return kOk;
  }
  for (const auto& a : *done) {
    fmt::print("{}\n", a);
  }
  return kOk;
}

}  // namespace

Command add_reap(CLI::App& app) {
  struct Options {
    std::string name;
    bool as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* reap =
      app.add_subcommand("reap",
                         "Release dead processes' blocks now (what workers also do on their own).\n"
                         "Safe while live workers run.\n  example: kvbm-ctl reap kv-gpu0");
  reap->add_option("NAME", o->name, "segment name")->required();
  add_json_flag(reap, o->as_json);
  return {reap, [o] { return run_reap(o->name, o->as_json); }};
}

}  // namespace kvbm::ctl
