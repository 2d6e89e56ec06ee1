// SPDX-License-Identifier: Apache-2.0
// The in-process baseline of kvbm-bench: the same block-pool operations as kvbm, in the design of
// kvbm-logical / vLLM's block pool, in one process: one std::mutex, a std::unordered_map from
// sequence hash to registered block, intrusive doubly-linked lists for the free list (FIFO) and
// the inactive pool (LRU), and a per-block atomic reference count.
//
// Locking mirrors what an RAII API implies (DESIGN.md section 8 "Benchmarks"): one lock per batch
// call (allocate, register, match), one lock per stage, one lock per release of an exclusive
// block, and one lock per LAST release of a registered block (other releases only decrement the
// atomic count). Handles carry a std::shared_ptr to the pool, as kvbm's carry one to their
// attachment (and kvbm-logical's an Arc to the store).
//
// Thread-safety: every Pool method and every handle is safe to use from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvbm/sequence_hash.hpp"

namespace kvbm_bench::baseline {

using kvbm::SequenceHash;

enum class State : std::uint8_t { kReset, kMutable, kStaged, kRegistered, kInactive };

struct Block {
  std::uint32_t id = 0;
  State state = State::kReset;
  bool duplicate = false;
  std::atomic<std::uint32_t> refs{0};
  SequenceHash hash;
  Block* prev = nullptr;
  Block* next = nullptr;
};

/// Intrusive doubly-linked list through Block::prev/next (a block is in at most one list).
class List {
 public:
  bool empty() const { return head_ == nullptr; }
  std::size_t size() const { return size_; }
  Block* front() const { return head_; }
  void push_back(Block* b) {
    b->prev = tail_;
    b->next = nullptr;
    if (tail_ != nullptr) {
      tail_->next = b;
    } else {
      head_ = b;
    }
    tail_ = b;
    ++size_;
  }
  void remove(Block* b) {
    if (b->prev != nullptr) {
      b->prev->next = b->next;
    } else {
      head_ = b->next;
    }
    if (b->next != nullptr) {
      b->next->prev = b->prev;
    } else {
      tail_ = b->prev;
    }
    b->prev = b->next = nullptr;
    --size_;
  }
  Block* pop_front() {
    Block* b = head_;
    if (b != nullptr) {
      remove(b);
    }
    return b;
  }

 private:
  Block* head_ = nullptr;
  Block* tail_ = nullptr;
  std::size_t size_ = 0;
};

class Pool;
class CompleteBlock;

class MutableBlock {
 public:
  MutableBlock() = default;
  MutableBlock(std::shared_ptr<Pool> pool, Block* b) : pool_(std::move(pool)), b_(b) {}
  MutableBlock(MutableBlock&& o) noexcept
      : pool_(std::move(o.pool_)), b_(std::exchange(o.b_, nullptr)) {}
  MutableBlock& operator=(MutableBlock&& o) noexcept;
  ~MutableBlock();
  std::uint32_t block_id() const { return b_->id; }
  /// Mutable -> Staged under the pool lock. (The size is not checked: one size per pool.)
  std::optional<CompleteBlock> stage(SequenceHash hash, std::uint32_t block_size) &&;

 private:
  friend class Pool;
  std::shared_ptr<Pool> pool_;
  Block* b_ = nullptr;
};

class CompleteBlock {
 public:
  CompleteBlock() = default;
  CompleteBlock(std::shared_ptr<Pool> pool, Block* b) : pool_(std::move(pool)), b_(b) {}
  CompleteBlock(CompleteBlock&& o) noexcept
      : pool_(std::move(o.pool_)), b_(std::exchange(o.b_, nullptr)) {}
  CompleteBlock& operator=(CompleteBlock&& o) noexcept;
  ~CompleteBlock();
  std::uint32_t block_id() const { return b_->id; }

 private:
  friend class Pool;
  std::shared_ptr<Pool> pool_;
  Block* b_ = nullptr;
};

class ImmutableBlock {
 public:
  ImmutableBlock() = default;
  ImmutableBlock(std::shared_ptr<Pool> pool, Block* b) : pool_(std::move(pool)), b_(b) {}
  ImmutableBlock(const ImmutableBlock& o) : pool_(o.pool_), b_(o.b_) {
    if (b_ != nullptr) {
      b_->refs.fetch_add(1, std::memory_order_relaxed);
    }
  }
  ImmutableBlock(ImmutableBlock&& o) noexcept : pool_(std::move(o.pool_)), b_(o.b_) {
    o.b_ = nullptr;
  }
  ImmutableBlock& operator=(ImmutableBlock o) noexcept {
    std::swap(pool_, o.pool_);
    std::swap(b_, o.b_);
    return *this;
  }
  ~ImmutableBlock();
  std::uint32_t block_id() const { return b_->id; }
  SequenceHash sequence_hash() const { return b_->hash; }

 private:
  std::shared_ptr<Pool> pool_;
  Block* b_ = nullptr;
};

class Pool : public std::enable_shared_from_this<Pool> {
 public:
  static std::shared_ptr<Pool> create(std::size_t block_count) {
    return std::shared_ptr<Pool>(new Pool(block_count));
  }

  std::size_t total_blocks() const { return n_; }
  std::uint32_t block_size() const { return 16; }

  /// All-or-nothing; the free list first (FIFO), then evictions from the LRU end.
  std::optional<std::vector<MutableBlock>> allocate_blocks(std::size_t count) {
    std::vector<Block*> got;
    got.reserve(count);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (free_.size() + inactive_.size() < count) {
        return std::nullopt;
      }
      while (got.size() < count && !free_.empty()) {
        got.push_back(free_.pop_front());
      }
      while (got.size() < count) {
        Block* b = inactive_.pop_front();
        index_.erase(b->hash);
        got.push_back(b);
      }
      for (Block* b : got) {
        b->state = State::kMutable;
        b->duplicate = false;
      }
    }
    std::vector<MutableBlock> out;
    out.reserve(count);
    auto self = shared_from_this();
    for (Block* b : got) {
      out.emplace_back(self, b);
    }
    return out;
  }

  /// One lock for the batch. A present hash makes the block a duplicate (kAllow); an inactive
  /// copy of the hash is retired to the free list and replaced.
  std::vector<ImmutableBlock> register_blocks(std::vector<CompleteBlock>&& blocks) {
    std::vector<Block*> got;
    got.reserve(blocks.size());
    {
      std::lock_guard<std::mutex> l(mu_);
      for (CompleteBlock& c : blocks) {
        Block* b = c.b_;
        auto [it, fresh] = index_.try_emplace(b->hash, b);
        if (!fresh) {
          Block* old = it->second;
          if (old->state == State::kInactive) {
            inactive_.remove(old);
            old->state = State::kReset;
            free_.push_back(old);
            it->second = b;
          } else {
            b->duplicate = true;
          }
        }
        b->state = State::kRegistered;
        b->refs.store(1, std::memory_order_relaxed);
        got.push_back(b);
        c.b_ = nullptr;
        c.pool_.reset();
      }
    }
    std::vector<ImmutableBlock> out;
    out.reserve(got.size());
    auto self = shared_from_this();
    for (Block* b : got) {
      out.emplace_back(self, b);
    }
    return out;
  }

  /// Prefix match under one lock; inactive hits are resurrected.
  std::vector<ImmutableBlock> match_blocks(std::span<const SequenceHash> hashes) {
    std::vector<Block*> got;
    got.reserve(hashes.size());
    {
      std::lock_guard<std::mutex> l(mu_);
      for (const SequenceHash& h : hashes) {
        auto it = index_.find(h);
        if (it == index_.end()) {
          break;
        }
        Block* b = it->second;
        if (b->state == State::kInactive) {
          inactive_.remove(b);
          b->state = State::kRegistered;
        }
        b->refs.fetch_add(1, std::memory_order_relaxed);
        got.push_back(b);
      }
    }
    std::vector<ImmutableBlock> out;
    out.reserve(got.size());
    auto self = shared_from_this();
    for (Block* b : got) {
      out.emplace_back(self, b);
    }
    return out;
  }

  /// Inactive -> free, under one lock.
  void reset_inactive_pool() {
    std::lock_guard<std::mutex> l(mu_);
    while (Block* b = inactive_.pop_front()) {
      index_.erase(b->hash);
      b->state = State::kReset;
      free_.push_back(b);
    }
  }

  /// The baseline's invariant check (the counterpart of BlockManager::verify): walks both lists
  /// and every block, checks links, states and the hash map. Returns the number of problems.
  std::size_t verify() const {
    std::lock_guard<std::mutex> l(mu_);
    std::size_t problems = 0;
    std::size_t n_free = 0;
    std::size_t n_inactive = 0;
    for (const Block* b = free_.front(); b != nullptr; b = b->next) {
      problems += (b->state != State::kReset) + (b->next != nullptr && b->next->prev != b);
      ++n_free;
    }
    for (const Block* b = inactive_.front(); b != nullptr; b = b->next) {
      problems += (b->state != State::kInactive) + (b->next != nullptr && b->next->prev != b);
      ++n_inactive;
    }
    problems += (n_free != free_.size()) + (n_inactive != inactive_.size());
    std::size_t cached = 0;
    for (std::size_t i = 0; i < n_; ++i) {
      const Block& b = blocks_[i];
      if (b.state == State::kInactive || (b.state == State::kRegistered && !b.duplicate)) {
        ++cached;
        auto it = index_.find(b.hash);
        problems += (it == index_.end() || it->second != &b);
      }
      problems += (b.state == State::kInactive && b.refs.load(std::memory_order_relaxed) != 0);
    }
    problems += (cached != index_.size());
    return problems;
  }

  std::size_t free_count() const {
    std::lock_guard<std::mutex> l(mu_);
    return free_.size();
  }
  std::size_t inactive_count() const {
    std::lock_guard<std::mutex> l(mu_);
    return inactive_.size();
  }

 private:
  friend class MutableBlock;
  friend class CompleteBlock;
  friend class ImmutableBlock;

  explicit Pool(std::size_t n) : n_(n), blocks_(new Block[n]) {
    index_.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      blocks_[i].id = static_cast<std::uint32_t>(i);
      free_.push_back(&blocks_[i]);
    }
  }

  void stage(Block* b, SequenceHash h) {
    std::lock_guard<std::mutex> l(mu_);
    b->hash = h;
    b->state = State::kStaged;
  }

  void release_exclusive(Block* b) {
    std::lock_guard<std::mutex> l(mu_);
    b->state = State::kReset;
    free_.push_back(b);
  }

  /// The count reached 0 outside the lock: re-check under it (a match may have re-acquired).
  void release_last(Block* b) {
    std::lock_guard<std::mutex> l(mu_);
    if (b->refs.load(std::memory_order_relaxed) != 0 || b->state != State::kRegistered) {
      return;
    }
    if (b->duplicate) {
      b->duplicate = false;
      b->state = State::kReset;
      free_.push_back(b);
    } else {
      b->state = State::kInactive;
      inactive_.push_back(b);
    }
  }

  mutable std::mutex mu_;
  std::size_t n_;
  std::unique_ptr<Block[]> blocks_;
  List free_;
  List inactive_;
  std::unordered_map<SequenceHash, Block*> index_;
};

inline MutableBlock& MutableBlock::operator=(MutableBlock&& o) noexcept {
  if (this != &o) {
    if (b_ != nullptr) {
      pool_->release_exclusive(b_);
    }
    pool_ = std::move(o.pool_);
    b_ = std::exchange(o.b_, nullptr);
  }
  return *this;
}

inline MutableBlock::~MutableBlock() {
  if (b_ != nullptr && pool_) {
    pool_->release_exclusive(b_);
  }
}

inline std::optional<CompleteBlock> MutableBlock::stage(SequenceHash hash, std::uint32_t) && {
  pool_->stage(b_, hash);
  CompleteBlock c(std::move(pool_), std::exchange(b_, nullptr));
  return c;
}

inline CompleteBlock& CompleteBlock::operator=(CompleteBlock&& o) noexcept {
  if (this != &o) {
    if (b_ != nullptr) {
      pool_->release_exclusive(b_);
    }
    pool_ = std::move(o.pool_);
    b_ = std::exchange(o.b_, nullptr);
  }
  return *this;
}

inline CompleteBlock::~CompleteBlock() {
  if (b_ != nullptr && pool_) {
    pool_->release_exclusive(b_);
  }
}

inline ImmutableBlock::~ImmutableBlock() {
  if (b_ != nullptr && b_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    pool_->release_last(b_);
  }
}

}  // namespace kvbm_bench::baseline
