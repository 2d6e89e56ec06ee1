// SPDX-License-Identifier: Apache-2.0
#include "attachment.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "log.hpp"
#include "segment/liveness.hpp"
#include "segment/processes.hpp"
#include "store/reaping.hpp"

namespace kvbm::detail {

std::atomic<std::uint64_t> g_fork_generation{0};

namespace {

// Fork handling: the child must not use (or keep alive) the parent's attachments. The child
// handler bumps the fork generation (every inherited Attachment then refuses to work) and closes
// the inherited liveness fds, so a child that outlives its parent does not keep the parent's
// entries looking alive (OFD locks are inherited through fork).
std::mutex g_fds_mu;
std::vector<int>& live_fds() {
  static auto* fds = new std::vector<int>();  // leaked on purpose: used by atfork handlers
  return *fds;
}
void atfork_prepare() {
  g_fds_mu.lock();
}
void atfork_parent() {
  g_fds_mu.unlock();
}
void atfork_child() {
  g_fork_generation.fetch_add(1, std::memory_order_relaxed);
  for (int fd : live_fds()) {
    ::close(fd);
  }
  live_fds().clear();
  g_fds_mu.unlock();
}
void register_fd(int fd) {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  std::lock_guard<std::mutex> g(g_fds_mu);
  live_fds().push_back(fd);
}
void unregister_fd(int fd) {
  std::lock_guard<std::mutex> g(g_fds_mu);
  auto& v = live_fds();
  v.erase(std::remove(v.begin(), v.end(), fd), v.end());
}

// A damaged or poisoned segment is SegmentCorrupted (DESIGN.md section 12); the rest (fenced,
// system errors) plain SegmentError.
[[noreturn]] void throw_segment_error(Errc code, std::string msg, int err = 0) {
  if (code == Errc::kCorrupted) {
    throw SegmentCorrupted(Error{code, err, std::move(msg)});
  }
  throw SegmentError(Error{code, err, std::move(msg)});
}

}  // namespace

Attachment::Attachment(std::unique_ptr<Segment> segment)
    : seg_(std::move(segment)),
      store_(std::make_unique<BlockStore>(*seg_)),
      pid_(static_cast<std::uint32_t>(::getpid())),
      fork_generation_(g_fork_generation.load(std::memory_order_relaxed)),
      local_(std::make_unique<std::atomic<std::uint32_t>[]>(seg_->block_count())) {}

Result<std::shared_ptr<Attachment>> Attachment::attach(std::unique_ptr<Segment> segment) {
  std::shared_ptr<Attachment> att(new Attachment(std::move(segment)));
  const int fd = att->seg_->fd();
  register_fd(fd);
  const std::uint32_t max = att->seg_->max_processes();
  auto* procs = att->seg_->procs();
  try {
    for (std::uint32_t q = 0; q < max; ++q) {
      if (!ofd_try_lock(fd, shm::kLivenessLockBase + q)) {
        continue;  // held by a live attachment (maybe a reaper probing it)
      }
      std::optional<DeadEntry> dead;
      {
        Lock l = att->lock_unfenced();
        auto& store = *att->store_;
        if (procs[q].state.load(std::memory_order_relaxed) !=
            static_cast<std::uint32_t>(shm::ProcState::kFree)) {
          // Its owner died without detaching: release what it held before taking the entry over.
          dead = DeadEntry{q, procs[q].pid.load(std::memory_order_relaxed), 0};
          BlockStore::Txn txn(store, l, BlockStore::KeepLock{}, shm::IntentOp::kReap, q);
          dead->released = store.reap(txn, q);
        }
        att->incarnation_ = store.claim_process(l, q, static_cast<pid_t>(att->pid_),
                                                self_start_ticks(), self_pidns_inode());
        att->me_ = q;
      }
      if (dead) {
        att->log_reaped(*dead, "before taking its process entry over");
      }
      return att;
    }
  } catch (const SegmentError& e) {
    return tl::unexpected(e.error());
  }
  return tl::unexpected(
      Error{Errc::kProcessTableFull, 0,
            fmt::format("all {} process entries of segment '{}' are held by live processes", max,
                        att->seg_->config().name)});
}

Attachment::~Attachment() {
  if (forked()) {
    seg_->abandon_fd();  // closed by the fork handler; never touch the parent's entry
    return;
  }
  if (me_ != shm::kNil) {
    try {
      Lock l = lock_unfenced();
      auto* procs = seg_->procs();
      if (procs[me_].incarnation.load(std::memory_order_relaxed) == incarnation_) {
        // Normally nothing is left (handles keep the attachment alive); the sweep makes a detach
        // leave no trace even after misuse.
        BlockStore::Txn txn(*store_, std::move(l), shm::IntentOp::kDetach, me_);
        store_->reap(txn, me_, /*detach=*/true);
      }
    } catch (...) {
      // Poisoned or fenced: the entry is left to the reaper / kvbm-ctl repair.
    }
  }
  unregister_fd(seg_->fd());
  // ~Segment unmaps and closes the fd (dropping the liveness lock) after the mutex was released.
}

void Attachment::throw_forked() {
  throw std::logic_error("kvbm: attachment belongs to the parent process; open the segment again");
}

Attachment::Lock Attachment::lock_slow(int raw, bool fence) {
  auto& mu = seg_->control()->mutex;
  if (raw == EBUSY && poisoned()) {
    throw_segment_error(Errc::kCorrupted,
                        fmt::format("segment '{}' is poisoned (a crash recovery failed); run "
                                    "'kvbm-ctl repair {}'",
                                    config().name, config().name));
  }
  const shm::LongWaitReport report{
      [](void* self, shm::HolderView holder, std::uint64_t waited_ms) noexcept {
        static_cast<const Attachment*>(self)->log_long_wait(holder, waited_ms);
      },
      this};
  switch (mu.lock_after(raw, pid_, &report)) {
    case shm::LockStatus::kOk:
      break;
    case shm::LockStatus::kOwnerDead: {
      const std::vector<std::string> problems = store_->recover_or_poison();
      if (problems.empty()) {
        // Reported while the mutex is held (the caller goes on to its operation under it).
        log(LogLevel::kWarning,
            "segment '{}': recovered after a process died holding the store lock: {}",
            config().name, store_->last_recovery().describe());
      } else {
        log(LogLevel::kError,
            "segment '{}': recovery after a crash failed ({}); the segment is poisoned until "
            "'kvbm-ctl repair {}'",
            config().name, problems.front(), config().name);
        throw_segment_error(
            Errc::kCorrupted,
            fmt::format("segment '{}': recovery after a crash failed ({}{}); the segment is "
                        "poisoned; run 'kvbm-ctl repair {}'",
                        config().name, problems.front(),
                        problems.size() > 1 ? fmt::format(" and {} more", problems.size() - 1) : "",
                        config().name));
      }
      break;
    }
    case shm::LockStatus::kCorrupted:
      // Nobody can hold a mutex whose type or word is garbage: poison (repair re-initialises it).
      store_->poison();
      log(LogLevel::kError,
          "segment '{}': the store mutex is damaged (type or lock word); the segment is "
          "poisoned until 'kvbm-ctl repair {}'",
          config().name, config().name);
      throw_segment_error(Errc::kCorrupted,
                          fmt::format("segment '{}': the store mutex is damaged (type or lock "
                                      "word); the segment is poisoned; run 'kvbm-ctl repair {}'",
                                      config().name, config().name));
    case shm::LockStatus::kNotRecoverable:
      store_->poison();
      log(LogLevel::kError,
          "segment '{}': the store mutex is unrecoverable; the segment is poisoned until "
          "'kvbm-ctl repair {}'",
          config().name, config().name);
      throw_segment_error(Errc::kCorrupted,
                          fmt::format("segment '{}': store mutex is unrecoverable; run "
                                      "'kvbm-ctl repair {}'",
                                      config().name, config().name));
    default:
      throw_segment_error(Errc::kSystem, "pthread_mutex_lock on the store mutex failed");
  }
  if (poisoned()) {
    mu.unlock();
    throw_segment_error(Errc::kCorrupted, fmt::format("segment '{}' is poisoned", config().name));
  }
  if (fence && fenced()) {
    mu.unlock();
    throw_segment_error(
        Errc::kFenced,
        fmt::format("this process's attachment to '{}' (entry {}) was reclaimed by another "
                    "process; its blocks are gone; open the segment again",
                    config().name, me_));
  }
  return Lock(mu);
}

void Attachment::log_long_wait(shm::HolderView holder, std::uint64_t waited_ms) const noexcept {
  if (holder.pid != 0 && holder.held_ms >= shm::RobustMutex::kLongHoldMs) {
    log(LogLevel::kWarning,
        "segment '{}': the store lock is held by pid {} for {} ms (this thread has waited {} ms); "
        "every worker of the segment waits for it: is that process stopped or stuck?",
        config().name, holder.pid, holder.held_ms, waited_ms);
  } else if (holder.pid != 0) {
    log(LogLevel::kWarning,
        "segment '{}': waited {} ms for the store lock, which is busy (now held by pid {} for {} "
        "ms)",
        config().name, waited_ms, holder.pid, holder.held_ms);
  } else {
    log(LogLevel::kWarning, "segment '{}': waited {} ms for the store lock", config().name,
        waited_ms);
  }
}

std::optional<Attachment::Lock> Attachment::lock_quiet() noexcept {
  if (forked()) {
    return std::nullopt;
  }
  try {
    return lock();
  } catch (...) {
    return std::nullopt;
  }
}

void Attachment::release_holder(std::uint32_t slot) noexcept {
  // Declared before the lock, so destroyed after it is released: dropping the last reference
  // detaches, which takes the lock again.
  std::shared_ptr<Attachment> last_reference;
  auto l = lock_quiet();
  if (!l) {
    return;
  }
  // Another thread of this process may have re-acquired the slot since the count hit 0; and
  // another dropper may already have cleared the bit.
  if (local_[slot].load(std::memory_order_acquire) != 0 || !store_->holds(slot, me_)) {
    return;
  }
  // Declared after the lock: commits before it unlocks.
  BlockStore::Txn txn(*store_, *l, BlockStore::KeepLock{}, shm::IntentOp::kRelease, me_);
  store_->release_holder(txn, slot, me_);
  if (--held_slots_ == 0) {
    last_reference = std::move(self_);
  }
}

void Attachment::throw_damaged() const {
  log(LogLevel::kError,
      "segment '{}': an operation met a damaged structure ({}); the segment is poisoned until "
      "'kvbm-ctl repair {}'",
      config().name, damage_seen(), config().name);
  throw_segment_error(Errc::kCorrupted,
                      fmt::format("segment '{}' is damaged ({}); the segment is poisoned; run "
                                  "'kvbm-ctl repair {}'",
                                  config().name, damage_seen(), config().name));
}

std::size_t Attachment::reap_dead_processes() {
  check_fork();
  {
    // Entry states are read below without the lock: first let a pending crash recovery run, so
    // an entry whose release was rolled back is seen as in use.
    Lock settle = lock();
  }
  // Logged after the store mutex is released: the handler is the application's code.
  std::vector<DeadEntry> reaped;
  const std::size_t n = reap_dead_entries(*seg_, me_, [this, &reaped](std::uint32_t entry) {
    Lock l = lock();
    DeadEntry dead{entry, seg_->procs()[entry].pid.load(std::memory_order_relaxed), 0};
    const bool done = reap_entry_locked(*store_, l, entry, me_, &dead.released);
    if (done) {
      reaped.push_back(dead);
    }
    throw_if_damaged();
    return done;
  });
  for (const DeadEntry& dead : reaped) {
    log_reaped(dead, "");
  }
  return n;
}

void Attachment::log_reaped(const DeadEntry& dead, std::string_view context) const {
  log(LogLevel::kWarning,
      "segment '{}': reaped dead process {} (process entry {}): released {} block reference(s){}{}",
      config().name, dead.pid, dead.entry, dead.released, context.empty() ? "" : " ", context);
}

void Attachment::drop_liveness_for_test() {
  unregister_fd(seg_->fd());
  ::close(seg_->fd());
  seg_->abandon_fd();
}

void Attachment::verify_processes(std::vector<std::string>& problems) const {
  for (auto& p : dead_process_problems(*seg_, me_)) {
    problems.push_back(std::move(p));
  }
}

}  // namespace kvbm::detail
