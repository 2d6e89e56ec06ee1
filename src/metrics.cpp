// SPDX-License-Identifier: Apache-2.0
#include "kvbm/metrics.hpp"

#include <algorithm>
#include <array>

#include "metrics_reader.hpp"
#include "segment/processes.hpp"

namespace kvbm {
namespace {

struct Field {
  std::string_view name;
  std::int64_t MetricsSnapshot::*member;
  std::string_view help;
};

constexpr std::array<Field, 23> kFields{{
    {"kvbm_allocations_total", &MetricsSnapshot::allocations_total,
     "Blocks handed out by allocate_blocks (from the reset pool or by eviction)."},
    {"kvbm_allocations_from_reset_total", &MetricsSnapshot::allocations_from_reset_total,
     "Blocks allocated from the reset pool (no eviction needed)."},
    {"kvbm_evictions_total", &MetricsSnapshot::evictions_total,
     "Cached (inactive) blocks evicted to satisfy allocations."},
    {"kvbm_registrations_total", &MetricsSnapshot::registrations_total,
     "Blocks passed to register_block(s), duplicates and rejections included."},
    {"kvbm_duplicate_blocks_total", &MetricsSnapshot::duplicate_blocks_total,
     "Registrations that became a duplicate of an existing primary (policy allow)."},
    {"kvbm_registration_dedup_total", &MetricsSnapshot::registration_dedup_total,
     "Registrations answered with the existing primary instead (policy reject)."},
    {"kvbm_stagings_total", &MetricsSnapshot::stagings_total,
     "Mutable blocks staged with a sequence hash."},
    {"kvbm_match_hashes_requested_total", &MetricsSnapshot::match_hashes_requested_total,
     "Hashes passed to match_blocks."},
    {"kvbm_match_blocks_returned_total", &MetricsSnapshot::match_blocks_returned_total,
     "Blocks returned by match_blocks (the cached prefix)."},
    {"kvbm_scan_hashes_requested_total", &MetricsSnapshot::scan_hashes_requested_total,
     "Hashes passed to match_blocks_scattered and scan_matches."},
    {"kvbm_scan_blocks_returned_total", &MetricsSnapshot::scan_blocks_returned_total,
     "Blocks returned by match_blocks_scattered and scan_matches."},
    {"kvbm_reaped_processes_total", &MetricsSnapshot::reaped_processes_total,
     "Dead processes whose blocks were released by a reaper."},
    {"kvbm_recoveries_total", &MetricsSnapshot::recoveries_total,
     "Recoveries after a process died holding the store lock."},
    {"kvbm_events_total", &MetricsSnapshot::events_total,
     "KV events (stored, removed, cleared) written to the segment's event ring."},
    {"kvbm_prefix_cache_queries_total", &MetricsSnapshot::prefix_cache_queries_total,
     "Tokens looked up by match_blocks (block_size per hash), as vLLM counts prefix-cache "
     "queries."},
    {"kvbm_prefix_cache_hits_total", &MetricsSnapshot::prefix_cache_hits_total,
     "Tokens found cached by match_blocks (block_size per block returned), as vLLM counts "
     "prefix-cache hits."},
    {"kvbm_reset_pool_size", &MetricsSnapshot::reset_pool_size,
     "Blocks in the reset pool (free, no content)."},
    {"kvbm_inactive_pool_size", &MetricsSnapshot::inactive_pool_size,
     "Cached blocks nobody holds (matchable, evictable)."},
    {"kvbm_inflight_mutable", &MetricsSnapshot::inflight_mutable,
     "Blocks allocated and not yet staged."},
    {"kvbm_inflight_immutable", &MetricsSnapshot::inflight_immutable,
     "Registered blocks held by at least one process (primaries and duplicates)."},
    {"kvbm_attached_processes", &MetricsSnapshot::attached_processes,
     "Process-table entries in use, dead but unreaped ones included."},
    {"kvbm_capacity_blocks", &MetricsSnapshot::capacity_blocks,
     "Blocks in the segment (block_count)."},
    {"kvbm_dead_processes", &MetricsSnapshot::dead_processes,
     "Process-table entries whose process died and that are not reaped yet."},
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

std::string_view MetricsSnapshot::help(std::string_view name) {
  for (const Field& f : kFields) {
    if (f.name == name) {
      return f.help;
    }
  }
  return {};
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

MetricsSnapshot read_metrics(const Segment& seg, std::uint32_t self) {
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
  // A hash names one complete block of block_size tokens (hash_token_blocks: one SequenceHash per
  // complete block), so the token counts follow from the block counts.
  const auto block_size = static_cast<std::int64_t>(seg.config().block_size);
  m.prefix_cache_queries_total = m.match_hashes_requested_total * block_size;
  m.prefix_cache_hits_total = m.match_blocks_returned_total * block_size;
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
  m.capacity_blocks = static_cast<std::int64_t>(seg.block_count());
  m.dead_processes = static_cast<std::int64_t>(count_dead_processes(seg, self));
  return m;
}

}  // namespace detail
}  // namespace kvbm
