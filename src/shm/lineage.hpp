// SPDX-License-Identifier: Apache-2.0
// The lineage backend's region (spec 7.5): a header, then `capacity` LineageNodes (a prefix tree
// of Inactive blocks keyed by (position, current fragment), with ghost placeholders for parents
// not in the pool), then `key_capacity` u32 buckets of the key index, then `capacity` u32 heap
// entries (Tick leaf order). Everything here is derived: rebuild() recreates it from the Inactive
// slots and their ticks.
// Written by: the store-mutex holder only.
#pragma once

#include <cstdint>

#include "shm/layout.hpp"

namespace kvbm::shm {

enum class NodeKind : std::uint8_t { kFree = 0, kReal = 1, kGhost = 2 };

struct LineageNode {
  std::uint64_t fragment;  // current fragment of the block's hash
  std::uint32_t position;
  std::uint32_t slot;  // Real: its slot; otherwise kNil
  std::uint32_t parent;
  std::uint32_t first_child;
  std::uint32_t next_sibling;  // also the free-node list link
  std::uint32_t prev_sibling;
  std::uint32_t leaf_a;  // Tick: index in the heap; FIFO: previous leaf
  std::uint32_t leaf_b;  // FIFO: next leaf
  std::uint8_t kind;     // NodeKind
  std::uint8_t is_leaf;
  std::uint16_t reserved;
  std::uint32_t reserved2;
};
static_assert(ShmRegion<LineageNode>);
static_assert(sizeof(LineageNode) == 48);

struct alignas(kCacheLine) LineageHeader {
  std::uint32_t capacity;      // nodes
  std::uint32_t key_capacity;  // key-index buckets
  std::uint32_t free_head;     // free nodes, linked through next_sibling
  std::uint32_t leaf_head;     // FIFO leaf order
  std::uint32_t leaf_tail;
  std::uint32_t reserved;
  std::uint64_t real_count;  // Real nodes
  std::uint64_t heap_len;    // Tick leaf heap
  std::uint64_t leaf_count;
  // Inactive blocks outside the tree (a key collision with a different hash, or no free node):
  // still cached and evictable (first), linked through SlotMeta::prev/next, by tick.
  std::uint32_t overflow_head;
  std::uint32_t overflow_tail;
  std::uint64_t overflow_len;
};
static_assert(ShmRegion<LineageHeader>);

}  // namespace kvbm::shm
