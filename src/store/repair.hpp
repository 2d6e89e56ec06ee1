// SPDX-License-Identifier: Apache-2.0
// Repair of a damaged segment: the store's part of `kvbm-ctl repair`. The caller (an unattached
// tool session, src/tool/) opens the segment, takes the store mutex with a bounded wait (running
// recovery if its holder died) and re-verifies afterwards; these functions decide and make the
// slot changes.
#pragma once

#include <string>
#include <vector>

#include "segment/processes.hpp"
#include "segment/segment.hpp"
#include "store/block_store.hpp"

namespace kvbm::detail {

/// What a repair would do, from a read-only look (no lock, no recovery, nothing written).
std::vector<std::string> plan_repair(Segment& segment,
                                     BlockStore& store,
                                     const std::vector<ProcessView>& procs);

/// Under the store mutex (`held`): rolls back an armed intent, resets slots with impossible state
/// values, rebuilds the derived structures, cuts broken links, releases every dead entry of `procs`
/// (those whose liveness byte this call wins), sanitises and rebuilds again, bumps the epoch.
/// Never promotes Mutable/Staged slots to cached states. Appends what it did to `actions`.
void repair_locked(Segment& segment,
                   BlockStore& store,
                   const StoreLock& held,
                   const std::vector<ProcessView>& procs,
                   std::vector<std::string>& actions);

/// Under the store mutex (`held`): releases every dead process entry (the shared reaping of
/// store/reaping.hpp), one line per entry in `actions` (what it held, from `procs` when the
/// entry was seen there). Safe beside live workers. Returns how many.
std::size_t reap_dead_locked(Segment& segment,
                             BlockStore& store,
                             const StoreLock& held,
                             const std::vector<ProcessView>& procs,
                             std::vector<std::string>& actions);

/// Re-initialises the store mutex of a poisoned segment and marks it ready. Only safe when no
/// live process can be inside the mutex (the caller checked, or the operator forced it).
void reinit_store_mutex(Segment& segment);

}  // namespace kvbm::detail
