// SPDX-License-Identifier: Apache-2.0
// RAII block guards (kvbm-logical's states, across processes):
//   MutableBlock  (move-only)  slot Mutable, owned by this process; drop -> Reset
//   CompleteBlock (move-only)  slot Staged with its hash; drop -> Reset; register -> ImmutableBlock
//   ImmutableBlock (copyable)  slot Primary or Duplicate; the last copy in the last process
//   releases
//                              it (Primary -> Inactive, or Reset if reset-on-release; Duplicate ->
//                              Reset)
//   WeakBlock     (copyable)   never keeps the slot; upgrade() re-acquires by hash.
// Guards belong to the process that made them: in a fork()ed child their destructors do nothing.
// Moved-from guards are empty and their destructors do nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "kvbm/error.hpp"
#include "kvbm/sequence_hash.hpp"

namespace kvbm {

using BlockId = std::uint32_t;

namespace detail {
class Attachment;
struct HandleAccess;
}  // namespace detail

class CompleteBlock;
struct BlockSizeMismatch;

class MutableBlock {
 public:
  MutableBlock() = default;  // empty
  MutableBlock(MutableBlock&& other) noexcept;
  MutableBlock& operator=(MutableBlock&& other) noexcept;
  MutableBlock(const MutableBlock&) = delete;
  MutableBlock& operator=(const MutableBlock&) = delete;
  ~MutableBlock() {
    if (att_) {
      release();  // out of line: empty (moved-from) guards cost one test
    }
  }

  explicit operator bool() const { return att_ != nullptr; }
  BlockId block_id() const { return id_; }
  std::uint32_t block_size() const;
  /// Payload bytes of this block; empty when the segment has no payload region.
  std::span<std::byte> data();
  /// Records the block's application key (SegmentConfig::key_bytes) in the segment; it stays
  /// with the block through staging and registration, for every process. Throws
  /// std::invalid_argument if the key is longer than key_bytes.
  void set_key(std::span<const std::byte> key);
  /// The key last recorded in this block's slot: the one set_key wrote, or, for a block that
  /// allocate_blocks_with_evictions took by eviction, the evicted block's key until set_key
  /// replaces it; for other blocks, a stale key of an earlier life or empty. Empty when the
  /// segment keeps no keys.
  std::span<const std::byte> key() const;
  /// Mutable -> Staged. On size mismatch the error hands the block back untouched:
  /// error().expected, .actual, .block. Takes no lock (the slot is this process's own).
  /// Throws std::invalid_argument for the one reserved hash value (all 128 bits set, mode 3,
  /// which SequenceHash::make never produces).
  [[nodiscard]] Result<CompleteBlock, BlockSizeMismatch> stage(SequenceHash hash,
                                                               std::uint32_t block_size) &&;
  /// As stage(hash, block_size), also recording the block's token ids in the segment
  /// (SegmentConfig::store_token_ids) so that its Stored event carries them; without token
  /// storage the ids are checked and dropped. `token_ids` must hold exactly block_size ids, else
  /// the error hands the block back (expected = block_size, actual = token_ids.size()).
  [[nodiscard]] Result<CompleteBlock, BlockSizeMismatch> stage(
      SequenceHash hash, std::uint32_t block_size, std::span<const std::uint32_t> token_ids) &&;

 private:
  friend struct detail::HandleAccess;
  void release() noexcept;
  std::shared_ptr<detail::Attachment> att_;
  BlockId id_ = 0;
  std::uint32_t gen_ = 0;
};

/// The error of MutableBlock::stage: the sizes and the block itself, handed back untouched.
/// A copy (what Result::value() puts into its bad_expected_access exception) carries only the
/// sizes; the block stays with the original and returns to the reset pool when that is dropped.
struct BlockSizeMismatch {
  std::uint32_t expected = 0;
  std::uint32_t actual = 0;
  MutableBlock block;

  BlockSizeMismatch(std::uint32_t e, std::uint32_t a, MutableBlock&& b)
      : expected(e), actual(a), block(std::move(b)) {}
  BlockSizeMismatch(BlockSizeMismatch&&) noexcept = default;
  BlockSizeMismatch& operator=(BlockSizeMismatch&&) noexcept = default;
  BlockSizeMismatch(const BlockSizeMismatch& o) : expected(o.expected), actual(o.actual) {}
  BlockSizeMismatch& operator=(const BlockSizeMismatch& o) {
    expected = o.expected;
    actual = o.actual;
    block = MutableBlock();
    return *this;
  }
};

class CompleteBlock {
 public:
  CompleteBlock() = default;  // empty
  CompleteBlock(CompleteBlock&& other) noexcept;
  CompleteBlock& operator=(CompleteBlock&& other) noexcept;
  CompleteBlock(const CompleteBlock&) = delete;
  CompleteBlock& operator=(const CompleteBlock&) = delete;
  ~CompleteBlock() {
    if (att_) {
      release();
    }
  }

  explicit operator bool() const { return att_ != nullptr; }
  BlockId block_id() const { return id_; }
  std::uint32_t block_size() const;
  SequenceHash sequence_hash() const { return hash_; }
  /// The key recorded with set_key before staging (see MutableBlock::key).
  std::span<const std::byte> key() const;
  /// Staged -> Mutable (the reset-on-release flag goes back to the segment default).
  [[nodiscard]] MutableBlock reset() &&;

 private:
  friend struct detail::HandleAccess;
  void release() noexcept;
  std::shared_ptr<detail::Attachment> att_;
  BlockId id_ = 0;
  std::uint32_t gen_ = 0;
  SequenceHash hash_;
};

class WeakBlock;

class ImmutableBlock {
 public:
  ImmutableBlock() = default;  // empty
  ImmutableBlock(const ImmutableBlock& other);
  ImmutableBlock& operator=(const ImmutableBlock& other);
  ImmutableBlock(ImmutableBlock&& other) noexcept;
  ImmutableBlock& operator=(ImmutableBlock&& other) noexcept;
  ~ImmutableBlock() {
    if (att_) {
      release();
    }
  }

  explicit operator bool() const { return att_ != nullptr; }
  BlockId block_id() const { return id_; }
  SequenceHash sequence_hash() const { return hash_; }
  /// Handles to this slot alive in this process (this attachment); keep-alives excluded.
  std::size_t use_count() const;
  [[nodiscard]] WeakBlock downgrade() const;
  /// Whether the slot goes to Reset instead of Inactive when it is released (kvbm-logical:
  /// set_evict_on_reset). Shared by every holder in every process; last writer wins; survives
  /// resurrection; back to the segment default when the slot next becomes Mutable.
  void set_reset_on_release(bool value) const;
  std::span<const std::byte> data() const;
  /// The key recorded with MutableBlock::set_key by the process that stored the block.
  std::span<const std::byte> key() const;

 private:
  friend struct detail::HandleAccess;
  void release() noexcept;
  // Not a counted reference: the slot this handle holds keeps the attachment alive (a process's
  // held slots pin its attachment), so copies and drops change only a per-slot count.
  detail::Attachment* att_ = nullptr;
  BlockId id_ = 0;
  std::uint32_t gen_ = 0;
  SequenceHash hash_;
};

class WeakBlock {
 public:
  WeakBlock() = default;
  SequenceHash sequence_hash() const { return hash_; }
  /// Fast path while this process still holds the same slot generation; otherwise re-acquires
  /// the hash (active in any process, or resurrected from the inactive pool); nullopt once evicted.
  [[nodiscard]] std::optional<ImmutableBlock> upgrade() const;

 private:
  friend struct detail::HandleAccess;
  std::shared_ptr<detail::Attachment> att_;
  BlockId id_ = 0;
  std::uint32_t gen_ = 0;
  SequenceHash hash_;
};

}  // namespace kvbm
