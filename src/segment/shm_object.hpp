// SPDX-License-Identifier: Apache-2.0
// Opening a name in /dev/shm that anyone on the host may have created. A FIFO opened for
// blocking I/O hangs the opener forever, a symlink may point anywhere, a directory or socket is
// no segment at all: every shm object kvbm opens goes through ShmObject::open, which opens
// without following symlinks and without blocking (O_NOFOLLOW | O_NONBLOCK), then fstat()s the
// descriptor and refuses anything but a regular file with kLayoutMismatch. The owner and mode
// seen by that fstat decide who may attach (DESIGN.md section 12).
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "kvbm/error.hpp"

namespace kvbm::detail {

class ShmObject {
 public:
  enum class Mode { kReadOnly, kReadWrite };

  /// Opens the existing shm object `name` (no leading '/'). Errors: kNotFound; kLayoutMismatch
  /// for anything that is not a regular file (naming what it is); kPermissionDenied; kSystem.
  [[nodiscard]] static Result<ShmObject> open(std::string_view name, Mode mode);

  ShmObject(ShmObject&& other) noexcept;
  ShmObject& operator=(ShmObject&& other) noexcept;
  ShmObject(const ShmObject&) = delete;
  ShmObject& operator=(const ShmObject&) = delete;
  ~ShmObject();

  int fd() const { return fd_; }
  /// The fstat() taken at open (owner, mode, size at that moment).
  const struct stat& status() const { return st_; }
  /// Gives up the descriptor without closing it.
  int release() noexcept;

 private:
  ShmObject(int fd, const struct stat& st) : fd_(fd), st_(st) {}
  int fd_ = -1;
  struct stat st_ {};
};

/// "FIFO", "socket", "directory", "symbolic link", "device" or "regular file".
std::string_view file_type_name(mode_t mode) noexcept;

/// True if the object's mode bits (not root's privilege) let the calling process write it:
/// the owner class when it owns it, the group class when it is in the group, else others.
bool mode_lets_caller_write(const struct stat& st);

/// "uid 1000 (alice)", or "uid 1000" when the user has no name.
std::string describe_owner(uid_t uid);

}  // namespace kvbm::detail
