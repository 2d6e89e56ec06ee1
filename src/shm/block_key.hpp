// SPDX-License-Identifier: Apache-2.0
// Block keys: an optional region (SegmentConfig::key_bytes > 0) of one fixed-size record per
// slot holding an application key next to the block's sequence hash, e.g. the inference
// engine's own block hash, which is wider than 128 bits and must come back whole when the block
// is evicted. A record is [length:1][bytes:key_bytes], padded to a multiple of 8 bytes.
// Written by: the owner of the slot while it is Mutable (MutableBlock::set_key), without the
// store mutex, like the payload. Read by: holders of the block (its key cannot change while the
// slot is Staged, Primary, Duplicate or Inactive) and by the process an allocation hands the slot
// to: the store never writes the region, so a slot taken by eviction still carries the evicted
// block's key until its new owner sets another.
// Not journaled: no derived structure depends on a key, and a key changes only while its slot is
// owned by one process.
#pragma once

#include <cstdint>

#include "shm/layout.hpp"

namespace kvbm::shm {

inline constexpr std::uint32_t kMaxKeyBytes = 64;
inline constexpr std::uint32_t kKeyLengthBytes = 1;  // the record's length prefix
static_assert(kMaxKeyBytes < 256, "the length prefix is one byte");

/// Bytes of one slot's key record (0 when keys are off).
constexpr std::uint64_t key_record_bytes(std::uint32_t key_bytes) {
  return key_bytes == 0 ? 0 : align_up(kKeyLengthBytes + key_bytes, 8);
}

}  // namespace kvbm::shm
