// SPDX-License-Identifier: Apache-2.0
// RobustMutex: the one store mutex of a segment. A pthread mutex that is process-shared, robust
// and of type NORMAL (RECURSIVE/ERRORCHECK break across PID namespaces; Boost's robust mutex
// cannot be recovered after EOWNERDEAD, see docs/architecture.md).
// Written by: the creator (init), every attached process (lock/unlock). The caller decides what
// to do on kOwnerDead: repair the protected state, then consistent(); or unlock() without
// consistent() to poison the mutex on purpose.
#pragma once

#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "shm/layout.hpp"

namespace kvbm::shm {

/// kCorrupted: the mutex's type or lock word is not something glibc ever writes (damaged
/// memory); nothing was handed to glibc, which could abort or wait forever on it.
enum class LockStatus { kOk, kOwnerDead, kNotRecoverable, kTimedOut, kError, kCorrupted };

struct RobustMutex {
  static constexpr long kWaitSliceNs = 20 * 1000 * 1000;  // 20 ms
  static constexpr int kSpinLimit = 256;                  // pause loops: a few microseconds
  pthread_mutex_t m;

  /// Creator only, on zero-filled memory no other process can see yet.
  bool init() noexcept {
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
  LockStatus lock() noexcept { return lock_until(nullptr); }

  /// lock() with an optional CLOCK_REALTIME deadline (nullptr: none; kTimedOut after it).
  LockStatus lock_until(const timespec* until) noexcept {
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
    while (r == EBUSY || r == ETIMEDOUT) {
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
  LockStatus try_lock() noexcept {
    return type_intact() ? status(pthread_mutex_trylock(&m)) : LockStatus::kCorrupted;
  }
  /// The uncontended case of lock(): true if the mutex is now held and consistent. Otherwise
  /// `raw` is pthread_mutex_trylock's result for lock_after(): EOWNERDEAD means it IS held.
  /// A damaged type gives raw = EINVAL without calling glibc.
  bool try_lock_fast(int& raw) noexcept {
    raw = type_intact() ? pthread_mutex_trylock(&m) : EINVAL;
    return raw == 0;
  }
  /// lock(), continuing from a try_lock_fast() that returned false with `raw`.
  LockStatus lock_after(int raw) noexcept {
    if (raw == EINVAL && !type_intact()) {
      return LockStatus::kCorrupted;
    }
    if (raw != EBUSY) {
      return status(raw);
    }
    return lock();
  }
  /// Bounded wait (CLOCK_REALTIME deadline), for tools that must never hang on a live holder.
  LockStatus timed_lock(const timespec& deadline) noexcept { return lock_until(&deadline); }
  bool consistent() noexcept { return type_intact() && pthread_mutex_consistent(&m) == 0; }
  void unlock() noexcept {
    if (type_intact()) {
      pthread_mutex_unlock(&m);
    }
  }

 private:
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

}  // namespace kvbm::shm
