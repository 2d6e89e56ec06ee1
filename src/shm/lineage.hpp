// SPDX-License-Identifier: Apache-2.0
// The lineage backend's region (spec 7.5): a LineageHeader, then `capacity` LineageNodes (a
// prefix tree of Inactive blocks keyed by (position, current fragment), with ghost placeholders
// for parents not in the pool), then `key_capacity` u32 buckets of the key index (node index and
// probe distance), then `heap_capacity` LineageHeapEntries (the Tick leaf order).
// place_lineage_region() places them; the segment layout and the backend both use it.
//
// Besides this region the backend uses the derived list links of its Inactive slots
// (SlotMeta::prev/next, which no other list uses while a slot is Inactive in a lineage segment):
//  - overflow slots: the overflow list (prev/next);
//  - Tick order: next = the slot's node, prev = its heap index while it is a leaf, else kNil;
//  - FIFO order: the leaf list (prev/next) while it is a leaf, else kNil.
// Everything here and there is derived: rebuild() recreates it from the Inactive slots (tick,
// hash, backend_flags) and the held slots' backend_flags.
// Written by: the store-mutex holder only (the lineage backend), and by the creator before the
// segment is published (init_lineage_region).
#pragma once

#include <cstdint>

#include "shm/control.hpp"
#include "shm/layout.hpp"

namespace kvbm::shm {

/// The layout of this region as a whole (field meanings, placement rules, heap arity): part of
/// the ABI fingerprint, so a build that reads the region differently refuses the segment.
inline constexpr std::uint32_t kLineageRegionVersion = 2;

enum class NodeKind : std::uint8_t { kFree = 0, kReal = 1, kGhost = 2 };

/// A node of the prefix tree: Real (an Inactive block), Ghost (a parent placeholder, or a block
/// that left the pool with children) or Free. 32 bytes, two to a cache line: a node holds only
/// its key and its tree links; a leaf's place in the leaf order lives in its slot.
struct LineageNode {
  static constexpr std::uint32_t kPositionMask = 0x00FFFFFF;  // positions are < 2^24
  static constexpr std::uint32_t kKindShift = 24;
  static constexpr std::uint32_t kKindMask = 0x3u << kKindShift;
  static constexpr std::uint32_t kLeafBit = 1u << 26;

  std::uint64_t fragment;  // key: current fragment of the block's hash
  std::uint32_t bits;      // key: position (bits 0-23); NodeKind (24-25); is a leaf (26)
  std::uint32_t slot;      // Real: its slot; otherwise kNil
  std::uint32_t parent;
  std::uint32_t first_child;
  std::uint32_t next_sibling;  // also the free-node list link
  std::uint32_t prev_sibling;

  std::uint32_t position() const { return bits & kPositionMask; }
  NodeKind kind() const { return static_cast<NodeKind>((bits & kKindMask) >> kKindShift); }
  bool is_leaf() const { return (bits & kLeafBit) != 0; }
  void set_kind(NodeKind k) {
    bits = (bits & ~kKindMask) | (static_cast<std::uint32_t>(k) << kKindShift);
  }
  void set_leaf(bool leaf) { bits = leaf ? bits | kLeafBit : bits & ~kLeafBit; }
};
static_assert(ShmRegion<LineageNode>);
static_assert(sizeof(LineageNode) == 32);

/// A key-index bucket: kNil (empty), or a node index (low kLineageKeyNodeBits bits) and the
/// entry's distance from its home bucket (the high bits; their maximum means "that or more").
inline constexpr std::uint32_t kLineageKeyNodeBits = 27;
/// Node indices must fit a bucket below the all-ones empty marker.
inline constexpr std::uint32_t kLineageMaxNodes = (1u << kLineageKeyNodeBits) - 16;

/// An entry of the Tick leaf heap (4-ary, smallest (tick, slot) at index 0). The order key is
/// kept in the entry so that sifting reads only the heap array, never a node or a slot. Equal to
/// the slot's tick while the slot is a leaf: a slot's tick does not change while it is Inactive
/// in Tick order. 12 bytes (the tick as two words, so the array packs without padding).
struct LineageHeapEntry {
  std::uint32_t tick_lo;
  std::uint32_t tick_hi;
  std::uint32_t slot;

  std::uint64_t tick() const { return std::uint64_t{tick_hi} << 32 | tick_lo; }
};
static_assert(ShmRegion<LineageHeapEntry>);
static_assert(sizeof(LineageHeapEntry) == 12);
inline constexpr std::uint64_t kLineageHeapArity = 4;

struct alignas(kCacheLine) LineageHeader {
  std::uint32_t capacity;       // nodes
  std::uint32_t key_capacity;   // key-index buckets
  std::uint32_t heap_capacity;  // Tick heap entries (one per block: leaves are Real nodes)
  std::uint32_t free_head;      // free nodes, linked through next_sibling
  std::uint64_t real_count;     // Real nodes
  std::uint64_t leaf_count;
  std::uint64_t heap_len;  // Tick leaf heap
  SlotList leaves;         // FIFO leaf order: slots, through SlotMeta::prev/next
  // Inactive blocks outside the tree (a key collision with a different hash, or no free node):
  // still cached and evictable (first), linked through SlotMeta::prev/next, by tick.
  SlotList overflow;
};
static_assert(ShmRegion<LineageHeader>);

/// The capacities of a lineage region and where its arrays sit (byte offsets from the header).
/// The capacities follow from block_count (segment.cpp: lineage_geometry); the placement is
/// computed here, once, for the segment layout and for the backend.
struct LineageGeometry {
  std::uint32_t capacity;       // nodes
  std::uint32_t key_capacity;   // key-index buckets
  std::uint32_t heap_capacity;  // Tick heap entries
  std::uint64_t nodes;          // offsets
  std::uint64_t keys;
  std::uint64_t heap;
  std::uint64_t bytes;  // the whole region
};

constexpr LineageGeometry place_lineage_region(std::uint32_t capacity,
                                               std::uint32_t key_capacity,
                                               std::uint32_t heap_capacity) {
  LineageGeometry g{capacity, key_capacity, heap_capacity, 0, 0, 0, 0};
  g.nodes = align_up(sizeof(LineageHeader), kCacheLine);
  g.keys = g.nodes + std::uint64_t{capacity} * sizeof(LineageNode);
  g.heap = align_up(g.keys + std::uint64_t{key_capacity} * sizeof(std::uint32_t), kCacheLine);
  g.bytes = g.heap + std::uint64_t{heap_capacity} * sizeof(LineageHeapEntry);
  return g;
}

}  // namespace kvbm::shm
