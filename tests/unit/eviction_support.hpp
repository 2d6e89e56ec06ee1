// SPDX-License-Identifier: Apache-2.0
// Shared by the eviction tests (eviction_*_test.cpp, tiny_lfu_test.cpp): the eviction order of
// the inactive pool, for every backend (spec section 7, DESIGN section 8). The backends, hashes
// with readable names, put/insert/hit/drain/evict helpers, white-box reads through the test
// hooks (a slot's MultiLRU level, the sketch's estimate of a hash) and the in-test models
// (SketchModel, PoolModel) the property tests compare against.
//
// Eviction order is observed black-box: register blocks, drop them (-> Inactive), then
// allocate_blocks_with_evictions(n) once the free list is empty returns the victims' hashes in
// eviction order. verify() is checked along the way.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "kvbm/kvbm.hpp"

#include "attachment.hpp"
#include "eviction/backend.hpp"
#include "eviction/tiny_lfu.hpp"
#include "segment/segment.hpp"
#include "support/temp_segment.hpp"
#include "testing/hooks.hpp"

namespace Catch {
template <>
struct StringMaker<kvbm::SequenceHash> {
  static std::string convert(const kvbm::SequenceHash& h) { return h.to_string(); }
};
}  // namespace Catch

namespace eviction_test {

using kvbm::BlockId;
using kvbm::BlockManager;
using kvbm::CompleteBlock;
using kvbm::DuplicationPolicy;
using kvbm::EvictionPolicy;
using kvbm::ImmutableBlock;
using kvbm::LineageOrder;
using kvbm::MutableBlock;
using kvbm::SegmentConfig;
using kvbm::SequenceHash;
using kvbm::WeakBlock;
using kvbm::testing::Child;
using kvbm::testing::Peer;
using kvbm::testing::Signal;
using kvbm::testing::TempSegment;

using Order = std::vector<std::string>;

constexpr std::uint32_t kBs = 16;
constexpr char kReady = 'R';
constexpr char kFailed = 'F';

// ---------------------------------------------------------------------------------------------
// Backends and segments
// ---------------------------------------------------------------------------------------------

struct Backend {
  const char* name;
  EvictionPolicy policy;
  LineageOrder order;
  bool lineage() const { return policy == EvictionPolicy::kLineage; }
  bool lineage_fifo() const { return lineage() && order == LineageOrder::kFifo; }
  bool lineage_tick() const { return lineage() && order == LineageOrder::kTick; }
};

constexpr Backend kLru{"lru", EvictionPolicy::kLru, LineageOrder::kTick};
constexpr Backend kFifo{"fifo", EvictionPolicy::kFifo, LineageOrder::kTick};
constexpr Backend kMulti{"multi-lru", EvictionPolicy::kMultiLru, LineageOrder::kTick};
constexpr Backend kTick{"lineage/tick", EvictionPolicy::kLineage, LineageOrder::kTick};
constexpr Backend kLeafFifo{"lineage/fifo", EvictionPolicy::kLineage, LineageOrder::kFifo};
constexpr std::array<Backend, 5> kBackends{kLru, kFifo, kMulti, kTick, kLeafFifo};

inline SegmentConfig config_for(const TempSegment& seg,
                                std::uint32_t blocks,
                                const Backend& be,
                                std::array<std::uint8_t, 3> thresholds = {3, 8, 15},
                                std::uint32_t frequency_capacity = 1u << 16) {
  SegmentConfig c = seg.config(blocks);
  c.block_size = kBs;
  c.eviction = be.policy;
  c.lineage_order = be.order;
  c.multi_lru_thresholds = thresholds;
  c.frequency_capacity = frequency_capacity;
  return c;
}

inline std::string join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) {
    out += l;
    out += '\n';
  }
  return out;
}

#define KVBM_CLEAN(m)                    \
  do {                                   \
    const auto problems_ = (m).verify(); \
    INFO(join(problems_));               \
    CHECK(problems_.empty());            \
  } while (false)

// ---------------------------------------------------------------------------------------------
// Hashes
// ---------------------------------------------------------------------------------------------

inline SequenceHash root(std::uint64_t current) {
  return SequenceHash::make(current, std::nullopt, 0);
}

/// The block after `parent` in its sequence: child.parent_fragment() == parent.current_fragment().
inline SequenceHash child(std::uint64_t current, SequenceHash parent) {
  return SequenceHash::make(current, parent.current_fragment(), parent.position() + 1);
}

/// Human-readable names for the hashes of a test, so orders print as {"B", "A", ...}.
class Names {
 public:
  SequenceHash operator()(std::string name, SequenceHash h) {
    names_[h] = std::move(name);
    return h;
  }
  std::string of(SequenceHash h) const {
    auto it = names_.find(h);
    return it == names_.end() ? "?" + h.to_string() : it->second;
  }
  Order of(const std::vector<SequenceHash>& hs) const {
    Order out;
    for (const auto& h : hs) {
      out.push_back(of(h));
    }
    return out;
  }

 private:
  std::unordered_map<SequenceHash, std::string> names_;
};

// ---------------------------------------------------------------------------------------------
// Operations (they throw instead of using Catch, so forked children can use them too)
// ---------------------------------------------------------------------------------------------

[[noreturn]] inline void fail(const std::string& what) {
  throw std::runtime_error(what);
}

inline std::span<const SequenceHash> one(const SequenceHash& h) {
  return {&h, 1};
}

/// Registers `h` on a block from the free list (it must not evict anything).
inline ImmutableBlock put(BlockManager& m, SequenceHash h) {
  auto got = m.allocate_blocks_with_evictions(1);
  if (!got) {
    fail("put: no block available");
  }
  if (!got->second.empty()) {
    fail("put: allocation evicted " + got->second.front().to_string());
  }
  auto staged = std::move(got->first.front()).stage(h, m.block_size());
  if (!staged) {
    fail("put: stage failed");
  }
  return m.register_block(std::move(*staged));
}

/// Register and drop: the block enters the inactive pool now. Returns its block id.
inline BlockId insert(BlockManager& m, SequenceHash h) {
  return put(m, h).block_id();
}

/// A cache hit through match_blocks (touches the sketch once); the block is held while the
/// result lives.
inline ImmutableBlock hit(BlockManager& m, SequenceHash h) {
  auto got = m.match_blocks(one(h));
  if (got.size() != 1) {
    fail("hit: " + h.to_string() + " is not cached");
  }
  return std::move(got.front());
}

/// Evicts everything evictable, in one call: the victims in eviction order.
inline std::vector<SequenceHash> drain(BlockManager& m) {
  const std::size_t n = m.available_blocks();
  auto got = m.allocate_blocks_with_evictions(n);
  if (!got) {
    fail("drain: allocation failed");
  }
  return std::move(got->second);
}

/// Evicts exactly `n` blocks and keeps them (and whatever the free list held, taken first)
/// allocated in `keep`: the victims in eviction order.
inline std::vector<SequenceHash> evict(BlockManager& m,
                                       std::size_t n,
                                       std::vector<MutableBlock>& keep) {
  if (const std::size_t free = m.counts().reset; free > 0) {
    auto reset = m.allocate_blocks(free);
    if (!reset) {
      fail("evict: cannot take the free list");
    }
    for (auto& b : *reset) {
      keep.push_back(std::move(b));
    }
  }
  auto got = m.allocate_blocks_with_evictions(n);
  if (!got) {
    fail("evict: allocation failed");
  }
  for (auto& b : got->first) {
    keep.push_back(std::move(b));
  }
  return std::move(got->second);
}

inline std::int64_t metric(const BlockManager& m, std::string_view name) {
  auto v = m.metrics().get(name);
  REQUIRE(v.has_value());
  return *v;
}

// --- white-box reads through the test hooks ---

/// The MultiLRU level recorded in slot `id` when it entered the inactive pool.
inline int level_of(BlockManager& m, BlockId id) {
  auto& att = Peer::attachment(m);
  auto lock = att.lock();
  return att.segment().slots()[id].level;
}

/// The sketch's estimate of `h` (MultiLRU segments only).
inline std::uint32_t estimate_of(BlockManager& m, SequenceHash h) {
  auto& att = Peer::attachment(m);
  auto lock = att.lock();
  REQUIRE(att.segment().sketch() != nullptr);
  return kvbm::detail::TinyLfu(att.segment().sketch()).estimate(h.hi(), h.lo());
}

/// Blocks the lineage backend keeps outside its tree (key taken, or no free node).
inline std::uint64_t lineage_overflow(BlockManager& m) {
  auto& att = Peer::attachment(m);
  auto lock = att.lock();
  REQUIRE(att.segment().lineage() != nullptr);
  return att.segment().lineage()->overflow.length;
}

/// A frequency event that bypasses every public call (to touch a hash while it is inactive).
inline void touch_directly(BlockManager& m, SequenceHash h) {
  auto& att = Peer::attachment(m);
  auto lock = att.lock();
  kvbm::detail::TinyLfu(att.segment().sketch()).increment(h.hi(), h.lo());
}

/// A forked child opens the segment, takes the store mutex and is SIGKILLed holding it.
inline void crash_holding_store_mutex(const std::string& name) {
  Signal ready;
  Child child([&ready, name]() -> int {
    ::alarm(20);
    auto o = BlockManager::open(name);
    if (!o) {
      ready.notify(kFailed);
      return 1;
    }
    Peer::lock_store_and_hold(**o);
    ready.notify(kReady);
    for (;;) {
      ::pause();
    }
  });
  REQUIRE(ready.wait() == kReady);
  child.kill();
}

/// After crash_holding_store_mutex: the next call recovers; the dead entry is then reaped.
inline void expect_one_recovery(BlockManager& m) {
  CHECK(metric(m, "kvbm_recoveries_total") == 1);  // this call ran the recovery
  CHECK(m.reap_dead_processes() == 1);
  KVBM_CLEAN(m);
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/// TinyLFU written from spec 7.7 alone: 4-bit counters packed 16 per u64, table of
/// max(1, capacity/4) words, four XXH3-64 hashes of the u128 key's little-endian bytes with the
/// secrets derived from seeds 0..3 (seed 0 = the default secret), index = hash % len,
/// counter = the hash's top 4 bits (kvbm's fix of spec 7.7's `hash & 15`, see
/// src/eviction/tiny_lfu.cpp), halving after capacity*10 growing increments.
class SketchModel {
 public:
  explicit SketchModel(std::uint32_t capacity)
      : table_(std::max<std::size_t>(1, capacity / 4), 0),
        sample_(std::min<std::uint64_t>(std::uint64_t{capacity} * 10, 0xFFFFFFFFull)) {
    for (unsigned i = 1; i < 4; ++i) {
      XXH3_generateSecret_fromSeed(secrets_[i - 1].data(), i);
    }
  }

  void increment(SequenceHash k) {
    bool grew = false;
    for (unsigned i = 0; i < 4; ++i) {
      const std::uint64_t h = hash(i, k);
      std::uint64_t& word = table_[h % table_.size()];
      const unsigned shift = static_cast<unsigned>(h >> 60) * 4;
      if (((word >> shift) & 0xF) < 15) {
        word += std::uint64_t{1} << shift;
        grew = true;
      }
    }
    if (grew && ++size_ >= sample_) {
      std::uint64_t odd = 0;
      for (auto& w : table_) {
        odd += static_cast<std::uint64_t>(__builtin_popcountll(w & 0x1111111111111111ull));
        w = (w >> 1) & 0x7777777777777777ull;
      }
      size_ = (size_ >> 1) > (odd >> 2) ? (size_ >> 1) - (odd >> 2) : 0;
      ++halvings_;
    }
  }

  std::uint32_t estimate(SequenceHash k) const {
    std::uint32_t m = 15;
    for (unsigned i = 0; i < 4; ++i) {
      const std::uint64_t h = hash(i, k);
      m = std::min(
          m, static_cast<std::uint32_t>((table_[h % table_.size()] >> ((h >> 60) * 4)) & 0xF));
    }
    return m;
  }

  int halvings() const { return halvings_; }

 private:
  std::uint64_t hash(unsigned i, SequenceHash k) const {
    unsigned char bytes[16];
    for (int b = 0; b < 8; ++b) {
      bytes[b] = static_cast<unsigned char>(k.lo() >> (8 * b));
      bytes[8 + b] = static_cast<unsigned char>(k.hi() >> (8 * b));
    }
    return i == 0 ? XXH3_64bits(bytes, sizeof(bytes))
                  : XXH3_64bits_withSecret(bytes, sizeof(bytes), secrets_[i - 1].data(),
                                           secrets_[i - 1].size());
  }

  std::vector<std::uint64_t> table_;
  std::uint64_t sample_;
  std::uint64_t size_ = 0;
  int halvings_ = 0;
  std::array<std::array<unsigned char, XXH3_SECRET_DEFAULT_SIZE>, 3> secrets_{};
};

/// The inactive pool of one backend, as simply as the spec states it.
///  - LRU / FIFO: the victim is the entry that entered the pool first.
///  - MultiLRU: level fixed at entry from the sketch (f < t1 -> 0, < t2 -> 1, < t3 -> 2, else 3);
///    the victim is the oldest entry of the lowest level.
///  - Lineage: nodes keyed (position, current fragment): a Real node per cached hash, ghosts as
///    spec 7.5 keeps them (a placeholder for a missing parent, not linked upwards; a removed node
///    with children stays, linked). Leaves are recomputed by brute force after every change:
///    Real nodes with no node linked below them. Tick: the victim is the leaf with the smallest
///    entry tick. FIFO: the leaf that became a leaf first.
class PoolModel {
 public:
  PoolModel(const Backend& be, std::array<std::uint8_t, 3> t, std::uint32_t capacity)
      : be_(be), t_(t), sketch_(capacity) {}

  void touch(SequenceHash h) { sketch_.increment(h); }
  const SketchModel& sketch() const { return sketch_; }
  bool cached(SequenceHash h) const { return entries_.count(h) != 0; }
  std::size_t size() const { return entries_.size(); }
  int ambiguous() const { return ambiguous_; }
  /// Coverage: hits on nodes with children (they stay as ghosts), the most ghosts at once, the
  /// MultiLRU levels used (bit mask).
  int interior_hits() const { return interior_hits_; }
  std::size_t max_ghosts() const { return max_ghosts_; }
  unsigned levels_used() const { return levels_used_; }

  int level_for(SequenceHash h) const {
    const std::uint32_t f = sketch_.estimate(h);
    return f < t_[0] ? 0 : f < t_[1] ? 1 : f < t_[2] ? 2 : 3;
  }

  void insert(SequenceHash h) {
    Entry e{++clock_, be_.policy == EvictionPolicy::kMultiLru ? level_for(h) : 0};
    entries_[h] = e;
    levels_used_ |= 1u << e.level;
    if (!be_.lineage()) {
      return;
    }
    const Key k = key(h);
    Node& n = nodes_[k];  // a ghost comes back, or a new node
    n.real = true;
    n.hash = h;
    if (k.pos > 0 && !n.linked) {
      const Key pk{k.pos - 1, h.parent_fragment()};
      nodes_.try_emplace(pk);  // a ghost placeholder when absent
      n.linked = true;
      n.parent_fragment = h.parent_fragment();
    }
    refresh_leaves();
  }

  void remove(SequenceHash h) {
    entries_.erase(h);
    if (!be_.lineage()) {
      return;
    }
    Key cur = key(h);
    nodes_.at(cur).real = false;
    interior_hits_ += has_child(cur) ? 1 : 0;
    for (;;) {  // prune childless ghosts upwards
      auto it = nodes_.find(cur);
      if (it->second.real || has_child(cur)) {
        break;
      }
      const bool linked = it->second.linked;
      const Key parent{cur.pos - 1, it->second.parent_fragment};
      nodes_.erase(it);
      if (!linked) {
        break;
      }
      cur = parent;
    }
    refresh_leaves();
  }

  std::optional<SequenceHash> pop() {
    std::optional<SequenceHash> victim;
    if (!be_.lineage()) {
      std::pair<int, std::uint64_t> best{99, 0};
      for (const auto& [h, e] : entries_) {
        const std::pair<int, std::uint64_t> rank{e.level, e.tick};
        if (!victim || rank < best) {
          best = rank;
          victim = h;
        }
      }
    } else {
      std::uint64_t best = 0;
      for (const Key& k : leaves_) {
        const SequenceHash h = nodes_.at(k).hash;
        const std::uint64_t rank = be_.lineage_fifo() ? leaf_since_.at(k) : entries_.at(h).tick;
        if (!victim || rank < best) {
          best = rank;
          victim = h;
        }
      }
    }
    if (victim) {
      remove(*victim);
    }
    return victim;
  }

 private:
  struct Entry {
    std::uint64_t tick;
    int level;
  };
  struct Key {
    std::uint32_t pos;
    std::uint64_t frag;
    auto operator<=>(const Key&) const = default;
  };
  struct Node {
    bool real = false;
    bool linked = false;
    std::uint64_t parent_fragment = 0;
    SequenceHash hash;
  };

  static Key key(SequenceHash h) { return Key{h.position(), h.current_fragment()}; }

  bool has_child(const Key& k) const {
    for (const auto& [ck, c] : nodes_) {
      if (c.linked && ck.pos == k.pos + 1 && c.parent_fragment == k.frag) {
        return true;
      }
    }
    return false;
  }

  void refresh_leaves() {
    std::set<Key> now;
    for (const auto& [k, n] : nodes_) {
      if (n.real && !has_child(k)) {
        now.insert(k);
      }
    }
    int fresh = 0;
    for (const Key& k : now) {
      if (leaves_.count(k) == 0) {
        leaf_since_[k] = ++clock_;
        ++fresh;
      }
    }
    if (fresh > 1) {
      ++ambiguous_;  // two leaves appeared in one step: the model cannot order them
    }
    for (const Key& k : leaves_) {
      if (now.count(k) == 0) {
        leaf_since_.erase(k);
      }
    }
    leaves_ = std::move(now);
    std::size_t ghosts = 0;
    for (const auto& [k, n] : nodes_) {
      ghosts += n.real ? 0 : 1;
    }
    max_ghosts_ = std::max(max_ghosts_, ghosts);
  }

  Backend be_;
  std::array<std::uint8_t, 3> t_;
  SketchModel sketch_;
  std::uint64_t clock_ = 0;
  int ambiguous_ = 0;
  int interior_hits_ = 0;
  std::size_t max_ghosts_ = 0;
  unsigned levels_used_ = 0;
  std::unordered_map<SequenceHash, Entry> entries_;
  std::map<Key, Node> nodes_;
  std::set<Key> leaves_;
  std::map<Key, std::uint64_t> leaf_since_;
};

}  // namespace eviction_test

using namespace eviction_test;  // NOLINT: shared by the eviction_test topic files
