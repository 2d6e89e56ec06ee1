// SPDX-License-Identifier: Apache-2.0
#include "store/reaping.hpp"

#include "segment/liveness.hpp"

namespace kvbm::detail {

bool reap_entry_locked(BlockStore& store,
                       const StoreLock& held,
                       std::uint32_t entry,
                       std::uint32_t actor,
                       std::uint64_t* released) noexcept {
  const auto& e = store.segment().procs()[entry];
  if (e.state.load(std::memory_order_relaxed) ==
      static_cast<std::uint32_t>(shm::ProcState::kFree)) {
    return false;
  }
  BlockStore::Txn txn(store, held, BlockStore::KeepLock{}, shm::IntentOp::kReap, actor);
  const std::uint64_t n = store.reap(txn, entry);
  if (released != nullptr) {
    *released = n;
  }
  return true;
}

std::size_t reap_dead_entries(Segment& seg,
                              std::uint32_t skip,
                              const std::function<bool(std::uint32_t entry)>& reap) {
  const int fd = seg.fd();
  auto* procs = seg.procs();
  std::size_t reaped = 0;
  for (std::uint32_t q = 0; q < seg.max_processes(); ++q) {
    if (q == skip || procs[q].state.load(std::memory_order_acquire) ==
                         static_cast<std::uint32_t>(shm::ProcState::kFree)) {
      continue;
    }
    // Winning the byte proves the owner is dead and keeps other reapers and attachers out.
    if (!ofd_try_lock(fd, shm::kLivenessLockBase + q)) {
      continue;
    }
    try {
      reaped += reap(q) ? 1 : 0;
    } catch (...) {
      ofd_unlock(fd, shm::kLivenessLockBase + q);
      throw;
    }
    ofd_unlock(fd, shm::kLivenessLockBase + q);
  }
  return reaped;
}

}  // namespace kvbm::detail
