// SPDX-License-Identifier: Apache-2.0
// ZeroMQ endpoints of kvbm-ctl events, with vLLM's rules: bind when the endpoint contains '*'
// or '::' or is ipc:// / inproc://, else connect; a data-parallel rank N adds N to a tcp port
// (inproc names get the suffix _dp<N>).
#pragma once

#include <cstdint>
#include <string>

#include <zmq.hpp>

#include "kvbm/error.hpp"

namespace kvbm::ctl {

bool endpoint_binds(const std::string& endpoint);
/// The endpoint for data-parallel rank `rank` (unchanged for rank 0).
std::string offset_endpoint(const std::string& endpoint, std::int64_t rank);
/// kInvalidConfig unless the endpoint is tcp://HOST:PORT, ipc://PATH or inproc://NAME and its
/// port (plus `rank`) is in 1..65535.
Result<void> check_endpoint(const std::string& endpoint, std::int64_t rank);
/// Binds or connects `socket` to `endpoint` per endpoint_binds(); throws zmq::error_t.
void endpoint_action(zmq::socket_t& socket, const std::string& endpoint);

}  // namespace kvbm::ctl
