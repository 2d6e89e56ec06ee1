// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl reap NAME: releases what dead processes still hold, now, with the library's own
// reaping (the same loop as BlockManager::reap_dead_processes). Safe beside live workers: an
// entry is released only once its liveness lock proves its owner dead. Takes no process entry.
#include <fmt/format.h>

#include "common.hpp"
#include "tool/inspect.hpp"

namespace kvbm::ctl {
namespace {

int run_reap(const std::string& name) {
  auto done = d::reap_segment(name);
  if (!done) {
    return fail(done.error());
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
  auto name = std::make_shared<std::string>();
  auto* reap =
      app.add_subcommand("reap",
                         "Release dead processes' blocks now (what workers also do on their own).\n"
                         "Safe while live workers run.\n  example: kvbm-ctl reap kv-gpu0");
  reap->add_option("NAME", *name, "segment name")->required();
  return {reap, [name] { return run_reap(*name); }};
}

}  // namespace kvbm::ctl
