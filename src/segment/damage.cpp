// SPDX-License-Identifier: Apache-2.0
#include "segment/damage.hpp"

#include <fmt/format.h>

namespace kvbm::detail {

namespace {
thread_local std::string t_damage;
}  // namespace

const std::string& damage_seen() noexcept {
  return t_damage;
}

void clear_damage() noexcept {
  t_damage.clear();
}

void note_damage(const char* what, std::uint64_t value, std::uint64_t limit) noexcept {
  if (!t_damage.empty()) {
    return;
  }
  try {
    t_damage = fmt::format("{} is {} (limit {})", what, value, limit);
  } catch (...) {
    t_damage = "damaged structure";  // formatting failed (out of memory): still recorded
  }
}

}  // namespace kvbm::detail
