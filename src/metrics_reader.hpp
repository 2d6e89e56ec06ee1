// SPDX-License-Identifier: Apache-2.0
// Reads the segment-wide metrics from a mapped segment. Lock-free (relaxed loads); callers that
// need one consistent snapshot hold the store mutex. Used by BlockManager::metrics and kvbm-ctl.
#pragma once

#include "kvbm/metrics.hpp"

#include "segment/segment.hpp"

namespace kvbm::detail {
/// `self`: the caller's own process entry (its liveness byte cannot be probed through its own
/// open file description), kNil for a reader that is not attached.
MetricsSnapshot read_metrics(const Segment& segment, std::uint32_t self = shm::kNil);
/// Slots per state. Mutable and Staged are split with the process entries' staging accounts;
/// exact when no stage is in flight, otherwise an in-flight stage counts as Staged.
PoolCounts read_counts(const Segment& segment);
}  // namespace kvbm::detail
