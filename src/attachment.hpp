// SPDX-License-Identifier: Apache-2.0
// Attachment: one process's claim on a segment (one process-table entry). Owns the mapping, the
// BlockStore view and this process's per-slot handle counts. Every operation goes through
// lock(), which refuses a fork child (std::logic_error), a poisoned segment and a fenced
// attachment (SegmentError), and runs crash recovery when the previous holder of the store mutex
// died.
//
// Cross-process references: the holder bit of this entry on a slot is set when this process's
// count for the slot goes 0 -> 1 (under the mutex) and cleared when it is 0 under the mutex.
// Copies of an ImmutableBlock only touch the local count.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <type_traits>

#include "kvbm/error.hpp"

#include "segment/damage.hpp"
#include "segment/segment.hpp"
#include "store/block_store.hpp"

namespace kvbm::detail {

/// Bumped in a fork child: every Attachment inherited from the parent then refuses to work.
extern std::atomic<std::uint64_t> g_fork_generation;

class Attachment : public std::enable_shared_from_this<Attachment> {
 public:
  /// Claims a process-table entry (reaping a dead predecessor) on an opened segment.
  [[nodiscard]] static Result<std::shared_ptr<Attachment>> attach(std::unique_ptr<Segment> segment);
  ~Attachment();
  Attachment(const Attachment&) = delete;
  Attachment& operator=(const Attachment&) = delete;

  /// The store mutex, held until destruction.
  using Lock = StoreLock;

  /// Throws std::logic_error in a fork child, SegmentError if poisoned, fenced or on a system
  /// error. Inline: the uncontended case is one trylock and three loads.
  Lock lock() {
    check_fork();
    auto& mu = seg_->control()->mutex;
    int raw = 0;
    if (mu.try_lock_fast(raw, pid_)) {
      if (!poisoned() && !fenced()) {
        return Lock(mu);
      }
      mu.unlock();
      raw = EBUSY;  // start over on the slow path, which reports the problem
    }
    return lock_slow(raw, /*fence=*/true);
  }
  /// For destructors: nullopt instead of throwing.
  std::optional<Lock> lock_quiet() noexcept;

  /// lock(), then `f(store, txn)` inside a transaction of kind `op` (committed, then unlocked,
  /// when f returns or throws).
  /// Throws SegmentCorrupted if the operation met a broken structure (the transaction then
  /// commits what it did and poisons the segment: segment/damage.hpp).
  template <class F>
  auto run(shm::IntentOp op, F&& f) {
    BlockStore::Txn txn(*store_, lock(), op, me_);
    if constexpr (std::is_void_v<decltype(f(*store_, txn))>) {
      f(*store_, txn);
      throw_if_damaged();
    } else {
      auto result = f(*store_, txn);
      throw_if_damaged();
      return result;
    }
  }
  /// After a store call: SegmentCorrupted naming the damage this thread met, if any.
  void throw_if_damaged() const {
    if (!damage_seen().empty()) [[unlikely]] {
      throw_damaged();
    }
  }

  BlockStore& store() { return *store_; }
  Segment& segment() { return *seg_; }
  const SegmentConfig& config() const { return seg_->config(); }
  std::uint32_t me() const { return me_; }
  /// This process's pid, as recorded in its process entry and as the store mutex's holder.
  std::uint32_t pid() const { return pid_; }
  std::uint64_t incarnation() const { return incarnation_; }
  bool forked() const noexcept {
    return fork_generation_ != g_fork_generation.load(std::memory_order_relaxed);
  }
  /// Whether this attachment's entry was reclaimed (lock() then throws kFenced). Lock-free.
  bool fenced() const noexcept {
    const auto& e = seg_->procs()[me_];
    return e.incarnation.load(std::memory_order_acquire) != incarnation_ ||
           e.state.load(std::memory_order_acquire) !=
               static_cast<std::uint32_t>(shm::ProcState::kLive);
  }
  void check_fork() const {
    if (forked()) {
      throw_forked();
    }
  }
  std::atomic<std::uint32_t>& local(std::uint32_t slot) { return local_[slot]; }
  std::uint32_t slot_generation(std::uint32_t slot) const {
    return seg_->slots()[slot].generation.load(std::memory_order_acquire);
  }

  /// Under the store mutex, for every ImmutableBlock the store grants (acquire, register): one
  /// more local count of the slot, and if the grant set this entry's holder bit, one more held
  /// slot. ImmutableBlocks keep the attachment alive through their held slots, not each through a
  /// reference count: while any slot is held the attachment holds a reference to itself
  /// (`self_`), dropped when the last held slot is released. So copying, matching an already
  /// held block and dropping a non-last copy change only the slot's local count.
  void hold(Grant g) {
    local_[g.slot].fetch_add(1, std::memory_order_relaxed);
    if (g.newly_held && held_slots_++ == 0) {
      self_ = shared_from_this();
    }
  }
  /// Called when this process's count for `slot` reached 0: clears the holder bit (and releases
  /// the slot) if the count is still 0 under the mutex. Never throws. May destroy this attachment
  /// (its last held slot gone and nothing else referring to it): the caller must not touch it
  /// afterwards.
  void release_holder(std::uint32_t slot) noexcept;
  /// Reaps every dead process entry; returns how many.
  std::size_t reap_dead_processes();
  /// Tests: close the liveness fd as a daemonising helper might, so other processes see this
  /// attachment as dead (and may reap and fence it).
  void drop_liveness_for_test();
  /// Problems of verify() for process entries: dead-but-unreaped entries with what they hold.
  void verify_processes(std::vector<std::string>& problems) const;

 private:
  explicit Attachment(std::unique_ptr<Segment> segment);
  /// Lock without the fencing check (attach, detach).
  Lock lock_unfenced() {
    check_fork();
    return lock_slow(EBUSY, /*fence=*/false);
  }
  /// Everything but the uncontended case: waiting, recovery after EOWNERDEAD, poisoning,
  /// fencing errors. `raw` is the first trylock's result (EBUSY = not held yet). A wait of a
  /// second or more is logged once, naming the holder (DESIGN.md section 12).
  Lock lock_slow(int raw, bool fence);
  void log_long_wait(shm::HolderView holder, std::uint64_t waited_ms) const noexcept;
  bool poisoned() const noexcept {
    return seg_->header()->init_state.load(std::memory_order_acquire) ==
           static_cast<std::uint32_t>(shm::InitState::kPoisoned);
  }
  [[noreturn]] static void throw_forked();
  /// A dead process's entry that this attachment released, for the log.
  struct DeadEntry {
    std::uint32_t entry;
    std::int32_t pid;
    std::uint64_t released;  // slots it let go of
  };
  void log_reaped(const DeadEntry& dead, std::string_view context) const;
  [[noreturn]] void throw_damaged() const;

  std::unique_ptr<Segment> seg_;
  std::unique_ptr<BlockStore> store_;
  std::uint32_t me_ = shm::kNil;
  std::uint32_t pid_ = 0;  // getpid() once (a system call); an attachment refuses a fork child
  std::uint64_t incarnation_ = 0;
  std::uint64_t fork_generation_ = 0;
  std::unique_ptr<std::atomic<std::uint32_t>[]> local_;
  // Guarded by the store mutex: slots whose holder bit this attachment set and has not cleared,
  // and the self-reference that keeps the attachment alive while there are any. (Bits cleared by
  // a reaper after this attachment was fenced are never counted down: a fenced attachment stays
  // allocated, which is harmless.)
  std::uint64_t held_slots_ = 0;
  std::shared_ptr<Attachment> self_;
};

}  // namespace kvbm::detail
