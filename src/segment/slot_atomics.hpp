// SPDX-License-Identifier: Apache-2.0
// The two atomic units of a SlotMeta that a process changes without the store mutex when it
// stages its own Mutable slot: the 8-byte state word (state, reset_on_release, level,
// backend_flags, generation) and the 16-byte hash. The mutex holder writes the same bytes with
// plain stores; on x86-64 a locked compare-and-swap and plain stores to the same bytes are
// coherent, and a CAS that expects the owner's generation fails once the mutex holder has reset
// or reallocated the slot. x86-64 only (as the rest of the layout: see robust_mutex.hpp).
#pragma once

#include <cstdint>

#include "shm/slot.hpp"

namespace kvbm::detail {

using shm::SlotMeta;
using shm::SlotState;

// May alias the SlotMeta bytes it overlays (GCC/Clang attribute).
using SlotWord = std::uint64_t __attribute__((may_alias));
using SlotHash = unsigned __int128 __attribute__((may_alias));

inline std::uint64_t load_state_word(const SlotMeta& m) {
  return __atomic_load_n(reinterpret_cast<const SlotWord*>(&m), __ATOMIC_ACQUIRE);
}
inline std::uint8_t word_state(std::uint64_t w) {
  return static_cast<std::uint8_t>(w);
}
inline std::uint32_t word_generation(std::uint64_t w) {
  return static_cast<std::uint32_t>(w >> 32);
}
inline std::uint64_t word_with_state(std::uint64_t w, SlotState s) {
  return (w & ~std::uint64_t{0xFF}) | static_cast<std::uint8_t>(s);
}

/// Replaces the state word if it still equals `expected` (release: the hash written before it
/// is visible to whoever sees the new state).
inline bool cas_state_word(SlotMeta& m, std::uint64_t expected, std::uint64_t desired) {
  return __atomic_compare_exchange_n(reinterpret_cast<SlotWord*>(&m), &expected, desired, false,
                                     __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

/// Replaces (hash_hi, hash_lo) if they still equal (exp_hi, exp_lo); one lock cmpxchg16b (a full
/// barrier). Inline assembly rather than a 16-byte std::atomic: libatomic may implement those
/// with a process-local lock table, which is silently wrong across processes.
inline bool cas_hash(SlotMeta& m,
                     std::uint64_t exp_hi,
                     std::uint64_t exp_lo,
                     std::uint64_t new_hi,
                     std::uint64_t new_lo) {
  bool ok;
  __asm__ __volatile__("lock cmpxchg16b %1"
                       : "=@ccz"(ok), "+m"(*reinterpret_cast<SlotHash*>(&m.hash_hi)), "+a"(exp_hi),
                         "+d"(exp_lo)
                       : "b"(new_hi), "c"(new_lo)
                       : "memory");
  return ok;
}

/// Stores the hash as one 16-byte unit (so a racing cas_hash sees the old or the new value).
inline void store_hash(SlotMeta& m, std::uint64_t hi, std::uint64_t lo) {
  std::uint64_t cur_hi = m.hash_hi;
  std::uint64_t cur_lo = m.hash_lo;
  while (!cas_hash(m, cur_hi, cur_lo, hi, lo)) {
    cur_hi = m.hash_hi;
    cur_lo = m.hash_lo;
  }
}

}  // namespace kvbm::detail
