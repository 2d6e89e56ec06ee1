// SPDX-License-Identifier: Apache-2.0
// The library's side of kvbm/log.hpp: log(level, fmt, args...) formats only when the line will
// be seen (a handler is installed, or the level reaches the default handler's threshold), and
// never throws.
#pragma once

#include <atomic>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "kvbm/log.hpp"

namespace kvbm::detail {

/// Whether a line of `level` goes anywhere (lock-free; the default handler drops debug/info).
bool log_enabled(LogLevel level) noexcept;
/// Passes one formatted line to the handler. Never throws.
void log_line(LogLevel level, std::string_view message) noexcept;

template <class... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) noexcept {
  if (!log_enabled(level)) {
    return;
  }
  try {
    log_line(level, fmt::format(format, std::forward<Args>(args)...));
  } catch (...) {
    // Out of memory formatting a log line: the line is lost, the operation goes on.
  }
}

}  // namespace kvbm::detail
