// SPDX-License-Identifier: Apache-2.0
#include "kvbm/config.hpp"

#include "kvbm/block_manager.hpp"

namespace kvbm {

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
  switch (s) {
    case SlotState::kReset:
      return "reset";
    case SlotState::kMutable:
      return "mutable";
    case SlotState::kStaged:
      return "staged";
    case SlotState::kPrimary:
      return "primary";
    case SlotState::kDuplicate:
      return "duplicate";
    case SlotState::kInactive:
      return "inactive";
  }
  return "invalid";
}

}  // namespace kvbm
