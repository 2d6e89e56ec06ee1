// SPDX-License-Identifier: Apache-2.0
// Error type of the kvbm library: a code, the errno that caused it (0 if none) and a message that
// names the cause. Fallible factories return Result<T>; hot-path calls that cannot return a Result
// throw SegmentError (segment poisoned, attachment reclaimed) and document it.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <tl/expected.hpp>

namespace kvbm {

enum class Errc {
  kInvalidConfig,
  kAlreadyExists,
  kNotFound,
  kLayoutMismatch,
  kProcessTableFull,
  kPermissionDenied,
  kCorrupted,
  kSystem,
  kBlocksInUse,
  /// This process's attachment was reclaimed (declared dead, e.g. it closed its liveness fd).
  kFenced,
  /// EventReader::read: the events asked for were overwritten (the ring holds fewer).
  kEventsLost,
};

/// Stable lower-case name of an error code ("invalid_config", "not_found", ...).
std::string_view errc_name(Errc code) noexcept;

struct Error {
  Errc code;
  int sys_errno = 0;
  std::string message;
};

template <class T, class E = Error>
using Result = tl::expected<T, E>;

/// Thrown by calls that have no Result to carry an error: the segment was poisoned by a failed
/// recovery, or this process's attachment was reclaimed by another process (fenced).
class SegmentError : public std::runtime_error {
 public:
  explicit SegmentError(Error error);
  const Error& error() const noexcept { return error_; }

 private:
  Error error_;
};

/// Thrown by an operation that met a broken structure in the segment (an index out of range, a
/// cycle, a damaged lock): nothing was trusted past the damage. The segment is marked poisoned,
/// and every later operation on it throws SegmentCorrupted too, until `kvbm-ctl repair` fixes it.
/// Its error() code is Errc::kCorrupted.
class SegmentCorrupted : public SegmentError {
 public:
  explicit SegmentCorrupted(Error error) : SegmentError(std::move(error)) {}
};

}  // namespace kvbm

template <>
struct fmt::formatter<kvbm::Error> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const kvbm::Error& e, Ctx& ctx) const {
    std::string text = fmt::format("{}: {}", kvbm::errc_name(e.code), e.message);
    return fmt::formatter<std::string_view>::format(text, ctx);
  }
};
