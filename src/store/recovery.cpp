// SPDX-License-Identifier: Apache-2.0
// Recovery after a process died holding the store mutex: roll back the armed intent (restoring
// the before-images newest first, so each slot ends at its oldest image), then rebuild every
// derived structure from the slots. Idempotent: a recovery cut short by another death is simply
// run again by the next lock holder.
#include <algorithm>

#include <fmt/format.h>

#include "segment/damage.hpp"
#include "segment/slot_list.hpp"
#include "store/block_store.hpp"
#include "store/crash_point.hpp"

namespace kvbm::detail {

using shm::kNil;
using shm::SlotState;

std::vector<std::string> BlockStore::recover() {
  KVBM_STORE_CHECK_LOCKED();
  auto& in = ctl_->intent;
  KVBM_CRASH_POINT("recover.start");
  std::uint32_t dead_actor = kNil;
  last_recovery_ = RecoveryReport{};
  if ((in.seq.load(std::memory_order_relaxed) & 1) != 0) {
    dead_actor = in.actor;
    // g_rollback_enabled is false only in the tests' negative control: disarm without undoing.
    const std::uint32_t count = g_rollback_enabled ? std::min(in.count, shm::kIntentMaxSlots) : 0;
    last_recovery_.rolled_back = true;
    last_recovery_.op = static_cast<shm::IntentOp>(in.op);
    last_recovery_.actor = in.actor;
    last_recovery_.slots_restored = count;
    last_recovery_.entry_restored = in.proc_target < seg_.max_processes() && g_rollback_enabled;
    for (std::uint32_t i = count; i-- > 0;) {
      if (in.slot[i] < n_) {
        slots_[in.slot[i]].restore(in.before[i]);
      }
      KVBM_CRASH_POINT("recover.restore");
    }
    for (std::uint32_t c = 0; c < shm::kCounterSlots && g_rollback_enabled; ++c) {
      if ((in.counters_logged & (1u << c)) != 0) {
        ctl_->counters[c].store(in.counters_before[c], std::memory_order_relaxed);
      }
    }
    if (g_rollback_enabled) {
      events_.rollback_to(in.events_next_before);
    }
    if (in.proc_target < seg_.max_processes() && g_rollback_enabled) {
      auto& e = procs_[in.proc_target];
      e.state.store(in.proc_state_before, std::memory_order_relaxed);
      e.incarnation.store(in.proc_incarnation_before, std::memory_order_relaxed);
    }
    std::atomic_signal_fence(std::memory_order_seq_cst);
    in.seq.store(in.seq.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    KVBM_CRASH_POINT("recover.rolled_back");
  }
  std::vector<std::string> problems = rebuild_derived();
  if (dead_actor < seg_.max_processes() && g_rollback_enabled) {
    // The rolled-back operation may have counted slots as having left Staged; its actor held the
    // mutex and died, so none of its threads can be staging now.
    recount_staged(dead_actor);
  }
  KVBM_CRASH_POINT("recover.rebuilt");
  verify(problems);
  if (problems.empty()) {
    seg_.header()->epoch.fetch_add(1, std::memory_order_relaxed);
    bump(shm::kRecoveries, 1);
  }
  return problems;
}

namespace {

std::string_view op_name(shm::IntentOp op) {
  switch (op) {
    case shm::IntentOp::kNone:
      return "unnamed operation";
    case shm::IntentOp::kAllocate:
      return "allocate";
    case shm::IntentOp::kStage:
      return "stage";
    case shm::IntentOp::kUnstage:
      return "unstage (reset of a staged block)";
    case shm::IntentOp::kReleaseExclusive:
      return "release of a mutable or staged block";
    case shm::IntentOp::kRegister:
      return "register";
    case shm::IntentOp::kAcquire:
      return "match (acquire)";
    case shm::IntentOp::kRelease:
      return "release of a registered block";
    case shm::IntentOp::kSetResetOnRelease:
      return "set_reset_on_release";
    case shm::IntentOp::kDrain:
      return "reset_inactive_pool";
    case shm::IntentOp::kReap:
      return "reap";
    case shm::IntentOp::kDetach:
      return "detach";
  }
  return "unknown operation";
}

}  // namespace

std::string BlockStore::RecoveryReport::describe() const {
  if (!rolled_back) {
    return "no operation was in progress; derived structures rebuilt";
  }
  const std::string who =
      actor == kNil ? std::string("a tool") : fmt::format("process entry {}", actor);
  return fmt::format(
      "rolled back the unfinished {} of {} ({} slot image(s) restored{}); derived "
      "structures rebuilt",
      op_name(op), who, slots_restored, entry_restored ? ", process entry restored" : "");
}

std::vector<std::string> BlockStore::recover_or_poison() noexcept {
  std::vector<std::string> problems;
  clear_damage();
  try {
    problems = recover();
  } catch (const std::exception& e) {
    problems.push_back(e.what());
  }
  if (!damage_seen().empty()) {
    problems.push_back(damage_seen());
  }
  if (problems.empty() && ctl_->mutex.consistent()) {
    return problems;
  }
  if (problems.empty()) {
    problems.push_back("mutex");
  }
  poison();
  ctl_->mutex.unlock();  // without consistent(): the mutex becomes unrecoverable on purpose
  return problems;
}

void BlockStore::poison() noexcept {
  seg_.header()->init_state.store(static_cast<std::uint32_t>(shm::InitState::kPoisoned),
                                  std::memory_order_release);
}

std::vector<std::string> BlockStore::rebuild_derived() {
  KVBM_STORE_CHECK_LOCKED();
  std::vector<std::string> problems;
  std::uint64_t counts[shm::kSlotStateCount] = {};
  for (std::uint32_t s = 0; s < n_; ++s) {
    auto& m = slots_[s];
    if (m.state >= shm::kSlotStateCount) {
      problems.push_back(fmt::format("slot {}: invalid state value {}", s, m.state));
      continue;
    }
    ++counts[shm::state_count_index(m.state)];
    if (m.state == static_cast<std::uint8_t>(SlotState::kPrimary)) {
      m.keepalive = 0;
    }
  }
  for (std::uint32_t i = 0; i < 8; ++i) {
    ctl_->state_counts[i].store(i < shm::kSlotStateCount ? counts[i] : 0,
                                std::memory_order_relaxed);
  }
  for (std::uint32_t s = 0; s < n_; ++s) {
    const auto& m = slots_[s];
    if (m.state != static_cast<std::uint8_t>(SlotState::kDuplicate)) {
      continue;
    }
    if (m.dup_primary < n_ &&
        slots_[m.dup_primary].state == static_cast<std::uint8_t>(SlotState::kPrimary)) {
      slots_[m.dup_primary].keepalive += 1;
    } else {
      problems.push_back(fmt::format("slot {}: duplicate without a primary", s));
    }
  }
  list_assign(ctl_->free_list, slots_, n_, slots_by_tick(slots_, n_, SlotState::kReset));
  backend_->rebuild();
  index_.clear();
  for (std::uint32_t s = 0; s < n_; ++s) {
    const auto& m = slots_[s];
    if (m.state != static_cast<std::uint8_t>(SlotState::kPrimary) &&
        m.state != static_cast<std::uint8_t>(SlotState::kInactive)) {
      continue;
    }
    if (const std::uint32_t other = index_.find(m.hash_hi, m.hash_lo); other != kNil) {
      problems.push_back(
          fmt::format("slots {} and {} are both the cached copy of hash {}", other, s, hash_of(s)));
      continue;
    }
    index_.insert(m.hash_hi, m.hash_lo, s);
  }
  return problems;
}

}  // namespace kvbm::detail
