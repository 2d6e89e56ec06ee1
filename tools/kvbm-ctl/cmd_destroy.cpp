// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl destroy NAME [--force]: unlinks a segment (and its payload). Without --force it
// refuses while live processes are attached and refuses an object that is not a kvbm segment;
// it never removes a payload object by its own name, nor anything that is not a regular file.
#include <fmt/format.h>

#include "common.hpp"
#include "segment/shm_object.hpp"

namespace kvbm::ctl {
namespace {

int run_destroy(const std::string& name, bool force, bool as_json) {
  // A payload object is removed with its segment, never by its own name (exit 2).
  if (auto ok = validate_segment_name(name); !ok) {
    return fail(ok.error());
  }
  // Not found (3), or not a regular file (4): nothing is opened for blocking I/O or removed.
  auto obj = d::ShmObject::open(name, d::ShmObject::Mode::kReadOnly);
  if (!obj && !(force && obj.error().code == Errc::kPermissionDenied)) {
    return fail(obj.error());
  }
  const bool has_magic = obj && d::has_kvbm_magic(obj->fd());
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
  } else if (!force) {
    if (!has_magic) {
      // An empty file, garbage or another program's object: not ours to remove.
      fmt::print(stderr,
                 "kvbm-ctl: '/dev/shm/{}' is not a kvbm segment ({}); refusing to remove it "
                 "without --force\n",
                 name, seg.error().message);
      return kLayout;
    }
    if (seg.error().code == Errc::kLayoutMismatch || d::count_live_attachments(name) > 0) {
      // A kvbm segment of another layout, or a damaged one that live processes still use.
      fmt::print(stderr, "kvbm-ctl: {}\nkvbm-ctl: refusing to remove it without --force\n",
                 seg.error().message);
      return exit_code_for(seg.error());
    }
    // A damaged segment (a creator killed mid-create included) that nobody uses: removed.
  }
  auto done = BlockManager::destroy(name);
  if (!done) {
    return fail(done.error());
  }
  if (as_json) {
    print_json(json{{"destroyed", name}});
    return kOk;
  }
  fmt::print("destroyed {}\n", name);
  return kOk;
}

}  // namespace

Command add_destroy(CLI::App& app) {
  struct Options {
    std::string name;
    bool force = false;
    bool as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* destroy = app.add_subcommand("destroy",
                                     "Unlink a segment (and its payload).\n  "
                                     "example: kvbm-ctl destroy kv-gpu0");
  destroy->add_option("NAME", o->name, "segment name")->required();
  destroy->add_flag("--force", o->force,
                    "destroy even while live processes are attached, or an object that is not\n"
                    "(or no longer recognisably) a kvbm segment");
  add_json_flag(destroy, o->as_json);
  return {destroy, [o] { return run_destroy(o->name, o->force, o->as_json); }};
}

}  // namespace kvbm::ctl
