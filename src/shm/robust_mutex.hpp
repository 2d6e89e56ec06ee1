// SPDX-License-Identifier: Apache-2.0
// RobustMutex: the one store mutex of a segment. A pthread mutex that is process-shared, robust
// and of type NORMAL (RECURSIVE/ERRORCHECK break across PID namespaces; Boost's robust mutex
// cannot be recovered after EOWNERDEAD, see docs/architecture.md).
// Written by: the creator (init), every attached process (lock/unlock). The caller decides what
// to do on kOwnerDead: repair the protected state, then consistent(); or unlock() without
// consistent() to poison the mutex on purpose.
//
// Beside the pthread mutex, in the same cache line, sits the holder record: which process holds
// the mutex and since when, so that a holder that stops (SIGSTOP, a debugger, a stuck page fault)
// is named by every waiter and by kvbm-ctl instead of silently blocking every worker.
// Written by: the thread that has just acquired the mutex (every acquisition below takes the
// caller's pid and records it before returning), and cleared by the holding thread right before
// unlock(). Read by anyone, without the lock: it means something only while the lock word says
// the mutex is held (a holder that died leaves its record behind; the kernel then marks the lock
// word OWNER_DIED with no owner, and the next acquisition overwrites the record).
#pragma once

#include <errno.h>
#include <pthread.h>
#include <time.h>

#include <atomic>
#include <cstdint>

#include "shm/layout.hpp"

namespace kvbm::shm {

/// kCorrupted: the mutex's type or lock word is not something glibc ever writes (damaged
/// memory); nothing was handed to glibc, which could abort or wait forever on it.
enum class LockStatus { kOk, kOwnerDead, kNotRecoverable, kTimedOut, kError, kCorrupted };

/// The holder of the mutex as recorded: pid 0 when the mutex is free or no holder is recorded.
/// The pid is in the holder's PID namespace (the one ProcEntry::pid uses).
struct HolderView {
  std::uint32_t pid;
  std::uint32_t held_ms;  // how long the current hold has lasted (4 ms resolution)
};

/// What a waiter reports once it has waited long (shm/ does not log: the caller passes this).
/// Called at most once per wait, on the waiting thread, without the mutex; must not throw.
struct LongWaitReport {
  void (*fn)(void* ctx, HolderView holder, std::uint64_t waited_ms) noexcept;
  void* ctx;
};

struct RobustMutex {
  static constexpr long kWaitSliceNs = 20 * 1000 * 1000;  // 20 ms
  static constexpr int kSpinLimit = 256;                  // pause loops: a few microseconds
  /// A hold (or a wait) this long is reported (DESIGN.md section 12).
  static constexpr std::uint32_t kLongHoldMs = 1000;

  pthread_mutex_t m;
  /// The holder record: (pid << 32) | low 32 bits of CLOCK_MONOTONIC_COARSE in milliseconds at
  /// acquisition; 0 = none. One word, so a reader never pairs one holder's pid with another's
  /// time. The milliseconds wrap after 49 days; held_ms is computed modulo 2^32.
  std::atomic<std::uint64_t> holder;

  /// Creator only, on zero-filled memory no other process can see yet (and repair, which
  /// re-initialises a damaged mutex when no live process can be inside it).
  bool init() noexcept {
    holder.store(0, std::memory_order_relaxed);
    pthread_mutexattr_t attr;
    if (pthread_mutexattr_init(&attr) != 0) {
      return false;
    }
    bool ok = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) == 0 &&
              pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST) == 0 &&
              pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_NORMAL) == 0 &&
              pthread_mutex_init(&m, &attr) == 0;
    pthread_mutexattr_destroy(&attr);
    return ok;
  }

  /// The __kind glibc records for a mutex made by init() (robust, normal, process-shared).
  static int expected_kind() noexcept {
    static const int kind = [] {
      RobustMutex probe{};
      return probe.init() ? probe.m.__data.__kind : -1;
    }();
    return kind;
  }
  /// The mutex type is the one init() wrote. glibc dispatches on it (a damaged type can send it
  /// down the priority-protocol paths, which assert), so nothing calls into glibc unless it holds.
  bool type_intact() const noexcept {
    return __atomic_load_n(&m.__data.__kind, __ATOMIC_RELAXED) == expected_kind();
  }
  /// The lock word is one glibc could have written: free (0), owner died (the kernel's
  /// OWNER_DIED bit, no owner), or held by the thread id that glibc also recorded as the owner.
  /// A word that stays anything else is damaged: a waiter would sleep on it forever.
  bool word_plausible() const noexcept {
    constexpr unsigned kTid = 0x3fffffffu, kOwnerDied = 0x40000000u;
    const auto word = static_cast<unsigned>(__atomic_load_n(&m.__data.__lock, __ATOMIC_RELAXED));
    const auto owner = static_cast<unsigned>(__atomic_load_n(&m.__data.__owner, __ATOMIC_RELAXED));
    if ((word & kTid) == 0) {
      return word == 0 || (word & kOwnerDied) != 0;
    }
    return (word & kTid) == owner;
  }
  /// How long a lock word must stay implausible before it is called damaged: glibc writes the
  /// owner right after taking the word, so a live holder is implausible for nanoseconds.
  static constexpr long kImplausibleNs = 100 * 1000 * 1000;  // 100 ms

  /// Waits without bound, but never relies on a single wake-up: a waiter that the unlocker woke
  /// can be SIGKILLed before it takes the lock, and if a third process takes the free lock
  /// first (without the waiters bit), the other sleepers are never woken. The kernel's robust
  /// list cannot help: the dead waiter owned nothing. So sleep in short timed slices and retry;
  /// a lost wake-up costs at most one slice. The uncontended path is a single trylock.
  /// `pid` is the caller's (cached: getpid() is a system call), recorded as the holder.
  /// `report`, if given, is called once if the wait lasts kLongHoldMs or the current holder has
  /// held the mutex that long.
  LockStatus lock(std::uint32_t pid, const LongWaitReport* report = nullptr) noexcept {
    return lock_until(pid, nullptr, report);
  }

  /// lock() with an optional CLOCK_REALTIME deadline (nullptr: none; kTimedOut after it).
  LockStatus lock_until(std::uint32_t pid,
                        const timespec* until,
                        const LongWaitReport* report = nullptr) noexcept {
    return recorded(pid, wait_until(until, report));
  }
  LockStatus try_lock(std::uint32_t pid) noexcept {
    return type_intact() ? recorded(pid, status(pthread_mutex_trylock(&m)))
                         : LockStatus::kCorrupted;
  }
  /// The uncontended case of lock(): true if the mutex is now held and consistent (and `pid`
  /// recorded as its holder). Otherwise `raw` is pthread_mutex_trylock's result for
  /// lock_after(): EOWNERDEAD means it IS held (and `pid` recorded too).
  /// A damaged type gives raw = EINVAL without calling glibc.
  bool try_lock_fast(int& raw, std::uint32_t pid) noexcept {
    // The clock is read before the trylock, so the critical section does not grow by it.
    const std::uint64_t now = coarse_ms();
    raw = type_intact() ? pthread_mutex_trylock(&m) : EINVAL;
    if (raw == 0 || raw == EOWNERDEAD) [[likely]] {
      record_holder(pid, now);
    }
    return raw == 0;
  }
  /// lock(), continuing from a try_lock_fast() that returned false with `raw`.
  LockStatus lock_after(int raw,
                        std::uint32_t pid,
                        const LongWaitReport* report = nullptr) noexcept {
    if (raw == EINVAL && !type_intact()) {
      return LockStatus::kCorrupted;
    }
    if (raw != EBUSY) {
      return status(raw);  // the holder was recorded by try_lock_fast if it is held
    }
    return lock(pid, report);
  }
  /// Bounded wait (CLOCK_REALTIME deadline), for tools that must never hang on a live holder.
  LockStatus timed_lock(const timespec& deadline,
                        std::uint32_t pid,
                        const LongWaitReport* report = nullptr) noexcept {
    return lock_until(pid, &deadline, report);
  }
  bool consistent() noexcept { return type_intact() && pthread_mutex_consistent(&m) == 0; }
  /// Clears the holder record, then unlocks: only the holding thread calls this.
  void unlock() noexcept {
    holder.store(0, std::memory_order_relaxed);
    if (type_intact()) {
      // Cleared before the word is released: a reader that sees the word held by the next
      // holder never reads this hold's record.
      pthread_mutex_unlock(&m);
    }
  }

  /// The current holder, lock-free (kvbm-ctl reads it from a read-only mapping). The lock word is
  /// read first: a record left by a dead holder, or by one that is unlocking, is not reported.
  HolderView current_holder() const noexcept {
    constexpr unsigned kTid = 0x3fffffffu;
    const auto word = static_cast<unsigned>(__atomic_load_n(&m.__data.__lock, __ATOMIC_ACQUIRE));
    if ((word & kTid) == 0) {
      return {0, 0};
    }
    const std::uint64_t h = holder.load(std::memory_order_acquire);
    if (h == 0) {
      return {0, 0};
    }
    return {static_cast<std::uint32_t>(h >> 32),
            static_cast<std::uint32_t>(coarse_ms()) - static_cast<std::uint32_t>(h)};
  }
  /// CLOCK_MONOTONIC_COARSE in milliseconds: a vDSO read of a few nanoseconds (no system call),
  /// a few milliseconds' resolution, plenty for a one-second threshold.
  static std::uint64_t coarse_ms() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000u +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1000000u;
  }

 private:
  void record_holder(std::uint32_t pid, std::uint64_t now_ms = coarse_ms()) noexcept {
    holder.store((static_cast<std::uint64_t>(pid) << 32) | (now_ms & 0xffffffffu),
                 std::memory_order_release);
  }
  /// Records `pid` when `s` means the mutex is now held by the caller.
  LockStatus recorded(std::uint32_t pid, LockStatus s) noexcept {
    if (s == LockStatus::kOk || s == LockStatus::kOwnerDead) {
      record_holder(pid);
    }
    return s;
  }
  LockStatus wait_until(const timespec* until, const LongWaitReport* report) noexcept {
    if (!type_intact()) {
      return LockStatus::kCorrupted;
    }
    int r = pthread_mutex_trylock(&m);
    // Critical sections last well under a microsecond and glibc's robust mutexes never spin:
    // without this, every contended acquisition is a futex sleep and wake-up (two system calls
    // and a context switch), which is what two busy processes on two cores mostly did. Spin a
    // little on the lock word (read-only, so the holder's cache line is not stolen), then sleep.
    for (int spins = 0; r == EBUSY && spins < kSpinLimit;) {
      while (__atomic_load_n(&m.__data.__lock, __ATOMIC_RELAXED) != 0 && ++spins < kSpinLimit) {
        __builtin_ia32_pause();
      }
      r = pthread_mutex_trylock(&m);
      ++spins;
    }
    long implausible_ns = 0;  // how long the word has looked damaged, in waited slices
    const std::uint64_t wait_start_ms = report != nullptr ? coarse_ms() : 0;
    bool reported = report == nullptr;
    while (r == EBUSY || r == ETIMEDOUT) {
      if (!reported) {
        // Once per wait: checked every slice (20 ms), so a long hold is named within a slice.
        const std::uint64_t waited = coarse_ms() - wait_start_ms;
        const HolderView h = current_holder();
        if (waited >= kLongHoldMs || (h.pid != 0 && h.held_ms >= kLongHoldMs)) {
          reported = true;
          report->fn(report->ctx, h, waited);
        }
      }
      timespec deadline{};
      clock_gettime(CLOCK_REALTIME, &deadline);
      if (until != nullptr && !before(deadline, *until)) {
        return LockStatus::kTimedOut;
      }
      deadline.tv_nsec += kWaitSliceNs;
      if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000;
      }
      if (until != nullptr && before(*until, deadline)) {
        deadline = *until;
      }
      r = pthread_mutex_timedlock(&m, &deadline);
      if (r == ETIMEDOUT || r == EBUSY) {
        implausible_ns = word_plausible() && type_intact() ? 0 : implausible_ns + kWaitSliceNs;
        if (implausible_ns >= kImplausibleNs || !type_intact()) {
          return LockStatus::kCorrupted;
        }
      }
    }
    return status(r);
  }
  static bool before(const timespec& a, const timespec& b) noexcept {
    return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
  }
  static LockStatus status(int r) noexcept {
    switch (r) {
      case 0:
        return LockStatus::kOk;
      case EOWNERDEAD:
        return LockStatus::kOwnerDead;
      case ENOTRECOVERABLE:
        return LockStatus::kNotRecoverable;
      case ETIMEDOUT:
      case EBUSY:
        return LockStatus::kTimedOut;
      default:
        return LockStatus::kError;
    }
  }
};

static_assert(ShmRegion<RobustMutex>);
static_assert(sizeof(pthread_mutex_t) == 40, "the segment layout assumes glibc x86-64");
static_assert(sizeof(RobustMutex) == 48, "mutex and holder record share one cache line");

}  // namespace kvbm::shm
