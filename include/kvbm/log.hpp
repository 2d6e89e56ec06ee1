// SPDX-License-Identifier: Apache-2.0
// What the library has to say: a dead process reaped, a crash recovered, a segment poisoned.
// By default warnings and errors go to stderr, one line each ("kvbm: warning: ...");
// set_log_handler routes every line (debug and info included) to the application instead, e.g.
// into its own logger.
#pragma once

#include <functional>
#include <string_view>

namespace kvbm {

enum class LogLevel { kDebug, kInfo, kWarning, kError };
std::string_view to_string(LogLevel level) noexcept;  // "debug", "info", "warning", "error"

using LogHandler = std::function<void(LogLevel, std::string_view)>;

/// Installs `handler` for every thread and every segment of this process and returns the one it
/// replaces; an empty handler restores the default (warnings and errors to stderr). The message
/// has no trailing newline and names the segment it is about.
///
/// The handler runs on the thread that noticed the event, possibly while that thread holds the
/// segment's store mutex (a recovery is reported as soon as it is done): it must return quickly
/// and must not call into kvbm. An exception it throws is swallowed.
LogHandler set_log_handler(LogHandler handler);

}  // namespace kvbm
