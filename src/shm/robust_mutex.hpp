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

enum class LockStatus { kOk, kOwnerDead, kNotRecoverable, kTimedOut, kError };

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

  /// Waits without bound, but never relies on a single wake-up: a waiter that the unlocker woke
  /// can be SIGKILLed before it takes the lock, and if a third process takes the free lock
  /// first (without the waiters bit), the other sleepers are never woken. The kernel's robust
  /// list cannot help: the dead waiter owned nothing. So sleep in short timed slices and retry;
  /// a lost wake-up costs at most one slice. The uncontended path is a single trylock.
  LockStatus lock() noexcept {
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
    while (r == EBUSY || r == ETIMEDOUT) {
      timespec deadline{};
      clock_gettime(CLOCK_REALTIME, &deadline);
      deadline.tv_nsec += kWaitSliceNs;
      if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000;
      }
      r = pthread_mutex_timedlock(&m, &deadline);
    }
    return status(r);
  }
  LockStatus try_lock() noexcept { return status(pthread_mutex_trylock(&m)); }
  /// The uncontended case of lock(): true if the mutex is now held and consistent. Otherwise
  /// `raw` is pthread_mutex_trylock's result for lock_after(): EOWNERDEAD means it IS held.
  bool try_lock_fast(int& raw) noexcept {
    raw = pthread_mutex_trylock(&m);
    return raw == 0;
  }
  /// lock(), continuing from a try_lock_fast() that returned false with `raw`.
  LockStatus lock_after(int raw) noexcept {
    if (raw != EBUSY) {
      return status(raw);
    }
    return lock();
  }
  /// Bounded wait (CLOCK_REALTIME deadline), for tools that must never hang on a live holder.
  LockStatus timed_lock(const timespec& deadline) noexcept {
    return status(pthread_mutex_timedlock(&m, &deadline));
  }
  bool consistent() noexcept { return pthread_mutex_consistent(&m) == 0; }
  void unlock() noexcept { pthread_mutex_unlock(&m); }

 private:
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
