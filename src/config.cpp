// SPDX-License-Identifier: Apache-2.0
#include "kvbm/config.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "kvbm/block_manager.hpp"

#include "segment/slot_state_names.hpp"
#include "shm/block_key.hpp"
#include "shm/event_ring.hpp"
#include "shm/layout.hpp"

namespace kvbm {

namespace {

Error config_error(Errc code, std::string message) {
  return Error{code, 0, std::move(message)};
}

bool is_power_of_two(std::uint64_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}

}  // namespace

// The one place a SegmentConfig is checked: BlockManager::create / open_or_create, kvbm-ctl
// create, and Segment::open on the config recorded in a header (DESIGN.md section 8).
Result<void> validate_segment_name(std::string_view name) {
  auto alnum = [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
  };
  if (name.empty()) {
    return tl::unexpected(config_error(Errc::kInvalidConfig, "segment name is empty"));
  }
  if (name.size() > 200) {
    return tl::unexpected(config_error(
        Errc::kInvalidConfig, fmt::format("segment name is {} characters long; at most 200 are "
                                          "allowed",
                                          name.size())));
  }
  // [A-Za-z0-9][A-Za-z0-9._-]{0,199}
  const bool valid = alnum(name.front()) && std::all_of(name.begin() + 1, name.end(), [&](char c) {
                       return alnum(c) || c == '.' || c == '_' || c == '-';
                     });
  if (!valid) {
    return tl::unexpected(config_error(
        Errc::kInvalidConfig,
        fmt::format("invalid segment name '{}': use letters, digits, '.', '_' and '-', starting "
                    "with a letter or digit (no '/')",
                    name)));
  }
  // "<name>.payload" is the payload object of segment <name>: a segment of that name would be
  // hidden by `kvbm-ctl list` and its payload could be taken for it (DESIGN.md section 12).
  if (name.ends_with(".payload")) {
    return tl::unexpected(config_error(
        Errc::kInvalidConfig,
        fmt::format("'{}' names the payload object of segment '{}', not a segment: a segment "
                    "name may not end in \".payload\"",
                    name, name.substr(0, name.size() - 8))));
  }
  return {};
}

Result<void> validate_config(const SegmentConfig& c) {
  if (auto ok = validate_segment_name(c.name); !ok) {
    return ok;
  }
  auto bad = [](std::string msg) {
    return tl::unexpected(config_error(Errc::kInvalidConfig, msg));
  };
  if (c.block_count == 0) {
    return bad("block_count must be greater than 0");
  }
  if (c.block_count >= shm::kNil / 2) {
    return bad(
        fmt::format("block_count {} is too large (at most {})", c.block_count, shm::kNil / 2 - 1));
  }
  if (!is_power_of_two(c.block_size) || c.block_size > 1024) {
    return bad(
        fmt::format("block_size {} must be a power of two between 1 and 1024", c.block_size));
  }
  if (c.max_processes < 1 || c.max_processes > shm::kMaxProcesses) {
    return bad(fmt::format("max_processes {} must be between 1 and {}", c.max_processes,
                           shm::kMaxProcesses));
  }
  auto [a, b, t3] = c.multi_lru_thresholds;
  if (!(a >= 1 && a < b && b < t3 && t3 <= 15)) {
    return bad(fmt::format("multi_lru_thresholds {{{}, {}, {}}} must satisfy 1 <= a < b < c <= 15",
                           a, b, t3));
  }
  if (!is_power_of_two(c.frequency_capacity) || c.frequency_capacity < (1u << 10) ||
      c.frequency_capacity > (1u << 26)) {
    return bad(fmt::format("frequency_capacity {} must be a power of two in [2^10, 2^26]",
                           c.frequency_capacity));
  }
  if (static_cast<unsigned>(c.eviction) > 3 || static_cast<unsigned>(c.duplication) > 1 ||
      static_cast<unsigned>(c.lineage_order) > 1) {
    return bad("unknown eviction, duplication or lineage order value");
  }
  // Read and write go together per class: a class that may only read could still take OFD
  // read locks on the liveness bytes, which blocks every later attach and makes dead workers
  // look alive (DESIGN.md section 12).
  if (c.permissions != 0600 && c.permissions != 0660 && c.permissions != 0666) {
    return bad(
        fmt::format("permissions {:04o} must be 0600 (owner only), 0660 (owner and group) or 0666 "
                    "(everyone): each class that may attach needs both read and write",
                    c.permissions));
  }
  if (c.bytes_per_block > 0 &&
      c.bytes_per_block > (std::uint64_t{1} << 40) / std::max<std::uint64_t>(1, c.block_count)) {
    return bad("payload region would exceed 1 TiB (bytes_per_block x block_count)");
  }
  if (c.key_bytes > shm::kMaxKeyBytes) {
    return bad(fmt::format("key_bytes {} must be at most {}", c.key_bytes, shm::kMaxKeyBytes));
  }
  if (c.event_capacity != 0 &&
      (!is_power_of_two(c.event_capacity) || c.event_capacity < shm::kMinEventCapacity ||
       c.event_capacity > shm::kMaxEventCapacity)) {
    return bad(fmt::format("event_capacity {} must be 0 or a power of two in [2^8, 2^24]",
                           c.event_capacity));
  }
  if (c.store_token_ids && c.block_count > (std::uint64_t{1} << 36) / (4ull * c.block_size + 8)) {
    return bad("token id region would exceed 64 GiB (block_count x block_size x 4)");
  }
  return {};
}

std::string_view to_string(EvictionPolicy p) noexcept {
  switch (p) {
    case EvictionPolicy::kLineage:
      return "lineage";
    case EvictionPolicy::kLru:
      return "lru";
    case EvictionPolicy::kMultiLru:
      return "multi-lru";
    case EvictionPolicy::kFifo:
      return "fifo";
  }
  return "unknown";
}

std::string_view to_string(DuplicationPolicy p) noexcept {
  return p == DuplicationPolicy::kAllow ? "allow" : "reject";
}

std::string_view to_string(LineageOrder o) noexcept {
  return o == LineageOrder::kTick ? "tick" : "fifo";
}

std::string_view to_string(SlotState s) noexcept {
  return detail::slot_state_name(static_cast<std::uint8_t>(s));
}

}  // namespace kvbm
