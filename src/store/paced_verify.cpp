// SPDX-License-Identifier: Apache-2.0
#include "store/paced_verify.hpp"

#include <fmt/format.h>

namespace kvbm::detail {
namespace {

using Clock = std::chrono::steady_clock;

/// What moves when anything changes the slots or derived structures under the mutex: every
/// transaction advances the intent's seq by two, every recovery and repair bumps the epoch.
/// (Lock-free staging and token writes move neither; verify tolerates them at any time.)
struct Fingerprint {
  std::uint64_t seq = 0;
  std::uint64_t epoch = 0;
  std::uint32_t init_state = 0;
  bool operator==(const Fingerprint&) const = default;
};

Fingerprint fingerprint_of(Segment& seg) {
  return {seg.control()->intent.seq.load(std::memory_order_acquire),
          seg.header()->epoch.load(std::memory_order_acquire),
          seg.header()->init_state.load(std::memory_order_acquire)};
}

class YieldingPacer final : public WalkPacer {
 public:
  struct Abandon {};  // the walk so far is not one consistent view

  YieldingPacer(Segment& seg, const MutexHold& hold, const PacedVerifyOptions& o)
      : seg_(seg), hold_(hold), budget_(o.hold_budget), window_(o.window) {}

  /// A walk starts (the mutex is held): with `abandon_on_change`, check() throws Abandon when an
  /// operation ran while the mutex was given up.
  void begin_walk(bool abandon_on_change) {
    abandon_ = abandon_on_change;
    held_since_ = Clock::now();
  }
  std::uint64_t yields() const { return yields_; }

 protected:
  // Why so often: a worker that finds the mutex held spins on the lock word for a few
  // microseconds (RobustMutex::kSpinLimit), then sleeps in the kernel. Once asleep it must be
  // woken and scheduled again, which on a busy machine takes up to a scheduler tick (4 ms
  // measured here on 2 cores shared with compilers): a verify that held the mutex for hundreds
  // of microseconds at a time made every waiting worker pay that. Holds shorter than the spin,
  // each followed by a window in which the spinner sees the word free, let it in before it
  // sleeps. A worker already asleep is woken by the unlock and, when it runs, spins into one of
  // the next windows.
  void check() override {
    if (Clock::now() - held_since_ < budget_) {
      return;
    }
    const Fingerprint before = fingerprint_of(seg_);
    hold_.release();
    const bool taken = someone_took_it();
    // As the caller locks: one trylock if the mutex is free, else spin, sleep, and recover a
    // holder that died.
    hold_.reacquire();
    held_since_ = Clock::now();
    const bool changed = fingerprint_of(seg_) != before;
    // Someone else held the mutex meanwhile: in the window, or between it and our lock.
    yields_ += taken || changed ? 1 : 0;
    if (abandon_ && changed) {
      throw Abandon{};
    }
  }

 private:
  unsigned word() const {
    return static_cast<unsigned>(
        __atomic_load_n(&seg_.control()->mutex.m.__data.__lock, __ATOMIC_RELAXED));
  }
  /// The window: true as soon as another thread holds the mutex, false if nobody took it.
  bool someone_took_it() const {
    const auto until = Clock::now() + window_;
    do {
      if (word() != 0) {
        return true;
      }
      __builtin_ia32_pause();
    } while (Clock::now() < until);
    return word() != 0;
  }

  Segment& seg_;
  const MutexHold& hold_;
  std::chrono::nanoseconds budget_;
  std::chrono::nanoseconds window_;
  bool abandon_ = true;
  Clock::time_point held_since_{};
  std::uint64_t yields_ = 0;
};

}  // namespace

PacedVerifyResult paced_verify(BlockStore& store,
                               const MutexHold& hold,
                               const PacedVerifyOptions& options) {
  Segment& seg = store.segment();
  const std::uint64_t seq_at_start = fingerprint_of(seg).seq;
  YieldingPacer pacer(seg, hold, options);
  PacedVerifyResult result;
  for (unsigned attempt = 0; attempt < options.whole_attempts; ++attempt) {
    std::vector<std::string> problems;
    pacer.begin_walk(/*abandon_on_change=*/true);
    try {
      store.verify(problems, pacer, BlockStore::VerifyScope::kWhole);
    } catch (const YieldingPacer::Abandon&) {
      ++result.restarts;
      continue;
    }
    result.problems = std::move(problems);
    result.yields = pacer.yields();
    result.operations = (fingerprint_of(seg).seq - seq_at_start) / 2;
    return result;
  }
  // Never quiet for a whole walk: what one hold can check, chunk by chunk.
  pacer.begin_walk(/*abandon_on_change=*/false);
  store.verify(result.problems, pacer, BlockStore::VerifyScope::kLocal);
  result.complete = false;
  result.yields = pacer.yields();
  result.operations = (fingerprint_of(seg).seq - seq_at_start) / 2;
  result.notes.push_back(fmt::format(
      "the segment was busy: global counts were not compared ({} operations ran during the "
      "walk); an exclusive verify (kvbm-ctl verify --exclusive) compares them holding the lock",
      result.operations));
  return result;
}

}  // namespace kvbm::detail
