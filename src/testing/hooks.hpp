// SPDX-License-Identifier: Apache-2.0
// Hooks for the tests (never used by the library itself): reach into a BlockManager's attachment
// to simulate crashes and corruption.
#pragma once

#include <cstdint>

#include "kvbm/block_manager.hpp"

namespace kvbm::detail {
class Attachment;
}

namespace kvbm::testing {

struct Peer {
  static detail::Attachment& attachment(BlockManager& m);
  /// Takes the store mutex and keeps it (the caller is about to be killed).
  static void lock_store_and_hold(BlockManager& m);
  /// Takes the store mutex, arms the intent, logs and changes slot `id` to an invalid state,
  /// and keeps the lock: a crash in the middle of an operation whose rollback must fix it.
  static void half_done_operation_and_hold(BlockManager& m, BlockId id);
  /// Writes a raw state value into slot `id` without the intent (unrecoverable damage).
  static void corrupt_slot_state(BlockManager& m, BlockId id, std::uint8_t value);
  static std::uint64_t epoch(BlockManager& m);
  /// What a fenced process's late lock-free stage can leave on a slot it no longer owns: claims
  /// the hash of slot `id` from the empty marker (no lock, no state change). True if it landed.
  static bool stray_stage_hash(BlockManager& m, BlockId id, SequenceHash hash);
  /// Closes the attachment's liveness fd: other processes now see it as dead.
  static void drop_liveness(BlockManager& m);
};

}  // namespace kvbm::testing
