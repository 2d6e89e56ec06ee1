// SPDX-License-Identifier: Apache-2.0
#include "tool/inspect.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>

#include "segment/liveness.hpp"

namespace kvbm::detail {

std::vector<std::string> dead_process_problems(const Segment& segment, std::uint32_t skip) {
  std::vector<std::string> problems;
  for (const ProcessView& p : list_processes(segment)) {
    if (!p.alive && p.index != skip) {
      problems.push_back(
          fmt::format("process entry {} (pid {}) is dead but not reaped: it holds {} blocks ({} "
                      "mutable/staged, {} registered); run reap or 'kvbm-ctl repair'",
                      p.index, p.pid, p.exclusive + p.held, p.exclusive, p.held));
    }
  }
  return problems;
}

std::vector<ProcessView> list_processes(const Segment& seg) {
  std::vector<ProcessView> out;
  const auto* slots = seg.slots();
  const std::uint32_t n = seg.block_count();
  for (std::uint32_t q = 0; q < seg.max_processes(); ++q) {
    const auto& e = seg.procs()[q];
    if (e.state.load(std::memory_order_acquire) ==
        static_cast<std::uint32_t>(shm::ProcState::kFree)) {
      continue;
    }
    ProcessView v{q,
                  e.pid.load(std::memory_order_relaxed),
                  e.incarnation.load(std::memory_order_relaxed),
                  e.start_ticks.load(std::memory_order_relaxed),
                  e.attached_ns.load(std::memory_order_relaxed),
                  ofd_is_locked(seg.fd(), shm::kLivenessLockBase + q),
                  0,
                  0};
    for (std::uint32_t s = 0; s < n; ++s) {
      const auto& m = slots[s];
      if ((m.state == static_cast<std::uint8_t>(shm::SlotState::kMutable) ||
           m.state == static_cast<std::uint8_t>(shm::SlotState::kStaged)) &&
          m.owner == q) {
        ++v.exclusive;
      }
      v.held += (m.holders >> q) & 1;
    }
    out.push_back(v);
  }
  return out;
}

std::size_t count_live_attachments(std::string_view name) {
  const std::string path = "/" + std::string(name);
  const int fd = ::shm_open(path.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) {
    return 0;
  }
  std::size_t live = 0;
  for (std::uint32_t q = 0; q < shm::kMaxProcesses; ++q) {
    live += ofd_is_locked(fd, shm::kLivenessLockBase + q) ? 1 : 0;
  }
  ::close(fd);
  return live;
}

Result<std::unique_ptr<ToolSession>> ToolSession::open(std::string_view name, Access access) {
  auto seg = Segment::open(name, access);
  if (!seg) {
    return tl::unexpected(seg.error());
  }
  std::unique_ptr<ToolSession> s(new ToolSession());
  s->seg_ = std::move(*seg);
  s->store_ = std::make_unique<BlockStore>(*s->seg_);
  return s;
}

ToolSession::~ToolSession() {
  unlock();
}

void ToolSession::unlock() {
  if (locked_) {
    seg_->control()->mutex.unlock();
    locked_ = false;
  }
}

Result<void> ToolSession::lock(std::chrono::milliseconds wait, std::vector<std::string>& notes) {
  auto* header = seg_->header();
  if (header->init_state.load(std::memory_order_acquire) ==
      static_cast<std::uint32_t>(shm::InitState::kPoisoned)) {
    return tl::unexpected(
        Error{Errc::kCorrupted, 0, "the segment is poisoned (a recovery failed)"});
  }
  timespec deadline{};
  clock_gettime(CLOCK_REALTIME, &deadline);
  const auto ms = wait.count();
  deadline.tv_sec += ms / 1000;
  deadline.tv_nsec += (ms % 1000) * 1000000;
  if (deadline.tv_nsec >= 1000000000) {
    deadline.tv_sec += 1;
    deadline.tv_nsec -= 1000000000;
  }
  auto& mu = seg_->control()->mutex;
  switch (mu.timed_lock(deadline)) {
    case shm::LockStatus::kOk:
      break;
    case shm::LockStatus::kOwnerDead: {
      const bool armed = (seg_->control()->intent.seq.load() & 1) != 0;
      std::vector<std::string> problems = store_->recover();
      if (!problems.empty() || !mu.consistent()) {
        header->init_state.store(static_cast<std::uint32_t>(shm::InitState::kPoisoned));
        mu.unlock();
        return tl::unexpected(Error{Errc::kCorrupted, 0,
                                    fmt::format("recovery after a crash failed: {}",
                                                problems.empty() ? "mutex" : problems.front())});
      }
      notes.push_back(armed ? "the store mutex was held by a process that died mid-operation: "
                              "rolled the operation back and rebuilt the indexes"
                            : "the store mutex was held by a process that died: rebuilt the "
                              "indexes");
      break;
    }
    case shm::LockStatus::kTimedOut:
      return tl::unexpected(Error{
          Errc::kSystem, ETIMEDOUT,
          fmt::format("the store mutex is held by a live process (waited {} ms); try again", ms)});
    case shm::LockStatus::kNotRecoverable:
      header->init_state.store(static_cast<std::uint32_t>(shm::InitState::kPoisoned));
      return tl::unexpected(Error{Errc::kCorrupted, 0, "the store mutex is unrecoverable"});
    default:
      return tl::unexpected(Error{Errc::kSystem, 0, "pthread_mutex_timedlock failed"});
  }
  locked_ = true;
  return {};
}

std::vector<std::string> verify_segment(ToolSession& session) {
  std::vector<std::string> problems;
  auto locked = session.lock(std::chrono::milliseconds(2000), problems);
  if (!locked) {
    problems.push_back(locked.error().message);
    return problems;
  }
  session.store().verify(problems);
  session.unlock();
  for (auto& p : dead_process_problems(session.segment())) {
    problems.push_back(std::move(p));
  }
  return problems;
}

namespace {

std::size_t live_processes(const std::vector<ProcessView>& procs) {
  std::size_t live = 0;
  for (const auto& p : procs) {
    live += p.alive ? 1 : 0;
  }
  return live;
}

// What a repair would do, from a read-only look (no lock, no recovery, nothing written).
RepairReport plan_repair(Segment& seg, BlockStore& store) {
  RepairReport report;
  auto* header = seg.header();
  if (header->init_state.load() == static_cast<std::uint32_t>(shm::InitState::kPoisoned)) {
    report.actions.push_back("re-initialise the poisoned store mutex");
  }
  if ((seg.control()->intent.seq.load() & 1) != 0) {
    report.actions.push_back("roll back an interrupted operation (intent record is armed)");
  }
  for (const auto& p : list_processes(seg)) {
    if (!p.alive) {
      report.actions.push_back(fmt::format(
          "release process entry {} (pid {}): {} mutable/staged and {} registered blocks", p.index,
          p.pid, p.exclusive, p.held));
    }
  }
  std::vector<std::string> problems;
  store.verify(problems);
  for (auto& p : problems) {
    report.actions.push_back("fix: " + p);
  }
  return report;
}

}  // namespace

Result<RepairReport> repair_segment(std::string_view name, bool dry_run, bool force) {
  if (dry_run) {
    auto session = ToolSession::open(name, Access::kReadOnly);
    if (!session) {
      return tl::unexpected(session.error());
    }
    return plan_repair((*session)->segment(), (*session)->store());
  }
  auto session = ToolSession::open(name, Access::kReadWrite);
  if (!session) {
    return tl::unexpected(session.error());
  }
  auto& seg = (*session)->segment();
  auto& store = (*session)->store();
  RepairReport report;
  auto* header = seg.header();
  const auto procs = list_processes(seg);
  const std::size_t live = live_processes(procs);
  auto reinit_mutex = [&](std::string why) -> Result<void> {
    if (live > 0 && !force) {
      return tl::unexpected(
          Error{Errc::kBlocksInUse, 0,
                fmt::format("{}; {} live process(es) are attached: stop them or use --force", why,
                            live)});
    }
    // Safe only because no live process can be inside the mutex (checked above, or forced).
    report.actions.push_back(why + ": re-initialised the store mutex");
    seg.control()->mutex.init();
    header->init_state.store(static_cast<std::uint32_t>(shm::InitState::kReady));
    return {};
  };
  if (header->init_state.load() == static_cast<std::uint32_t>(shm::InitState::kPoisoned)) {
    if (auto ok = reinit_mutex("segment was poisoned"); !ok) {
      return tl::unexpected(ok.error());
    }
  }
  std::vector<std::string> notes;
  if (auto ok = (*session)->lock(std::chrono::milliseconds(5000), notes); !ok) {
    if (ok.error().code != Errc::kCorrupted) {
      return tl::unexpected(ok.error());
    }
    // Recovery found damage it cannot roll back: repair takes over from here.
    if (auto re = reinit_mutex(ok.error().message); !re) {
      return tl::unexpected(re.error());
    }
    notes.clear();
    if (auto again = (*session)->lock(std::chrono::milliseconds(5000), notes); !again) {
      return tl::unexpected(again.error());
    }
  }
  for (auto& n : notes) {
    report.actions.push_back(std::move(n));
  }
  if ((seg.control()->intent.seq.load() & 1) != 0) {
    store.recover();  // an armed intent under a healthy mutex: roll it back as recovery would
    report.actions.push_back("rolled back an interrupted operation");
  }
  // Slots with impossible state values first, then sound derived structures, so that reaping
  // and sanitising below never follow a damaged link.
  store.begin(shm::IntentOp::kReap, shm::kNil);
  for (std::uint32_t s = 0; s < seg.block_count(); ++s) {
    if (seg.slots()[s].state >= shm::kSlotStateCount) {
      report.actions.push_back(fmt::format("slot {}: invalid state value -> reset", s));
      store.force_reset(s);
    }
  }
  store.commit();
  for (auto& p : store.rebuild_derived()) {
    report.actions.push_back("rebuild: " + p);
  }
  // Broken links (e.g. a duplicate pointing nowhere) are cut before reaping walks them.
  store.begin(shm::IntentOp::kReap, shm::kNil);
  store.sanitize(report.actions);
  store.commit();
  for (const auto& p : procs) {
    if (p.alive || !ofd_try_lock(seg.fd(), shm::kLivenessLockBase + p.index)) {
      continue;  // alive, or a new attacher took the entry since the probe
    }
    report.actions.push_back(fmt::format(
        "released process entry {} (pid {}): {} mutable/staged and {} registered blocks", p.index,
        p.pid, p.exclusive, p.held));
    store.begin(shm::IntentOp::kReap, shm::kNil);
    store.reap(p.index);
    store.commit();
    ofd_unlock(seg.fd(), shm::kLivenessLockBase + p.index);
  }
  store.begin(shm::IntentOp::kReap, shm::kNil);
  store.sanitize(report.actions);
  store.commit();
  for (auto& p : store.rebuild_derived()) {
    report.actions.push_back("rebuild: " + p);
  }
  header->epoch.fetch_add(1);
  (*session)->unlock();
  report.remaining = verify_segment(**session);
  return report;
}

}  // namespace kvbm::detail
