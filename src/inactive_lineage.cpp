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
#include <algorithm>

#include <fmt/format.h>

#include "kvbm/sequence_hash.hpp"

#include "inactive_backend.hpp"
#include "segment.hpp"
#include "slot_list.hpp"

namespace kvbm::detail {
namespace {

using kvbm::SequenceHash;
using shm::kNil;
using shm::LineageNode;
using shm::NodeKind;

constexpr std::uint8_t kReal = static_cast<std::uint8_t>(NodeKind::kReal);
constexpr std::uint8_t kGhost = static_cast<std::uint8_t>(NodeKind::kGhost);
constexpr std::uint8_t kFree = static_cast<std::uint8_t>(NodeKind::kFree);

std::uint64_t key_mix(std::uint32_t position, std::uint64_t fragment) {
  std::uint64_t x = fragment ^ (std::uint64_t{position} * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

class LineageBackend final : public InactiveBackend {
 public:
  LineageBackend(Segment& seg, SlotLogger log)
      : h_(seg.lineage()),
        nodes_(reinterpret_cast<LineageNode*>(h_ + 1)),
        keys_(reinterpret_cast<std::uint32_t*>(nodes_ + h_->capacity)),
        heap_(keys_ + h_->key_capacity),
        slots_(seg.slots()),
        ctl_(seg.control()),
        n_(seg.block_count()),
        fifo_(seg.config().lineage_order == LineageOrder::kFifo),
        log_(std::move(log)) {}

  void insert(std::uint32_t slot) override { insert_node(slot, /*renew_ticks=*/true); }

  void remove(std::uint32_t slot) override {  // a hit: the block leaves the pool, held
    slots_[slot].backend_flags = 0;
    const std::uint32_t n = node_of(slot);
    if (n == kNil) {
      overflow_unlink(slot);
      return;
    }
    remove_node(n);
    if (nodes_[n].kind == kGhost) {
      // It keeps its children as a ghost linked to its parent: remember that in the slot, so a
      // rebuild links the ghost again while the block is held.
      slots_[slot].backend_flags = shm::kLineageGhostLinked;
    }
  }

  std::uint32_t pop_victim() override {
    if (h_->overflow_head != kNil) {
      const std::uint32_t s = h_->overflow_head;
      overflow_unlink(s);
      return s;
    }
    const std::uint32_t leaf = fifo_ ? h_->leaf_head : (h_->heap_len > 0 ? heap_[0] : kNil);
    if (leaf == kNil) {
      return kNil;
    }
    const std::uint32_t s = nodes_[leaf].slot;
    remove_node(leaf);
    return s;
  }

  std::uint64_t size() const override { return h_->real_count + h_->overflow_len; }

  void rebuild() override {
    reset_region(h_);
    const std::vector<std::uint32_t> ids = slots_by_tick(slots_, n_, shm::SlotState::kInactive);
    for (std::uint32_t s : ids) {
      if ((slots_[s].backend_flags & shm::kLineageOverflow) != 0) {
        overflow_push(s);
      } else {
        insert_node(s, /*renew_ticks=*/false);
      }
    }
    // Held blocks that left the pool with children: their ghosts are linked to their parents.
    // Deepest first, so a parent's ghost exists (as a placeholder) before it is linked in turn.
    std::vector<std::uint32_t> linked;
    for (std::uint32_t s = 0; s < n_; ++s) {
      if (slots_[s].state == static_cast<std::uint8_t>(shm::SlotState::kPrimary) &&
          (slots_[s].backend_flags & shm::kLineageGhostLinked) != 0) {
        linked.push_back(s);
      }
    }
    std::sort(linked.begin(), linked.end(), [this](std::uint32_t a, std::uint32_t b) {
      return hash_of(a).position() > hash_of(b).position();
    });
    for (std::uint32_t s : linked) {
      const SequenceHash h = hash_of(s);
      const std::uint32_t n = key_find(h.position(), h.current_fragment());
      if (n == kNil || nodes_[n].kind != kGhost || nodes_[n].parent != kNil || h.position() == 0) {
        continue;
      }
      std::uint32_t p = key_find(h.position() - 1, h.parent_fragment());
      if (p == kNil) {
        p = alloc_node(h.position() - 1, h.parent_fragment(), kGhost, kNil);
      }
      if (p != kNil) {
        link_child(p, n);
      }
    }
    // Ghosts left without children (stale flags) go, as they would have at runtime.
    for (std::uint32_t n = 0; n < h_->capacity; ++n) {
      if (nodes_[n].kind == kGhost && nodes_[n].first_child == kNil) {
        prune_from(n, /*renew_ticks=*/false);
      }
    }
    // Leaf order from scratch: every Real node without children, by its slot's tick.
    h_->heap_len = h_->leaf_count = 0;
    h_->leaf_head = h_->leaf_tail = kNil;
    std::vector<std::uint32_t> leaves;
    for (std::uint32_t n = 0; n < h_->capacity; ++n) {
      nodes_[n].is_leaf = 0;
      nodes_[n].leaf_a = nodes_[n].leaf_b = kNil;
      if (nodes_[n].kind == kReal && nodes_[n].first_child == kNil) {
        leaves.push_back(n);
      }
    }
    std::sort(leaves.begin(), leaves.end(), [this](std::uint32_t a, std::uint32_t b) {
      return tick_of(a) != tick_of(b) ? tick_of(a) < tick_of(b) : a < b;
    });
    for (std::uint32_t n : leaves) {
      leaf_add(n, /*renew_ticks=*/false);
    }
  }

  void verify(std::vector<std::string>& problems) const override;

  static void reset_region(shm::LineageHeader* h) {
    auto* nodes = reinterpret_cast<LineageNode*>(h + 1);
    auto* keys = reinterpret_cast<std::uint32_t*>(nodes + h->capacity);
    for (std::uint32_t i = 0; i < h->capacity; ++i) {
      nodes[i] = LineageNode{};
      nodes[i].kind = kFree;
      nodes[i].slot = kNil;
      nodes[i].next_sibling = i + 1 < h->capacity ? i + 1 : kNil;
    }
    for (std::uint32_t i = 0; i < h->key_capacity; ++i) {
      keys[i] = kNil;
    }
    h->free_head = h->capacity > 0 ? 0 : kNil;
    h->leaf_head = h->leaf_tail = kNil;
    h->real_count = h->heap_len = h->leaf_count = 0;
    h->overflow_head = h->overflow_tail = kNil;
    h->overflow_len = 0;
  }

 private:
  SequenceHash hash_of(std::uint32_t slot) const {
    return SequenceHash::from_parts(slots_[slot].hash_hi, slots_[slot].hash_lo);
  }

  // --- key index (linear probing, backward-shift deletion) ---
  std::uint32_t home(std::uint32_t position, std::uint64_t fragment) const {
    return static_cast<std::uint32_t>(
        (static_cast<unsigned __int128>(key_mix(position, fragment)) * h_->key_capacity) >> 64);
  }
  std::uint32_t next(std::uint32_t i) const { return i + 1 == h_->key_capacity ? 0 : i + 1; }
  std::uint32_t key_find(std::uint32_t position, std::uint64_t fragment) const {
    for (std::uint32_t i = home(position, fragment);; i = next(i)) {
      const std::uint32_t n = keys_[i];
      if (n == kNil) {
        return kNil;
      }
      if (nodes_[n].position == position && nodes_[n].fragment == fragment) {
        return n;
      }
    }
  }
  void key_insert(std::uint32_t n) {
    std::uint32_t i = home(nodes_[n].position, nodes_[n].fragment);
    while (keys_[i] != kNil) {
      i = next(i);
    }
    keys_[i] = n;
  }
  void key_erase(std::uint32_t n) {
    std::uint32_t i = home(nodes_[n].position, nodes_[n].fragment);
    while (keys_[i] != n) {
      if (keys_[i] == kNil) {
        return;
      }
      i = next(i);
    }
    std::uint32_t hole = i;
    for (std::uint32_t j = next(hole); keys_[j] != kNil; j = next(j)) {
      const std::uint32_t hm = home(nodes_[keys_[j]].position, nodes_[keys_[j]].fragment);
      const bool movable = hole <= j ? (hm <= hole || hm > j) : (hm <= hole && hm > j);
      if (movable) {
        keys_[hole] = keys_[j];
        hole = j;
      }
    }
    keys_[hole] = kNil;
  }

  // --- nodes ---
  std::uint32_t alloc_node(std::uint32_t position,
                           std::uint64_t fragment,
                           std::uint8_t kind,
                           std::uint32_t slot) {
    const std::uint32_t n = h_->free_head;
    if (n == kNil) {
      return kNil;
    }
    h_->free_head = nodes_[n].next_sibling;
    LineageNode& node = nodes_[n];
    node = LineageNode{};
    node.fragment = fragment;
    node.position = position;
    node.slot = slot;
    node.kind = kind;
    node.parent = node.first_child = node.next_sibling = node.prev_sibling = kNil;
    node.leaf_a = node.leaf_b = kNil;
    key_insert(n);
    return n;
  }
  void free_node(std::uint32_t n) {
    key_erase(n);
    nodes_[n].kind = kFree;
    nodes_[n].slot = kNil;
    nodes_[n].next_sibling = h_->free_head;
    h_->free_head = n;
  }
  /// The tree node of an Inactive slot, kNil if it is in the overflow list.
  std::uint32_t node_of(std::uint32_t slot) const {
    const SequenceHash h = hash_of(slot);
    const std::uint32_t n = key_find(h.position(), h.current_fragment());
    return n != kNil && nodes_[n].kind == kReal && nodes_[n].slot == slot ? n : kNil;
  }

  void insert_node(std::uint32_t slot, bool renew_ticks) {
    const SequenceHash h = hash_of(slot);
    const std::uint32_t pos = h.position();
    std::uint32_t n = key_find(pos, h.current_fragment());
    if (n != kNil && nodes_[n].kind == kReal) {
      overflow_push(slot);  // same key, another hash: never matched as its lineage
      return;
    }
    slots_[slot].backend_flags = 0;
    if (n != kNil) {  // a ghost placeholder (or a removed node with children) comes back
      nodes_[n].kind = kReal;
      nodes_[n].slot = slot;
    } else {
      n = alloc_node(pos, h.current_fragment(), kReal, slot);
      if (n == kNil) {
        overflow_push(slot);
        return;
      }
    }
    ++h_->real_count;
    if (pos > 0 && nodes_[n].parent == kNil) {
      std::uint32_t p = key_find(pos - 1, h.parent_fragment());
      if (p == kNil) {
        p = alloc_node(pos - 1, h.parent_fragment(), kGhost, kNil);
      }
      if (p != kNil) {
        link_child(p, n);
      }
    }
    if (nodes_[n].first_child == kNil) {
      leaf_add(n, renew_ticks);
    }
  }

  void link_child(std::uint32_t p, std::uint32_t c) {
    LineageNode& parent = nodes_[p];
    if (parent.is_leaf != 0) {
      leaf_remove(p);  // a Real leaf that gets a child is interior now
    }
    nodes_[c].parent = p;
    nodes_[c].prev_sibling = kNil;
    nodes_[c].next_sibling = parent.first_child;
    if (parent.first_child != kNil) {
      nodes_[parent.first_child].prev_sibling = c;
    }
    parent.first_child = c;
  }

  void unlink_child(std::uint32_t c) {
    LineageNode& node = nodes_[c];
    if (node.prev_sibling != kNil) {
      nodes_[node.prev_sibling].next_sibling = node.next_sibling;
    } else if (node.parent != kNil) {
      nodes_[node.parent].first_child = node.next_sibling;
    }
    if (node.next_sibling != kNil) {
      nodes_[node.next_sibling].prev_sibling = node.prev_sibling;
    }
    node.parent = node.prev_sibling = node.next_sibling = kNil;
  }

  void remove_node(std::uint32_t n) {
    if (nodes_[n].is_leaf != 0) {
      leaf_remove(n);
    }
    nodes_[n].kind = kGhost;
    nodes_[n].slot = kNil;
    --h_->real_count;
    prune_from(n, /*renew_ticks=*/true);
  }

  /// Prunes childless ghosts upward from `n`; a Real parent left childless is a leaf again.
  void prune_from(std::uint32_t n, bool renew_ticks) {
    std::uint32_t cur = n;
    while (nodes_[cur].kind == kGhost && nodes_[cur].first_child == kNil) {
      const std::uint32_t parent = nodes_[cur].parent;
      unlink_child(cur);
      free_node(cur);
      if (parent == kNil || nodes_[parent].first_child != kNil) {
        break;
      }
      if (nodes_[parent].kind == kReal) {
        leaf_add(parent, renew_ticks);
        break;
      }
      cur = parent;
    }
  }

  // --- leaf order ---
  std::uint64_t tick_of(std::uint32_t n) const { return slots_[nodes_[n].slot].tick; }
  bool heap_less(std::uint32_t a, std::uint32_t b) const {
    const std::uint64_t ta = tick_of(a), tb = tick_of(b);
    return ta != tb ? ta < tb : a < b;
  }
  void heap_set(std::uint64_t i, std::uint32_t n) {
    heap_[i] = n;
    nodes_[n].leaf_a = static_cast<std::uint32_t>(i);
  }
  void sift_up(std::uint64_t i) {
    const std::uint32_t n = heap_[i];
    while (i > 0) {
      const std::uint64_t p = (i - 1) / 2;
      if (!heap_less(n, heap_[p])) {
        break;
      }
      heap_set(i, heap_[p]);
      i = p;
    }
    heap_set(i, n);
  }
  void sift_down(std::uint64_t i) {
    const std::uint32_t n = heap_[i];
    for (;;) {
      std::uint64_t c = 2 * i + 1;
      if (c >= h_->heap_len) {
        break;
      }
      if (c + 1 < h_->heap_len && heap_less(heap_[c + 1], heap_[c])) {
        ++c;
      }
      if (!heap_less(heap_[c], n)) {
        break;
      }
      heap_set(i, heap_[c]);
      i = c;
    }
    heap_set(i, n);
  }

  void leaf_add(std::uint32_t n, bool renew_ticks) {
    nodes_[n].is_leaf = 1;
    ++h_->leaf_count;
    if (fifo_) {
      if (renew_ticks) {
        // FIFO order is "when it became a leaf": record it in the slot so rebuild() can
        // restore it. The slot is logged like any other slot change.
        log_(nodes_[n].slot);
        slots_[nodes_[n].slot].tick = ctl_->next_tick++;
      }
      nodes_[n].leaf_b = kNil;
      nodes_[n].leaf_a = h_->leaf_tail;
      if (h_->leaf_tail == kNil) {
        h_->leaf_head = n;
      } else {
        nodes_[h_->leaf_tail].leaf_b = n;
      }
      h_->leaf_tail = n;
      return;
    }
    const std::uint64_t i = h_->heap_len++;
    heap_set(i, n);
    sift_up(i);
  }

  void leaf_remove(std::uint32_t n) {
    nodes_[n].is_leaf = 0;
    --h_->leaf_count;
    if (fifo_) {
      LineageNode& node = nodes_[n];
      if (node.leaf_a == kNil) {
        h_->leaf_head = node.leaf_b;
      } else {
        nodes_[node.leaf_a].leaf_b = node.leaf_b;
      }
      if (node.leaf_b == kNil) {
        h_->leaf_tail = node.leaf_a;
      } else {
        nodes_[node.leaf_b].leaf_a = node.leaf_a;
      }
      node.leaf_a = node.leaf_b = kNil;
      return;
    }
    const std::uint64_t i = nodes_[n].leaf_a;
    const std::uint64_t last = --h_->heap_len;
    if (i != last) {
      const std::uint32_t moved = heap_[last];
      heap_set(i, moved);
      if (i > 0 && heap_less(moved, heap_[(i - 1) / 2])) {
        sift_up(i);
      } else {
        sift_down(i);
      }
    }
    nodes_[n].leaf_a = kNil;
  }

  // --- overflow (through the slots' list links, by tick) ---
  void overflow_push(std::uint32_t slot) {
    slots_[slot].backend_flags = shm::kLineageOverflow;  // so a rebuild puts it back here
    shm::SlotList l{h_->overflow_head, h_->overflow_tail, h_->overflow_len};
    list_push_back(l, slots_, slot);
    h_->overflow_head = l.head;
    h_->overflow_tail = l.tail;
    h_->overflow_len = l.length;
  }
  void overflow_unlink(std::uint32_t slot) {
    shm::SlotList l{h_->overflow_head, h_->overflow_tail, h_->overflow_len};
    list_unlink(l, slots_, slot);
    h_->overflow_head = l.head;
    h_->overflow_tail = l.tail;
    h_->overflow_len = l.length;
  }

  shm::LineageHeader* h_;
  LineageNode* nodes_;
  std::uint32_t* keys_;
  std::uint32_t* heap_;
  shm::SlotMeta* slots_;
  shm::ControlBlock* ctl_;
  std::uint32_t n_;
  bool fifo_;
  SlotLogger log_;
};

void LineageBackend::verify(std::vector<std::string>& problems) const {
  const std::size_t before = problems.size();
  auto problem = [&](std::string text) {
    if (problems.size() - before < 20) {  // a broken tree would otherwise repeat itself
      problems.push_back("lineage: " + std::move(text));
    }
  };
  std::uint64_t reals = 0, leaves = 0, free_nodes = 0;
  for (std::uint32_t n = 0; n < h_->capacity; ++n) {
    const LineageNode& node = nodes_[n];
    if (node.kind == kFree) {
      ++free_nodes;
      continue;
    }
    if (node.kind != kReal && node.kind != kGhost) {
      problem(fmt::format("node {} has an invalid kind", n));
      continue;
    }
    if (key_find(node.position, node.fragment) != n) {
      problem(fmt::format("node {} is not found by its key", n));
    }
    if (node.kind == kReal) {
      ++reals;
      if (node.slot >= n_ ||
          slots_[node.slot].state != static_cast<std::uint8_t>(shm::SlotState::kInactive)) {
        problem(fmt::format("node {} stands for slot {}, which is not Inactive", n, node.slot));
      } else {
        const SequenceHash h = hash_of(node.slot);
        if (h.position() != node.position || h.current_fragment() != node.fragment) {
          problem(fmt::format("node {} does not carry slot {}'s key", n, node.slot));
        }
      }
    } else if (node.first_child == kNil) {
      problem(fmt::format("ghost node {} has no children", n));
    }
    const bool leaf = node.kind == kReal && node.first_child == kNil;
    if (leaf != (node.is_leaf != 0)) {
      problem(fmt::format("node {} leaf flag is wrong", n));
    }
    leaves += node.is_leaf;
    std::uint32_t count = 0;
    for (std::uint32_t c = node.first_child; c != kNil; c = nodes_[c].next_sibling) {
      if (c >= h_->capacity || ++count > h_->capacity) {
        problem(fmt::format("node {} child list is broken", n));
        break;
      }
      if (nodes_[c].parent != n) {
        problem(fmt::format("node {} child {} points at another parent", n, c));
      }
    }
  }
  if (reals != h_->real_count) {
    problem(fmt::format("{} Real nodes but the count says {}", reals, h_->real_count));
  }
  if (leaves != h_->leaf_count) {
    problem(fmt::format("{} leaves but the count says {}", leaves, h_->leaf_count));
  }
  if (fifo_) {
    std::uint64_t seen = 0;
    for (std::uint32_t n = h_->leaf_head; n != kNil; n = nodes_[n].leaf_b) {
      if (n >= h_->capacity || ++seen > h_->capacity || nodes_[n].is_leaf == 0) {
        problem("leaf list is broken");
        break;
      }
    }
    if (seen != leaves) {
      problem(fmt::format("leaf list holds {} of {} leaves", seen, leaves));
    }
  } else {
    if (h_->heap_len != leaves) {
      problem(fmt::format("leaf heap holds {} of {} leaves", h_->heap_len, leaves));
    }
    for (std::uint64_t i = 0; i < h_->heap_len && i < h_->capacity; ++i) {
      const std::uint32_t n = heap_[i];
      if (n >= h_->capacity || nodes_[n].leaf_a != i || nodes_[n].is_leaf == 0 ||
          (i > 0 && heap_less(n, heap_[(i - 1) / 2]))) {
        problem(fmt::format("leaf heap is broken at {}", i));
        break;
      }
    }
  }
  std::uint64_t seen = 0;
  for (std::uint32_t s = h_->overflow_head; s != kNil; s = slots_[s].next) {
    if (s >= n_ || ++seen > n_ ||
        slots_[s].state != static_cast<std::uint8_t>(shm::SlotState::kInactive)) {
      problem("overflow list is broken");
      break;
    }
  }
  if (seen != h_->overflow_len) {
    problem(fmt::format("overflow list holds {} but its length says {}", seen, h_->overflow_len));
  }
}

}  // namespace

void init_lineage_region(shm::LineageHeader* h, std::uint32_t block_count) {
  h->capacity = lineage_node_capacity(block_count);
  h->key_capacity = 2 * h->capacity;
  LineageBackend::reset_region(h);
}

std::unique_ptr<InactiveBackend> make_lineage_backend(Segment& segment, SlotLogger log) {
  return std::make_unique<LineageBackend>(segment, std::move(log));
}

}  // namespace kvbm::detail
