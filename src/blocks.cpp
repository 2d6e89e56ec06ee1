// SPDX-License-Identifier: Apache-2.0
// The block guards. Destructors never throw and do nothing in a fork child or when the
// attachment was fenced or poisoned (the reaper / kvbm-ctl repair own the slot then).
#include "kvbm/blocks.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "attachment.hpp"
#include "handle_access.hpp"

namespace kvbm {

using detail::Attachment;
using detail::Grant;
using shm::IntentOp;

namespace {

void release_exclusive(std::shared_ptr<Attachment>& att, BlockId id, std::uint32_t gen) noexcept {
  if (!att) {
    return;
  }
  if (auto l = att->lock_quiet()) {
    auto& store = att->store();
    // Declared after the lock: commits before it unlocks.
    detail::BlockStore::Txn txn(store, *l, detail::BlockStore::KeepLock{},
                                IntentOp::kReleaseExclusive, att->me());
    // False when the slot is no longer this guard's (reclaimed from a fenced process): nothing
    // left to release.
    (void)store.release_exclusive(txn, Grant{id, gen}, att->me());
  }
  att.reset();
}

std::span<std::byte> payload_of(Attachment& att, BlockId id) {
  std::byte* base = att.segment().payload();
  const std::uint64_t bpb = att.config().bytes_per_block;
  if (base == nullptr || bpb == 0) {
    return {};
  }
  return {base + std::uint64_t{id} * bpb, static_cast<std::size_t>(bpb)};
}

// The key recorded in a slot's key record. The length byte is read from shared memory: a value
// beyond the capacity (a damaged image) yields the whole capacity, never bytes past the record.
std::span<const std::byte> key_of(Attachment& att, BlockId id) {
  const std::byte* rec = att.segment().key_record(id);
  if (rec == nullptr) {
    return {};
  }
  const std::uint32_t cap = att.config().key_bytes;
  const auto len = std::min<std::uint32_t>(static_cast<std::uint8_t>(rec[0]), cap);
  return {rec + shm::kKeyLengthBytes, len};
}

Attachment& require(Attachment* att, const char* what) {
  if (att == nullptr) {
    throw std::logic_error(std::string("kvbm: use of an empty ") + what);
  }
  att->check_fork();
  return *att;
}
Attachment& require(const std::shared_ptr<Attachment>& att, const char* what) {
  return require(att.get(), what);
}

}  // namespace

// --- MutableBlock -------------------------------------------------------------------------------

MutableBlock::MutableBlock(MutableBlock&& o) noexcept
    : att_(std::move(o.att_)), id_(o.id_), gen_(o.gen_) {}

MutableBlock& MutableBlock::operator=(MutableBlock&& o) noexcept {
  if (this != &o) {
    release_exclusive(att_, id_, gen_);
    att_ = std::move(o.att_);
    id_ = o.id_;
    gen_ = o.gen_;
  }
  return *this;
}

void MutableBlock::release() noexcept {
  release_exclusive(att_, id_, gen_);
}

std::uint32_t MutableBlock::block_size() const {
  return require(att_, "MutableBlock").config().block_size;
}

std::span<const std::byte> MutableBlock::key() const {
  return key_of(require(att_, "MutableBlock"), id_);
}

void MutableBlock::set_key(std::span<const std::byte> key) {
  Attachment& att = require(att_, "MutableBlock");
  const std::uint32_t cap = att.config().key_bytes;
  if (key.size() > cap) {
    throw std::invalid_argument(
        fmt::format("kvbm: a key of {} bytes does not fit segment '{}' (key_bytes = {})",
                    key.size(), att.config().name, cap));
  }
  std::byte* rec = att.segment().key_record(id_);
  if (rec == nullptr) {
    return;  // cap == 0: only the empty key fits, and there is nowhere to keep it
  }
  // The slot is this process's Mutable slot: nobody else reads or writes its record now.
  std::memcpy(rec + shm::kKeyLengthBytes, key.data(), key.size());
  rec[0] = static_cast<std::byte>(key.size());
}

std::span<std::byte> MutableBlock::data() {
  return payload_of(require(att_, "MutableBlock"), id_);
}

Result<CompleteBlock, BlockSizeMismatch> MutableBlock::stage(SequenceHash hash,
                                                             std::uint32_t block_size) && {
  Attachment& att = require(att_, "MutableBlock");
  const std::uint32_t expected = att.config().block_size;
  if (block_size != expected) {
    return tl::unexpected(BlockSizeMismatch{expected, block_size, std::move(*this)});
  }
  if (hash.hi() == shm::kNoHashHi && hash.lo() == shm::kNoHashLo) {
    throw std::invalid_argument(
        "kvbm: stage: the SequenceHash with all 128 bits set is reserved (SequenceHash::make "
        "never produces it)");
  }
  using R = detail::BlockStore::StageResult;
  const Grant g{id_, gen_};
  // The fast path takes no lock. A fenced attachment goes the locked way, whose lock() reports
  // the fencing; so does a slot the fast path could not stage for any other reason.
  R r = att.fenced() ? R::kNeedLock : att.store().stage_lock_free(g, att.me(), hash);
  if (r != R::kDone) {
    const bool ok = att.run(IntentOp::kStage, [&](detail::BlockStore& store, auto& txn) {
      return store.stage(txn, g, att.me(), hash);
    });
    if (!ok) {
      throw std::logic_error("kvbm: MutableBlock is no longer owned by this process");
    }
  }
  return detail::HandleAccess::make_complete(std::move(att_), g, hash);
}

Result<CompleteBlock, BlockSizeMismatch> MutableBlock::stage(
    SequenceHash hash, std::uint32_t block_size, std::span<const std::uint32_t> token_ids) && {
  Attachment& att = require(att_, "MutableBlock");
  const std::uint32_t expected = att.config().block_size;
  if (block_size != expected) {
    return tl::unexpected(BlockSizeMismatch{expected, block_size, std::move(*this)});
  }
  if (token_ids.size() != expected) {
    return tl::unexpected(BlockSizeMismatch{
        expected, static_cast<std::uint32_t>(std::min<std::size_t>(token_ids.size(), UINT32_MAX)),
        std::move(*this)});
  }
  if (hash.hi() == shm::kNoHashHi && hash.lo() == shm::kNoHashLo) {
    return std::move(*this).stage(hash, block_size);  // throws, recording nothing
  }
  if (att.config().store_token_ids &&
      !att.store().write_tokens(Grant{id_, gen_}, att.me(), token_ids)) {
    throw std::logic_error("kvbm: MutableBlock is no longer owned by this process");
  }
  return std::move(*this).stage(hash, block_size);
}

// --- CompleteBlock ------------------------------------------------------------------------------

CompleteBlock::CompleteBlock(CompleteBlock&& o) noexcept
    : att_(std::move(o.att_)), id_(o.id_), gen_(o.gen_), hash_(o.hash_) {}

CompleteBlock& CompleteBlock::operator=(CompleteBlock&& o) noexcept {
  if (this != &o) {
    release_exclusive(att_, id_, gen_);
    att_ = std::move(o.att_);
    id_ = o.id_;
    gen_ = o.gen_;
    hash_ = o.hash_;
  }
  return *this;
}

void CompleteBlock::release() noexcept {
  release_exclusive(att_, id_, gen_);
}

std::uint32_t CompleteBlock::block_size() const {
  return require(att_, "CompleteBlock").config().block_size;
}

std::span<const std::byte> CompleteBlock::key() const {
  return key_of(require(att_, "CompleteBlock"), id_);
}

MutableBlock CompleteBlock::reset() && {
  Attachment& att = require(att_, "CompleteBlock");
  const bool ok = att.run(IntentOp::kUnstage, [&](detail::BlockStore& store, auto& txn) {
    return store.unstage(txn, Grant{id_, gen_}, att.me());
  });
  if (!ok) {
    throw std::logic_error("kvbm: CompleteBlock is no longer owned by this process");
  }
  MutableBlock m = detail::HandleAccess::make_mutable(att_, Grant{id_, gen_});
  att_.reset();
  return m;
}

// --- ImmutableBlock -----------------------------------------------------------------------------

ImmutableBlock::ImmutableBlock(const ImmutableBlock& o)
    : att_(o.att_), id_(o.id_), gen_(o.gen_), hash_(o.hash_) {
  if (att_ != nullptr) {
    att_->local(id_).fetch_add(1, std::memory_order_relaxed);
  }
}

ImmutableBlock& ImmutableBlock::operator=(const ImmutableBlock& o) {
  if (this != &o) {
    ImmutableBlock copy(o);
    *this = std::move(copy);
  }
  return *this;
}

ImmutableBlock::ImmutableBlock(ImmutableBlock&& o) noexcept
    : att_(std::exchange(o.att_, nullptr)), id_(o.id_), gen_(o.gen_), hash_(o.hash_) {}

ImmutableBlock& ImmutableBlock::operator=(ImmutableBlock&& o) noexcept {
  if (this != &o) {
    release();
    att_ = std::exchange(o.att_, nullptr);
    id_ = o.id_;
    gen_ = o.gen_;
    hash_ = o.hash_;
  }
  return *this;
}

void ImmutableBlock::release() noexcept {
  Attachment* att = std::exchange(att_, nullptr);
  if (att == nullptr) {
    return;
  }
  // The last local count of the slot: release_holder may destroy the attachment, so nothing
  // touches it afterwards.
  if (!att->forked() && att->local(id_).fetch_sub(1, std::memory_order_acq_rel) == 1) {
    att->release_holder(id_);
  }
}

std::size_t ImmutableBlock::use_count() const {
  return require(att_, "ImmutableBlock").local(id_).load(std::memory_order_relaxed);
}

WeakBlock ImmutableBlock::downgrade() const {
  Attachment& att = require(att_, "ImmutableBlock");
  return detail::HandleAccess::make_weak(att.shared_from_this(), Grant{id_, gen_}, hash_);
}

void ImmutableBlock::set_reset_on_release(bool value) const {
  Attachment& att = require(att_, "ImmutableBlock");
  att.run(IntentOp::kSetResetOnRelease, [&](detail::BlockStore& store, auto& txn) {
    store.set_reset_on_release(txn, id_, value);
    return true;
  });
}

std::span<const std::byte> ImmutableBlock::key() const {
  return key_of(require(att_, "ImmutableBlock"), id_);
}

std::span<const std::byte> ImmutableBlock::data() const {
  return payload_of(require(att_, "ImmutableBlock"), id_);
}

// --- WeakBlock ----------------------------------------------------------------------------------

std::optional<ImmutableBlock> WeakBlock::upgrade() const {
  if (!att_) {
    return std::nullopt;
  }
  Attachment& att = require(att_, "WeakBlock");
  // Fast path: while this process holds the slot (count > 0) its generation cannot change, so
  // a matching generation proves the slot still carries this block.
  auto& count = att.local(id_);
  std::uint32_t c = count.load(std::memory_order_relaxed);
  while (c > 0) {
    if (count.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) {
      ImmutableBlock held =
          detail::HandleAccess::make_immutable(att_.get(), Grant{id_, gen_}, hash_);
      if (att.slot_generation(id_) == gen_) {
        return held;
      }
      break;  // `held` is released on scope exit
    }
  }
  const std::optional<Grant> g =
      att.run(IntentOp::kAcquire, [&](detail::BlockStore& store, auto& txn) {
        auto acquired = store.acquire(txn, hash_, att.me());
        if (acquired) {
          att.hold(*acquired);
        }
        return acquired;
      });
  if (!g) {
    return std::nullopt;
  }
  return detail::HandleAccess::make_immutable(att_.get(), *g, hash_);
}

}  // namespace kvbm
