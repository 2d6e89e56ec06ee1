// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl destroy NAME [--force]: unlinks a segment (and its payload); refuses while live
// processes are attached unless --force.
#include <fmt/format.h>

#include "common.hpp"

namespace kvbm::ctl {
namespace {

int run_destroy(const std::string& name, bool force) {
  auto seg = open_ro(name);
  if (seg) {
    const std::size_t live = live_processes(d::list_processes(**seg));
    if (live > 0 && !force) {
      fmt::print(stderr,
                 "kvbm-ctl: {} live process(es) are attached to '{}'; use --force to unlink it "
                 "anyway (they keep their mappings)\n",
                 live, name);
      return kProblems;
    }
  } else if (seg.error().code == Errc::kNotFound) {
    return fail(seg.error());
  } else if (!force &&
             (seg.error().code == Errc::kLayoutMismatch || d::count_live_attachments(name) > 0)) {
    // Not a kvbm segment of this layout, or a damaged one that live processes still use.
    fmt::print(stderr, "kvbm-ctl: {}\nkvbm-ctl: refusing to remove it without --force\n",
               seg.error().message);
    return exit_code_for(seg.error());
  }
  auto done = BlockManager::destroy(name);
  if (!done) {
    return fail(done.error());
  }
  fmt::print("destroyed {}\n", name);
  return kOk;
}

}  // namespace

Command add_destroy(CLI::App& app) {
  struct Options {
    std::string name;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  auto* destroy = app.add_subcommand("destroy",
                                     "Unlink a segment (and its payload).\n  "
                                     "example: kvbm-ctl destroy kv-gpu0");
  destroy->add_option("NAME", o->name, "segment name")->required();
  destroy->add_flag("--force", o->force, "destroy even while live processes are attached");
  return {destroy, [o] { return run_destroy(o->name, o->force); }};
}

}  // namespace kvbm::ctl
