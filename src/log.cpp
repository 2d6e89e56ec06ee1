// SPDX-License-Identifier: Apache-2.0
#include "log.hpp"

#include <cstdio>
#include <memory>
#include <mutex>

namespace kvbm {
namespace {

// The handler is replaced rarely and read only when there is something to say: a mutex around a
// shared_ptr is enough, and a line being delivered keeps its handler alive while another thread
// replaces it. g_custom lets log_enabled() decide without the mutex.
std::mutex g_mutex;
std::shared_ptr<const LogHandler> g_handler;
std::atomic<bool> g_custom{false};

void default_handler(LogLevel level, std::string_view message) {
  // One fprintf per line, so lines of concurrent threads and processes do not interleave.
  std::fprintf(stderr, "kvbm: %s: %.*s\n", to_string(level).data(),
               static_cast<int>(message.size()), message.data());
}

}  // namespace

std::string_view to_string(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "unknown";
}

LogHandler set_log_handler(LogHandler handler) {
  auto next = handler ? std::make_shared<const LogHandler>(std::move(handler)) : nullptr;
  std::shared_ptr<const LogHandler> previous;
  {
    std::lock_guard lock(g_mutex);
    previous = std::exchange(g_handler, std::move(next));
    g_custom.store(g_handler != nullptr, std::memory_order_release);
  }
  return previous ? *previous : LogHandler{};
}

namespace detail {

bool log_enabled(LogLevel level) noexcept {
  return level >= LogLevel::kWarning || g_custom.load(std::memory_order_acquire);
}

void log_line(LogLevel level, std::string_view message) noexcept {
  std::shared_ptr<const LogHandler> handler;
  {
    std::lock_guard lock(g_mutex);
    handler = g_handler;
  }
  try {
    if (handler) {
      (*handler)(level, message);
    } else if (level >= LogLevel::kWarning) {
      default_handler(level, message);
    }
  } catch (...) {
    // A throwing handler must not unwind through the library's noexcept paths.
  }
}

}  // namespace detail
}  // namespace kvbm
