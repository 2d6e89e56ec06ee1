// SPDX-License-Identifier: Apache-2.0
#include "kvbm/metrics.hpp"

#include <algorithm>
#include <array>

#include "metrics_reader.hpp"

namespace kvbm {
namespace {

struct Field {
  std::string_view name;
  std::int64_t MetricsSnapshot::*member;
};

constexpr std::array<Field, 19> kFields{{
    {"kvbm_allocations_total", &MetricsSnapshot::allocations_total},
    {"kvbm_allocations_from_reset_total", &MetricsSnapshot::allocations_from_reset_total},
    {"kvbm_evictions_total", &MetricsSnapshot::evictions_total},
    {"kvbm_registrations_total", &MetricsSnapshot::registrations_total},
    {"kvbm_duplicate_blocks_total", &MetricsSnapshot::duplicate_blocks_total},
    {"kvbm_registration_dedup_total", &MetricsSnapshot::registration_dedup_total},
    {"kvbm_stagings_total", &MetricsSnapshot::stagings_total},
    {"kvbm_match_hashes_requested_total", &MetricsSnapshot::match_hashes_requested_total},
    {"kvbm_match_blocks_returned_total", &MetricsSnapshot::match_blocks_returned_total},
    {"kvbm_scan_hashes_requested_total", &MetricsSnapshot::scan_hashes_requested_total},
    {"kvbm_scan_blocks_returned_total", &MetricsSnapshot::scan_blocks_returned_total},
    {"kvbm_reaped_processes_total", &MetricsSnapshot::reaped_processes_total},
    {"kvbm_recoveries_total", &MetricsSnapshot::recoveries_total},
    {"kvbm_events_total", &MetricsSnapshot::events_total},
    {"kvbm_reset_pool_size", &MetricsSnapshot::reset_pool_size},
    {"kvbm_inactive_pool_size", &MetricsSnapshot::inactive_pool_size},
    {"kvbm_inflight_mutable", &MetricsSnapshot::inflight_mutable},
    {"kvbm_inflight_immutable", &MetricsSnapshot::inflight_immutable},
    {"kvbm_attached_processes", &MetricsSnapshot::attached_processes},
}};

}  // namespace

std::optional<std::int64_t> MetricsSnapshot::get(std::string_view name) const {
  for (const Field& f : kFields) {
    if (f.name == name) {
      return this->*f.member;
    }
  }
  return std::nullopt;
}

std::vector<std::pair<std::string_view, std::int64_t>> MetricsSnapshot::all() const {
  std::vector<std::pair<std::string_view, std::int64_t>> out;
  out.reserve(kFields.size());
  for (const Field& f : kFields) {
    out.emplace_back(f.name, this->*f.member);
  }
  return out;
}

bool MetricsSnapshot::is_gauge(std::string_view name) {
  return !name.ends_with("_total");
}

namespace detail {

namespace {

struct EntryStaging {
  std::uint64_t staged = 0;    // Staged slots the in-use entries account for
  std::uint64_t stagings = 0;  // stages of in-use entries not yet folded into the counter
};

EntryStaging entry_staging(const Segment& seg) {
  EntryStaging t;
  for (std::uint32_t p = 0; p < seg.max_processes(); ++p) {
    const auto& e = seg.procs()[p];
    if (e.state.load(std::memory_order_relaxed) ==
        static_cast<std::uint32_t>(shm::ProcState::kFree)) {
      continue;
    }
    const std::uint64_t stagings = e.stagings.load(std::memory_order_relaxed);
    const std::uint64_t destaged = e.destaged.load(std::memory_order_relaxed);
    t.stagings += stagings;
    t.staged += stagings >= destaged ? stagings - destaged : 0;
  }
  return t;
}

}  // namespace

PoolCounts read_counts(const Segment& seg) {
  const auto* ctl = seg.control();
  auto get = [&](shm::SlotState s) {
    return static_cast<std::size_t>(
        ctl->state_counts[static_cast<int>(s)].load(std::memory_order_relaxed));
  };
  const std::size_t exclusive = get(shm::SlotState::kMutable);  // Mutable + Staged
  const std::size_t staged = std::min<std::size_t>(entry_staging(seg).staged, exclusive);
  return PoolCounts{get(shm::SlotState::kReset),
                    exclusive - staged,
                    staged,
                    get(shm::SlotState::kPrimary),
                    get(shm::SlotState::kDuplicate),
                    get(shm::SlotState::kInactive)};
}

MetricsSnapshot read_metrics(const Segment& seg) {
  const auto* ctl = seg.control();
  auto counter = [&](shm::Counter c) {
    return static_cast<std::int64_t>(ctl->counters[c].load(std::memory_order_relaxed));
  };
  auto state = [&](shm::SlotState s) {
    return static_cast<std::int64_t>(
        ctl->state_counts[static_cast<int>(s)].load(std::memory_order_relaxed));
  };
  MetricsSnapshot m;
  m.allocations_total = counter(shm::kAllocations);
  m.allocations_from_reset_total = counter(shm::kAllocationsFromReset);
  m.evictions_total = counter(shm::kEvictions);
  m.registrations_total = counter(shm::kRegistrations);
  m.duplicate_blocks_total = counter(shm::kDuplicateBlocks);
  m.registration_dedup_total = counter(shm::kRegistrationDedup);
  const EntryStaging staging = entry_staging(seg);
  m.stagings_total = counter(shm::kStagings) + static_cast<std::int64_t>(staging.stagings);
  m.match_hashes_requested_total = counter(shm::kMatchHashesRequested);
  m.match_blocks_returned_total = counter(shm::kMatchBlocksReturned);
  m.scan_hashes_requested_total = counter(shm::kScanHashesRequested);
  m.scan_blocks_returned_total = counter(shm::kScanBlocksReturned);
  m.reaped_processes_total = counter(shm::kReapedProcesses);
  m.recoveries_total = counter(shm::kRecoveries);
  m.events_total = counter(shm::kEvents);
  m.reset_pool_size = state(shm::SlotState::kReset);
  m.inactive_pool_size = state(shm::SlotState::kInactive);
  m.inflight_mutable =  // Mutable + Staged are counted together; CompleteBlocks do not count
      std::max<std::int64_t>(
          0, state(shm::SlotState::kMutable) - static_cast<std::int64_t>(staging.staged));
  m.inflight_immutable = state(shm::SlotState::kPrimary) + state(shm::SlotState::kDuplicate);
  std::int64_t attached = 0;
  for (std::uint32_t p = 0; p < seg.max_processes(); ++p) {
    attached += seg.procs()[p].state.load(std::memory_order_relaxed) !=
                        static_cast<std::uint32_t>(shm::ProcState::kFree)
                    ? 1
                    : 0;
  }
  m.attached_processes = attached;
  return m;
}

}  // namespace detail
}  // namespace kvbm
