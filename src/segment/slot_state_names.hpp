// SPDX-License-Identifier: Apache-2.0
// The one table of slot-state names, indexed by shm::SlotState: lower case for the API
// (kvbm::to_string(SlotState)), kvbm-ctl's dump, info and JSON keys; capitalised for the
// sentences verify() writes ("slot 3: Staged with holder bits").
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "shm/slot.hpp"

namespace kvbm::detail {

struct SlotStateName {
  std::string_view lower;
  std::string_view title;
};

inline constexpr std::array<SlotStateName, shm::kSlotStateCount> kSlotStateNames{{
    {"reset", "Reset"},
    {"mutable", "Mutable"},
    {"staged", "Staged"},
    {"primary", "Primary"},
    {"duplicate", "Duplicate"},
    {"inactive", "Inactive"},
}};
static_assert(static_cast<int>(shm::SlotState::kInactive) == 5 && shm::kSlotStateCount == 6,
              "kSlotStateNames follows shm::SlotState");

/// "reset", ..., "inactive"; "invalid" for a value that is no state (a damaged slot).
inline constexpr std::string_view slot_state_name(std::uint8_t state) {
  return state < kSlotStateNames.size() ? kSlotStateNames[state].lower : "invalid";
}
/// "Reset", ..., "Inactive"; "invalid" for a value that is no state.
inline constexpr std::string_view slot_state_title(std::uint8_t state) {
  return state < kSlotStateNames.size() ? kSlotStateNames[state].title : "invalid";
}

}  // namespace kvbm::detail
