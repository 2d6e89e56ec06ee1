// SPDX-License-Identifier: Apache-2.0
// SegmentHeader: at offset 0. Identifies the layout (magic, version, ABI fingerprint), records the
// full config and where every region lives, and publishes init_state = kReady last, so an opener
// never sees a half-built segment.
// Written by: the creator (everything once, before kReady), recovery/repair (epoch, kPoisoned).
#pragma once

#include <atomic>
#include <cstdint>

#include "shm/layout.hpp"

namespace kvbm::shm {

enum class InitState : std::uint32_t { kNone = 0, kInitializing = 1, kReady = 2, kPoisoned = 3 };

enum Region : std::uint32_t {
  kRegionControl = 0,
  kRegionProcesses,
  kRegionSlots,
  kRegionIndex,
  kRegionSketch,   // TinyLFU (MultiLRU only)
  kRegionLineage,  // lineage arena (Lineage only)
  kRegionKeys,     // block keys (key_bytes > 0 only)
  kRegionEvents,   // event ring (event_capacity > 0 only)
  kRegionTokens,   // token records (store_token_ids only)
  kRegionCount = 10,
};

struct ConfigRecord {
  std::uint32_t block_count;
  std::uint32_t block_size;
  std::uint32_t max_processes;
  std::uint32_t eviction;       // kvbm::EvictionPolicy
  std::uint32_t lineage_order;  // kvbm::LineageOrder
  std::uint32_t duplication;    // kvbm::DuplicationPolicy
  std::uint32_t default_reset_on_release;
  std::uint32_t frequency_capacity;
  std::uint8_t multi_lru_thresholds[4];
  std::uint32_t permissions;
  std::uint64_t bytes_per_block;
  std::uint32_t key_bytes;
  std::uint32_t event_capacity;
  std::uint32_t store_token_ids;
  std::uint32_t reserved;
  std::uint64_t layout_tag;
};

struct RegionEntry {
  std::uint64_t offset;
  std::uint64_t bytes;
};

struct alignas(kCacheLine) SegmentHeader {
  std::uint64_t magic;
  std::uint16_t layout_major;
  std::uint16_t layout_minor;
  std::uint32_t header_bytes;
  std::uint64_t abi_fingerprint;
  std::uint64_t segment_bytes;
  std::uint64_t nonce;
  std::uint64_t created_ns;
  std::int32_t creator_pid;
  std::uint32_t index_capacity;
  char name[208];
  ConfigRecord config;
  RegionEntry regions[kRegionCount];
  std::atomic<std::uint32_t> init_state;  // InitState; kReady written last by the creator
  std::atomic<std::uint64_t> epoch;       // ++ by every recovery and repair
};
static_assert(ShmRegion<SegmentHeader>);

}  // namespace kvbm::shm
