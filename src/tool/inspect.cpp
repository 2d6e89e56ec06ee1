// SPDX-License-Identifier: Apache-2.0
#include "tool/inspect.hpp"

#include <fmt/format.h>

#include "store/paced_verify.hpp"
#include "store/repair.hpp"
#include "store/unattached_lock.hpp"

namespace kvbm::detail {

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
  lock_.reset();
}

Result<void> ToolSession::lock(std::chrono::milliseconds wait, std::vector<std::string>& notes) {
  auto held = lock_unattached(*store_, wait, notes);
  if (!held) {
    return tl::unexpected(held.error());
  }
  lock_.emplace(std::move(*held));
  return {};
}

std::vector<std::string> verify_segment(ToolSession& session) {
  return verify_segment(session, VerifyMode::kExclusive).problems;
}

namespace {
/// A paced walk could not take the lock back.
struct LockLost {
  std::string message;
};
}  // namespace

VerifyReport verify_segment(ToolSession& session, VerifyMode mode) {
  constexpr std::chrono::milliseconds kWait(2000);
  VerifyReport report;
  // What taking the lock recovered (a holder that died) is reported as a problem, as ever.
  auto locked = session.lock(kWait, report.problems);
  if (!locked) {
    report.problems.push_back(locked.error().message);
    report.complete = false;
    return report;
  }
  if (mode == VerifyMode::kExclusive) {
    session.store().verify(report.problems);
  } else {
    std::vector<std::string> relock_notes;
    const MutexHold hold{[&] { session.unlock(); },
                         [&] {
                           if (auto again = session.lock(kWait, relock_notes); !again) {
                             throw LockLost{again.error().message};
                           }
                         }};
    try {
      auto paced = paced_verify(session.store(), hold);
      for (auto& n : relock_notes) {
        report.problems.push_back(std::move(n));
      }
      for (auto& p : paced.problems) {
        report.problems.push_back(std::move(p));
      }
      report.complete = paced.complete;
      for (auto& n : paced.notes) {
        report.notes.push_back(std::move(n));
      }
      report.yields = paced.yields;
      report.restarts = paced.restarts;
      report.operations = paced.operations;
    } catch (const LockLost& lost) {
      report.problems.push_back(lost.message);
      report.complete = false;
      return report;
    }
  }
  session.unlock();
  for (auto& p : dead_process_problems(session.segment())) {
    report.problems.push_back(std::move(p));
  }
  return report;
}

namespace {

std::size_t live_processes(const std::vector<ProcessView>& procs) {
  std::size_t live = 0;
  for (const auto& p : procs) {
    live += p.alive ? 1 : 0;
  }
  return live;
}

}  // namespace

Result<std::vector<std::string>> reap_segment(std::string_view name) {
  auto session = ToolSession::open(name, Access::kReadWrite);
  if (!session) {
    return tl::unexpected(session.error());
  }
  auto& seg = (*session)->segment();
  const auto procs = list_processes(seg);
  std::vector<std::string> actions;
  if (auto ok = (*session)->lock(std::chrono::milliseconds(2000), actions); !ok) {
    return tl::unexpected(ok.error());
  }
  reap_dead_locked(seg, (*session)->store(), *(*session)->held(), procs, actions);
  (*session)->unlock();
  return actions;
}

Result<RepairReport> repair_segment(std::string_view name, bool dry_run, bool force) {
  if (dry_run) {
    auto session = ToolSession::open(name, Access::kReadOnly);
    if (!session) {
      return tl::unexpected(session.error());
    }
    auto& seg = (*session)->segment();
    return RepairReport{plan_repair(seg, (*session)->store(), list_processes(seg)), {}};
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
    reinit_store_mutex(seg);
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
  if (live > 0 && !force) {
    // Live workers may be using any slot or structure: only reaping (and the recovery the lock
    // just ran, which any worker would have run) is safe beside them.
    std::vector<std::string> problems;
    store.verify(problems);
    const bool armed = (seg.control()->intent.seq.load() & 1) != 0;
    if (!problems.empty() || armed) {
      const std::string what = armed ? "an operation is half-done under a healthy lock"
                                     : fmt::format("{} problem(s) beyond dead processes, first: {}",
                                                   problems.size(), problems.front());
      return tl::unexpected(Error{
          Errc::kBlocksInUse, 0,
          fmt::format("{} live process(es) are attached and repairing needs more than reaping "
                      "({}); fixing slots or rebuilding structures under running workers could "
                      "break what they hold: stop them, or use --force. Dead processes alone are "
                      "released safely with 'kvbm-ctl reap {}'",
                      live, what, seg.config().name)});
    }
    reap_dead_locked(seg, store, *(*session)->held(), procs, report.actions);
    (*session)->unlock();
    report.remaining = verify_segment(**session);
    return report;
  }
  repair_locked(seg, store, *(*session)->held(), procs, report.actions);
  (*session)->unlock();
  report.remaining = verify_segment(**session);
  return report;
}

}  // namespace kvbm::detail
