// SPDX-License-Identifier: Apache-2.0
#include "store/repair.hpp"

#include <fmt/format.h>

#include "segment/liveness.hpp"
#include "store/reaping.hpp"

namespace kvbm::detail {

std::vector<std::string> plan_repair(Segment& seg,
                                     BlockStore& store,
                                     const std::vector<ProcessView>& procs) {
  std::vector<std::string> actions;
  auto* header = seg.header();
  if (header->init_state.load() == static_cast<std::uint32_t>(shm::InitState::kPoisoned)) {
    actions.push_back("re-initialise the poisoned store mutex");
  }
  if ((seg.control()->intent.seq.load() & 1) != 0) {
    actions.push_back("roll back an interrupted operation (intent record is armed)");
  }
  for (const auto& p : procs) {
    if (!p.alive) {
      actions.push_back(fmt::format(
          "release process entry {} (pid {}): {} mutable/staged and {} registered blocks", p.index,
          p.pid, p.exclusive, p.held));
    }
  }
  std::vector<std::string> problems;
  store.verify(problems);
  for (auto& p : problems) {
    actions.push_back("fix: " + p);
  }
  return actions;
}

void reinit_store_mutex(Segment& seg) {
  seg.control()->mutex.init();
  seg.header()->init_state.store(static_cast<std::uint32_t>(shm::InitState::kReady));
}

std::size_t reap_dead_locked(Segment& seg,
                             BlockStore& store,
                             const StoreLock& held,
                             const std::vector<ProcessView>& procs,
                             std::vector<std::string>& actions) {
  return reap_dead_entries(seg, shm::kNil, [&](std::uint32_t entry) {
    if (!reap_entry_locked(store, held, entry, shm::kNil)) {
      return false;
    }
    const ProcessView* seen = nullptr;
    for (const auto& p : procs) {
      seen = p.index == entry ? &p : seen;
    }
    actions.push_back(
        seen != nullptr
            ? fmt::format(
                  "released process entry {} (pid {}): {} mutable/staged and {} registered blocks",
                  entry, seen->pid, seen->exclusive, seen->held)
            : fmt::format("released process entry {} (pid {})", entry,
                          seg.procs()[entry].pid.load(std::memory_order_relaxed)));
    return true;
  });
}

void repair_locked(Segment& seg,
                   BlockStore& store,
                   const StoreLock& held,
                   const std::vector<ProcessView>& procs,
                   std::vector<std::string>& actions) {
  if ((seg.control()->intent.seq.load() & 1) != 0) {
    store.recover();  // an armed intent under a healthy mutex: roll it back as recovery would
    actions.push_back("rolled back an interrupted operation");
  }
  // Slots with impossible state values first, then sound derived structures, so that reaping
  // and sanitising below never follow a damaged link.
  {
    BlockStore::Txn txn(store, held, BlockStore::KeepLock{}, shm::IntentOp::kReap, shm::kNil);
    for (std::uint32_t s = 0; s < seg.block_count(); ++s) {
      if (seg.slots()[s].state >= shm::kSlotStateCount) {
        actions.push_back(fmt::format("slot {}: invalid state value -> reset", s));
        store.force_reset(txn, s);
      }
    }
  }
  for (auto& p : store.rebuild_derived()) {
    actions.push_back("rebuild: " + p);
  }
  // Broken links (e.g. a duplicate pointing nowhere) are cut before reaping walks them.
  {
    BlockStore::Txn txn(store, held, BlockStore::KeepLock{}, shm::IntentOp::kReap, shm::kNil);
    store.sanitize(txn, actions);
  }
  reap_dead_locked(seg, store, held, procs, actions);
  {
    BlockStore::Txn txn(store, held, BlockStore::KeepLock{}, shm::IntentOp::kReap, shm::kNil);
    store.sanitize(txn, actions);
  }
  for (auto& p : store.rebuild_derived()) {
    actions.push_back("rebuild: " + p);
  }
  seg.header()->epoch.fetch_add(1);
}

}  // namespace kvbm::detail
