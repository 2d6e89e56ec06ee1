// SPDX-License-Identifier: Apache-2.0
#include "testing/hooks.hpp"

#include "attachment.hpp"
#include "segment/slot_atomics.hpp"

namespace kvbm::testing {

detail::Attachment& Peer::attachment(BlockManager& m) {
  return *m.att_;
}

void Peer::lock_store_and_hold(BlockManager& m) {
  auto& mu = m.att_->segment().control()->mutex;
  mu.lock(m.att_->pid());
}

void Peer::half_done_operation_and_hold(BlockManager& m, BlockId id) {
  auto& att = *m.att_;
  auto& mu = att.segment().control()->mutex;
  mu.lock(m.att_->pid());
  auto& store = att.store();
  // Never destroyed: the transaction must stay open and the mutex held until the caller is
  // killed, as in a process that dies in the middle of an operation.
  auto* txn =
      new detail::BlockStore::Txn(store, detail::StoreLock(mu), shm::IntentOp::kAllocate, att.me());
  store.log_for_test(*txn, id);
  att.segment().slots()[id].state = 0x7F;
}

void Peer::corrupt_slot_state(BlockManager& m, BlockId id, std::uint8_t value) {
  auto lock = m.att_->lock();
  m.att_->segment().slots()[id].state = value;
}

bool Peer::stray_stage_hash(BlockManager& m, BlockId id, SequenceHash hash) {
  return detail::cas_hash(m.att_->segment().slots()[id], shm::kNoHashHi, shm::kNoHashLo, hash.hi(),
                          hash.lo());
}

void Peer::drop_liveness(BlockManager& m) {
  m.att_->drop_liveness_for_test();
}

std::uint64_t Peer::epoch(BlockManager& m) {
  return m.att_->segment().header()->epoch.load(std::memory_order_relaxed);
}

}  // namespace kvbm::testing
