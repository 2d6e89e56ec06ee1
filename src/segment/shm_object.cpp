// SPDX-License-Identifier: Apache-2.0
#include "segment/shm_object.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace kvbm::detail {

namespace {

Error object_error(Errc code, int err, std::string message) {
  return Error{code, err, std::move(message)};
}

Error not_regular(std::string_view name, mode_t mode) {
  return object_error(
      Errc::kLayoutMismatch, 0,
      fmt::format("'/dev/shm/{}' is a {}, not a kvbm segment (a segment is a regular file); "
                  "remove it by hand if it is not in use",
                  name, file_type_name(mode)));
}

}  // namespace

Result<ShmObject> ShmObject::open(std::string_view name, Mode mode) {
  const std::string path = "/" + std::string(name);
  // O_NONBLOCK: opening a FIFO returns at once instead of waiting for a peer (it only matters
  // for the open itself; regular files ignore it). O_NOFOLLOW: a symlink fails with ELOOP.
  const int flags =
      (mode == Mode::kReadOnly ? O_RDONLY : O_RDWR) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
  const int fd = ::shm_open(path.c_str(), flags, 0);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return tl::unexpected(
          object_error(Errc::kNotFound, err, fmt::format("segment '{}' does not exist", name)));
    }
    // A symlink (ELOOP), socket (ENXIO), directory (EISDIR, which glibc's shm_open reports as
    // EINVAL)...: say what it is, found without opening it.
    struct stat lst {};
    const std::string full = "/dev/shm/" + std::string(name);
    if (::lstat(full.c_str(), &lst) == 0 && !S_ISREG(lst.st_mode)) {
      return tl::unexpected(not_regular(name, lst.st_mode));
    }
    if (err == EACCES || err == EPERM) {
      return tl::unexpected(object_error(
          Errc::kPermissionDenied, err,
          fmt::format("no permission to open segment '{}' {}", name,
                      mode == Mode::kReadOnly ? "for reading" : "for reading and writing")));
    }
    return tl::unexpected(object_error(
        Errc::kSystem, err, fmt::format("cannot open segment '{}': {}", name, std::strerror(err))));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return tl::unexpected(object_error(
        Errc::kSystem, err, fmt::format("cannot stat segment '{}': {}", name, std::strerror(err))));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return tl::unexpected(not_regular(name, st.st_mode));
  }
  // Back to blocking mode: nothing else about a regular file changes, but the descriptor may be
  // handed to code that does not expect EAGAIN.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return ShmObject(fd, st);
}

ShmObject::ShmObject(ShmObject&& other) noexcept : fd_(other.fd_), st_(other.st_) {
  other.fd_ = -1;
}

ShmObject& ShmObject::operator=(ShmObject&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = other.fd_;
    st_ = other.st_;
    other.fd_ = -1;
  }
  return *this;
}

ShmObject::~ShmObject() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

int ShmObject::release() noexcept {
  const int fd = fd_;
  fd_ = -1;
  return fd;
}

std::string_view file_type_name(mode_t mode) noexcept {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "regular file";
    case S_IFIFO:
      return "FIFO";
    case S_IFSOCK:
      return "socket";
    case S_IFDIR:
      return "directory";
    case S_IFLNK:
      return "symbolic link";
    case S_IFCHR:
    case S_IFBLK:
      return "device";
    default:
      return "special file";
  }
}

bool mode_lets_caller_write(const struct stat& st) {
  if (st.st_uid == ::geteuid()) {
    return (st.st_mode & S_IWUSR) != 0 && (st.st_mode & S_IRUSR) != 0;
  }
  bool in_group = st.st_gid == ::getegid();
  if (!in_group) {
    const int n = ::getgroups(0, nullptr);
    if (n > 0) {
      std::vector<gid_t> groups(static_cast<std::size_t>(n));
      const int got = ::getgroups(n, groups.data());
      for (int i = 0; i < got && !in_group; ++i) {
        in_group = groups[static_cast<std::size_t>(i)] == st.st_gid;
      }
    }
  }
  if (in_group) {
    return (st.st_mode & S_IWGRP) != 0 && (st.st_mode & S_IRGRP) != 0;
  }
  return (st.st_mode & S_IWOTH) != 0 && (st.st_mode & S_IROTH) != 0;
}

std::string describe_owner(uid_t uid) {
  struct passwd pw {};
  struct passwd* found = nullptr;
  char buf[1024];
  if (::getpwuid_r(uid, &pw, buf, sizeof(buf), &found) == 0 && found != nullptr) {
    return fmt::format("uid {} ({})", uid, found->pw_name);
  }
  return fmt::format("uid {}", uid);
}

}  // namespace kvbm::detail
