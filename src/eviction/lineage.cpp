// SPDX-License-Identifier: Apache-2.0
// Lineage backend (spec 7.5): evicts only leaves of the prefix tree of Inactive blocks, so a
// cached prefix is never broken in the middle while its extensions survive.
//  - Nodes are keyed by (position, current fragment); a block's parent is the node at
//    (position - 1, its parent fragment), created as a ghost placeholder when absent.
//  - Removing a Real node (hit or eviction) turns it into a ghost; childless ghosts are pruned
//    upward iteratively (deep chains never recurse), and a Real parent left without children
//    becomes a leaf again.
//  - Leaf order Tick: smallest tick first, where a block's tick is when it entered the pool (kept
//    when it becomes a leaf again, so whole chains go tip to root). Leaf order FIFO: the order in
//    which nodes became leaves (a re-leafed node goes to the back; its slot tick is renewed so
//    rebuild() restores the same order).
//  - Full-hash identity: a block whose key is taken by a Real node of another hash (a fragment
//    collision) or that finds no free node is kept in an overflow list: cached, evictable first.
//
//
// What an eviction costs (Tick order, the default):
//  - The leaves are a 4-ary heap of (tick, slot) entries, so sifting reads only the heap array.
//    A leaf's heap index and its node are kept in its slot's derived prev/next links.
//  - A leaf that leaves the heap leaves a hole, which its parent fills if the parent becomes a
//    leaf (else the last entry does); one comparison with the entry that left tells which way
//    to sift. A chain evicted tip to root (each parent older than its tip, which was the
//    smallest) costs O(1) heap work per block, where removing the tip and pushing the parent
//    cost two sifts of the whole height.
//  - Key-index buckets record each entry's distance from its home bucket, so probes and
//    deletions never read a node other than the one looked for.
//  - The victim's key bucket is the one random access of an eviction that the store does not
//    prefetch: it is prefetched a few victims ahead along the chain.
#include <algorithm>

#include <fmt/format.h>

#include "kvbm/sequence_hash.hpp"

#include "eviction/backend.hpp"
#include "segment/damage.hpp"
#include "segment/segment.hpp"
#include "segment/slot_list.hpp"

namespace kvbm::detail {
namespace {

using kvbm::SequenceHash;
using shm::kNil;
using shm::LineageHeapEntry;
using shm::LineageNode;
using shm::NodeKind;

constexpr std::uint64_t kArity = shm::kLineageHeapArity;
constexpr std::uint64_t kNoHole = ~std::uint64_t{0};
// How many evictions ahead pop_victim() prefetches a victim's key-index bucket: far enough for
// the load to finish during the store's work on the evictions in between.
constexpr std::uint32_t kKeyPrefetchAhead = 2;
constexpr std::uint32_t kKeyNodeMask = (1u << shm::kLineageKeyNodeBits) - 1;
constexpr std::uint32_t kKeyDispMax = kNil >> shm::kLineageKeyNodeBits;  // and beyond

std::uint64_t key_mix(std::uint32_t position, std::uint64_t fragment) {
  std::uint64_t x = fragment ^ (std::uint64_t{position} * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

std::uint32_t key_home(std::uint32_t position, std::uint64_t fragment, std::uint32_t buckets) {
  return static_cast<std::uint32_t>(
      (static_cast<unsigned __int128>(key_mix(position, fragment)) * buckets) >> 64);
}

/// Heap order: smallest tick first; equal ticks (never produced by the store, which hands out
/// each tick once) by slot, which a rebuild reproduces.
bool before(const LineageHeapEntry& a, const LineageHeapEntry& b) {
  const std::uint64_t ta = a.tick(), tb = b.tick();
  return ta != tb ? ta < tb : a.slot < b.slot;
}

class LineageBackend final : public InactiveBackend {
 public:
  LineageBackend(Segment& seg, SlotLogger log)
      : h_(seg.lineage()),
        geo_(lineage_geometry(seg.block_count())),
        nodes_(reinterpret_cast<LineageNode*>(reinterpret_cast<std::byte*>(h_) + geo_.nodes)),
        keys_(reinterpret_cast<std::uint32_t*>(reinterpret_cast<std::byte*>(h_) + geo_.keys)),
        heap_(reinterpret_cast<LineageHeapEntry*>(reinterpret_cast<std::byte*>(h_) + geo_.heap)),
        slots_(seg.slots()),
        ctl_(seg.control()),
        n_(seg.block_count()),
        fifo_(seg.config().lineage_order == LineageOrder::kFifo),
        log_(std::move(log)) {}

  // Checked access to everything the region links by index (segment/damage.hpp): a damaged
  // link is recorded and replaced by a safe index, never followed outside the region.
  LineageNode& nd(std::uint64_t n) const {
    return nodes_[checked(n < geo_.capacity ? static_cast<std::uint32_t>(n) : shm::kNil,
                          geo_.capacity, "lineage node link")];
  }
  LineageHeapEntry& hp(std::uint64_t i) const {
    return heap_[checked(i < geo_.heap_capacity ? static_cast<std::uint32_t>(i) : shm::kNil,
                         geo_.heap_capacity, "lineage heap index")];
  }
  shm::SlotMeta& sl(std::uint64_t s) const {
    return slots_[checked(s < n_ ? static_cast<std::uint32_t>(s) : shm::kNil, n_,
                          "lineage slot link")];
  }
  std::uint64_t heap_len() const {
    const std::uint64_t len = h_->heap_len;
    return len <= geo_.heap_capacity
               ? len
               : (note_damage("lineage heap length", len, geo_.heap_capacity), 0);
  }

  void insert(std::uint32_t slot) override { insert_node(slot, /*renew_ticks=*/true); }

  void remove(std::uint32_t slot) override {  // a hit: the block leaves the pool, held
    sl(slot).backend_flags = 0;
    const std::uint32_t n = node_of(slot);
    if (n == kNil) {
      overflow_unlink(slot);
      return;
    }
    remove_node(n);
    if (nd(n).kind() == NodeKind::kGhost) {
      // It keeps its children as a ghost linked to its parent: remember that in the slot, so a
      // rebuild links the ghost again while the block is held.
      sl(slot).backend_flags = shm::kLineageGhostLinked;
    }
  }

  std::uint32_t pop_victim() override {
    if (h_->overflow.head != kNil) {
      const std::uint32_t s = h_->overflow.head;
      overflow_unlink(s);
      return s;
    }
    if (fifo_) {
      const std::uint32_t s = h_->leaves.head;
      const std::uint32_t n = s == kNil ? kNil : node_of(s);
      if (n == kNil) {
        return kNil;  // empty (or a damaged order, which verify() reports)
      }
      remove_node(n);
      // FIFO finds a victim's node through its key: start loading the key-index bucket of a
      // victim a few evictions ahead (the store's peek_victim has read its slot already).
      if (const std::uint32_t later = walk_list(h_->leaves.head, kKeyPrefetchAhead - 1);
          later != kNil) {
        const SequenceHash h = hash_of(later);
        __builtin_prefetch(&keys_[home(h.position(), h.current_fragment())], 1);
      }
      return s;
    }
    if (h_->heap_len == 0) {
      return kNil;
    }
    const std::uint32_t s = hp(0).slot;
    const std::uint32_t n = sl(s).next;  // a Tick leaf's node (verify() checks it)
    if (n >= geo_.capacity) {
      return kNil;  // a damaged order, which verify() reports
    }
    const std::uint32_t parent = evict_only_child(n, s);
    if (parent == kNil) {
      remove_node(n);
    } else if (const std::uint32_t later = chain_ahead(parent, kKeyPrefetchAhead - 1);
               later != kNil) {
      // Erasing a victim's key reads a random key-index bucket, the one cache miss of an
      // eviction that nothing else prefetches: start loading the bucket of the victim a few
      // evictions ahead along this chain (its nodes are at hand).
      __builtin_prefetch(&keys_[home_of(later)], 1);
    }
    return s;
  }

  std::uint32_t peek_victim(std::uint32_t ahead) const override {
    // Only where it is cheap to tell: along the overflow list or the FIFO leaf list, and in
    // Tick order along a chain being evicted tip to root.
    if (h_->overflow.head != kNil) {
      return walk_list(h_->overflow.head, ahead);
    }
    if (fifo_) {
      return walk_list(h_->leaves.head, ahead);
    }
    if (h_->heap_len == 0) {
      return kNil;
    }
    const std::uint32_t n = chain_ahead(sl(hp(0).slot).next, ahead);
    const std::uint32_t s = n == kNil ? kNil : nd(n).slot;  // kNil for a ghost
    return s < n_ ? s : kNil;
  }

  std::uint64_t size() const override { return h_->real_count + h_->overflow.length; }

  void rebuild() override {
    reset_region(h_, geo_);
    const std::vector<std::uint32_t> ids = slots_by_tick(slots_, n_, shm::SlotState::kInactive);
    for (std::uint32_t s : ids) {
      if ((sl(s).backend_flags & shm::kLineageOverflow) != 0) {
        overflow_push(s);
      } else {
        insert_node(s, /*renew_ticks=*/false);
      }
    }
    // Held blocks that left the pool with children: their ghosts are linked to their parents.
    // Deepest first, so a parent's ghost exists (as a placeholder) before it is linked in turn.
    std::vector<std::uint32_t> linked;
    for (std::uint32_t s = 0; s < n_; ++s) {
      if (sl(s).state == static_cast<std::uint8_t>(shm::SlotState::kPrimary) &&
          (sl(s).backend_flags & shm::kLineageGhostLinked) != 0) {
        linked.push_back(s);
      }
    }
    std::sort(linked.begin(), linked.end(), [this](std::uint32_t a, std::uint32_t b) {
      return hash_of(a).position() > hash_of(b).position();
    });
    for (std::uint32_t s : linked) {
      const SequenceHash h = hash_of(s);
      const std::uint32_t n = key_find(h.position(), h.current_fragment());
      if (n == kNil || nd(n).kind() != NodeKind::kGhost || nd(n).parent != kNil ||
          h.position() == 0) {
        continue;
      }
      std::uint32_t p = key_find(h.position() - 1, h.parent_fragment());
      if (p == kNil) {
        p = alloc_node(h.position() - 1, h.parent_fragment(), NodeKind::kGhost, kNil);
      }
      if (p != kNil) {
        link_child(p, n);
      }
    }
    // Ghosts left without children (stale flags) go, as they would have at runtime.
    for (std::uint32_t n = 0; n < geo_.capacity; ++n) {
      if (nd(n).kind() == NodeKind::kGhost && nd(n).first_child == kNil) {
        prune_from(n, /*renew_ticks=*/false);
      }
    }
    // Leaf order from scratch: every Real node without children, by its slot's tick.
    h_->heap_len = h_->leaf_count = 0;
    h_->leaves = shm::SlotList{kNil, kNil, 0};
    std::vector<std::uint32_t> leaves;
    for (std::uint32_t n = 0; n < geo_.capacity; ++n) {
      LineageNode& node = nd(n);
      node.set_leaf(false);
      if (node.kind() == NodeKind::kReal) {
        sl(node.slot).prev = kNil;
        if (!fifo_) {
          sl(node.slot).next = n;
        } else {
          sl(node.slot).next = kNil;
        }
        if (node.first_child == kNil) {
          leaves.push_back(n);
        }
      }
    }
    std::sort(leaves.begin(), leaves.end(), [this](std::uint32_t a, std::uint32_t b) {
      return before(entry_of(a), entry_of(b));
    });
    for (std::uint32_t n : leaves) {
      leaf_add(n, /*renew_ticks=*/false);
    }
  }

  void verify(std::vector<std::string>& problems, WalkPacer& pacer) const override;

  static void reset_region(shm::LineageHeader* h, const shm::LineageGeometry& geo) {
    auto* base = reinterpret_cast<std::byte*>(h);
    auto* nodes = reinterpret_cast<LineageNode*>(base + geo.nodes);
    auto* keys = reinterpret_cast<std::uint32_t*>(base + geo.keys);
    h->capacity = geo.capacity;
    h->key_capacity = geo.key_capacity;
    h->heap_capacity = geo.heap_capacity;
    for (std::uint32_t i = 0; i < geo.capacity; ++i) {
      nodes[i] = LineageNode{};
      nodes[i].set_kind(NodeKind::kFree);
      nodes[i].slot = nodes[i].parent = nodes[i].first_child = nodes[i].prev_sibling = kNil;
      nodes[i].next_sibling = i + 1 < geo.capacity ? i + 1 : kNil;
    }
    std::fill(keys, keys + geo.key_capacity, kNil);
    h->free_head = geo.capacity > 0 ? 0 : kNil;
    h->real_count = h->heap_len = h->leaf_count = 0;
    h->leaves = shm::SlotList{kNil, kNil, 0};
    h->overflow = shm::SlotList{kNil, kNil, 0};
  }

 private:
  SequenceHash hash_of(std::uint32_t slot) const {
    return SequenceHash::from_parts(sl(slot).hash_hi, sl(slot).hash_lo);
  }

  // --- key index (linear probing, backward-shift deletion) ---
  // A bucket holds a node index and that entry's distance from its home bucket (saturated at
  // kKeyDispMax): so a probe skips entries of another home, and a backward shift moves
  // entries, without reading their nodes (random cache misses in a large pool). Only an entry
  // of the same home (almost always the one looked for) or a saturated one is read.
  std::uint32_t home(std::uint32_t position, std::uint64_t fragment) const {
    return key_home(position, fragment, geo_.key_capacity);
  }
  std::uint32_t home_of(std::uint32_t n) const { return home(nd(n).position(), nd(n).fragment); }
  std::uint32_t next(std::uint32_t i) const { return i + 1 == geo_.key_capacity ? 0 : i + 1; }
  /// Probe distance from bucket `from` to bucket `to` (cyclic).
  std::uint32_t dist(std::uint32_t from, std::uint32_t to) const {
    return to >= from ? to - from : to + geo_.key_capacity - from;
  }
  static std::uint32_t bucket(std::uint32_t n, std::uint32_t disp) {
    return n | std::min(disp, kKeyDispMax) << shm::kLineageKeyNodeBits;
  }
  static std::uint32_t bucket_node(std::uint32_t b) { return b & kKeyNodeMask; }
  static std::uint32_t bucket_disp(std::uint32_t b) { return b >> shm::kLineageKeyNodeBits; }

  std::uint32_t key_find(std::uint32_t position, std::uint64_t fragment) const {
    // Bounded, so that verify() on a damaged region (kvbm-ctl) cannot loop forever.
    std::uint32_t i = home(position, fragment);
    for (std::uint32_t d = 0; d < geo_.key_capacity; ++d, i = next(i)) {
      const std::uint32_t b = keys_[i];
      if (b == kNil) {
        return kNil;
      }
      const std::uint32_t bd = bucket_disp(b);
      if (bd == d || (bd == kKeyDispMax && d > kKeyDispMax)) {  // may have this home
        const std::uint32_t n = bucket_node(b);
        if (n < geo_.capacity && nd(n).fragment == fragment && nd(n).position() == position) {
          return n;
        }
      }
    }
    return kNil;
  }
  void key_insert(std::uint32_t n) {
    std::uint32_t i = home_of(n);
    std::uint32_t d = 0;
    while (keys_[i] != kNil) {
      if (!within(d, geo_.key_capacity, "lineage key index probe length")) {
        return;
      }
      i = next(i);
      ++d;
    }
    keys_[i] = bucket(n, d);
  }
  void key_erase(std::uint32_t n) {
    std::uint32_t i = home_of(n);
    for (std::uint32_t d = 0; bucket_node(keys_[i]) != n; ++d, i = next(i)) {
      if (keys_[i] == kNil || d == geo_.key_capacity) {
        return;
      }
    }
    std::uint32_t hole = i;
    std::uint32_t steps = 0;
    for (std::uint32_t j = next(hole);
         keys_[j] != kNil && within(++steps, geo_.key_capacity, "lineage key index cluster");
         j = next(j)) {
      const std::uint32_t b = keys_[j];
      std::uint32_t d = bucket_disp(b);
      if (d == kKeyDispMax) {
        d = dist(home_of(bucket_node(b)), j);  // saturated: the node knows
      }
      // Movable into the hole unless its home lies cyclically in (hole, j].
      if (d >= dist(hole, j)) {
        keys_[hole] = bucket(bucket_node(b), d - dist(hole, j));
        hole = j;
      }
    }
    keys_[hole] = kNil;
  }

  // --- nodes ---
  std::uint32_t alloc_node(std::uint32_t position,
                           std::uint64_t fragment,
                           NodeKind kind,
                           std::uint32_t slot) {
    const std::uint32_t n = h_->free_head;
    if (n == kNil) {
      return kNil;
    }
    h_->free_head = nd(n).next_sibling;
    LineageNode& node = nd(n);
    node.fragment = fragment;
    node.bits = position;
    node.set_kind(kind);
    node.slot = slot;
    node.parent = node.first_child = node.next_sibling = node.prev_sibling = kNil;
    key_insert(n);
    return n;
  }
  void free_node(std::uint32_t n) {
    key_erase(n);
    nd(n).bits = 0;
    nd(n).set_kind(NodeKind::kFree);
    nd(n).slot = kNil;
    nd(n).next_sibling = h_->free_head;
    h_->free_head = n;
  }
  /// Slot `ahead` steps after `s` in a list through the slots, kNil past its end.
  std::uint32_t walk_list(std::uint32_t s, std::uint32_t ahead) const {
    for (; ahead > 0 && s != kNil; --ahead) {
      s = sl(s).next;
    }
    return s;
  }
  /// Tick order, for prefetching only: the node `steps` evictions after leaf `n` if a chain is
  /// being evicted tip to root (each eviction making the parent a leaf, older than the rest).
  /// It does not check that: a wrong guess costs a useless prefetch, a check costs every time.
  std::uint32_t chain_ahead(std::uint32_t n, std::uint32_t steps) const {
    for (; steps > 0 && n < geo_.capacity; --steps) {
      n = nd(n).parent;
    }
    return n < geo_.capacity ? n : kNil;
  }

  /// The tree node of an Inactive slot, kNil if it is in the overflow list. Tick order keeps it
  /// in the slot; FIFO order uses both slot links for the leaf list, so looks the key up.
  std::uint32_t node_of(std::uint32_t slot) const {
    if (!fifo_) {
      const std::uint32_t n = sl(slot).next;
      return n < geo_.capacity && nd(n).kind() == NodeKind::kReal && nd(n).slot == slot ? n : kNil;
    }
    const SequenceHash h = hash_of(slot);
    const std::uint32_t n = key_find(h.position(), h.current_fragment());
    return n != kNil && nd(n).kind() == NodeKind::kReal && nd(n).slot == slot ? n : kNil;
  }

  void insert_node(std::uint32_t slot, bool renew_ticks) {
    const SequenceHash h = hash_of(slot);
    const std::uint32_t pos = h.position();
    std::uint32_t n = key_find(pos, h.current_fragment());
    if (n != kNil && nd(n).kind() == NodeKind::kReal) {
      overflow_push(slot);  // same key, another hash: never matched as its lineage
      return;
    }
    if (n != kNil) {  // a ghost placeholder (or a removed node with children) comes back
      nd(n).set_kind(NodeKind::kReal);
      nd(n).slot = slot;
    } else {
      n = alloc_node(pos, h.current_fragment(), NodeKind::kReal, slot);
      if (n == kNil) {
        overflow_push(slot);
        return;
      }
    }
    sl(slot).backend_flags = 0;
    sl(slot).prev = kNil;
    sl(slot).next = fifo_ ? kNil : n;
    ++h_->real_count;
    if (pos > 0 && nd(n).parent == kNil) {
      std::uint32_t p = key_find(pos - 1, h.parent_fragment());
      if (p == kNil) {
        p = alloc_node(pos - 1, h.parent_fragment(), NodeKind::kGhost, kNil);
      }
      if (p != kNil) {
        link_child(p, n);
      }
    }
    if (nd(n).first_child == kNil) {
      leaf_add(n, renew_ticks);
    }
  }

  void link_child(std::uint32_t p, std::uint32_t c) {
    LineageNode& parent = nd(p);
    if (parent.is_leaf()) {
      leaf_remove(p);  // a Real leaf that gets a child is interior now
    }
    nd(c).parent = p;
    nd(c).prev_sibling = kNil;
    nd(c).next_sibling = parent.first_child;
    if (parent.first_child != kNil) {
      nd(parent.first_child).prev_sibling = c;
    }
    parent.first_child = c;
  }

  void unlink_child(std::uint32_t c) {
    LineageNode& node = nd(c);
    if (node.prev_sibling != kNil) {
      nd(node.prev_sibling).next_sibling = node.next_sibling;
    } else if (node.parent != kNil) {
      nd(node.parent).first_child = node.next_sibling;
    }
    if (node.next_sibling != kNil) {
      nd(node.next_sibling).prev_sibling = node.prev_sibling;
    }
    node.parent = node.prev_sibling = node.next_sibling = kNil;
  }

  /// Tick order, the eviction of leaf `n` (slot `s`, at the heap root) when it is the only
  /// child of a Real parent: every eviction of a chain but the last. Does what remove_node()
  /// does in that case, in fewer steps: `n` goes, and its parent, now a leaf, takes its place in
  /// the heap. Returns the parent, or kNil (nothing done) in any other case.
  std::uint32_t evict_only_child(std::uint32_t n, std::uint32_t s) {
    LineageNode& node = nd(n);
    const std::uint32_t p = node.parent;
    if (p == kNil || node.prev_sibling != kNil || node.next_sibling != kNil ||
        nd(p).kind() != NodeKind::kReal) {
      return kNil;
    }
    sl(s).prev = sl(s).next = kNil;
    --h_->real_count;
    nd(p).first_child = kNil;
    node.parent = kNil;
    free_node(n);  // a childless ghost would be pruned at once
    nd(p).set_leaf(true);
    heap_fill(0, entry_of(p));  // the leaf count is unchanged: one left, one came
    return p;
  }

  /// A Real node's block leaves the pool (hit or eviction).
  void remove_node(std::uint32_t n) {
    LineageNode& node = nd(n);
    const std::uint32_t slot = node.slot;
    if (node.is_leaf()) {
      if (fifo_) {
        leaf_remove(n);
      } else {
        // Its heap entry becomes a hole, filled below by the parent if the prune makes the
        // parent a leaf, else by the last entry.
        hole_ = sl(slot).prev;
        node.set_leaf(false);
        --h_->leaf_count;
      }
    }
    node.set_kind(NodeKind::kGhost);
    node.slot = kNil;
    sl(slot).prev = sl(slot).next = kNil;
    --h_->real_count;
    prune_from(n, /*renew_ticks=*/true);
    if (hole_ != kNoHole) {
      const std::uint64_t hole = hole_;
      hole_ = kNoHole;
      const std::uint64_t last = --h_->heap_len;
      if (hole != last) {
        heap_fill(hole, hp(last));
      }
    }
  }

  /// Prunes childless ghosts upward from `n`; a Real parent left childless is a leaf again.
  void prune_from(std::uint32_t n, bool renew_ticks) {
    std::uint32_t cur = n;
    for (std::uint32_t steps = 0;
         nd(cur).kind() == NodeKind::kGhost && nd(cur).first_child == kNil &&
         within(steps, geo_.capacity, "lineage parent chain");
         ++steps) {
      const std::uint32_t parent = nd(cur).parent;
      unlink_child(cur);
      free_node(cur);
      if (parent == kNil || nd(parent).first_child != kNil) {
        break;
      }
      if (nd(parent).kind() == NodeKind::kReal) {
        leaf_add(parent, renew_ticks);
        break;
      }
      cur = parent;
    }
  }

  // --- Tick leaf order: a 4-ary heap; a leaf's index is kept in its slot's prev link ---
  LineageHeapEntry entry_of(std::uint32_t n) const {
    const std::uint32_t slot = nd(n).slot;
    const std::uint64_t tick = sl(slot).tick;
    return LineageHeapEntry{static_cast<std::uint32_t>(tick),
                            static_cast<std::uint32_t>(tick >> 32), slot};
  }
  void heap_put(std::uint64_t i, const LineageHeapEntry& e) {
    hp(i) = e;
    sl(e.slot).prev = static_cast<std::uint32_t>(i);
  }
  void sift_up(std::uint64_t i, const LineageHeapEntry& e) {
    while (i > 0) {
      const std::uint64_t p = (i - 1) / kArity;
      if (!before(e, hp(p))) {
        break;
      }
      heap_put(i, hp(p));
      i = p;
    }
    heap_put(i, e);
  }
  void sift_down(std::uint64_t i, const LineageHeapEntry& e) {
    const std::uint64_t len = heap_len();
    for (;;) {
      const std::uint64_t first = kArity * i + 1;
      if (first >= len) {
        break;
      }
      const std::uint64_t end = std::min(first + kArity, len);
      std::uint64_t best = first;
      for (std::uint64_t c = first + 1; c < end; ++c) {
        if (before(hp(c), hp(best))) {
          best = c;
        }
      }
      if (!before(hp(best), e)) {
        break;
      }
      heap_put(i, hp(best));
      i = best;
    }
    heap_put(i, e);
  }
  /// Puts `e` at index `i`, a hole inside the heap that still holds the entry just removed from
  /// there, and restores the heap order. That entry was no larger than anything below `i` and no
  /// smaller than anything above, so one comparison with it tells the direction: a re-leafed
  /// parent older than its evicted child (a chain going tip to root) takes the child's place at
  /// once.
  void heap_fill(std::uint64_t i, const LineageHeapEntry& e) {
    if (!before(e, hp(i))) {
      sift_down(i, e);
    } else if (i > 0 && before(e, hp((i - 1) / kArity))) {
      sift_up(i, e);
    } else {
      heap_put(i, e);
    }
  }

  void leaf_add(std::uint32_t n, bool renew_ticks) {
    nd(n).set_leaf(true);
    const std::uint32_t slot = nd(n).slot;
    if (fifo_) {
      if (renew_ticks) {
        // FIFO order is "when it became a leaf": record it in the slot so rebuild() can
        // restore it. The slot is logged like any other slot change.
        log_(slot);
        sl(slot).tick = ctl_->next_tick++;
      }
      list_push_back(h_->leaves, slots_, n_, slot);
      h_->leaf_count = h_->leaves.length;
      return;
    }
    ++h_->leaf_count;
    if (hole_ != kNoHole) {  // the leaf that just left this place was its child
      const std::uint64_t i = hole_;
      hole_ = kNoHole;
      heap_fill(i, entry_of(n));
      return;
    }
    const std::uint64_t i = h_->heap_len++;
    sift_up(i, entry_of(n));
  }

  void leaf_remove(std::uint32_t n) {
    nd(n).set_leaf(false);
    const std::uint32_t slot = nd(n).slot;
    if (fifo_) {
      list_unlink(h_->leaves, slots_, n_, slot);
      h_->leaf_count = h_->leaves.length;
      return;
    }
    --h_->leaf_count;
    const std::uint64_t i = sl(slot).prev;
    sl(slot).prev = kNil;
    const std::uint64_t last = --h_->heap_len;
    if (i != last) {
      heap_fill(i, hp(last));
    }
  }

  // --- overflow (through the slots' list links, by tick) ---
  void overflow_push(std::uint32_t slot) {
    sl(slot).backend_flags = shm::kLineageOverflow;  // so a rebuild puts it back here
    list_push_back(h_->overflow, slots_, n_, slot);
  }
  void overflow_unlink(std::uint32_t slot) { list_unlink(h_->overflow, slots_, n_, slot); }

  shm::LineageHeader* h_;
  shm::LineageGeometry geo_;  // from the config, not from the region: a damaged header cannot
                              // send the backend outside its region
  LineageNode* nodes_;
  std::uint32_t* keys_;
  LineageHeapEntry* heap_;
  shm::SlotMeta* slots_;
  shm::ControlBlock* ctl_;
  std::uint32_t n_;
  bool fifo_;
  SlotLogger log_;
  // Tick order, inside remove_node only: the heap index left by the removed leaf.
  std::uint64_t hole_ = kNoHole;
};

void LineageBackend::verify(std::vector<std::string>& problems, WalkPacer& pacer) const {
  const std::size_t before_count = problems.size();
  auto problem = [&](std::string text) {
    if (problems.size() - before_count < 20) {  // a broken tree would otherwise repeat itself
      problems.push_back("lineage: " + std::move(text));
    }
  };
  if (h_->capacity != geo_.capacity || h_->key_capacity != geo_.key_capacity ||
      h_->heap_capacity != geo_.heap_capacity) {
    problem(fmt::format("header capacities {}/{}/{} differ from the layout's {}/{}/{}",
                        h_->capacity, h_->key_capacity, h_->heap_capacity, geo_.capacity,
                        geo_.key_capacity, geo_.heap_capacity));
  }
  std::uint64_t reals = 0, leaves = 0, nodes_in_use = 0;
  for (std::uint32_t n = 0; n < geo_.capacity; ++n) {
    pacer.step();
    const LineageNode& node = nodes_[n];
    if (node.kind() == NodeKind::kFree) {
      continue;
    }
    ++nodes_in_use;
    if (node.kind() != NodeKind::kReal && node.kind() != NodeKind::kGhost) {
      problem(fmt::format("node {} has an invalid kind", n));
      continue;
    }
    if (key_find(node.position(), node.fragment) != n) {
      problem(fmt::format("node {} is not found by its key", n));
    }
    if (node.kind() == NodeKind::kReal) {
      ++reals;
      if (node.slot >= n_ ||
          slots_[node.slot].state != static_cast<std::uint8_t>(shm::SlotState::kInactive)) {
        problem(fmt::format("node {} stands for slot {}, which is not Inactive", n, node.slot));
        continue;
      }
      const SequenceHash h = hash_of(node.slot);
      if (h.position() != node.position() || h.current_fragment() != node.fragment) {
        problem(fmt::format("node {} does not carry slot {}'s key", n, node.slot));
      }
      if (node_of(node.slot) != n) {
        problem(fmt::format("slot {} does not lead to its node {}", node.slot, n));
      }
    } else if (node.first_child == kNil) {
      problem(fmt::format("ghost node {} has no children", n));
    }
    const bool leaf = node.kind() == NodeKind::kReal && node.first_child == kNil;
    if (leaf != node.is_leaf()) {
      problem(fmt::format("node {} leaf flag is wrong", n));
    }
    leaves += node.is_leaf() ? 1 : 0;
    std::uint32_t count = 0;
    for (std::uint32_t c = node.first_child; c != kNil; c = nodes_[c].next_sibling) {
      if (c >= geo_.capacity || ++count > geo_.capacity) {
        problem(fmt::format("node {} child list is broken", n));
        break;
      }
      if (nodes_[c].parent != n) {
        problem(fmt::format("node {} child {} points at another parent", n, c));
      }
    }
  }
  std::uint64_t keyed = 0;
  for (std::uint32_t i = 0; i < geo_.key_capacity; ++i) {
    pacer.step();
    const std::uint32_t b = keys_[i];
    if (b == kNil) {
      continue;
    }
    ++keyed;
    const std::uint32_t n = bucket_node(b);
    if (n >= geo_.capacity || nodes_[n].kind() == NodeKind::kFree) {
      problem(fmt::format("key bucket {} holds node {}, which is not in use", i, n));
    } else if (bucket_disp(b) != std::min(dist(home_of(n), i), kKeyDispMax)) {
      problem(fmt::format("key bucket {} records a wrong distance from its home", i));
    }
  }
  if (keyed != nodes_in_use) {
    problem(fmt::format("the key index holds {} entries for {} nodes", keyed, nodes_in_use));
  }
  if (reals != h_->real_count) {
    problem(fmt::format("{} Real nodes but the count says {}", reals, h_->real_count));
  }
  if (leaves != h_->leaf_count) {
    problem(fmt::format("{} leaves but the count says {}", leaves, h_->leaf_count));
  }
  // A leaf's slot must lead back to it (the order walks start from slots).
  auto leaf_slot = [&](std::uint32_t s) {
    if (s >= n_) {
      return false;
    }
    const std::uint32_t n = node_of(s);
    return n != kNil && nodes_[n].is_leaf();
  };
  if (fifo_) {
    std::uint64_t seen = 0;
    std::uint32_t prev = kNil;
    for (std::uint32_t s = h_->leaves.head; s != kNil; s = slots_[s].next) {
      pacer.step();
      if (!leaf_slot(s) || ++seen > geo_.capacity || slots_[s].prev != prev) {
        problem("leaf list is broken");
        break;
      }
      prev = s;
    }
    if (seen != leaves || h_->leaves.length != leaves) {
      problem(fmt::format("leaf list holds {} of {} leaves (its length says {})", seen, leaves,
                          h_->leaves.length));
    }
  } else {
    if (h_->heap_len != leaves || h_->heap_len > geo_.heap_capacity) {
      problem(fmt::format("leaf heap holds {} of {} leaves", h_->heap_len, leaves));
    }
    for (std::uint64_t i = 0; i < h_->heap_len && i < geo_.heap_capacity; ++i) {
      pacer.step();
      const LineageHeapEntry& e = heap_[i];
      if (!leaf_slot(e.slot) || slots_[e.slot].prev != i || e.tick() != slots_[e.slot].tick ||
          (i > 0 && before(e, heap_[(i - 1) / kArity]))) {
        problem(fmt::format("leaf heap is broken at {}", i));
        break;
      }
    }
  }
  std::uint64_t seen = 0;
  for (std::uint32_t s = h_->overflow.head; s != kNil; s = slots_[s].next) {
    pacer.step();
    if (s >= n_ || ++seen > n_ ||
        slots_[s].state != static_cast<std::uint8_t>(shm::SlotState::kInactive)) {
      problem("overflow list is broken");
      break;
    }
  }
  if (seen != h_->overflow.length) {
    problem(
        fmt::format("overflow list holds {} but its length says {}", seen, h_->overflow.length));
  }
}

}  // namespace

std::uint32_t lineage_key_home(std::uint32_t position,
                               std::uint64_t fragment,
                               std::uint32_t key_capacity) {
  return key_home(position, fragment, key_capacity);
}

void init_lineage_region(shm::LineageHeader* h, std::uint32_t block_count) {
  LineageBackend::reset_region(h, lineage_geometry(block_count));
}

std::unique_ptr<InactiveBackend> make_lineage_backend(Segment& segment, SlotLogger log) {
  return std::make_unique<LineageBackend>(segment, std::move(log));
}

}  // namespace kvbm::detail
