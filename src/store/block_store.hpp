// SPDX-License-Identifier: Apache-2.0
// BlockStore: the ONLY code that changes slot state. Every method requires the store mutex held by
// the caller (a StoreLock; every changing call takes the Txn opened on it), takes no other lock,
// allocates nothing and does not throw, so an operation is never abandoned half-way except by the
// death of the process.
// The one exception is stage_lock_free(): the owner of a Mutable slot stages it without the mutex
// (two compare-and-swaps on its own slot, accounted in its own process entry), because staging
// is the one per-block call of the hot path that touches no shared structure.
//
// Source of truth: SlotMeta. The free list, the inactive backend, the hash index, the state counts
// and the keep-alive counts are derived and rebuilt from the slots by rebuild_derived().
// Crash safety: each operation runs inside a transaction (Txn) that records every slot's
// before-image in the intent record before the slot is changed; recover() rolls an armed intent
// back, then rebuilds the derived structures.
// Lock ordering: OFD liveness byte (reaping/attaching) -> store mutex. Nothing is locked inside.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvbm/config.hpp"
#include "kvbm/sequence_hash.hpp"

#include "eviction/backend.hpp"
#include "segment/segment.hpp"
#include "segment/walk_pacer.hpp"
#include "shm/intent.hpp"
#include "store/event_log.hpp"
#include "store/hash_index.hpp"
#include "store/store_lock.hpp"

namespace kvbm::detail {

struct Grant {
  std::uint32_t slot;
  std::uint32_t generation;
  bool newly_held = false;  // acquire / register: this call set the actor's holder bit
};

struct Registered {
  Grant block;                // what the caller now holds (its holder bit is set)
  bool staged_freed = false;  // kReject: the staged slot went back to Reset
};

class BlockStore {
 public:
  explicit BlockStore(Segment& segment);

  /// Creator only, passed to Segment::create: the empty regions of the eviction backends (the
  /// lineage arena, the TinyLFU sketch) of a segment being created.
  static void init_regions(Segment& segment);

  Segment& segment() { return seg_; }

  // --- transactions (intent record) -------------------------------------------------------
  /// The one way into a mutating store call: holds the store mutex (its own StoreLock, or one
  /// the caller keeps for several transactions in a row) and arms the intent record for an
  /// operation of `actor` (kNil for tools that are not attached); commits when it goes out of
  /// scope, then releases an owned lock.
  ///
  /// It commits on an exception too: every store call is noexcept and leaves the slots
  /// consistent, so an exception can only come between two calls (e.g. a register batch that
  /// finds a block no longer staged), when the changes so far are a consistent state this live
  /// process goes on from. Rolling back is only for a process that died inside a call, which
  /// recover() does.
  struct KeepLock {};
  class Txn {
   public:
    /// Takes over `lock`; released after the commit.
    Txn(BlockStore& store, StoreLock&& lock, shm::IntentOp op, std::uint32_t actor) noexcept
        : store_(store), owned_(lock.release()) {
      store_.begin(op, actor);
    }
    /// Under `held`, which the caller keeps after this transaction (several in a row).
    Txn(BlockStore& store,
        const StoreLock& /*held*/,
        KeepLock,
        shm::IntentOp op,
        std::uint32_t actor) noexcept
        : store_(store) {
      store_.begin(op, actor);
    }
    ~Txn() {
      store_.commit();
      if (owned_ != nullptr) {
        owned_->unlock();
      }
    }
    Txn(const Txn&) = delete;
    Txn& operator=(const Txn&) = delete;

   private:
    BlockStore& store_;
    shm::RobustMutex* owned_ = nullptr;  // the mutex this transaction unlocks after committing
  };

  // --- operations: each runs inside a Txn and does its own counting ---------------------
  // One call per user operation: the manager's batch calls map to one operation each, which
  // updates the segment's counters (section 5 metrics) itself. Nothing here allocates: output
  // vectors are reserved by the caller.
  std::uint64_t free_count() const;
  std::uint64_t inactive_count() const;
  /// All-or-nothing: `n` blocks for `actor`, the reset pool first, then evictions (their hashes
  /// appended to `evicted` if given). False, changing nothing, if the reset and inactive pools
  /// together hold fewer than `n`. Counts allocations, allocations from reset, evictions.
  [[nodiscard]] bool allocate(Txn& txn,
                              std::size_t n,
                              std::uint32_t actor,
                              std::vector<Grant>& out,
                              std::vector<SequenceHash>* evicted) noexcept;
  enum class StageResult { kDone, kNeedLock, kNotOwned };
  /// Mutable -> Staged WITHOUT the store mutex, by the slot's owner. kNeedLock: the hash field
  /// was not the empty marker (a stray write of a fenced process, or `hash` is the marker
  /// itself); call stage() under the mutex. kNotOwned: not this actor's Mutable slot of that
  /// generation (any more).
  [[nodiscard]] StageResult stage_lock_free(Grant g,
                                            std::uint32_t actor,
                                            SequenceHash hash) noexcept;
  /// Records the block's token ids in its slot's token record (store_token_ids segments), by
  /// the owner of the Mutable slot, WITHOUT the store mutex, before it stages the slot. False if
  /// the slot is not actor's Mutable slot of that generation. Requires ids.size() == block_size
  /// and a segment with token records.
  [[nodiscard]] bool write_tokens(Grant g,
                                  std::uint32_t actor,
                                  std::span<const std::uint32_t> ids) noexcept;
  /// Mutable -> Staged under the mutex. False if the slot is not this actor's Mutable slot of
  /// that generation.
  [[nodiscard]] bool stage(Txn& txn, Grant g, std::uint32_t actor, SequenceHash hash) noexcept;
  /// Staged -> Mutable (reset-on-release back to the default).
  [[nodiscard]] bool unstage(Txn& txn, Grant g, std::uint32_t actor) noexcept;
  /// Mutable or Staged (this actor's, this generation) -> Reset.
  [[nodiscard]] bool release_exclusive(Txn& txn, Grant g, std::uint32_t actor) noexcept;
  /// True if the slot is this actor's Staged slot of that generation.
  bool is_staged_by(Grant g, std::uint32_t actor) const noexcept;
  /// A staged block of a register batch: its grant on the way in, the grant the caller then
  /// holds on the way out.
  struct Staged {
    Grant grant;
    SequenceHash hash;
  };
  /// Registers a batch of `actor`'s Staged slots per `policy` (Staged -> Primary / Duplicate /
  /// Reset + the existing primary), replacing each grant by the one now held. If any block is
  /// not actor's Staged slot of that generation any more, changes nothing and returns its
  /// index. Counts registrations, duplicates and dedups.
  [[nodiscard]] std::optional<std::size_t> register_staged(Txn& txn,
                                                           std::span<Staged> batch,
                                                           std::uint32_t actor,
                                                           DuplicationPolicy policy) noexcept;
  /// The Primary of `hash` (resurrected if Inactive) with actor's holder bit set (a weak
  /// block's upgrade; counts nothing).
  [[nodiscard]] std::optional<Grant> acquire(Txn& txn,
                                             SequenceHash hash,
                                             std::uint32_t actor) noexcept;
  /// match_blocks: acquires `hashes` in order up to the first miss, appending the grants to
  /// `out`. Counts kvbm_match_*; each hit is a TinyLFU frequency event.
  void acquire_prefix(Txn& txn,
                      std::span<const SequenceHash> hashes,
                      std::uint32_t actor,
                      std::vector<Grant>& out) noexcept;
  /// match_blocks_scattered: acquires each of `hashes` (out[i] stays nullopt on a miss).
  /// Counts kvbm_scan_*; each hit is a frequency event.
  void acquire_each(Txn& txn,
                    std::span<const SequenceHash> hashes,
                    std::uint32_t actor,
                    std::span<std::optional<Grant>> out) noexcept;
  /// scan_matches: acquires each of the `unique` hashes (the caller's `requested` hashes without
  /// repeats) that is present, appending (hash, grant) to `out`. Counts kvbm_scan_* (requested
  /// hashes, unique hits); with `touch` each hit is a frequency event.
  void acquire_present(Txn& txn,
                       std::span<const SequenceHash> unique,
                       std::size_t requested,
                       std::uint32_t actor,
                       bool touch,
                       std::vector<std::pair<SequenceHash, Grant>>& out) noexcept;
  /// Clears actor's holder bit; the last holder releases the slot (Primary -> Inactive or Reset,
  /// Duplicate -> Reset and its keep-alive dropped).
  void release_holder(Txn& txn, std::uint32_t slot, std::uint32_t actor) noexcept;
  bool holds(std::uint32_t slot, std::uint32_t actor) const noexcept;
  /// The Primary or Inactive slot of `hash`, or kNil. Changes nothing.
  std::uint32_t find(SequenceHash hash) const noexcept { return index_.find(hash.hi(), hash.lo()); }
  /// Starts loading the hash-index bucket a lookup of `hash` reads first. A batch issues these
  /// for all its hashes before the lookups, so their cache misses overlap. Changes nothing.
  void prefetch_lookup(SequenceHash hash) const noexcept { index_.prefetch(hash.hi(), hash.lo()); }
  void set_reset_on_release(Txn& txn, std::uint32_t slot, bool value) noexcept;
  /// Inactive -> Reset for every inactive block (counted neither as allocations nor evictions);
  /// returns how many blocks are still in use (not Reset) afterwards.
  std::uint64_t drain_inactive(Txn& txn) noexcept;
  /// Releases everything process entry `proc` holds and frees the entry. A dead process's entry
  /// counts in kvbm_reaped_processes_total; a clean detach (`detach`) does not. Returns how many
  /// slots it let go of (Mutable/Staged slots reset plus holder bits cleared).
  std::uint64_t reap(Txn& txn, std::uint32_t proc, bool detach = false) noexcept;
  /// Claims entry `proc` for a new attachment; returns its new incarnation.
  std::uint64_t claim_process(const StoreLock& held,
                              std::uint32_t proc,
                              std::int32_t pid,
                              std::uint64_t start_ticks,
                              std::uint64_t pidns) noexcept;

  /// Repair only: a slot whose state value is invalid goes to Reset (no list touched; run
  /// rebuild_derived() afterwards). Requires a transaction.
  void force_reset(Txn& txn, std::uint32_t slot) noexcept;
  /// Repair only: makes every slot's fields agree with its state and with the process table,
  /// never promoting a block: orphaned Mutable/Staged slots and Duplicates without a valid
  /// primary go to Reset, holder bits of entries not in use are released with the normal
  /// transitions, stray owner/link/holder fields are cleared. Appends what it did. Requires a
  /// transaction and sound derived structures (rebuild_derived() first).
  void sanitize(Txn& txn, std::vector<std::string>& actions) noexcept;
  /// Tests only: record a slot's before-image as an operation would.
  void log_for_test(Txn& /*txn*/, std::uint32_t slot) noexcept { log(slot); }

  // --- recovery and checking ------------------------------------------------------------
  /// On EOWNERDEAD (the caller holds the mutex, not yet consistent, so no StoreLock exists yet):
  /// roll back an armed intent, rebuild everything derived, check invariants. Returns the
  /// problems that remain (empty = recovered). Outside any transaction: it is what undoes one.
  std::vector<std::string> recover();
  /// What the last recover() of this BlockStore found and undid, for the log.
  struct RecoveryReport {
    bool rolled_back = false;  // an operation was in progress (the intent was armed)
    shm::IntentOp op = shm::IntentOp::kNone;
    std::uint32_t actor = shm::kNil;   // process entry whose operation it was
    std::uint32_t slots_restored = 0;  // before-images written back
    bool entry_restored = false;       // a process entry's state was put back too
    std::string describe() const;      // one sentence for the log
  };
  const RecoveryReport& last_recovery() const { return last_recovery_; }
  /// Recover-or-poison, for whoever got EOWNERDEAD (and so holds the mutex): recover(), then make
  /// the mutex consistent; returns an empty list. If either fails, poisons the segment, unlocks
  /// WITHOUT consistent() (the mutex becomes unrecoverable on purpose) and returns the problems
  /// (never empty; "mutex" if only consistent() failed).
  std::vector<std::string> recover_or_poison() noexcept;
  /// Marks the segment poisoned: every later lock() refuses it until kvbm-ctl repair.
  void poison() noexcept;
  /// Rebuilds free list, inactive backend, hash index, state and keep-alive counts from slots.
  /// Returns problems it could not fix (e.g. two cached slots with one hash).
  std::vector<std::string> rebuild_derived();
  /// Every broken invariant of the slots and derived structures (not liveness), in one hold of
  /// the store mutex.
  void verify(std::vector<std::string>& problems) const;
  /// kWhole: every invariant. kLocal: only what can be checked from one slot, bucket or list
  /// link at a time (per-slot fields, owner and holder entries, a Duplicate's primary, a cached
  /// slot found by its hash, each bucket's slot and tag, the free-list links around each Reset
  /// slot); no counts, list lengths, whole-list walks or eviction backend.
  enum class VerifyScope { kWhole, kLocal };
  /// verify() with `pacer.step()` between two units of work: the pacer may yield the mutex, and
  /// throws to abandon a kWhole walk that an operation ran into (store/paced_verify.hpp).
  void verify(std::vector<std::string>& problems, WalkPacer& pacer, VerifyScope scope) const;

 private:
  /// Arms the intent (Txn only).
  void begin(shm::IntentOp op, std::uint32_t actor);
  /// Disarms: the slots are consistent again (Txn only).
  void commit();
  /// Counter update; the value before this transaction's first change is logged.
  void count(Txn& txn, shm::Counter c, std::uint64_t n = 1) noexcept;
  /// `n` Staged slots of `actor` left Staged under the mutex.
  void note_destaged(Txn& txn, std::uint32_t actor, std::uint64_t n) noexcept;
  /// One slot's register step (the batch checked it is actor's Staged slot).
  Registered register_one(Txn& txn,
                          Grant g,
                          std::uint32_t actor,
                          DuplicationPolicy policy) noexcept;
  std::optional<Grant> acquire_one(Txn& txn,
                                   SequenceHash hash,
                                   std::uint32_t actor,
                                   bool touch) noexcept;
  /// Appends an event of `slot`'s current hash to the ring (if the segment has one) and counts
  /// it in kvbm_events_total.
  void emit(shm::EventKindCode kind, std::uint32_t slot) noexcept;
  /// count() without the Txn argument, for the primitive steps that run inside one.
  void count_logged(shm::Counter c, std::uint64_t n) noexcept;
  /// Counter update without a transaction's before-image (recovery's own count).
  void bump(shm::Counter c, std::uint64_t n) noexcept;
  /// Debug builds: aborts unless a transaction is open and this thread holds the mutex.
  void check_in_txn() const noexcept;
  /// Debug builds: aborts unless this thread holds the mutex.
  void check_locked() const noexcept;
  void log(std::uint32_t slot) noexcept;
  /// Commits and re-arms when fewer than `reserve` image slots are left in the intent.
  void checkpoint(std::uint32_t reserve) noexcept;
  void set_state(shm::SlotMeta& m, shm::SlotState s) noexcept;
  /// Recomputes a dead actor's `destaged` from its Staged slots (after a rollback).
  void recount_staged(std::uint32_t actor) noexcept;
  void to_reset(std::uint32_t slot) noexcept;  // requires: logged; pushes to the free list
  void to_mutable(std::uint32_t slot, std::uint32_t actor) noexcept;
  void release_primary(std::uint32_t slot) noexcept;  // requires: logged, no holder, no keep-alive
  void resurrect(std::uint32_t slot) noexcept;        // Inactive -> Primary; requires: logged
  SequenceHash hash_of(std::uint32_t slot) const noexcept;
  /// verify(): the checks of the local scope that the whole walk makes from its tallies.
  void verify_slot_locally(std::uint32_t slot, std::vector<std::string>& problems) const;
  /// verify(): every bucket, then every cached slot's lookup; `cached` (whole only) is the number
  /// of Primary and Inactive slots the bucket count must match.
  void verify_index(std::vector<std::string>& problems,
                    WalkPacer& pacer,
                    bool whole,
                    std::uint64_t cached) const;

  Segment& seg_;
  shm::ControlBlock* ctl_;
  shm::SlotMeta* slots_;
  shm::ProcEntry* procs_;
  std::uint32_t n_;
  std::uint8_t default_ror_;
  HashIndex index_;
  EventLog events_;
  std::unique_ptr<InactiveBackend> backend_;
  // A Txn is open (its begin() ran, its commit() has not). Kept only by the checking builds;
  // always a member, so that the layout never depends on NDEBUG.
  bool in_txn_ = false;
  RecoveryReport last_recovery_;
};

}  // namespace kvbm::detail
