// SPDX-License-Identifier: Apache-2.0
// The store mutex for code that is not attached (takes no process-table entry): kvbm-ctl's
// verify/repair session and the event reader. A bounded wait; on EOWNERDEAD it runs the same
// recover-or-poison as a worker.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "kvbm/error.hpp"

#include "store/block_store.hpp"
#include "store/store_lock.hpp"

namespace kvbm::detail {

/// Takes `store`'s mutex waiting at most `wait`. On EOWNERDEAD runs recovery and appends what it
/// did to `notes`. Errors: kSystem on timeout ("held by a live process"), kCorrupted if poisoned
/// or recovery failed.
[[nodiscard]] Result<StoreLock> lock_unattached(BlockStore& store,
                                                std::chrono::milliseconds wait,
                                                std::vector<std::string>& notes);

}  // namespace kvbm::detail
