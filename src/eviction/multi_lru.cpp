// SPDX-License-Identifier: Apache-2.0
// MultiLRU backend (spec 7.3): four LRU levels (cold 0 .. very hot 3). A block's level is fixed
// when it enters the pool, from the TinyLFU estimate of its hash against the thresholds
// (f < t1 -> 0, f < t2 -> 1, f < t3 -> 2, else 3); eviction takes the coldest non-empty level
// first, LRU within a level. State: ControlBlock::level_lists linked through the slots, plus
// SlotMeta::level and ::tick, from which rebuild() restores the same order.
#include <algorithm>

#include <fmt/format.h>

#include "eviction/backend.hpp"
#include "eviction/tiny_lfu.hpp"
#include "segment/segment.hpp"
#include "segment/slot_list.hpp"

namespace kvbm::detail {
namespace {

class MultiLruBackend final : public InactiveBackend {
 public:
  explicit MultiLruBackend(Segment& seg)
      : lists_(seg.control()->level_lists),
        slots_(seg.slots()),
        n_(seg.block_count()),
        sketch_(seg.sketch()),
        t_(seg.config().multi_lru_thresholds) {}

  void insert(std::uint32_t slot) override {
    const std::uint32_t f = sketch_.estimate(slots_[slot].hash_hi, slots_[slot].hash_lo);
    const std::uint8_t level = f < t_[0] ? 0 : f < t_[1] ? 1 : f < t_[2] ? 2 : 3;
    slots_[slot].level = level;
    list_push_back(lists_[level], slots_, n_, slot);
  }
  void remove(std::uint32_t slot) override {
    list_unlink(lists_[slots_[slot].level & 3], slots_, n_, slot);
  }
  std::uint32_t pop_victim() override {
    for (int i = 0; i < 4; ++i) {
      auto& l = lists_[i];
      if (l.length > 0) {
        return list_pop_front(l, slots_, n_);
      }
    }
    return shm::kNil;
  }
  std::uint32_t peek_victim(std::uint32_t ahead) const override {
    // Victims come off the coldest non-empty level first, in list order.
    for (int i = 0; i < 4; ++i) {
      for (std::uint32_t s = lists_[i].head; s != shm::kNil; s = slots_[s].next) {
        if (ahead-- == 0) {
          return s;
        }
      }
    }
    return shm::kNil;
  }
  std::uint64_t size() const override {
    return lists_[0].length + lists_[1].length + lists_[2].length + lists_[3].length;
  }
  void touch(std::uint64_t hi, std::uint64_t lo) override { sketch_.increment(hi, lo); }

  void rebuild() override {
    std::vector<std::uint32_t> ids[4];
    for (std::uint32_t s : slots_by_tick(slots_, n_, shm::SlotState::kInactive)) {
      ids[slots_[s].level & 3].push_back(s);
    }
    for (int l = 0; l < 4; ++l) {
      list_assign(lists_[l], slots_, n_, ids[l]);
    }
  }

  void verify(std::vector<std::string>& problems, WalkPacer& pacer) const override {
    for (int l = 0; l < 4; ++l) {
      std::uint64_t seen = 0;
      std::uint32_t prev = shm::kNil;
      for (std::uint32_t s = lists_[l].head; s != shm::kNil; s = slots_[s].next) {
        pacer.step();
        if (s >= n_ || seen >= n_) {
          problems.push_back(fmt::format("level {} list: link out of range or cycle", l));
          return;
        }
        if (slots_[s].state != static_cast<std::uint8_t>(shm::SlotState::kInactive) ||
            slots_[s].level != l) {
          problems.push_back(
              fmt::format("level {} list: slot {} is not an Inactive block of "
                          "that level",
                          l, s));
        }
        if (slots_[s].prev != prev) {
          problems.push_back(fmt::format("level {} list: slot {} has a wrong back link", l, s));
        }
        prev = s;
        ++seen;
      }
      if (seen != lists_[l].length || lists_[l].tail != prev) {
        problems.push_back(
            fmt::format("level {} list: length {} but {} linked", l, lists_[l].length, seen));
      }
    }
  }

 private:
  shm::SlotList* lists_;
  shm::SlotMeta* slots_;
  std::uint32_t n_;
  TinyLfu sketch_;
  std::array<std::uint8_t, 3> t_;
};

}  // namespace

std::unique_ptr<InactiveBackend> make_multi_lru_backend(Segment& segment) {
  return std::make_unique<MultiLruBackend>(segment);
}

}  // namespace kvbm::detail
