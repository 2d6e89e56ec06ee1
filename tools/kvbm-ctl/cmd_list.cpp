// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl list [--all] [--json]: every object in /dev/shm that looks like a kvbm segment (the
// kvbm magic, of any layout, or an object this user cannot read) with a verdict: ok, dead
// processes (N), corrupted, another layout, unreadable. --all also lists every other object, as
// "not a kvbm segment". Read-only; never opens anything for blocking I/O (a FIFO is not waited
// on), never takes a process entry or the store mutex.
#include <dirent.h>

#include <algorithm>

#include <fmt/format.h>

#include "common.hpp"
#include "segment/shm_object.hpp"

namespace kvbm::ctl {
namespace {

struct Listed {
  std::string name;
  std::string status;   // ok, dead_processes, corrupted, layout_mismatch, unreadable, not_a_segment
  std::string verdict;  // the words shown in the table
  std::string error;    // why it could not be opened (empty when it could)
  std::size_t dead = 0;
  std::optional<json> segment;  // block_count, processes, eviction when it could be opened
};

std::optional<Listed> examine(const std::string& n, bool all) {
  Listed l{n, "", "", "", 0, std::nullopt};
  auto obj = d::ShmObject::open(n, d::ShmObject::Mode::kReadOnly);
  if (!obj) {
    switch (obj.error().code) {
      case Errc::kNotFound:
        return std::nullopt;  // removed since readdir
      case Errc::kLayoutMismatch: {
        if (!all) {
          return std::nullopt;
        }
        l.status = "not_a_segment";
        l.error = obj.error().message;
        struct stat st {};
        const bool known = ::lstat(("/dev/shm/" + n).c_str(), &st) == 0;
        l.verdict = fmt::format("not a kvbm segment ({})",
                                known ? d::file_type_name(st.st_mode) : "special file");
        return l;
      }
      default:
        // Cannot tell whether it is ours: shown, never hidden.
        l.status = "unreadable";
        l.error = obj.error().message;
        l.verdict = fmt::format("unreadable ({})", obj.error().message);
        return l;
    }
  }
  if (!d::has_kvbm_magic(obj->fd())) {
    if (!all) {
      return std::nullopt;
    }
    l.status = "not_a_segment";
    l.error = "no kvbm header";
    l.verdict = "not a kvbm segment";
    return l;
  }
  auto seg = open_ro(n);
  if (!seg) {
    l.error = seg.error().message;
    switch (seg.error().code) {
      case Errc::kLayoutMismatch:
        l.status = "layout_mismatch";
        l.verdict = "not a kvbm segment of this layout";
        break;
      case Errc::kCorrupted:
        l.status = "corrupted";
        l.verdict = "corrupted (see kvbm-ctl info)";
        break;
      default:
        l.status = "unreadable";
        l.verdict = fmt::format("unreadable ({})", seg.error().message);
        break;
    }
    return l;
  }
  const auto procs = d::list_processes(**seg);
  l.dead = procs.size() - live_processes(procs);
  l.status = l.dead == 0 ? "ok" : "dead_processes";
  l.verdict = l.dead == 0 ? "ok" : fmt::format("dead processes ({})", l.dead);
  l.segment = json{{"block_count", (*seg)->block_count()},
                   {"processes", procs.size()},
                   {"eviction", to_string((*seg)->config().eviction)}};
  return l;
}

int run_list(bool all, bool as_json) {
  DIR* dir = ::opendir("/dev/shm");
  if (dir == nullptr) {
    fmt::print(stderr, "kvbm-ctl: cannot read /dev/shm\n");
    return kProblems;
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    std::string n = e->d_name;
    // A payload object is listed through its segment (a segment name never ends in .payload).
    if (n == "." || n == ".." || n.ends_with(".payload")) {
      continue;
    }
    names.push_back(std::move(n));
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  json arr = json::array();
  if (!as_json) {
    fmt::print("{:<32} {:>10} {:>6} {:>9}  {}\n", "name", "blocks", "procs", "eviction", "status");
  }
  for (const auto& n : names) {
    const auto l = examine(n, all);
    if (!l) {
      continue;
    }
    if (as_json) {
      json j{{"name", l->name}, {"status", l->status}, {"dead_processes", l->dead}};
      if (l->segment) {
        j.update(*l->segment);
      }
      if (!l->error.empty()) {
        j["error"] = l->error;
      }
      arr.push_back(std::move(j));
    } else if (l->segment) {
      fmt::print("{:<32} {:>10} {:>6} {:>9}  {}\n", n, l->segment->at("block_count").get<int>(),
                 l->segment->at("processes").get<int>(),
                 l->segment->at("eviction").get<std::string>(), l->verdict);
    } else {
      fmt::print("{:<32} {:>10} {:>6} {:>9}  {}\n", n, "?", "?", "?", l->verdict);
    }
  }
  if (as_json) {
    fmt::print("{}\n", arr.dump(2));
  }
  return kOk;
}

}  // namespace

Command add_list(CLI::App& app) {
  struct Options {
    bool all = false, as_json = false;
  };
  auto o = std::make_shared<Options>();
  auto* list = app.add_subcommand(
      "list",
      "kvbm segments on this host, each with a verdict: ok, dead processes (N),\n"
      "corrupted, not a kvbm segment of this layout, unreadable.\n"
      "  example: kvbm-ctl list");
  list->add_flag("--all", o->all, "also list every other object in /dev/shm (not a kvbm segment)");
  add_json_flag(list, o->as_json);
  return {list, [o] { return run_list(o->all, o->as_json); }};
}

}  // namespace kvbm::ctl
