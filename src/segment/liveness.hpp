// SPDX-License-Identifier: Apache-2.0
// Liveness through OFD byte locks (F_OFD_SETLK) on the segment file: held by an open file
// description, released by the kernel when the process dies (SIGKILL and zombies included), not
// fooled by PID reuse or PID namespaces. Plus the diagnostics recorded in a process entry.
#pragma once

#include <cstdint>

namespace kvbm::detail {

/// Takes a write lock on one byte without waiting; false if another description holds it.
bool ofd_try_lock(int fd, std::uint64_t offset) noexcept;
void ofd_unlock(int fd, std::uint64_t offset) noexcept;
/// True if another open file description holds the byte (works on an O_RDONLY fd).
bool ofd_is_locked(int fd, std::uint64_t offset) noexcept;

/// Field 22 of /proc/self/stat (clock ticks since boot), 0 if unreadable.
std::uint64_t self_start_ticks() noexcept;
/// Inode of /proc/self/ns/pid, 0 if unreadable.
std::uint64_t self_pidns_inode() noexcept;
std::uint64_t realtime_now_ns() noexcept;

}  // namespace kvbm::detail
