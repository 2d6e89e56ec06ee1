// SPDX-License-Identifier: Apache-2.0
// kvbm::version() is the linked library's version; the macros are the headers'. Built together
// they agree, and the string is MAJOR.MINOR.PATCH of the macros.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "kvbm/kvbm.hpp"

TEST_CASE("version(): the library's version equals the headers' macros", "[version]") {
  const std::string expected =
      fmt::format("{}.{}.{}", KVBM_VERSION_MAJOR, KVBM_VERSION_MINOR, KVBM_VERSION_PATCH);
  CHECK(kvbm::version() == expected);
  CHECK(std::string_view(KVBM_VERSION_STRING) == expected);
}
