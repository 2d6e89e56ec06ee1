// SPDX-License-Identifier: Apache-2.0
#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "events/ring_reader.hpp"
#include "store/unattached_lock.hpp"

namespace kvbm {

namespace {

using detail::Segment;
using shm::SlotState;

constexpr auto kLockWait = std::chrono::milliseconds(5000);

Error corrupted(std::string what) {
  return Error{Errc::kCorrupted, 0, fmt::format("event ring is corrupted: {}", what)};
}

bool cached(std::uint8_t state) {
  return state == static_cast<std::uint8_t>(SlotState::kPrimary) ||
         state == static_cast<std::uint8_t>(SlotState::kInactive);
}

/// The ids of `slot` if its token record belongs to generation `gen` (the caller holds the lock,
/// so the slot cannot change; only its owner writes the record, and only while it is Mutable).
bool copy_tokens(const Segment& seg,
                 std::uint32_t slot,
                 std::uint32_t gen,
                 std::vector<std::uint32_t>& out) {
  const auto* rec = seg.token_record(slot);
  if (rec == nullptr || rec->generation.load(std::memory_order_acquire) != gen ||
      rec->count != seg.config().block_size) {
    return false;
  }
  const auto* ids = reinterpret_cast<const std::uint32_t*>(rec + 1);
  out.assign(ids, ids + rec->count);
  return true;
}

/// oldest and next from the ring header, checked against each other and the capacity.
Result<std::pair<std::uint64_t, std::uint64_t>> bounds(const shm::EventRingHeader& ring,
                                                       std::uint32_t capacity) {
  const std::uint64_t oldest = ring.oldest_seq.load(std::memory_order_relaxed);
  const std::uint64_t next = ring.next_seq.load(std::memory_order_relaxed);
  if (oldest > next || next - oldest > capacity) {
    return tl::unexpected(
        corrupted(fmt::format("oldest {} and next {} with capacity {}", oldest, next, capacity)));
  }
  return std::pair{oldest, next};
}

}  // namespace

std::string_view to_string(EventKind kind) noexcept {
  switch (kind) {
    case EventKind::kStored:
      return "stored";
    case EventKind::kRemoved:
      return "removed";
    case EventKind::kCleared:
      return "cleared";
  }
  return "unknown";
}

Result<EventReader> EventReader::open(std::string_view segment) {
  // Read-write: taking the store mutex writes its word. No process entry is taken.
  auto seg = Segment::open(segment, detail::Access::kReadWrite);
  if (!seg) {
    return tl::unexpected(seg.error());
  }
  if ((*seg)->events() == nullptr) {
    return tl::unexpected(
        Error{Errc::kInvalidConfig, 0,
              fmt::format("segment '{}' keeps no events (it was created with event_capacity 0)",
                          segment)});
  }
  if ((*seg)->events()->capacity != (*seg)->config().event_capacity) {
    return tl::unexpected(corrupted("capacity differs from the segment's config"));
  }
  auto impl = std::make_shared<Impl>();
  impl->seg = std::move(*seg);
  impl->store = std::make_unique<detail::BlockStore>(*impl->seg);
  return EventReader(std::move(impl));
}

std::uint32_t EventReader::capacity() const {
  return impl_->seg->config().event_capacity;
}
std::uint32_t EventReader::block_size() const {
  return impl_->seg->config().block_size;
}
bool EventReader::stores_token_ids() const {
  return impl_->seg->config().store_token_ids;
}

// Lock-free: the intent record works as a sequence lock. Events change only while it is armed
// (odd); then the value that stands is the one it logged (a dead holder's events are rolled
// back to it, a live holder's are not visible to read() before it commits).
std::uint64_t EventReader::next_seq() const {
  const auto& in = impl_->seg->control()->intent;
  const auto& ring = *impl_->seg->events();
  for (;;) {
    const std::uint64_t s1 = in.seq.load(std::memory_order_acquire);
    const std::uint64_t v =
        (s1 & 1) != 0 ? in.events_next_before : ring.next_seq.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (in.seq.load(std::memory_order_relaxed) == s1) {
      return v;
    }
  }
}

std::uint64_t EventReader::oldest_seq() const {
  const auto& ring = *impl_->seg->events();
  return std::min(ring.oldest_seq.load(std::memory_order_relaxed), next_seq());
}

Result<std::vector<Event>> EventReader::read(std::uint64_t from_seq, std::size_t max_events) const {
  std::lock_guard<std::mutex> guard(impl_->mu);
  const Segment& seg = *impl_->seg;
  const auto& ring = *seg.events();
  const std::uint32_t cap = seg.config().event_capacity;
  const std::uint32_t n = seg.block_count();
  const auto* records = seg.event_records();
  const auto* slots = seg.slots();
  std::vector<Event> out;
  while (out.size() < max_events) {
    std::vector<std::string> notes;
    auto held = detail::lock_unattached(*impl_->store, kLockWait, notes);
    if (!held) {
      return tl::unexpected(held.error());
    }
    auto b = bounds(ring, cap);
    if (!b) {
      return tl::unexpected(b.error());
    }
    const auto [oldest, next] = *b;
    if (from_seq < oldest) {
      if (!out.empty()) {
        break;  // what was read is good; the next call reports the loss
      }
      return tl::unexpected(
          Error{Errc::kEventsLost, 0,
                fmt::format("events {}..{} were overwritten (the ring holds {}..{})", from_seq,
                            oldest - 1, oldest, next == 0 ? 0 : next - 1)});
    }
    if (from_seq >= next) {
      break;
    }
    const std::uint64_t take =
        std::min<std::uint64_t>({max_events - out.size(), next - from_seq, detail::kEventsPerLock});
    for (std::uint64_t i = 0; i < take; ++i) {
      const std::uint64_t seq = from_seq + i;
      const shm::EventRecord& r = records[seq & (cap - 1)];
      if (r.seq != seq) {
        return tl::unexpected(corrupted(fmt::format("record of event {} says {}", seq, r.seq)));
      }
      Event e;
      e.seq = seq;
      e.block_size = seg.config().block_size;
      switch (static_cast<shm::EventKindCode>(r.kind)) {
        case shm::EventKindCode::kStored:
          e.kind = EventKind::kStored;
          break;
        case shm::EventKindCode::kRemoved:
          e.kind = EventKind::kRemoved;
          break;
        case shm::EventKindCode::kCleared:
          e.kind = EventKind::kCleared;
          break;
        default:
          return tl::unexpected(corrupted(fmt::format("event {} has kind {}", seq, r.kind)));
      }
      if (e.kind != EventKind::kCleared) {
        e.hash = SequenceHash::from_parts(r.hash_hi, r.hash_lo);
      }
      if (e.kind == EventKind::kStored && seg.config().store_token_ids) {
        if (r.slot >= n) {
          return tl::unexpected(corrupted(fmt::format("event {} names slot {}", seq, r.slot)));
        }
        const auto& m = slots[r.slot];
        const bool same_block = cached(m.state) &&
                                m.generation.load(std::memory_order_relaxed) == r.generation &&
                                m.hash_hi == r.hash_hi && m.hash_lo == r.hash_lo;
        if (!same_block) {
          e.token_ids_gone = true;
        } else {
          copy_tokens(seg, r.slot, r.generation, e.token_ids);
        }
      }
      out.push_back(std::move(e));
    }
    from_seq += take;
  }
  return out;
}

namespace detail {

Result<Snapshot> take_snapshot(EventReader::Impl& reader) {
  std::lock_guard<std::mutex> guard(reader.mu);
  const Segment& seg = *reader.seg;
  std::vector<std::string> notes;
  auto held = lock_unattached(*reader.store, kLockWait, notes);
  if (!held) {
    return tl::unexpected(held.error());
  }
  auto b = bounds(*seg.events(), seg.config().event_capacity);
  if (!b) {
    return tl::unexpected(b.error());
  }
  Snapshot snap;
  snap.resume_seq = b->second;
  const auto* slots = seg.slots();
  for (std::uint32_t s = 0; s < seg.block_count(); ++s) {
    const auto& m = slots[s];
    if (!cached(m.state)) {
      continue;
    }
    CachedBlock c{SequenceHash::from_parts(m.hash_hi, m.hash_lo), {}};
    copy_tokens(seg, s, m.generation.load(std::memory_order_relaxed), c.token_ids);
    snap.blocks.push_back(std::move(c));
  }
  held->unlock();
  std::stable_sort(snap.blocks.begin(), snap.blocks.end(),
                   [](const CachedBlock& a, const CachedBlock& b) {
                     return a.hash.position() < b.hash.position();
                   });
  return snap;
}

}  // namespace detail
}  // namespace kvbm
