// SPDX-License-Identifier: Apache-2.0
// kvbm._native: the compiled part of the Python package kvbm (see kvbm/__init__.py).
#include <pthread.h>

#include "binding.hpp"
#include "errors.hpp"

namespace kvbm_python {

std::atomic<std::uint64_t> g_fork_generation{0};

bool finalizing() {
  return _Py_IsFinalizing() != 0;
}

}  // namespace kvbm_python

PYBIND11_MODULE(_native, m) {
  using namespace kvbm_python;
  m.doc() = "Compiled part of the kvbm package; import kvbm instead.";
  pthread_atfork(nullptr, nullptr,
                 [] { g_fork_generation.fetch_add(1, std::memory_order_relaxed); });
  bind_errors(m);
  bind_hashes(m);
  bind_config(m);
  bind_handles(m);
  bind_manager(m);
  bind_events(m);
}
