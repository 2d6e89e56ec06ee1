// SPDX-License-Identifier: Apache-2.0
// BlockStore::verify: every structural invariant, O(block_count), bounded walks (the image may be
// corrupt). Liveness of process entries is checked by the caller, which can probe OFD locks.
// The walk calls pacer.step() between two units of work (a slot, a bucket, a list node): a pacer
// may give the mutex up there and throw if an operation ran meanwhile (store/paced_verify.hpp),
// so no check ever combines what it read before a yield with what it reads after one unless no
// operation ran in between. The local scope keeps only the checks that read things consistent
// within one lock hold, for a segment too busy for a whole consistent walk.
#include <fmt/format.h>

#include "segment/slot_state_names.hpp"
#include "store/block_store.hpp"

namespace kvbm::detail {

using shm::kNil;
using shm::SlotState;

namespace {
constexpr std::uint8_t st(SlotState s) {
  return static_cast<std::uint8_t>(s);
}
std::string_view state_name(std::uint8_t s) {
  return slot_state_title(s);
}
}  // namespace

void BlockStore::verify(std::vector<std::string>& problems) const {
  WalkPacer never_yields;
  verify(problems, never_yields, VerifyScope::kWhole);
}

void BlockStore::verify(std::vector<std::string>& problems,
                        WalkPacer& pacer,
                        VerifyScope scope) const {
  const bool whole = scope == VerifyScope::kWhole;
  const std::uint32_t max_procs = seg_.max_processes();
  auto entry_in_use = [&](std::uint32_t p) {
    return p < max_procs && procs_[p].state.load(std::memory_order_relaxed) !=
                                static_cast<std::uint32_t>(shm::ProcState::kFree);
  };
  if ((ctl_->intent.seq.load(std::memory_order_relaxed) & 1) != 0) {
    problems.push_back("intent record is armed: an operation was interrupted");
  }
  std::uint64_t counts[shm::kSlotStateCount] = {};
  std::uint64_t staged_of[shm::kMaxProcesses] = {};     // Staged slots per owner entry
  std::uint64_t exclusive_of[shm::kMaxProcesses] = {};  // Mutable + Staged slots per owner entry
  std::vector<std::uint32_t> dup_refs(whole ? n_ : 0, 0);
  for (std::uint32_t s = 0; s < n_; ++s) {
    pacer.step();
    const auto& m = slots_[s];
    if (m.state >= shm::kSlotStateCount) {
      problems.push_back(fmt::format("slot {}: invalid state value {}", s, m.state));
      continue;
    }
    // A live owner may stage its Mutable slot concurrently (without the mutex): read the state
    // once; Mutable and Staged are both "exclusive" for every check below.
    const std::uint8_t state = __atomic_load_n(&m.state, __ATOMIC_ACQUIRE);
    ++counts[shm::state_count_index(state)];  // as ControlBlock::state_counts counts
    const bool exclusive = state == st(SlotState::kMutable) || state == st(SlotState::kStaged);
    if (exclusive && m.owner < shm::kMaxProcesses) {
      exclusive_of[m.owner] += 1;
      staged_of[m.owner] += state == st(SlotState::kStaged) ? 1 : 0;
    }
    const bool held = m.state == st(SlotState::kPrimary) || m.state == st(SlotState::kDuplicate);
    if (exclusive && !entry_in_use(m.owner)) {
      problems.push_back(fmt::format("slot {}: {} but its owner entry {} is not in use", s,
                                     state_name(m.state), m.owner));
    }
    if (!exclusive && m.owner != kNil) {
      problems.push_back(fmt::format("slot {}: {} with an owner", s, state_name(m.state)));
    }
    if (!held && m.holders != 0) {
      problems.push_back(fmt::format("slot {}: {} with holder bits", s, state_name(m.state)));
    }
    for (std::uint32_t p = 0; p < 64; ++p) {
      if ((m.holders >> p & 1) != 0 && !entry_in_use(p)) {
        problems.push_back(
            fmt::format("slot {}: held by process entry {}, which is not in use", s, p));
      }
    }
    if (m.state == st(SlotState::kDuplicate)) {
      if (m.holders == 0) {
        problems.push_back(fmt::format("slot {}: Duplicate held by no process", s));
      }
      if (m.dup_primary >= n_ || slots_[m.dup_primary].state != st(SlotState::kPrimary)) {
        problems.push_back(
            fmt::format("slot {}: Duplicate whose primary {} is not Primary", s, m.dup_primary));
      } else {
        if (whole) {
          ++dup_refs[m.dup_primary];
        }
        const auto& pm = slots_[m.dup_primary];
        if (pm.hash_hi != m.hash_hi || pm.hash_lo != m.hash_lo) {
          problems.push_back(
              fmt::format("slot {}: Duplicate of primary {} with another hash", s, m.dup_primary));
        }
      }
    } else if (m.dup_primary != kNil) {
      problems.push_back(fmt::format("slot {}: {} with a duplicate link", s, state_name(m.state)));
    }
    if (!whole) {
      verify_slot_locally(s, problems);
    }
  }
  if (!whole) {
    verify_index(problems, pacer, /*whole=*/false, 0);
    return;
  }
  for (std::uint32_t s = 0; s < n_; ++s) {
    pacer.step();
    const auto& m = slots_[s];
    if (m.state == st(SlotState::kPrimary)) {
      if (m.keepalive != dup_refs[s]) {
        problems.push_back(fmt::format("slot {}: keep-alive count {} but {} duplicates", s,
                                       m.keepalive, dup_refs[s]));
      }
      if (m.holders == 0 && dup_refs[s] == 0) {
        problems.push_back(fmt::format("slot {}: Primary held by nobody (should be released)", s));
      }
    } else if (m.state < shm::kSlotStateCount && m.keepalive != 0) {
      problems.push_back(
          fmt::format("slot {}: {} with a keep-alive count", s, state_name(m.state)));
    }
  }
  // Each entry accounts for its Staged slots itself.
  for (std::uint32_t p = 0; p < max_procs && p < shm::kMaxProcesses; ++p) {
    if (!entry_in_use(p)) {
      continue;
    }
    // Read after the slot scan: a stage counts itself before its slot shows Staged, and every
    // slot it could still be staging was seen as Mutable by the scan (allocation needs the
    // mutex this check holds). So these bounds hold even while the owner is staging.
    const std::uint64_t staged = procs_[p].stagings.load(std::memory_order_acquire) -
                                 procs_[p].destaged.load(std::memory_order_acquire);
    if (staged < staged_of[p] || staged > exclusive_of[p]) {
      problems.push_back(fmt::format(
          "process entry {}: accounts for {} Staged slots but owns {} Staged and {} Mutable", p,
          static_cast<std::int64_t>(staged), staged_of[p], exclusive_of[p] - staged_of[p]));
    }
  }
  for (std::uint32_t i = 0; i < shm::kSlotStateCount; ++i) {
    const std::uint64_t recorded = ctl_->state_counts[i].load(std::memory_order_relaxed);
    if (recorded != counts[i]) {
      problems.push_back(fmt::format("count of {} slots is {} but {} slots are {}",
                                     state_name(static_cast<std::uint8_t>(i)), recorded, counts[i],
                                     state_name(static_cast<std::uint8_t>(i))));
    }
  }
  // Free list: exactly the Reset slots, well linked, no cycle.
  {
    const auto& l = ctl_->free_list;
    std::uint64_t seen = 0;
    std::uint32_t prev = kNil;
    bool broken = false;
    for (std::uint32_t s = l.head; s != kNil; s = slots_[s].next) {
      pacer.step();
      if (s >= n_ || seen >= n_) {
        problems.push_back("free list: link out of range or cycle");
        broken = true;
        break;
      }
      if (slots_[s].state != st(SlotState::kReset)) {
        problems.push_back(
            fmt::format("free list: slot {} is {}, not Reset", s, state_name(slots_[s].state)));
      }
      if (slots_[s].prev != prev) {
        problems.push_back(fmt::format("free list: slot {} has a wrong back link", s));
      }
      prev = s;
      ++seen;
    }
    if (!broken && (seen != l.length || seen != counts[st(SlotState::kReset)])) {
      problems.push_back(fmt::format("free list: {} linked, length says {}, {} slots are Reset",
                                     seen, l.length, counts[st(SlotState::kReset)]));
    }
    if (!broken && l.tail != prev) {
      problems.push_back("free list: tail does not match the last entry");
    }
  }
  backend_->verify(problems, pacer);
  if (backend_->size() != counts[st(SlotState::kInactive)]) {
    problems.push_back(fmt::format("inactive pool holds {} blocks but {} slots are Inactive",
                                   backend_->size(), counts[st(SlotState::kInactive)]));
  }
  verify_index(problems, pacer, /*whole=*/true,
               counts[st(SlotState::kPrimary)] + counts[st(SlotState::kInactive)]);
}

void BlockStore::verify_slot_locally(std::uint32_t s, std::vector<std::string>& problems) const {
  const auto& m = slots_[s];
  // What the whole walk checks against the duplicates it counted, from this slot alone.
  if (m.state == st(SlotState::kPrimary)) {
    if (m.holders == 0 && m.keepalive == 0) {
      problems.push_back(fmt::format("slot {}: Primary held by nobody (should be released)", s));
    }
  } else if (m.state < shm::kSlotStateCount && m.keepalive != 0) {
    problems.push_back(fmt::format("slot {}: {} with a keep-alive count", s, state_name(m.state)));
  }
  if (m.state != st(SlotState::kReset)) {
    return;
  }
  // The free list seen from each Reset slot: the links of its part of the list, in the words of
  // the whole walk (which follows them from the head).
  const auto& l = ctl_->free_list;
  if (m.prev == kNil && l.head != s) {
    problems.push_back(fmt::format("free list: slot {} has a wrong back link", s));
  }
  if (m.next == kNil) {
    if (l.tail != s) {
      problems.push_back("free list: tail does not match the last entry");
    }
    return;
  }
  if (m.next >= n_) {
    problems.push_back("free list: link out of range or cycle");
    return;
  }
  const auto& next = slots_[m.next];
  if (next.state != st(SlotState::kReset)) {
    problems.push_back(
        fmt::format("free list: slot {} is {}, not Reset", m.next, state_name(next.state)));
  }
  if (next.prev != s) {
    problems.push_back(fmt::format("free list: slot {} has a wrong back link", m.next));
  }
}

void BlockStore::verify_index(std::vector<std::string>& problems,
                              WalkPacer& pacer,
                              bool whole,
                              std::uint64_t cached) const {
  // Hash index: exactly the Primary and Inactive slots, one per hash.
  std::uint64_t indexed = 0;
  bool buckets_in_range = true;
  for (std::uint32_t b = 0; b < index_.capacity(); ++b) {
    pacer.step();
    const auto& e = index_.bucket(b);
    if (e.slot == kNil) {
      continue;
    }
    ++indexed;
    if (e.slot >= n_) {
      problems.push_back(fmt::format("hash index: bucket {} points past the slot table", b));
      buckets_in_range = false;
      continue;
    }
    const auto& m = slots_[e.slot];
    if (m.state != st(SlotState::kPrimary) && m.state != st(SlotState::kInactive)) {
      problems.push_back(fmt::format("hash index: slot {} is {}, not Primary or Inactive", e.slot,
                                     state_name(m.state)));
    } else if (e.tag != HashIndex::tag_of(m.hash_hi, m.hash_lo)) {
      problems.push_back(fmt::format("hash index: bucket {} has a stale tag", b));
    }
  }
  if (whole && indexed != cached) {
    problems.push_back(
        fmt::format("hash index: {} entries but {} Primary/Inactive slots", indexed, cached));
  }
  // Lookups dereference bucket slots and stop at an empty bucket: only safe on a sane table (in
  // the local scope `indexed` was counted across yields: only a guard against a full table,
  // whose every lookup would probe all of it).
  if (buckets_in_range && indexed < index_.capacity()) {
    for (std::uint32_t s = 0; s < n_; ++s) {
      pacer.step();
      const auto& m = slots_[s];
      if ((m.state == st(SlotState::kPrimary) || m.state == st(SlotState::kInactive)) &&
          index_.find(m.hash_hi, m.hash_lo) != s) {
        problems.push_back(
            fmt::format("hash index: slot {} ({}) is not found by its hash", s, hash_of(s)));
      }
    }
  }
}

}  // namespace kvbm::detail
