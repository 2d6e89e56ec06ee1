// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl list [--json]: the kvbm segments in /dev/shm (found by their magic; read-only).
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>

#include "common.hpp"
#include "segment/shm_object.hpp"

namespace kvbm::ctl {
namespace {

int run_list(bool as_json) {
  json arr = json::array();
  DIR* dir = ::opendir("/dev/shm");
  if (dir == nullptr) {
    fmt::print(stderr, "kvbm-ctl: cannot read /dev/shm\n");
    return kProblems;
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    std::string n = e->d_name;
    if (n == "." || n == ".." || n.ends_with(".payload")) {
      continue;
    }
    // Never a blocking open: a FIFO or socket here is skipped, not waited on.
    auto obj = d::ShmObject::open(n, d::ShmObject::Mode::kReadOnly);
    if (obj && d::has_kvbm_magic(obj->fd())) {
      names.push_back(n);
    }
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  if (!as_json) {
    fmt::print("{:<32} {:>10} {:>6} {:>9}  {}\n", "name", "blocks", "procs", "eviction", "status");
  }
  for (const auto& n : names) {
    auto seg = open_ro(n);
    if (!seg) {
      if (as_json) {
        arr.push_back(json{{"name", n}, {"error", seg.error().message}});
      } else {
        fmt::print("{:<32} {:>10} {:>6} {:>9}  {}\n", n, "?", "?", "?", seg.error().message);
      }
      continue;
    }
    const auto procs = d::list_processes(**seg);
    if (as_json) {
      arr.push_back(json{{"name", n},
                         {"block_count", (*seg)->block_count()},
                         {"processes", procs.size()},
                         {"eviction", to_string((*seg)->config().eviction)}});
    } else {
      fmt::print("{:<32} {:>10} {:>6} {:>9}  ok\n", n, (*seg)->block_count(), procs.size(),
                 to_string((*seg)->config().eviction));
    }
  }
  if (as_json) {
    fmt::print("{}\n", arr.dump(2));
  }
  return kOk;
}

}  // namespace

Command add_list(CLI::App& app) {
  auto as_json = std::make_shared<bool>(false);
  auto* list = app.add_subcommand("list", "kvbm segments on this host.\n  example: kvbm-ctl list");
  list->add_flag("--json", *as_json, "machine-readable output");
  return {list, [as_json] { return run_list(*as_json); }};
}

}  // namespace kvbm::ctl
