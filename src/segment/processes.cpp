// SPDX-License-Identifier: Apache-2.0
#include "segment/processes.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>

#include "segment/liveness.hpp"
#include "segment/shm_object.hpp"

namespace kvbm::detail {

std::vector<std::string> dead_process_problems(const Segment& segment, std::uint32_t skip) {
  std::vector<std::string> problems;
  for (const ProcessView& p : list_processes(segment)) {
    if (!p.alive && p.index != skip) {
      problems.push_back(fmt::format(
          "process entry {} (pid {}) is dead but not reaped: it holds {} blocks ({} "
          "mutable/staged, {} registered); run 'kvbm-ctl reap {}' (safe beside "
          "live workers)",
          p.index, p.pid, p.exclusive + p.held, p.exclusive, p.held, segment.config().name));
    }
  }
  return problems;
}

std::vector<ProcessView> list_processes(const Segment& seg) {
  std::vector<ProcessView> out;
  const auto* slots = seg.slots();
  const std::uint32_t n = seg.block_count();
  for (std::uint32_t q = 0; q < seg.max_processes(); ++q) {
    const auto& e = seg.procs()[q];
    if (e.state.load(std::memory_order_acquire) ==
        static_cast<std::uint32_t>(shm::ProcState::kFree)) {
      continue;
    }
    ProcessView v{q,
                  e.pid.load(std::memory_order_relaxed),
                  e.incarnation.load(std::memory_order_relaxed),
                  e.start_ticks.load(std::memory_order_relaxed),
                  e.attached_ns.load(std::memory_order_relaxed),
                  ofd_is_locked(seg.fd(), shm::kLivenessLockBase + q),
                  0,
                  0};
    for (std::uint32_t s = 0; s < n; ++s) {
      const auto& m = slots[s];
      if ((m.state == static_cast<std::uint8_t>(shm::SlotState::kMutable) ||
           m.state == static_cast<std::uint8_t>(shm::SlotState::kStaged)) &&
          m.owner == q) {
        ++v.exclusive;
      }
      v.held += (m.holders >> q) & 1;
    }
    out.push_back(v);
  }
  return out;
}

std::size_t count_dead_processes(const Segment& seg, std::uint32_t skip) {
  std::size_t dead = 0;
  for (std::uint32_t q = 0; q < seg.max_processes(); ++q) {
    if (q == skip || seg.procs()[q].state.load(std::memory_order_acquire) ==
                         static_cast<std::uint32_t>(shm::ProcState::kFree)) {
      continue;
    }
    dead += ofd_is_locked(seg.fd(), shm::kLivenessLockBase + q) ? 0 : 1;
  }
  return dead;
}

std::size_t count_live_attachments(std::string_view name) {
  auto obj = ShmObject::open(name, ShmObject::Mode::kReadOnly);
  if (!obj) {
    return 0;
  }
  std::size_t live = 0;
  for (std::uint32_t q = 0; q < shm::kMaxProcesses; ++q) {
    live += ofd_is_locked(obj->fd(), shm::kLivenessLockBase + q) ? 1 : 0;
  }
  return live;
}

}  // namespace kvbm::detail
