// SPDX-License-Identifier: Apache-2.0
// SegmentConfig: everything fixed when a segment is created. Recorded in the segment header;
// open_or_create compares it field by field.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "kvbm/error.hpp"

namespace kvbm {

enum class EvictionPolicy { kLineage, kLru, kMultiLru, kFifo };
enum class DuplicationPolicy { kAllow, kReject };
enum class LineageOrder { kTick, kFifo };

std::string_view to_string(EvictionPolicy p) noexcept;     // "lineage", "lru", "multi-lru", "fifo"
std::string_view to_string(DuplicationPolicy p) noexcept;  // "allow", "reject"
std::string_view to_string(LineageOrder o) noexcept;       // "tick", "fifo"

struct SegmentConfig {
  /// Segment object name without leading '/': [A-Za-z0-9][A-Za-z0-9._-]{0,199}. Required.
  std::string name;
  /// Number of blocks. Required, > 0.
  std::uint32_t block_count = 0;
  /// Tokens per block. Power of two in [1, 1024]. Default: 16.
  std::uint32_t block_size = 16;
  /// Process-table entries (processes attached at once). 1..64. Default: 64.
  std::uint32_t max_processes = 64;
  /// Inactive-pool eviction order. Default: lineage.
  EvictionPolicy eviction = EvictionPolicy::kLineage;
  /// Leaf order of the lineage backend. Default: tick.
  LineageOrder lineage_order = LineageOrder::kTick;
  /// What registering an already-present hash does. Default: allow (a duplicate block).
  DuplicationPolicy duplication = DuplicationPolicy::kAllow;
  /// Value a block's reset-on-release flag takes whenever it becomes Mutable. Default: false.
  bool default_reset_on_release = false;
  /// MultiLRU level thresholds: 1 <= a < b < c <= 15. Default: {3, 8, 15}.
  std::array<std::uint8_t, 3> multi_lru_thresholds{3, 8, 15};
  /// TinyLFU counters (MultiLRU only): power of two in [2^10, 2^26]. Default: 2^21.
  std::uint32_t frequency_capacity = 1u << 21;
  /// Bytes of payload per block in "<name>.payload"; 0 = no payload region. Default: 0.
  std::uint64_t bytes_per_block = 0;
  /// Mode of the shm object(s). Default: 0600 (owner only); 0660 shares with the group.
  std::uint32_t permissions = 0600;
  /// Capacity of each block's application key (MutableBlock::set_key), kept in the segment next
  /// to the block's sequence hash: e.g. the inference engine's own block hash, so that evicted
  /// blocks can be reported under it. 0..64; 0 = no keys. Default: 0.
  std::uint32_t key_bytes = 0;
  /// What the payload holds, as the application identifies it (e.g. a hash of the model and its
  /// KV layout). kvbm only records it: open_or_create refuses a segment with another value, so
  /// processes that would read each other's bytes differently never share a segment.
  /// Default: 0.
  std::uint64_t layout_tag = 0;
  /// Records in the segment's KV event ring (DESIGN.md section 10): 0 = no events, else a power
  /// of two in [256, 2^24]. 48 bytes per record. Default: 65536.
  std::uint32_t event_capacity = 65536;
  /// Keep each block's token ids in the segment (block_size x 4 bytes per block), recorded by
  /// MutableBlock::stage(hash, block_size, token_ids), so that Stored events carry them.
  /// Default: false.
  bool store_token_ids = false;
};

/// kInvalidConfig unless `name` matches [A-Za-z0-9][A-Za-z0-9._-]{0,199}.
[[nodiscard]] Result<void> validate_segment_name(std::string_view name);
/// kInvalidConfig naming the first field out of its range (DESIGN.md section 8); every field is
/// checked whatever the eviction policy.
[[nodiscard]] Result<void> validate_config(const SegmentConfig& config);

}  // namespace kvbm
