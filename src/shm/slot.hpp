// SPDX-License-Identifier: Apache-2.0
// SlotMeta: one per block, the single source of truth of the block's state. Every other structure
// (free list, inactive pool, hash index, state counts) is derived from the slots and rebuilt from
// them after a crash.
// Written by: BlockStore only, under the store mutex, with one exception: the owner process of a
// Mutable slot stages it without the mutex (a compare-and-swap of the hash, then of the state
// word; see BlockStore::stage_lock_free). generation is also read lock-free by WeakBlock's fast
// path, hence atomic. Read by: verify/inspect and kvbm-ctl.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shm/layout.hpp"

namespace kvbm::shm {

/// SlotMeta::backend_flags of the lineage backend: facts of a block's history that its tree
/// shape depends on, kept in the slot so a rebuild reproduces the tree.
inline constexpr std::uint8_t kLineageGhostLinked = 1;  // left the pool with children: its ghost
                                                        // stays linked to its parent
inline constexpr std::uint8_t kLineageOverflow = 2;     // kept in the overflow list

enum class SlotState : std::uint8_t {
  kReset = 0,
  kMutable = 1,
  kStaged = 2,
  kPrimary = 3,
  kDuplicate = 4,
  kInactive = 5,
};
inline constexpr std::uint32_t kSlotStateCount = 6;

/// The fields of a slot that an operation may change (everything but the derived list links),
/// as plain values: the undo image kept in the intent record.
struct SlotImage {
  std::uint8_t state;
  std::uint8_t reset_on_release;
  std::uint8_t level;          // eviction backend's per-slot field (e.g. MultiLRU level)
  std::uint8_t backend_flags;  // lineage: kLineageGhostLinked | kLineageOverflow
  std::uint32_t generation;
  std::uint64_t hash_hi;
  std::uint64_t hash_lo;
  std::uint32_t owner;        // process entry of a Mutable/Staged slot, else kNil
  std::uint32_t dup_primary;  // Duplicate: its primary's slot, else kNil
  std::uint64_t holders;      // bit p: process entry p holds ImmutableBlocks of this slot
  std::uint32_t keepalive;    // Primary: number of Duplicates pointing at it
  std::uint32_t reserved2;
  std::uint64_t tick;  // when the slot entered its free-list or inactive position (order key)
};
static_assert(sizeof(SlotImage) == 56);

// Field order: the first 8 bytes (state .. generation) form the slot's state word and the hash
// is 16-byte aligned, because the owner stages its own slot without the store mutex by
// compare-and-swapping exactly those two units (see BlockStore::stage_lock_free).
struct alignas(16) SlotMeta {
  std::uint8_t state;
  std::uint8_t reset_on_release;
  std::uint8_t level;
  std::uint8_t backend_flags;
  std::atomic<std::uint32_t> generation;  // ++ each time the slot becomes Mutable
  std::uint32_t owner;
  std::uint32_t dup_primary;
  std::uint64_t hash_hi;  // kNoHash while Mutable (set by allocation, written once by stage)
  std::uint64_t hash_lo;
  std::uint64_t holders;
  std::uint32_t keepalive;
  std::uint32_t prev;  // derived: free-list / inactive-list links
  std::uint32_t next;
  std::uint32_t reserved2;
  std::uint64_t tick;

  SlotImage image() const {
    return SlotImage{state,
                     reset_on_release,
                     level,
                     backend_flags,
                     generation.load(std::memory_order_relaxed),
                     hash_hi,
                     hash_lo,
                     owner,
                     dup_primary,
                     holders,
                     keepalive,
                     0,
                     tick};
  }
  void restore(const SlotImage& im) {
    state = im.state;
    reset_on_release = im.reset_on_release;
    level = im.level;
    backend_flags = im.backend_flags;
    generation.store(im.generation, std::memory_order_relaxed);
    hash_hi = im.hash_hi;
    hash_lo = im.hash_lo;
    owner = im.owner;
    dup_primary = im.dup_primary;
    holders = im.holders;
    keepalive = im.keepalive;
    tick = im.tick;
  }
};
static_assert(ShmRegion<SlotMeta>);
static_assert(sizeof(SlotMeta) == 64, "layout change: bump kLayoutMajor");
static_assert(offsetof(SlotMeta, generation) == 4 && offsetof(SlotMeta, hash_hi) % 16 == 0 &&
              offsetof(SlotMeta, hash_lo) == offsetof(SlotMeta, hash_hi) + 8);

/// The hash of a slot that has none yet: a Mutable slot carries it from allocation until its
/// owner stages it, so staging can claim the hash field with one compare-and-swap. Mode 3 is
/// never produced by SequenceHash::make / hash_token_blocks; stage() refuses this exact value.
inline constexpr std::uint64_t kNoHashHi = ~std::uint64_t{0};
inline constexpr std::uint64_t kNoHashLo = ~std::uint64_t{0};

}  // namespace kvbm::shm
