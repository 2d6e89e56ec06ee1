// SPDX-License-Identifier: Apache-2.0
#include "store/block_store.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "eviction/tiny_lfu.hpp"
#include "segment/damage.hpp"
#include "segment/liveness.hpp"
#include "segment/slot_atomics.hpp"
#include "segment/slot_list.hpp"
#include "store/crash_point.hpp"

namespace kvbm::detail {

using shm::kNil;
using shm::SlotState;

namespace {
constexpr std::uint8_t st(SlotState s) {
  return static_cast<std::uint8_t>(s);
}
constexpr std::uint64_t bit(std::uint32_t proc) {
  return std::uint64_t{1} << proc;
}
// A compiler barrier: stores before it are not moved after it. Process death (not power loss)
// is the failure model, so program order of stores is all the intent protocol needs.
inline void barrier() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
}
}  // namespace

BlockStore::BlockStore(Segment& segment)
    : seg_(segment),
      ctl_(segment.control()),
      slots_(segment.slots()),
      procs_(segment.procs()),
      n_(segment.block_count()),
      default_ror_(segment.config().default_reset_on_release ? 1 : 0),
      index_(segment.index(), segment.index_capacity(), segment.slots(), segment.block_count()),
      events_(segment),
      backend_(make_inactive_backend(segment, [this](std::uint32_t s) { log(s); })) {}

void BlockStore::init_regions(Segment& segment) {
  if (segment.lineage() != nullptr) {
    init_lineage_region(segment.lineage(), segment.block_count());
  }
  if (segment.sketch() != nullptr) {
    TinyLfu::init(new (segment.sketch()) shm::SketchHeader(), segment.config().frequency_capacity);
  }
  if (segment.events() != nullptr) {
    EventLog::init(segment);  // the Cleared event, seq 0
    segment.control()->counters[shm::kEvents].store(1, std::memory_order_relaxed);
  }
  for (std::uint32_t s = 0; s < segment.block_count() && segment.token_record(s) != nullptr; ++s) {
    new (segment.token_record(s)) shm::TokenRecord{{kNil}, 0};
  }
}

// --- transactions ---------------------------------------------------------------------------

void BlockStore::check_locked() const noexcept {
#ifdef KVBM_STORE_CHECKS
  if (!held_by_this_thread(ctl_->mutex)) {
    // glibc also recorded the owner when this thread took the mutex: if that still names this
    // thread, the lock word was damaged under us (another process or a stray write), which is
    // a broken segment (SegmentCorrupted), not a bug in the caller.
    const auto owner =
        static_cast<long>(__atomic_load_n(&ctl_->mutex.m.__data.__owner, __ATOMIC_RELAXED));
    if (owner == ::syscall(SYS_gettid)) {
      note_damage("store mutex lock word (changed while this thread held it)",
                  static_cast<unsigned>(ctl_->mutex.m.__data.__lock), 0);
      return;
    }
    std::fprintf(stderr, "kvbm: store changed without holding the store mutex\n");
    std::abort();
  }
#endif
}

void BlockStore::check_in_txn() const noexcept {
#ifdef KVBM_STORE_CHECKS
  if (!in_txn_) {
    std::fprintf(stderr, "kvbm: slot changed outside a BlockStore::Txn\n");
    std::abort();
  }
  check_locked();
#endif
}

void BlockStore::begin(shm::IntentOp op, std::uint32_t actor) {
  clear_damage();
#ifdef KVBM_STORE_CHECKS
  KVBM_STORE_CHECK_LOCKED();
  in_txn_ = true;
#endif
#ifdef KVBM_BENCH_NO_INTENT
  return;  // benchmark-only build measuring the intent record's cost
#endif
  auto& in = ctl_->intent;
  in.op = static_cast<std::uint32_t>(op);
  in.actor = actor;
  in.count = 0;
  in.proc_target = kNil;
  in.counters_logged = 0;
  in.events_next_before = events_.next_seq();
  barrier();
  in.seq.store(in.seq.load(std::memory_order_relaxed) | 1, std::memory_order_relaxed);  // armed
  barrier();
  KVBM_CRASH_POINT("txn.armed");
}

void BlockStore::commit() {
#ifdef KVBM_STORE_CHECKS
  in_txn_ = false;
#endif
  if (!damage_seen().empty()) {
    // The operation met a broken structure and stopped trusting it: nobody may build on what it
    // left. The caller reports SegmentCorrupted; kvbm-ctl repair rebuilds from the slots.
    poison();
  }
#ifdef KVBM_BENCH_NO_INTENT
  return;
#endif
  auto& in = ctl_->intent;
  KVBM_CRASH_POINT("txn.before_commit");
  barrier();
  in.seq.store((in.seq.load(std::memory_order_relaxed) | 1) + 1, std::memory_order_relaxed);
  barrier();
}

void BlockStore::log(std::uint32_t slot) noexcept {
  KVBM_STORE_CHECK_IN_TXN();
#ifdef KVBM_BENCH_NO_INTENT
  (void)slot;
  return;
#endif
  auto& in = ctl_->intent;
  const std::uint32_t i = in.count;
  if (i >= shm::kIntentMaxSlots) {
    // A step logged more images than its checkpoint reserved: a bug. Dying here (the mutex
    // owner's death rolls the operation back) beats writing past the record.
    std::abort();
  }
  in.slot[i] = slot;
  in.before[i] = slots_[slot].image();
  barrier();
  in.count = i + 1;  // the image is complete before it counts
  barrier();
}

void BlockStore::checkpoint(std::uint32_t reserve) noexcept {
  auto& in = ctl_->intent;
  if (in.count + reserve > shm::kIntentMaxSlots) {
    const auto op = static_cast<shm::IntentOp>(in.op);
    const std::uint32_t actor = in.actor;
    commit();
    begin(op, actor);
  }
}

void BlockStore::bump(shm::Counter c, std::uint64_t n) noexcept {
  KVBM_STORE_CHECK_LOCKED();
  ctl_->counters[c].store(ctl_->counters[c].load(std::memory_order_relaxed) + n,
                          std::memory_order_relaxed);
}

void BlockStore::count(Txn&, shm::Counter c, std::uint64_t n) noexcept {
  count_logged(c, n);
}

void BlockStore::emit(shm::EventKindCode kind, std::uint32_t slot) noexcept {
  if (!events_.enabled()) {
    return;
  }
  const auto& m = slots_[slot];
  events_.append(kind, m.hash_hi, m.hash_lo, slot, m.generation.load(std::memory_order_relaxed));
  count_logged(shm::kEvents, 1);
  KVBM_CRASH_POINT("event.appended");
}

void BlockStore::count_logged(shm::Counter c, std::uint64_t n) noexcept {
  // Only the mutex holder writes counters; readers without the lock load them relaxed. The
  // value before the first change in this transaction is logged so a rollback restores it.
  KVBM_STORE_CHECK_IN_TXN();
  auto& in = ctl_->intent;
  const std::uint64_t old = ctl_->counters[c].load(std::memory_order_relaxed);
#ifdef KVBM_BENCH_NO_INTENT
  in.counters_logged = ~0u;
#endif
  if ((in.counters_logged & (1u << c)) == 0) {
    in.counters_before[c] = old;
    barrier();
    in.counters_logged |= 1u << c;
    barrier();
  }
  ctl_->counters[c].store(old + n, std::memory_order_relaxed);
}

// --- primitive slot changes ------------------------------------------------------------------

void BlockStore::set_state(shm::SlotMeta& m, SlotState s) noexcept {
  KVBM_STORE_CHECK_IN_TXN();
  auto& counts = ctl_->state_counts;
  const std::uint8_t from = shm::state_count_index(m.state);
  const std::uint8_t to = shm::state_count_index(st(s));
  if (from != to) {
    counts[from].store(counts[from].load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    counts[to].store(counts[to].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  m.state = st(s);
}

SequenceHash BlockStore::hash_of(std::uint32_t slot) const noexcept {
  return SequenceHash::from_parts(slots_[slot].hash_hi, slots_[slot].hash_lo);
}

void BlockStore::to_reset(std::uint32_t slot) noexcept {
  auto& m = slots_[slot];
  set_state(m, SlotState::kReset);
  m.owner = kNil;
  m.dup_primary = kNil;
  m.holders = 0;
  m.keepalive = 0;
  m.tick = ctl_->next_tick++;
  list_push_back(ctl_->free_list, slots_, n_, slot);
}

void BlockStore::to_mutable(std::uint32_t slot, std::uint32_t actor) noexcept {
  auto& m = slots_[slot];
  set_state(m, SlotState::kMutable);
  m.owner = actor;
  m.dup_primary = kNil;
  m.holders = 0;
  m.keepalive = 0;
  m.reset_on_release = default_ror_;
  m.backend_flags = 0;
  m.generation.store(m.generation.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  // stage_lock_free claims the hash from this marker. Plain stores suffice: a stray claim can
  // only land once the marker is complete, and then it is as harmless as on any Mutable slot.
  m.hash_hi = shm::kNoHashHi;
  m.hash_lo = shm::kNoHashLo;
}

void BlockStore::release_primary(std::uint32_t slot) noexcept {
  auto& m = slots_[slot];
  if (m.reset_on_release != 0) {
    index_.erase(m.hash_hi, m.hash_lo, slot);
    emit(shm::EventKindCode::kRemoved, slot);
    to_reset(slot);
  } else {
    set_state(m, SlotState::kInactive);
    m.tick = ctl_->next_tick++;
    backend_->insert(slot);  // the index keeps pointing at it: Inactive hashes stay matchable
  }
  KVBM_CRASH_POINT("release_primary.done");
}

void BlockStore::resurrect(std::uint32_t slot) noexcept {
  backend_->remove(slot);
  set_state(slots_[slot], SlotState::kPrimary);
  KVBM_CRASH_POINT("resurrect.done");
}

// --- transitions -----------------------------------------------------------------------------

std::uint64_t BlockStore::free_count() const {
  return ctl_->free_list.length;
}
std::uint64_t BlockStore::inactive_count() const {
  return backend_->size();
}

bool BlockStore::allocate(Txn& txn,
                          std::size_t n,
                          std::uint32_t actor,
                          std::vector<Grant>& out,
                          std::vector<SequenceHash>* evicted) noexcept {
  if (free_count() + inactive_count() < n) {
    return false;
  }
  std::uint64_t from_reset = 0;
  std::uint64_t from_inactive = 0;
  for (std::size_t i = 0; i < n; ++i) {
    checkpoint(4);
    std::uint32_t s = list_pop_front(ctl_->free_list, slots_, n_);
    if (s != kNil) {
      if (slots_[s].state != st(SlotState::kReset)) {
        note_damage("state of a slot on the free list", slots_[s].state, shm::kSlotStateCount);
        break;  // never hand out a slot someone else has
      }
      ++from_reset;
    } else {
      s = backend_->pop_victim();
      if (s == kNil) {
        break;  // unreachable: the caller checked the pool sizes under this lock
      }
      if (s >= n_ || slots_[s].state != st(SlotState::kInactive)) {
        note_damage("eviction victim (slot, or its state)", s, n_);
        break;
      }
      ++from_inactive;
      // A later victim's hash-index bucket is a likely cache (and TLB) miss in a large segment:
      // start loading it now, so the misses of consecutive evictions overlap.
      constexpr std::uint32_t kAhead = 4;
      if (i + kAhead < n) {
        if (const std::uint32_t later = backend_->peek_victim(kAhead - 1); later != kNil) {
          index_.prefetch(slots_[later].hash_hi, slots_[later].hash_lo);
        }
      }
      index_.erase(slots_[s].hash_hi, slots_[s].hash_lo, s);
      emit(shm::EventKindCode::kRemoved, s);
      if (evicted != nullptr) {
        evicted->push_back(hash_of(s));
      }
    }
    KVBM_CRASH_POINT("allocate.popped");
    log(s);
    to_mutable(s, actor);
    KVBM_CRASH_POINT("allocate.slot");
    out.push_back(Grant{s, slots_[s].generation.load(std::memory_order_relaxed)});
  }
  count(txn, shm::kAllocations, from_reset + from_inactive);
  count(txn, shm::kAllocationsFromReset, from_reset);
  count(txn, shm::kEvictions, from_inactive);
  return true;
}

BlockStore::StageResult BlockStore::stage_lock_free(Grant g,
                                                    std::uint32_t actor,
                                                    SequenceHash hash) noexcept {
  // Why this is safe without the mutex: only the owner changes its Mutable slot, except a reaper
  // that reclaimed the owner's entry (the owner was fenced). Each step is one compare-and-swap
  // that fails once the slot is no longer this generation's empty Mutable slot, and a step
  // that lands on a reclaimed slot is harmless: the hash is claimed only from the empty marker
  // (which only an unstaged Mutable slot carries; its new owner's stage then takes the locked
  // path and overwrites it), and the state word only at this owner's generation.
  auto& m = slots_[g.slot];
  const std::uint64_t w = load_state_word(m);
  if (word_state(w) != st(SlotState::kMutable) || word_generation(w) != g.generation ||
      __atomic_load_n(&m.owner, __ATOMIC_RELAXED) != actor) {
    return StageResult::kNotOwned;
  }
  if (hash.hi() == shm::kNoHashHi && hash.lo() == shm::kNoHashLo) {
    return StageResult::kNeedLock;
  }
  auto& e = procs_[actor];
  // Counted before the slot shows Staged, so an entry's stagings - destaged is never below its
  // Staged slots (what verify() checks while stages are in flight).
  e.stagings.fetch_add(1, std::memory_order_relaxed);
  KVBM_CRASH_POINT("stage.counted");
  if (!cas_hash(m, shm::kNoHashHi, shm::kNoHashLo, hash.hi(), hash.lo())) {
    e.destaged.fetch_add(1, std::memory_order_relaxed);
    return StageResult::kNeedLock;
  }
  KVBM_CRASH_POINT("stage.hashed");
  if (!cas_state_word(m, w, word_with_state(w, SlotState::kStaged))) {
    e.destaged.fetch_add(1, std::memory_order_relaxed);
    return StageResult::kNotOwned;
  }
  return StageResult::kDone;
}

bool BlockStore::write_tokens(Grant g,
                              std::uint32_t actor,
                              std::span<const std::uint32_t> ids) noexcept {
  // Like stage_lock_free: only the owner touches its Mutable slot's record. The generation tag
  // goes last (release), so a reader that sees it also sees these ids.
  auto* rec = seg_.token_record(g.slot);
  const auto& m = slots_[g.slot];
  const std::uint64_t w = load_state_word(m);
  if (rec == nullptr || word_state(w) != st(SlotState::kMutable) ||
      word_generation(w) != g.generation || __atomic_load_n(&m.owner, __ATOMIC_RELAXED) != actor) {
    return false;
  }
  rec->generation.store(kNil, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  auto* out = reinterpret_cast<std::uint32_t*>(rec + 1);
  std::copy(ids.begin(), ids.end(), out);
  rec->count = static_cast<std::uint32_t>(ids.size());
  rec->generation.store(g.generation, std::memory_order_release);
  return true;
}

bool BlockStore::stage(Txn&, Grant g, std::uint32_t actor, SequenceHash hash) noexcept {
  auto& m = slots_[g.slot];
  if (m.state != st(SlotState::kMutable) || m.owner != actor ||
      m.generation.load(std::memory_order_relaxed) != g.generation) {
    return false;
  }
  log(g.slot);
  procs_[actor].stagings.fetch_add(1, std::memory_order_relaxed);
  store_hash(m, hash.hi(), hash.lo());
  KVBM_CRASH_POINT("stage.locked_hash");
  set_state(m, SlotState::kStaged);
  return true;
}

void BlockStore::note_destaged(Txn&, std::uint32_t actor, std::uint64_t n) noexcept {
  procs_[actor].destaged.fetch_add(n, std::memory_order_relaxed);
}

void BlockStore::recount_staged(std::uint32_t actor) noexcept {
  std::uint64_t staged = 0;
  for (std::uint32_t s = 0; s < n_; ++s) {
    staged += slots_[s].state == st(SlotState::kStaged) && slots_[s].owner == actor ? 1 : 0;
  }
  auto& e = procs_[actor];
  e.destaged.store(e.stagings.load(std::memory_order_relaxed) - staged, std::memory_order_relaxed);
}

bool BlockStore::unstage(Txn& txn, Grant g, std::uint32_t actor) noexcept {
  if (!is_staged_by(g, actor)) {
    return false;
  }
  auto& m = slots_[g.slot];
  log(g.slot);
  set_state(m, SlotState::kMutable);
  m.reset_on_release = default_ror_;
  store_hash(m, shm::kNoHashHi, shm::kNoHashLo);
  if (auto* rec = seg_.token_record(g.slot); rec != nullptr) {
    // The ids were the staged block's; a later stage without ids must not inherit them.
    rec->generation.store(kNil, std::memory_order_relaxed);
  }
  note_destaged(txn, actor, 1);
  return true;
}

bool BlockStore::is_staged_by(Grant g, std::uint32_t actor) const noexcept {
  const auto& m = slots_[g.slot];
  return m.state == st(SlotState::kStaged) && m.owner == actor &&
         m.generation.load(std::memory_order_relaxed) == g.generation;
}

bool BlockStore::release_exclusive(Txn& txn, Grant g, std::uint32_t actor) noexcept {
  auto& m = slots_[g.slot];
  if ((m.state != st(SlotState::kMutable) && m.state != st(SlotState::kStaged)) ||
      m.owner != actor || m.generation.load(std::memory_order_relaxed) != g.generation) {
    return false;
  }
  const bool staged = m.state == st(SlotState::kStaged);
  log(g.slot);
  to_reset(g.slot);
  if (staged) {
    note_destaged(txn, actor, 1);
  }
  return true;
}

std::optional<std::size_t> BlockStore::register_staged(Txn& txn,
                                                       std::span<Staged> batch,
                                                       std::uint32_t actor,
                                                       DuplicationPolicy policy) noexcept {
  for (const Staged& b : batch) {
    prefetch_lookup(b.hash);
  }
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (!is_staged_by(batch[i].grant, actor)) {
      return i;
    }
  }
  for (Staged& b : batch) {
    b.grant = register_one(txn, b.grant, actor, policy).block;
  }
  count(txn, shm::kRegistrations, batch.size());
  note_destaged(txn, actor, batch.size());
  return std::nullopt;
}

Registered BlockStore::register_one(Txn& txn,
                                    Grant g,
                                    std::uint32_t actor,
                                    DuplicationPolicy policy) noexcept {
  checkpoint(6);
  auto& m = slots_[g.slot];
  const std::uint32_t p = index_.find(m.hash_hi, m.hash_lo);
  if (p == kNil) {
    backend_->touch(m.hash_hi, m.hash_lo);  // first registration of this hash in the segment
    log(g.slot);
    set_state(m, SlotState::kPrimary);
    KVBM_CRASH_POINT("register.primary_state");
    m.owner = kNil;
    m.holders = bit(actor);
    m.keepalive = 0;
    index_.insert(m.hash_hi, m.hash_lo, g.slot);
    KVBM_CRASH_POINT("register.indexed");
    emit(shm::EventKindCode::kStored, g.slot);
    return Registered{Grant{g.slot, g.generation, true}, false};
  }
  auto& pm = slots_[p];
  log(p);
  if (pm.state == st(SlotState::kInactive)) {
    resurrect(p);
  }
  log(g.slot);
  if (policy == DuplicationPolicy::kAllow) {
    set_state(m, SlotState::kDuplicate);
    KVBM_CRASH_POINT("register.duplicate_state");
    m.owner = kNil;
    m.dup_primary = p;
    m.holders = bit(actor);
    pm.keepalive += 1;
    count(txn, shm::kDuplicateBlocks);
    return Registered{Grant{g.slot, g.generation, true}, false};
  }
  to_reset(g.slot);
  KVBM_CRASH_POINT("register.rejected");
  const bool newly_held = (pm.holders & bit(actor)) == 0;
  pm.holders |= bit(actor);
  count(txn, shm::kRegistrationDedup);
  return Registered{Grant{p, pm.generation.load(std::memory_order_relaxed), newly_held}, true};
}

std::optional<Grant> BlockStore::acquire(Txn& txn,
                                         SequenceHash hash,
                                         std::uint32_t actor) noexcept {
  return acquire_one(txn, hash, actor, /*touch=*/false);
}

void BlockStore::acquire_prefix(Txn& txn,
                                std::span<const SequenceHash> hashes,
                                std::uint32_t actor,
                                std::vector<Grant>& out) noexcept {
  for (const SequenceHash& h : hashes) {
    prefetch_lookup(h);
  }
  const std::size_t before = out.size();
  for (const SequenceHash& h : hashes) {
    const auto g = acquire_one(txn, h, actor, /*touch=*/true);
    if (!g) {
      break;
    }
    out.push_back(*g);
  }
  count(txn, shm::kMatchHashesRequested, hashes.size());
  count(txn, shm::kMatchBlocksReturned, out.size() - before);
}

void BlockStore::acquire_each(Txn& txn,
                              std::span<const SequenceHash> hashes,
                              std::uint32_t actor,
                              std::span<std::optional<Grant>> out) noexcept {
  for (const SequenceHash& h : hashes) {
    prefetch_lookup(h);
  }
  std::uint64_t hits = 0;
  for (std::size_t i = 0; i < hashes.size(); ++i) {
    out[i] = acquire_one(txn, hashes[i], actor, /*touch=*/true);
    hits += out[i] ? 1 : 0;
  }
  count(txn, shm::kScanHashesRequested, hashes.size());
  count(txn, shm::kScanBlocksReturned, hits);
}

void BlockStore::acquire_present(Txn& txn,
                                 std::span<const SequenceHash> unique,
                                 std::size_t requested,
                                 std::uint32_t actor,
                                 bool touch,
                                 std::vector<std::pair<SequenceHash, Grant>>& out) noexcept {
  const std::size_t before = out.size();
  for (const SequenceHash& h : unique) {
    if (const auto g = acquire_one(txn, h, actor, touch)) {
      out.emplace_back(h, *g);
    }
  }
  count(txn, shm::kScanHashesRequested, requested);
  count(txn, shm::kScanBlocksReturned, out.size() - before);
}

std::optional<Grant> BlockStore::acquire_one(Txn&,
                                             SequenceHash hash,
                                             std::uint32_t actor,
                                             bool touch) noexcept {
  const std::uint32_t p = index_.find(hash.hi(), hash.lo());
  if (p == kNil) {
    return std::nullopt;
  }
  if (touch) {
    backend_->touch(hash.hi(), hash.lo());
  }
  auto& pm = slots_[p];
  bool newly_held = false;
  if (pm.state == st(SlotState::kInactive) || (pm.holders & bit(actor)) == 0) {
    checkpoint(4);
    log(p);
    if (pm.state == st(SlotState::kInactive)) {
      resurrect(p);
    }
    newly_held = (pm.holders & bit(actor)) == 0;
    pm.holders |= bit(actor);
  }
  return Grant{p, pm.generation.load(std::memory_order_relaxed), newly_held};
}

bool BlockStore::holds(std::uint32_t slot, std::uint32_t actor) const noexcept {
  return (slots_[slot].holders & bit(actor)) != 0;
}

void BlockStore::release_holder(Txn&, std::uint32_t slot, std::uint32_t actor) noexcept {
  auto& m = slots_[slot];
  if ((m.holders & bit(actor)) == 0) {
    return;
  }
  checkpoint(8);
  log(slot);
  m.holders &= ~bit(actor);
  KVBM_CRASH_POINT("release.bit_cleared");
  if (m.holders != 0) {
    return;
  }
  if (m.state == st(SlotState::kPrimary)) {
    if (m.keepalive == 0) {
      release_primary(slot);
    }
    return;
  }
  if (m.state == st(SlotState::kDuplicate)) {
    const std::uint32_t p = checked(m.dup_primary, n_, "duplicate's primary link");
    to_reset(slot);
    KVBM_CRASH_POINT("release.duplicate_reset");
    auto& pm = slots_[p];
    log(p);
    pm.keepalive -= 1;
    if (pm.keepalive == 0 && pm.holders == 0) {
      release_primary(p);
    }
  }
}

void BlockStore::set_reset_on_release(Txn&, std::uint32_t slot, bool value) noexcept {
  log(slot);
  slots_[slot].reset_on_release = value ? 1 : 0;
}

std::uint64_t BlockStore::drain_inactive(Txn&) noexcept {
  for (std::uint64_t steps = 0;; ++steps) {
    checkpoint(4);
    const std::uint32_t s = backend_->pop_victim();
    if (s == kNil || !within(steps, n_, "inactive pool length")) {
      break;
    }
    if (s >= n_ || slots_[s].state != st(SlotState::kInactive)) {
      note_damage("slot drained from the inactive pool (or its state)", s, n_);
      break;
    }
    index_.erase(slots_[s].hash_hi, slots_[s].hash_lo, s);
    log(s);
    emit(shm::EventKindCode::kRemoved, s);
    // Through Mutable and straight back, as kvbm-logical's drain does: a new generation and the
    // default reset-on-release flag.
    slots_[s].generation.store(slots_[s].generation.load(std::memory_order_relaxed) + 1,
                               std::memory_order_relaxed);
    slots_[s].reset_on_release = default_ror_;
    to_reset(s);
    KVBM_CRASH_POINT("drain.slot");
  }
  return n_ - free_count();
}

std::uint64_t BlockStore::reap(Txn& txn, std::uint32_t proc, bool detach) noexcept {
  std::uint64_t released = 0;
  for (std::uint32_t s = 0; s < n_; ++s) {
    auto& m = slots_[s];
    if ((m.state == st(SlotState::kMutable) || m.state == st(SlotState::kStaged)) &&
        m.owner == proc) {
      checkpoint(2);
      log(s);
      to_reset(s);
      ++released;
      KVBM_CRASH_POINT("reap.exclusive");
    }
    if ((m.holders & bit(proc)) != 0) {
      release_holder(txn, s, proc);
      ++released;
      KVBM_CRASH_POINT("reap.holder");
    }
  }
  // The entry change rides in the same armed intent as the last slot changes: rolled back
  // together, so a reap interrupted here is redone whole by the next reaper.
  auto& in = ctl_->intent;
  auto& e = procs_[proc];
  in.proc_state_before = e.state.load(std::memory_order_relaxed);
  in.proc_incarnation_before = e.incarnation.load(std::memory_order_relaxed);
  barrier();
  in.proc_target = proc;
  barrier();
  // The entry's stagings leave the per-entry sum of kvbm_stagings_total with the entry.
  count(txn, shm::kStagings, e.stagings.load(std::memory_order_relaxed));
  e.incarnation.store(in.proc_incarnation_before + 1, std::memory_order_relaxed);
  e.state.store(static_cast<std::uint32_t>(shm::ProcState::kFree), std::memory_order_release);
  if (!detach) {
    count(txn, shm::kReapedProcesses);
  }
  KVBM_CRASH_POINT("reap.entry_freed");
  return released;
}

void BlockStore::force_reset(Txn&, std::uint32_t slot) noexcept {
  auto& m = slots_[slot];
  log(slot);
  m.state = st(SlotState::kReset);  // counts and the free list are rebuilt by the caller
  m.owner = kNil;
  m.dup_primary = kNil;
  m.holders = 0;
  m.keepalive = 0;
}

void BlockStore::sanitize(Txn& txn, std::vector<std::string>& actions) noexcept {
  const std::uint32_t max_procs = seg_.max_processes();
  auto in_use = [&](std::uint32_t p) {
    return p < max_procs && procs_[p].state.load(std::memory_order_relaxed) !=
                                static_cast<std::uint32_t>(shm::ProcState::kFree);
  };
  auto note = [&](std::string text) {
    if (actions.size() < 1000) {
      actions.push_back(std::move(text));
    }
  };
  for (std::uint32_t s = 0; s < n_; ++s) {
    checkpoint(16);
    auto& m = slots_[s];
    const bool exclusive = m.state == st(SlotState::kMutable) || m.state == st(SlotState::kStaged);
    const bool held = m.state == st(SlotState::kPrimary) || m.state == st(SlotState::kDuplicate);
    if (exclusive && !in_use(m.owner)) {
      note(fmt::format("slot {}: owner entry {} is not in use -> reset", s, m.owner));
      log(s);
      to_reset(s);
      continue;
    }
    if (m.state == st(SlotState::kDuplicate) &&
        (m.dup_primary >= n_ || slots_[m.dup_primary].state != st(SlotState::kPrimary) ||
         slots_[m.dup_primary].hash_hi != m.hash_hi ||
         slots_[m.dup_primary].hash_lo != m.hash_lo)) {
      note(fmt::format("slot {}: duplicate without a valid primary -> reset", s));
      log(s);
      to_reset(s);
      continue;
    }
    const bool stray_owner = !exclusive && m.owner != kNil;
    const bool stray_link = m.state != st(SlotState::kDuplicate) && m.dup_primary != kNil;
    const bool stray_holders = !held && m.holders != 0;
    const bool stray_keepalive = m.state != st(SlotState::kPrimary) && m.keepalive != 0;
    if (stray_owner || stray_link || stray_holders || stray_keepalive) {
      note(fmt::format("slot {}: cleared fields that do not belong to its state", s));
      log(s);
      if (stray_owner)
        m.owner = kNil;
      if (stray_link)
        m.dup_primary = kNil;
      if (stray_holders)
        m.holders = 0;
      if (stray_keepalive)
        m.keepalive = 0;
    }
    if (held) {
      for (std::uint32_t p = 0; p < 64; ++p) {
        if ((m.holders >> p & 1) != 0 && !in_use(p)) {
          note(fmt::format("slot {}: released the reference of process entry {} (not in use)", s,
                           p));
          release_holder(txn, s, p);
        }
      }
    }
  }
  // Two cached copies of one hash (only corruption makes them): the index knows one; an
  // unindexed Inactive copy is dropped from the cache.
  for (std::uint32_t s = 0; s < n_; ++s) {
    checkpoint(4);
    if (slots_[s].state == st(SlotState::kInactive) &&
        index_.find(slots_[s].hash_hi, slots_[s].hash_lo) != s) {
      note(fmt::format("slot {}: second cached copy of hash {} -> reset", s, hash_of(s)));
      backend_->remove(s);
      log(s);
      to_reset(s);
    }
  }
  // Primaries that nothing keeps any more are released like a last drop.
  std::vector<std::uint32_t> dup_refs(n_, 0);
  for (std::uint32_t s = 0; s < n_; ++s) {
    if (slots_[s].state == st(SlotState::kDuplicate)) {
      ++dup_refs[slots_[s].dup_primary];
    }
  }
  for (std::uint32_t s = 0; s < n_; ++s) {
    checkpoint(8);
    auto& m = slots_[s];
    if (m.state == st(SlotState::kPrimary) && m.keepalive != dup_refs[s]) {
      log(s);
      m.keepalive = dup_refs[s];
    }
    if (m.state == st(SlotState::kPrimary) && m.holders == 0 && m.keepalive == 0) {
      note(fmt::format("slot {}: primary held by nobody -> released", s));
      log(s);
      release_primary(s);
    }
  }
}

std::uint64_t BlockStore::claim_process(const StoreLock&,
                                        std::uint32_t proc,
                                        std::int32_t pid,
                                        std::uint64_t start_ticks,
                                        std::uint64_t pidns) noexcept {
  // Single-word stores, state last: a claim cut short leaves an entry whose byte lock is free,
  // i.e. a dead entry that the next reaper frees.
  auto& e = procs_[proc];
  const std::uint64_t inc = e.incarnation.load(std::memory_order_relaxed) + 1;
  e.incarnation.store(inc, std::memory_order_relaxed);
  e.pid.store(pid, std::memory_order_relaxed);
  e.start_ticks.store(start_ticks, std::memory_order_relaxed);
  e.pidns_inode.store(pidns, std::memory_order_relaxed);
  e.attached_ns.store(realtime_now_ns(), std::memory_order_relaxed);
  e.stagings.store(0, std::memory_order_relaxed);
  e.destaged.store(0, std::memory_order_relaxed);
  e.state.store(static_cast<std::uint32_t>(shm::ProcState::kLive), std::memory_order_release);
  return inc;
}

}  // namespace kvbm::detail
