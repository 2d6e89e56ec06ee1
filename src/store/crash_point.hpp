// SPDX-License-Identifier: Apache-2.0
// Named crash points for crash-consistency tests. In builds with KVBM_FAULT_INJECTION (the
// kvbm_fault library the tests link), KVBM_CRASH_POINT counts every point passed and SIGKILLs the
// process at the N-th one when KVBM_CRASH_AT=N is set (KVBM_CRASH_FILTER=substring restricts the
// count to points whose name contains it). Elsewhere it compiles to nothing.
#pragma once

#include <cstdint>

namespace kvbm::detail {
#ifdef KVBM_FAULT_INJECTION
void crash_point(const char* name) noexcept;
/// Points passed so far by this process (for enumerating them).
std::uint64_t crash_points_passed() noexcept;
/// Tests: from now on, SIGKILL at the `at`-th point (0 = never) whose name contains `filter`
/// (nullptr = any); restarts the count. Use in a fork child before it does anything.
void set_crash_point_for_test(std::uint64_t at, const char* filter) noexcept;
#define KVBM_CRASH_POINT(name) ::kvbm::detail::crash_point(name)
#else
#define KVBM_CRASH_POINT(name) \
  do {                         \
  } while (false)
#endif
/// Tests (negative control): when false, recovery skips rolling back the intent record.
extern bool g_rollback_enabled;
}  // namespace kvbm::detail
