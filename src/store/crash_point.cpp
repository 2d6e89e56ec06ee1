// SPDX-License-Identifier: Apache-2.0
// Crash-point counter of the fault-injection build (see crash_point.hpp).
#include "store/crash_point.hpp"

namespace kvbm::detail {
bool g_rollback_enabled = true;
}

#ifdef KVBM_FAULT_INJECTION
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace kvbm::detail {
namespace {
std::atomic<std::uint64_t> g_passed{0};
std::uint64_t g_at = [] {
  const char* v = std::getenv("KVBM_CRASH_AT");
  return v == nullptr ? 0 : std::strtoull(v, nullptr, 10);
}();
const char* g_filter = std::getenv("KVBM_CRASH_FILTER");
std::uint64_t crash_at() {
  return g_at;
}
const char* crash_filter() {
  return g_filter;
}
}  // namespace

void set_crash_point_for_test(std::uint64_t at, const char* filter) noexcept {
  g_at = at;
  g_filter = filter;
  g_passed.store(0, std::memory_order_relaxed);
}

void crash_point(const char* name) noexcept {
  if (crash_filter() != nullptr && std::strstr(name, crash_filter()) == nullptr) {
    return;
  }
  const std::uint64_t n = g_passed.fetch_add(1, std::memory_order_relaxed) + 1;
  if (crash_at() != 0 && n == crash_at()) {
    ::raise(SIGKILL);
  }
}

std::uint64_t crash_points_passed() noexcept {
  return g_passed.load(std::memory_order_relaxed);
}

}  // namespace kvbm::detail
#endif
