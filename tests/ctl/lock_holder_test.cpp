// SPDX-License-Identifier: Apache-2.0
// A process that holds the store lock for more than a second is named, by pid, in the log of every
// worker waiting for the lock and by kvbm-ctl info, processes and top (DESIGN.md section 12). Real
// processes: the holder takes the lock and stops itself with SIGSTOP; a waiting thread here and a
// waiting worker process log it; the real kvbm-ctl binary reads the segment; then the holder is
// SIGKILLed and both waiters complete after recovery.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvbm/kvbm.hpp"

#include "ctl/ctl_runner.hpp"
#include "support/temp_segment.hpp"
#include "testing/hooks.hpp"

namespace {

using kvbm::BlockManager;
using kvbm::LogLevel;
using kvbm::testing::Child;
using kvbm::testing::Signal;
using kvbm::testing::TempSegment;
using nlohmann::json;
using namespace kvbm::ctltest;

/// Records the library's log lines while installed, and lets the test wait for one.
class WaitableLog {
 public:
  WaitableLog()
      : previous_(kvbm::set_log_handler([this](LogLevel level, std::string_view message) {
          std::lock_guard lock(mutex_);
          lines_.emplace_back(level, std::string(message));
          changed_.notify_all();
        })) {}
  ~WaitableLog() { kvbm::set_log_handler(previous_); }
  WaitableLog(const WaitableLog&) = delete;
  WaitableLog& operator=(const WaitableLog&) = delete;

  /// The first line containing `part`, waiting for it up to `limit` (nullopt after that).
  std::optional<std::pair<LogLevel, std::string>> wait_for(const std::string& part,
                                                           std::chrono::seconds limit) {
    std::unique_lock lock(mutex_);
    std::optional<std::pair<LogLevel, std::string>> found;
    changed_.wait_for(lock, limit, [&] {
      for (const auto& line : lines_) {
        if (line.second.find(part) != std::string::npos) {
          found = line;
          return true;
        }
      }
      return false;
    });
    return found;
  }
  std::size_t count(const std::string& part) const {
    std::lock_guard lock(mutex_);
    return static_cast<std::size_t>(std::count_if(
        lines_.begin(), lines_.end(),
        [&](const auto& line) { return line.second.find(part) != std::string::npos; }));
  }
  std::string all() const {
    std::lock_guard lock(mutex_);
    std::string s;
    for (const auto& [level, line] : lines_) {
      s += fmt::format("[{}] {}\n", kvbm::to_string(level), line);
    }
    return s;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<LogLevel, std::string>> lines_;
  kvbm::LogHandler previous_;
};

/// A thread joined on scope exit (declared before the holder Child, so on an early failure the
/// holder is killed first and the waiting thread can finish).
struct JoinedThread {
  std::thread t;
  ~JoinedThread() {
    if (t.joinable()) {
      t.join();
    }
  }
};

/// What arrives on `fd` until it contains `part`, the writers close it, or `limit` passes.
std::string read_until(int fd, const std::string& part, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  std::string got;
  while (got.find(part) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) {
      break;
    }
    char buf[512];
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) {
      break;
    }
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got;
}

const json* entry_of(const json& procs, pid_t pid) {
  for (const auto& p : procs) {
    if (p.at("pid").get<pid_t>() == pid) {
      return &p;
    }
  }
  return nullptr;
}

}  // namespace

TEST_CASE("a process stopped holding the store lock is named by waiters, info, processes, top",
          "[ctl][lock]") {
  TempSegment seg("ctl-stopped");
  auto m = seg.create(16);
  auto mine = m->allocate_blocks(2).value();
  WaitableLog log;
  JoinedThread waiter;
  std::atomic<int> waited_result{0};  // 1: the operation succeeded after the holder died
  Signal ready;
  Child holder([&] {
    auto mb = BlockManager::open(seg.name());
    if (!mb) {
      return 10;
    }
    kvbm::testing::Peer::lock_store_and_hold(**mb);
    ready.notify(1);
    ::raise(SIGSTOP);  // stopped with the lock held, until SIGKILLed
    for (;;) {
      ::pause();
    }
  });
  REQUIRE(ready.wait() == 1);
  int status = 0;
  REQUIRE(::waitpid(holder.pid(), &status, WUNTRACED) == holder.pid());
  REQUIRE(WIFSTOPPED(status));
  const pid_t pid = holder.pid();

  // Two waiters: a worker process attaching (which takes the lock) and a thread of this process
  // allocating. Each logs the holder through its own log handler once it has waited a second.
  // The process is forked first, while this process has no other thread.
  int lines[2];
  REQUIRE(::pipe(lines) == 0);
  Child other([&] {
    ::close(lines[0]);
    kvbm::set_log_handler([fd = lines[1]](LogLevel, std::string_view message) {
      const std::string line = std::string(message) + "\n";
      const ssize_t n = ::write(fd, line.data(), line.size());  // the parent reads to the end
      (void)n;
    });
    return BlockManager::open(seg.name()).has_value() ? 0 : 20;
  });
  ::close(lines[1]);
  waiter.t = std::thread([&] {
    try {
      waited_result = m->allocate_blocks(1).has_value() ? 1 : 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "waiter: %s\n", e.what());
      waited_result = 3;
    }
  });
  const std::string named = fmt::format("held by pid {} for", pid);
  const auto line = log.wait_for(named, std::chrono::seconds(20));
  INFO(log.all());
  REQUIRE(line.has_value());
  CHECK(line->first == LogLevel::kWarning);
  CHECK_THAT(line->second, Catch::Contains(seg.name()));
  CHECK_THAT(line->second, Catch::Contains("store lock"));
  CHECK(waited_result == 0);  // still waiting
  const std::string other_log = read_until(lines[0], named, std::chrono::seconds(20));
  INFO("the other waiter's log: " << other_log);
  CHECK(contains(other_log, named));
  CHECK(contains(other_log, seg.name()));

  // kvbm-ctl, read-only and lock-free, names the holder.
  {
    CTL_EXPECT(r, 0, "info", seg.name());
    CHECK(contains(r.out, fmt::format("store lock   held by pid {} for", pid)));
    CHECK(contains(r.out, "longer than 1 s"));
    CHECK(contains(r.out, "HOLDS THE STORE LOCK"));
  }
  {
    CTL_EXPECT(r, 0, "info", seg.name(), "--json");
    const json j = parse_json(r);
    const json& h = j.at("lock_holder");
    REQUIRE(h.is_object());
    CHECK(h.at("pid") == pid);
    CHECK(h.at("held_ms").get<std::uint64_t>() >= 1000);
    CHECK(h.at("too_long") == true);
    const json* e = entry_of(j.at("processes"), pid);
    REQUIRE(e != nullptr);
    CHECK(e->at("lock_held_ms").get<std::uint64_t>() >= 1000);
    const json* me = entry_of(j.at("processes"), ::getpid());
    REQUIRE(me != nullptr);
    CHECK(me->at("lock_held_ms").is_null());
  }
  {
    CTL_EXPECT(r, 0, "processes", seg.name(), "--json");
    const json procs = parse_json(r);
    const json* e = entry_of(procs, pid);
    REQUIRE(e != nullptr);
    CHECK(e->at("lock_held_ms").get<std::uint64_t>() >= 1000);
    CHECK(entry_of(procs, ::getpid())->at("lock_held_ms").is_null());
  }
  {
    CTL_EXPECT(r, 0, "processes", seg.name());
    CHECK(contains(r.out, fmt::format("{}  alive", pid)));
    CHECK(contains(r.out, "HOLDS THE STORE LOCK for"));
  }
  {
    CTL_EXPECT(r, 0, "top", seg.name(), "--once", "--json");
    const json frame = parse_json(r);
    CHECK(frame.at("lock_holder").at("pid") == pid);
    CHECK(frame.at("lock_holder").at("held_ms").get<std::uint64_t>() >= 1000);
    CHECK(entry_of(frame.at("processes"), pid)->at("lock_held_ms").get<std::uint64_t>() >= 1000);
  }
  {
    CTL_EXPECT(r, 0, "top", seg.name(), "--once");
    CHECK(contains(r.out, fmt::format("STORE LOCK held by pid {} for", pid)));
  }

  // SIGKILL the stopped holder: the waiter recovers the lock and completes.
  holder.kill();
  waiter.t.join();
  CHECK(waited_result == 1);
  CHECK(other.wait() == 0);
  ::close(lines[0]);
  CHECK(log.count(named) == 1);  // once per wait
  CHECK(m->reap_dead_processes() == 1);
  CHECK(m->verify().empty());
  CHECK(m->counts().mutable_ == 2);
  {
    CTL_EXPECT(r, 0, "info", seg.name(), "--json");
    CHECK(parse_json(r).at("lock_holder").is_null());
  }
  {
    CTL_EXPECT(r, 0, "info", seg.name());
    CHECK(contains(r.out, "store lock   free"));
    CHECK_FALSE(contains(r.out, "HOLDS THE STORE LOCK"));
  }
}
