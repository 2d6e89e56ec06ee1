// SPDX-License-Identifier: Apache-2.0
// A verify that never stalls workers: BlockStore::verify walked with a pacer that gives the store
// mutex up for a moment every ~3 us of holding it (a waiting worker takes it then), and abandons a
// walk that an operation ran into while the mutex was given up (the intent record's seq advances on
// every transaction; the header's epoch on every recovery). After `whole_attempts` abandoned walks
// (a segment never quiet for a whole walk) it makes one pass of the local checks only, which hold
// whatever ran between two chunks, and says that the global counts were not compared.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "store/block_store.hpp"

namespace kvbm::detail {

/// The caller's hold on the store mutex, which the paced walk may give up and take again.
struct MutexHold {
  std::function<void()> release;    // unlocks
  std::function<void()> reacquire;  // locks again (recovering a dead holder as the caller
                                    // would), or throws and leaves it unlocked
};

struct PacedVerifyOptions {
  /// Longest hold of the mutex (plus up to WalkPacer::kStepsPerCheck steps): shorter than a
  /// waiting worker spins before it sleeps (paced_verify.cpp says why that matters).
  std::chrono::nanoseconds hold_budget{3000};
  /// How long the mutex stays free after each hold, for a spinning worker to take it.
  std::chrono::nanoseconds window{250};
  /// Whole walks tried before the local pass (0: the local pass at once).
  unsigned whole_attempts = 3;
};

struct PacedVerifyResult {
  std::vector<std::string> problems;
  bool complete = true;            // a whole walk compared everything
  std::vector<std::string> notes;  // what was not compared, and why
  std::uint64_t yields = 0;        // times another thread held the mutex while it was given up
  std::uint64_t restarts = 0;      // whole walks abandoned because an operation ran
  std::uint64_t operations = 0;    // transactions that ran while the mutex was given up
};

/// Requires: the store mutex held through `hold`; returns with it held (unless reacquire threw,
/// which propagates).
PacedVerifyResult paced_verify(BlockStore& store,
                               const MutexHold& hold,
                               const PacedVerifyOptions& options = {});

}  // namespace kvbm::detail
