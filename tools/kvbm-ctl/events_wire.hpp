// SPDX-License-Identifier: Apache-2.0
// The wire form of kvbm-ctl events (DESIGN.md section 10), as vLLM's ZmqEventPublisher sends
// it: a batch is msgpack [ts float64, [events...], dp_rank], each event BlockStored,
// BlockRemoved or AllBlocksCleared in the map (tagged, `type` first) or array encoding.
// Block hashes are the low 64-bit lineage fragments of kvbm's SequenceHash (current_fragment);
// a BlockStored's parent is the first block's parent_fragment, nil at position 0.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbm/events.hpp"

namespace kvbm::ctl {

struct WireEvent {
  enum class Type { kStored, kRemoved, kCleared };
  Type type = Type::kCleared;
  std::vector<std::uint64_t> hashes;
  std::optional<std::uint64_t> parent;   // kStored only
  std::vector<std::uint32_t> token_ids;  // kStored only: every block's ids in order
  std::uint32_t block_size = 0;
  // kStored only: the position and fragment of the last block, to extend the run with its child.
  std::uint32_t last_position = 0;
};

enum class Encoding { kMap, kArray };

struct WireOptions {
  Encoding encoding = Encoding::kMap;
  std::string medium = "CPU";
  std::int64_t dp_rank = 0;
};

/// Appends a Stored block: extends the last event when it is a BlockStored of the same chain
/// ending at this block's parent, else starts a new BlockStored.
void append_stored(std::vector<WireEvent>& out,
                   const SequenceHash& hash,
                   std::uint32_t block_size,
                   const std::vector<std::uint32_t>& token_ids);
/// Appends a Removed block: extends the last event when it is a BlockRemoved.
void append_removed(std::vector<WireEvent>& out, const SequenceHash& hash);
void append_cleared(std::vector<WireEvent>& out);

/// The msgpack payload of one batch (the third frame).
std::string encode_batch(const std::vector<WireEvent>& events, double ts, const WireOptions& o);
/// One event in the map encoding as JSON (`type` first), for --json.
nlohmann::ordered_json event_json(const WireEvent& e, const WireOptions& o);

}  // namespace kvbm::ctl
