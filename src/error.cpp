// SPDX-License-Identifier: Apache-2.0
#include "kvbm/error.hpp"

namespace kvbm {

std::string_view errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::kInvalidConfig:
      return "invalid_config";
    case Errc::kAlreadyExists:
      return "already_exists";
    case Errc::kNotFound:
      return "not_found";
    case Errc::kLayoutMismatch:
      return "layout_mismatch";
    case Errc::kProcessTableFull:
      return "process_table_full";
    case Errc::kPermissionDenied:
      return "permission_denied";
    case Errc::kCorrupted:
      return "corrupted";
    case Errc::kSystem:
      return "system";
    case Errc::kBlocksInUse:
      return "blocks_in_use";
    case Errc::kFenced:
      return "fenced";
    case Errc::kEventsLost:
      return "events_lost";
  }
  return "unknown";
}

SegmentError::SegmentError(Error error)
    : std::runtime_error(fmt::format("{}", error)), error_(std::move(error)) {}

}  // namespace kvbm
