// SPDX-License-Identifier: Apache-2.0
// Index checks for everything read from shared memory (DESIGN.md section 12). Another process,
// a stray write or a damaged image can leave any value in a link, a bucket or a record, and the
// store's calls are noexcept (they must never stop half-way), so a bad value does not throw:
// checked() records the first damage this thread met and hands back an index that is safe to
// touch (0), and every walk is bounded by the size of what it walks. The store looks at the
// record when its transaction ends: it poisons the segment, and the manager throws
// SegmentCorrupted (src/attachment.cpp). Nothing past the damage is trusted afterwards; kvbm-ctl
// repair rebuilds from the slots.
#pragma once

#include <cstdint>
#include <string>

namespace kvbm::detail {

/// The first damage this thread met since the last clear_damage(), or empty.
const std::string& damage_seen() noexcept;
void clear_damage() noexcept;
/// Records damage (keeps the first). Cold: the checks below call it only on a bad value.
[[gnu::cold, gnu::noinline]] void note_damage(const char* what,
                                              std::uint64_t value,
                                              std::uint64_t limit) noexcept;

/// `i` if it is below `n`, else records the damage and returns 0 (safe to index with: n > 0).
inline std::uint32_t checked(std::uint32_t i, std::uint32_t n, const char* what) noexcept {
  if (i < n) [[likely]] {
    return i;
  }
  note_damage(what, i, n);
  return 0;
}

/// For bounded walks: false (and damage recorded) once `steps` exceeds `limit`.
inline bool within(std::uint64_t steps, std::uint64_t limit, const char* what) noexcept {
  if (steps <= limit) [[likely]] {
    return true;
  }
  note_damage(what, steps, limit);
  return false;
}

}  // namespace kvbm::detail
