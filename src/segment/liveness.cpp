// SPDX-License-Identifier: Apache-2.0
#include "segment/liveness.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace kvbm::detail {
namespace {

bool ofd_op(int fd, int cmd, short type, std::uint64_t offset, struct flock* out) noexcept {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(offset);
  fl.l_len = 1;
  fl.l_pid = 0;  // required by OFD locks
  int rc;
  do {
    rc = ::fcntl(fd, cmd, &fl);
  } while (rc != 0 && errno == EINTR);
  if (out != nullptr) {
    *out = fl;
  }
  return rc == 0;
}

}  // namespace

bool ofd_try_lock(int fd, std::uint64_t offset) noexcept {
  return ofd_op(fd, F_OFD_SETLK, F_WRLCK, offset, nullptr);
}

void ofd_unlock(int fd, std::uint64_t offset) noexcept {
  ofd_op(fd, F_OFD_SETLK, F_UNLCK, offset, nullptr);
}

bool ofd_is_locked(int fd, std::uint64_t offset) noexcept {
  struct flock fl {};
  // Probe with a read lock so an O_RDONLY fd works; a held write lock conflicts with it.
  if (!ofd_op(fd, F_OFD_GETLK, F_RDLCK, offset, &fl)) {
    return false;
  }
  return fl.l_type != F_UNLCK;
}

std::uint64_t self_start_ticks() noexcept {
  std::FILE* f = std::fopen("/proc/self/stat", "r");
  if (f == nullptr) {
    return 0;
  }
  char buf[1024];
  std::size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // comm may contain spaces and ')': parse after the last ')'. Field 3 follows it.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) {
    return 0;
  }
  int field = 2;
  for (; *p != '\0'; ++p) {
    if (*p == ' ' && ++field == 22) {
      return std::strtoull(p + 1, nullptr, 10);
    }
  }
  return 0;
}

std::uint64_t self_pidns_inode() noexcept {
  struct stat st {};
  if (::stat("/proc/self/ns/pid", &st) != 0) {
    return 0;
  }
  return static_cast<std::uint64_t>(st.st_ino);
}

std::uint64_t realtime_now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace kvbm::detail
