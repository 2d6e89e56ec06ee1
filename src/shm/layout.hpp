// SPDX-License-Identifier: Apache-2.0
// Constants and compile-time rules shared by every segment-resident type.
// Rules (see docs/architecture.md): standard layout, trivially destructible, no pointers (32-bit
// indices with kNil, 64-bit offsets from the segment base), only always-lock-free atomics, cache
// line hard-coded to 64 bytes (the layout must not depend on compiler tuning flags).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace kvbm::shm {

inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::uint32_t kNil = 0xFFFFFFFFu;
inline constexpr std::uint64_t kMagic = 0x314745534D42564Bull;  // "KVBMSEG1" little-endian
inline constexpr std::uint16_t kLayoutMajor = 5;
inline constexpr std::uint16_t kLayoutMinor = 0;
inline constexpr std::uint32_t kMaxProcesses = 64;  // one 64-bit holder word per slot

/// A type placed in the segment: placed once by the creator, never copied, no pointers.
template <class T>
concept ShmRegion = std::is_standard_layout_v<T> && std::is_trivially_destructible_v<T> &&
    !std::is_polymorphic_v<T>;

static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::int32_t>::is_always_lock_free);

constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) {
  return (v + a - 1) / a * a;
}

}  // namespace kvbm::shm
