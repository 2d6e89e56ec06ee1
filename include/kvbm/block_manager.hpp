// SPDX-License-Identifier: Apache-2.0
// BlockManager: one process's attachment to a kvbm segment (one process-table entry per object).
// Every method is thread-safe. Operations run directly on the shared segment under its robust
// store mutex; batch calls take it once per batch.
//
// Fork: an attachment belongs to the process that opened it. In a fork()ed child every method of
// an inherited BlockManager throws std::logic_error and inherited block handles' destructors do
// nothing; the child opens the segment again if it needs it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvbm/blocks.hpp"
#include "kvbm/config.hpp"
#include "kvbm/error.hpp"
#include "kvbm/metrics.hpp"
#include "kvbm/sequence_hash.hpp"
#include "kvbm/verify.hpp"

namespace kvbm {

namespace testing {
struct Peer;
}

enum class SlotState { kReset, kMutable, kStaged, kPrimary, kDuplicate, kInactive };
std::string_view to_string(SlotState s) noexcept;  // "reset", "mutable", ...

struct BlockInfo {
  SlotState state;
  SequenceHash hash;               // zero unless Staged, Primary, Duplicate or Inactive
  std::uint32_t holder_processes;  // processes holding the slot (Primary/Duplicate), else 0
  std::uint32_t duplicate_refs;    // live duplicates of a Primary, else 0
  bool reset_on_release;
};

/// What a lookup without side effects finds for a hash (BlockManager::peek_blocks).
enum class HashPresence : std::uint8_t {
  kAbsent,          // not registered (a Staged block of that hash does not count)
  kCached,          // Inactive, or Primary and staying cached when its holders release it
  kResetOnRelease,  // Primary marked reset-on-release: leaves the cache with its last holder
};
std::string_view to_string(HashPresence p) noexcept;  // "absent", "cached", "reset_on_release"

class BlockManager {
 public:
  /// Creates the segment; kAlreadyExists if it is present, kInvalidConfig for a bad config.
  [[nodiscard]] static Result<std::shared_ptr<BlockManager>> create(const SegmentConfig& config);
  /// Attaches to an existing segment: kNotFound, kLayoutMismatch, kCorrupted, kPermissionDenied,
  /// kProcessTableFull. Waits up to 2 s for a segment still being initialised.
  [[nodiscard]] static Result<std::shared_ptr<BlockManager>> open(std::string_view name);
  /// Opens the segment if present (its config must equal `config` in every field but
  /// permissions, else kInvalidConfig naming the first difference), else creates it.
  [[nodiscard]] static Result<std::shared_ptr<BlockManager>> open_or_create(
      const SegmentConfig& config);
  /// Unlinks the segment and its payload object. Attached processes keep working on their
  /// mappings; new opens get kNotFound. kNotFound if absent.
  [[nodiscard]] static Result<void> destroy(std::string_view name);

  ~BlockManager();
  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;

  /// All-or-nothing: the reset pool first (FIFO), then evictions. nullopt if not enough blocks
  /// are free or evictable even after reaping dead processes. 0 -> empty vector.
  [[nodiscard]] std::optional<std::vector<MutableBlock>> allocate_blocks(std::size_t count);
  /// Same, plus the hashes evicted to satisfy it, in eviction order (the reset-pool blocks come
  /// first in the returned vector, then the evicted ones in the same order as the hashes).
  [[nodiscard]] std::optional<std::pair<std::vector<MutableBlock>, std::vector<SequenceHash>>>
  allocate_blocks_with_evictions(std::size_t count);

  /// Staged -> Primary (hash absent), Duplicate (present, kAllow) or Reset with the existing
  /// primary returned (present, kReject). Throws std::invalid_argument for a block of another
  /// BlockManager or an empty block.
  [[nodiscard]] ImmutableBlock register_block(CompleteBlock&& block);
  /// Same for a batch, under one lock; results in input order.
  [[nodiscard]] std::vector<ImmutableBlock> register_blocks(std::vector<CompleteBlock>&& blocks);

  /// Prefix match under one lock: stops at the first hash neither active nor inactive;
  /// inactive hits are resurrected. Returns primaries.
  [[nodiscard]] std::vector<ImmutableBlock> match_blocks(std::span<const SequenceHash> hashes);
  /// One entry per input hash, no early stop.
  [[nodiscard]] std::vector<std::optional<ImmutableBlock>> match_blocks_scattered(
      std::span<const SequenceHash> hashes);
  /// Every found hash once. `touch` feeds the frequency sketch (MultiLRU).
  [[nodiscard]] std::unordered_map<SequenceHash, ImmutableBlock> scan_matches(
      std::span<const SequenceHash> hashes, bool touch);

  /// One entry per hash, under one lock, with no side effect at all: nothing is acquired or
  /// resurrected, and no recency, frequency sketch or metric changes (a match would move an
  /// Inactive block to the back of the eviction order).
  std::vector<HashPresence> peek_blocks(std::span<const SequenceHash> hashes) const;
  /// The number of leading hashes that are kCached (peek_blocks stopping at the first that is
  /// not): how much of a prefix a later match_blocks can find, asked without touching anything.
  std::size_t lookup_prefix(std::span<const SequenceHash> hashes) const;

  /// Drains the inactive pool to Reset; then kBlocksInUse if any block is not Reset.
  [[nodiscard]] Result<void> reset_inactive_pool();
  /// Releases everything held by processes that died; returns how many entries were reaped.
  std::size_t reap_dead_processes();
  /// Every broken invariant, one line each; empty when consistent. Dead-but-unreaped process
  /// entries are listed as problems. Paced (VerifyMode::kPaced): it never keeps a worker
  /// waiting long, and on a segment too busy for a consistent walk it checks what it can (use
  /// verify(VerifyMode) to learn whether everything was compared).
  std::vector<std::string> verify() const;
  /// verify() with the walk chosen, and how it went.
  VerifyReport verify(VerifyMode mode) const;

  std::size_t total_blocks() const;
  std::size_t available_blocks() const;  // reset + inactive, one snapshot
  std::uint32_t block_size() const;
  DuplicationPolicy duplication_policy() const;
  const SegmentConfig& config() const;
  PoolCounts counts() const;  // one consistent snapshot
  /// Throws std::invalid_argument if id >= total_blocks().
  BlockInfo inspect_block(BlockId id) const;
  MetricsSnapshot metrics() const;
  /// This attachment's process-table index.
  std::uint32_t process_index() const;
  /// The whole payload region (block_count * bytes_per_block bytes; empty when the segment has
  /// none), for bulk copies: block `id`'s bytes start at block_offset(id). Valid while this
  /// manager or any block handle of it is alive.
  std::span<std::byte> payload();
  /// Byte offset of block `id` in payload(). Throws std::invalid_argument if id >= total_blocks().
  std::uint64_t block_offset(BlockId id) const;

  /// Reaps dead processes every `interval` from a background thread of this process, so a dead
  /// worker's blocks are freed even when no allocation comes up short. Off by default; calling
  /// it again changes the interval; stopped by stop_background_reaper() or destruction.
  void start_background_reaper(std::chrono::milliseconds interval = std::chrono::seconds(1));
  void stop_background_reaper();

 private:
  friend struct testing::Peer;
  void check_own(const CompleteBlock& block) const;
  /// Both allocate calls; `evicted` (may be null) receives the evicted hashes.
  [[nodiscard]] std::optional<std::vector<MutableBlock>> allocate(
      std::size_t count, std::vector<SequenceHash>* evicted);
  explicit BlockManager(std::shared_ptr<detail::Attachment> att);
  std::shared_ptr<detail::Attachment> att_;
  std::jthread reaper_;
};

}  // namespace kvbm
