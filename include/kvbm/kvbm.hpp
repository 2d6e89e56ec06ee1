// SPDX-License-Identifier: Apache-2.0
// Umbrella header of the kvbm library.
#pragma once

#include "kvbm/block_manager.hpp"
#include "kvbm/blocks.hpp"
#include "kvbm/config.hpp"
#include "kvbm/error.hpp"
#include "kvbm/events.hpp"
#include "kvbm/log.hpp"
#include "kvbm/metrics.hpp"
#include "kvbm/sequence_hash.hpp"
#include "kvbm/verify.hpp"
#include "kvbm/version.hpp"
