// SPDX-License-Identifier: Apache-2.0
// LRU backend (spec 7.2): hits remove the entry, so the order is the time of entry into the
// inactive pool; the victim is the oldest entry. The same order is the FIFO backend's (7.4).
// State: ControlBlock::inactive_list, linked through the slots, ordered by SlotMeta::tick.
#include <algorithm>

#include <fmt/format.h>

#include "eviction/backend.hpp"
#include "segment/segment.hpp"
#include "segment/slot_list.hpp"

namespace kvbm::detail {
namespace {

class LruBackend final : public InactiveBackend {
 public:
  explicit LruBackend(Segment& seg)
      : list_(seg.control()->inactive_list), slots_(seg.slots()), n_(seg.block_count()) {}

  void insert(std::uint32_t slot) override { list_push_back(list_, slots_, n_, slot); }
  void remove(std::uint32_t slot) override { list_unlink(list_, slots_, n_, slot); }
  std::uint32_t pop_victim() override { return list_pop_front(list_, slots_, n_); }
  std::uint32_t peek_victim(std::uint32_t ahead) const override {
    std::uint32_t s = list_.head;
    for (; ahead > 0 && s != shm::kNil; --ahead) {
      s = slots_[s].next;
    }
    return s;
  }
  std::uint64_t size() const override { return list_.length; }

  void rebuild() override {
    list_assign(list_, slots_, n_, slots_by_tick(slots_, n_, shm::SlotState::kInactive));
  }

  void verify(std::vector<std::string>& problems, WalkPacer& pacer) const override {
    std::uint64_t seen = 0;
    std::uint32_t prev = shm::kNil;
    std::uint64_t last_tick = 0;
    for (std::uint32_t s = list_.head; s != shm::kNil; s = slots_[s].next) {
      pacer.step();
      if (s >= n_ || seen > n_) {
        problems.push_back("inactive list: link out of range or cycle");
        return;
      }
      if (slots_[s].state != static_cast<std::uint8_t>(shm::SlotState::kInactive)) {
        problems.push_back(fmt::format("inactive list: slot {} is not Inactive", s));
      }
      if (slots_[s].prev != prev) {
        problems.push_back(fmt::format("inactive list: slot {} has a wrong back link", s));
      }
      if (seen > 0 && slots_[s].tick < last_tick) {
        problems.push_back(fmt::format("inactive list: slot {} is out of tick order", s));
      }
      last_tick = slots_[s].tick;
      prev = s;
      ++seen;
    }
    if (seen != list_.length) {
      problems.push_back(
          fmt::format("inactive list: length {} but {} entries linked", list_.length, seen));
    }
    if (list_.tail != prev) {
      problems.push_back("inactive list: tail does not match the last entry");
    }
  }

 private:
  shm::SlotList& list_;
  shm::SlotMeta* slots_;
  std::uint32_t n_;
};

}  // namespace

std::unique_ptr<InactiveBackend> make_multi_lru_backend(Segment& segment);
std::unique_ptr<InactiveBackend> make_lineage_backend(Segment& segment, SlotLogger log);

std::unique_ptr<InactiveBackend> make_inactive_backend(Segment& segment, SlotLogger log) {
  switch (segment.config().eviction) {
    case EvictionPolicy::kMultiLru:
      return make_multi_lru_backend(segment);
    case EvictionPolicy::kLineage:
      return make_lineage_backend(segment, std::move(log));
    case EvictionPolicy::kLru:
    case EvictionPolicy::kFifo:
      // Hits remove entries, so LRU order is order of entry into the pool: FIFO's order.
      break;
  }
  return std::make_unique<LruBackend>(segment);
}

}  // namespace kvbm::detail
