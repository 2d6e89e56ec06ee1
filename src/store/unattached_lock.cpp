// SPDX-License-Identifier: Apache-2.0
#include "store/unattached_lock.hpp"

#include <time.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

namespace kvbm::detail {

Result<StoreLock> lock_unattached(BlockStore& store,
                                  std::chrono::milliseconds wait,
                                  std::vector<std::string>& notes) {
  Segment& seg = store.segment();
  auto* header = seg.header();
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
  auto& mu = seg.control()->mutex;
  // Not a hot path (tools, the event reader): getpid() per call is fine.
  switch (mu.timed_lock(deadline, static_cast<std::uint32_t>(::getpid()))) {
    case shm::LockStatus::kOk:
      break;
    case shm::LockStatus::kOwnerDead: {
      const bool armed = (seg.control()->intent.seq.load() & 1) != 0;
      const std::vector<std::string> problems = store.recover_or_poison();
      if (!problems.empty()) {
        return tl::unexpected(
            Error{Errc::kCorrupted, 0,
                  fmt::format("recovery after a crash failed: {}", problems.front())});
      }
      notes.push_back(armed ? "the store mutex was held by a process that died mid-operation: "
                              "rolled the operation back and rebuilt the indexes"
                            : "the store mutex was held by a process that died: rebuilt the "
                              "indexes");
      break;
    }
    case shm::LockStatus::kTimedOut: {
      const shm::HolderView h = mu.current_holder();
      const std::string who =
          h.pid != 0 ? fmt::format(" (pid {}, holding it for {} ms)", h.pid, h.held_ms) : "";
      return tl::unexpected(
          Error{Errc::kSystem, ETIMEDOUT,
                fmt::format("the store mutex is held by a live process{} (waited {} ms); try again",
                            who, ms)});
    }
    case shm::LockStatus::kNotRecoverable:
      store.poison();
      return tl::unexpected(Error{Errc::kCorrupted, 0, "the store mutex is unrecoverable"});
    case shm::LockStatus::kCorrupted:
      return tl::unexpected(Error{Errc::kCorrupted, 0,
                                  "the store mutex is damaged (its type or lock word is not one "
                                  "glibc writes); repair re-initialises it"});
    default:
      return tl::unexpected(Error{Errc::kSystem, 0, "pthread_mutex_timedlock failed"});
  }
  return StoreLock(mu);
}

}  // namespace kvbm::detail
