// SPDX-License-Identifier: Apache-2.0
#include "events_endpoint.hpp"

#include <charconv>

#include <fmt/format.h>

namespace kvbm::ctl {

namespace {

bool starts_with(const std::string& s, const char* prefix) {
  return s.rfind(prefix, 0) == 0;
}

/// The tcp port of `endpoint` (after the last ':'), or -1.
long tcp_port(const std::string& endpoint) {
  const auto colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon + 1 >= endpoint.size()) {
    return -1;
  }
  long port = 0;
  const char* first = endpoint.data() + colon + 1;
  const char* last = endpoint.data() + endpoint.size();
  auto [p, ec] = std::from_chars(first, last, port);
  return ec == std::errc() && p == last ? port : -1;
}

}  // namespace

bool endpoint_binds(const std::string& endpoint) {
  return endpoint.find('*') != std::string::npos || endpoint.find("::") != std::string::npos ||
         starts_with(endpoint, "ipc://") || starts_with(endpoint, "inproc://");
}

std::string offset_endpoint(const std::string& endpoint, std::int64_t rank) {
  if (rank == 0) {
    return endpoint;
  }
  if (starts_with(endpoint, "inproc://")) {
    return fmt::format("{}_dp{}", endpoint, rank);
  }
  if (starts_with(endpoint, "tcp://")) {
    const long port = tcp_port(endpoint);
    if (port >= 0) {
      return fmt::format("{}{}", endpoint.substr(0, endpoint.rfind(':') + 1), port + rank);
    }
  }
  return endpoint;
}

Result<void> check_endpoint(const std::string& endpoint, std::int64_t rank) {
  auto bad = [&](std::string why) -> Result<void> {
    return tl::unexpected(
        Error{Errc::kInvalidConfig, 0, fmt::format("endpoint '{}': {}", endpoint, why)});
  };
  if (starts_with(endpoint, "ipc://") || starts_with(endpoint, "inproc://")) {
    return endpoint.size() > endpoint.find("://") + 3 ? Result<void>{} : bad("no name");
  }
  if (!starts_with(endpoint, "tcp://")) {
    return bad("expected tcp://HOST:PORT, ipc://PATH or inproc://NAME");
  }
  const long port = tcp_port(endpoint);
  if (port < 1 || port > 65535) {
    return bad("expected a port in 1..65535 after the last ':'");
  }
  if (port + rank > 65535) {
    return bad(fmt::format("port {} + dp rank {} is beyond 65535", port, rank));
  }
  if (endpoint.rfind(':') <= 6) {
    return bad("no host (use * to bind every interface)");
  }
  return {};
}

void endpoint_action(zmq::socket_t& socket, const std::string& endpoint) {
  if (endpoint_binds(endpoint)) {
    socket.bind(endpoint);
  } else {
    socket.connect(endpoint);
  }
}

}  // namespace kvbm::ctl
