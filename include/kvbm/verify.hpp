// SPDX-License-Identifier: Apache-2.0
// What BlockManager::verify(VerifyMode) found, and how it walked the segment.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvbm {

enum class VerifyMode {
  /// Walks in chunks, giving the store lock up for a moment every ~3 us of holding it: a
  /// waiting worker takes it then, while it still spins (before it sleeps in the kernel). A walk
  /// that an operation ran into
  /// is started again; after 3 such walks it checks only what each chunk can check on its own
  /// and says so in VerifyReport::notes (complete = false).
  kPaced,
  /// One hold of the store lock for the whole walk (workers wait for all of it): always
  /// compares everything, including the global counts a busy segment keeps kPaced from.
  kExclusive,
};

struct VerifyReport {
  std::vector<std::string> problems;  // every broken invariant found, one line each
  /// Every invariant was compared in one consistent view. False only for kPaced on a segment
  /// never quiet for a whole walk: the global counts, list lengths, whole-list walks and the
  /// eviction order's structures were not compared (see notes).
  bool complete = true;
  std::vector<std::string> notes;  // what was not compared, and why
  std::uint64_t yields = 0;        // times another process or thread took the lock meanwhile
  std::uint64_t restarts = 0;      // walks abandoned because an operation ran meanwhile
  std::uint64_t operations = 0;    // operations that ran while the lock was given up
};

}  // namespace kvbm
