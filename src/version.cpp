// SPDX-License-Identifier: Apache-2.0
#include "kvbm/version.hpp"

namespace kvbm {

std::string_view version() noexcept {
  // Compiled into the library: the version the library was built as, whatever headers the
  // caller was compiled with.
  return KVBM_VERSION_STRING;
}

}  // namespace kvbm
