// SPDX-License-Identifier: Apache-2.0
// kvbm::set_log_handler: what the library says when it reaps a dead process (which pid, how many
// blocks), recovers from a process killed inside the store mutex (what it rolled back) and
// poisons a segment it cannot recover; the default handler's stderr lines. Real processes,
// real SIGKILLs.
#include <fcntl.h>

#include <mutex>

#include "integration/multiprocess_support.hpp"
#include "store/crash_point.hpp"
#include "testing/hooks.hpp"

namespace {

using namespace multiprocess_test;
using kvbm::LogLevel;

/// Installs a handler that records every line for the life of the object, then restores the
/// previous handler.
class CapturedLog {
 public:
  CapturedLog()
      : previous_(kvbm::set_log_handler([this](LogLevel level, std::string_view message) {
          std::lock_guard lock(mutex_);
          lines_.emplace_back(level, std::string(message));
        })) {}
  ~CapturedLog() { kvbm::set_log_handler(previous_); }
  CapturedLog(const CapturedLog&) = delete;
  CapturedLog& operator=(const CapturedLog&) = delete;

  /// Lines that contain every one of `parts`.
  std::vector<std::pair<LogLevel, std::string>> matching(
      std::initializer_list<std::string> parts) const {
    std::lock_guard lock(mutex_);
    std::vector<std::pair<LogLevel, std::string>> out;
    for (const auto& line : lines_) {
      if (std::all_of(parts.begin(), parts.end(), [&](const std::string& p) {
            return line.second.find(p) != std::string::npos;
          })) {
        out.push_back(line);
      }
    }
    return out;
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
  std::vector<std::pair<LogLevel, std::string>> lines_;
  kvbm::LogHandler previous_;
};

/// A child that attaches, registers `registered` blocks and allocates `mutable_blocks` more,
/// then waits to be SIGKILLed.
std::unique_ptr<Child> start_victim(const TempSegment& seg,
                                    Signal& ready,
                                    Signal& never,
                                    std::size_t registered,
                                    std::size_t mutable_blocks) {
  return std::make_unique<Child>([&seg, &ready, &never, registered, mutable_blocks] {
    Reporter rep(ready);
    auto m = open_or_null(seg.name());
    CHILD_REQUIRE(m, 10);
    auto held = register_hashes(*m, seq_hashes(77, registered));
    auto mut = m->allocate_blocks(mutable_blocks);
    CHILD_REQUIRE(mut, 11);
    rep.send();
    never.wait();  // SIGKILLed here
    return rep.finish();
  });
}

}  // namespace

TEST_CASE("log: reap_dead_processes reports the dead pid and the blocks released",
          "[log][integration]") {
  TempSegment seg("log-reap");
  auto m = create_lru(seg, 32);
  CapturedLog log;
  Signal ready, never;
  auto victim = start_victim(seg, ready, never, 3, 2);
  await(ready, *victim);
  const pid_t pid = victim->pid();
  victim->kill();
  CHECK(log.matching({"reaped"}).empty());  // nothing happens until someone reaps

  REQUIRE(m->reap_dead_processes() == 1);
  INFO(log.all());
  const auto lines = log.matching({"reaped dead process " + std::to_string(pid)});
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].first == LogLevel::kWarning);
  CHECK_THAT(lines[0].second, Catch::Contains(seg.name()));
  CHECK_THAT(lines[0].second, Catch::Contains("released 5 block"));  // 3 held + 2 mutable
  CHECK(m->reap_dead_processes() == 0);
  CHECK(log.matching({"reaped"}).size() == 1);  // a second reap finds nothing to report
}

TEST_CASE("log: an attach that takes over a dead process's entry reports the reap",
          "[log][integration]") {
  TempSegment seg("log-takeover");
  auto cfg = seg.config(16);
  cfg.max_processes = 2;
  auto m = seg.create(cfg);
  CapturedLog log;
  Signal ready, never;
  auto victim = start_victim(seg, ready, never, 1, 1);
  await(ready, *victim);
  const pid_t pid = victim->pid();
  victim->kill();

  auto second = BlockManager::open(seg.name());  // the only free entry is the dead one
  REQUIRE(second.has_value());
  INFO(log.all());
  const auto lines = log.matching({"reaped dead process " + std::to_string(pid), "released 2 block",
                                   "taking its process entry over"});
  CHECK(lines.size() == 1);
}

TEST_CASE("log: recovery after a death inside the store mutex says what it rolled back",
          "[log][integration]") {
  TempSegment seg("log-recover");
  auto m = create_lru(seg, 16);
  CapturedLog log;
  const auto hs = seq_hashes(5, 2);
  Child worker([&] {
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    // SIGKILLed at the first register step, holding the mutex with the intent armed.
    kvbm::detail::set_crash_point_for_test(1, "register.");
    auto held = register_hashes(*mb, hs);
    return 11;
  });
  REQUIRE(worker.wait() == 128 + SIGKILL);

  CHECK(log.matching({"recovered"}).empty());
  (void)m->counts();  // the first lock after the death recovers
  INFO(log.all());
  CHECK(metric(*m, "kvbm_recoveries_total") == 1);
  const auto lines = log.matching({"recovered", "rolled back the unfinished register"});
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].first == LogLevel::kWarning);
  CHECK_THAT(lines[0].second, Catch::Contains(seg.name()));
  CHECK_THAT(lines[0].second, Catch::Contains("process entry 1"));
  // ... and reaping the dead worker afterwards is logged too.
  CHECK(m->reap_dead_processes() == 1);
  CHECK(log.matching({"reaped dead process " + std::to_string(worker.pid())}).size() == 1);
  check_consistent(*m);
}

TEST_CASE("log: a recovery that fails poisons the segment and says so as an error",
          "[log][integration]") {
  TempSegment seg("log-poison");
  auto m = create_lru(seg, 16);
  CapturedLog log;
  Signal ready, never;
  Child victim([&] {
    Reporter rep(ready);
    auto mb = open_or_null(seg.name());
    CHILD_REQUIRE(mb, 10);
    kvbm::testing::Peer::corrupt_slot_state(*mb, 3, 0x7F);  // no intent: cannot be rolled back
    kvbm::testing::Peer::lock_store_and_hold(*mb);
    rep.send();
    never.wait();
    return rep.finish();
  });
  await(ready, victim);
  victim.kill();
  CHECK_THROWS_AS(m->allocate_blocks(1), kvbm::SegmentError);
  INFO(log.all());
  const auto lines = log.matching({"poisoned", "kvbm-ctl repair " + seg.name()});
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].first == LogLevel::kError);
  CHECK_THAT(lines[0].second, Catch::Contains("invalid state"));
}

TEST_CASE("log: set_log_handler returns the handler it replaces; a throwing handler is contained",
          "[log]") {
  int calls = 0;
  kvbm::LogHandler first = [&calls](LogLevel, std::string_view) { ++calls; };
  const kvbm::LogHandler original = kvbm::set_log_handler(first);
  CHECK_FALSE(original);  // the default handler is not a std::function
  const kvbm::LogHandler got = kvbm::set_log_handler(
      [](LogLevel, std::string_view) { throw std::runtime_error("handler failure"); });
  REQUIRE(got);
  got(LogLevel::kInfo, "direct call");
  CHECK(calls == 1);

  TempSegment seg("log-throw");
  auto m = create_lru(seg, 8);
  Signal ready, never;
  auto victim = start_victim(seg, ready, never, 1, 0);
  await(ready, *victim);
  victim->kill();
  CHECK(m->reap_dead_processes() == 1);  // the handler threw; the reap still happened
  CHECK(m->verify().empty());
  kvbm::set_log_handler(original);
}

TEST_CASE("log: the default handler writes warnings to stderr, one line each",
          "[log][integration]") {
  TempSegment seg("log-default");
  auto m = create_lru(seg, 8);
  Signal ready, never;
  auto victim = start_victim(seg, ready, never, 2, 0);
  await(ready, *victim);
  const pid_t pid = victim->pid();
  victim->kill();

  // A child with its stderr on a pipe attaches; the parent reads what it wrote.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  Child reaper([&] {
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    // The dead entry is the first free one: this attach reaps it before taking it over.
    auto mb = open_or_null(seg.name());
    return mb ? 0 : 10;
  });
  ::close(fds[1]);
  std::string err;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) {
    err.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  REQUIRE(reaper.wait() == 0);
  INFO(err);
  CHECK_THAT(err, Catch::StartsWith("kvbm: warning: segment '" + seg.name() +
                                    "': reaped dead process " + std::to_string(pid)));
  CHECK(std::count(err.begin(), err.end(), '\n') == 1);
}
