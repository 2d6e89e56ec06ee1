// SPDX-License-Identifier: Apache-2.0
// StoreLock: the segment's store mutex, held for the object's lifetime (released by the
// destructor). Made only by code that has just acquired the mutex (the Attachment's lock
// paths, the tool session's bounded lock, test hooks); a BlockStore::Txn needs one, so a
// mutating store call cannot be reached without the mutex.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include "shm/robust_mutex.hpp"

namespace kvbm::detail {

class StoreLock {
 public:
  /// Adopts `held`, which the calling thread has just locked (and made consistent).
  explicit StoreLock(shm::RobustMutex& held) noexcept : mu_(&held) {}
  StoreLock(StoreLock&& o) noexcept : mu_(o.mu_) { o.mu_ = nullptr; }
  StoreLock(const StoreLock&) = delete;
  StoreLock& operator=(const StoreLock&) = delete;
  StoreLock& operator=(StoreLock&&) = delete;
  ~StoreLock() { unlock(); }

  void unlock() noexcept {
    if (mu_ != nullptr) {
      mu_->unlock();
      mu_ = nullptr;
    }
  }
  /// Hands the held mutex over (to a Txn that unlocks it); this object is empty afterwards.
  shm::RobustMutex* release() noexcept {
    shm::RobustMutex* mu = mu_;
    mu_ = nullptr;
    return mu;
  }

 private:
  shm::RobustMutex* mu_;
};

/// Debug builds and the tests' fault-injection build check that every slot write happens inside
/// a transaction, with the store mutex held by the calling thread.
#if !defined(NDEBUG) || defined(KVBM_FAULT_INJECTION)
#define KVBM_STORE_CHECKS 1
#endif
// The checks are calls in the store's own files only. Elsewhere they vanish entirely: in the
// position-independent library an out-of-line member, even an empty one, stays a call.
#ifdef KVBM_STORE_CHECKS
#define KVBM_STORE_CHECK_IN_TXN() check_in_txn()
#define KVBM_STORE_CHECK_LOCKED() check_locked()
#else
#define KVBM_STORE_CHECK_IN_TXN() \
  do {                            \
  } while (false)
#define KVBM_STORE_CHECK_LOCKED() \
  do {                            \
  } while (false)
#endif

/// True if the calling thread holds `mu`: a robust mutex's lock word carries its owner's TID
/// (the kernel's robust-futex protocol).
inline bool held_by_this_thread(const shm::RobustMutex& mu) noexcept {
  constexpr unsigned kFutexTidMask = 0x3fffffffu;
  const auto word = static_cast<unsigned>(__atomic_load_n(&mu.m.__data.__lock, __ATOMIC_RELAXED));
  return (word & kFutexTidMask) == static_cast<unsigned>(::syscall(SYS_gettid));
}

}  // namespace kvbm::detail
