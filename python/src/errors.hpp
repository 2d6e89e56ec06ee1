// SPDX-License-Identifier: Apache-2.0
// Errors of the Python binding: kvbm::Error -> the kvbm.Error subclass of its code (defined in
// kvbm/_errors.py), C++ exceptions -> the Python exceptions DESIGN.md section 9 lists.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <pybind11/pybind11.h>

#include "kvbm/error.hpp"

namespace kvbm_python {

namespace py = pybind11;

void bind_errors(py::module_& m);

/// Raises the kvbm.Error subclass of `code` ("not_found", ...). Never returns.
[[noreturn]] void raise_error(std::string_view code, int sys_errno, const std::string& message);
[[noreturn]] void raise_error(const kvbm::Error& error);
/// Raises kvbm.BlockSizeMismatchError carrying the sizes and the handed-back block.
[[noreturn]] void raise_block_size_mismatch(std::uint32_t expected,
                                            std::uint32_t actual,
                                            py::object block);
/// Raises a plain Python exception of type `type` (PyExc_ValueError, ...).
[[noreturn]] void raise_py(PyObject* type, const std::string& message);

template <class T>
T unwrap(kvbm::Result<T>&& r) {
  if (!r) {
    raise_error(r.error());
  }
  return std::move(*r);
}
inline void unwrap(kvbm::Result<void>&& r) {
  if (!r) {
    raise_error(r.error());
  }
}

/// Integer argument in [0, max], else ValueError naming `what` (TypeError if not an int).
std::uint64_t to_uint(py::handle value, std::uint64_t max, const char* what);

}  // namespace kvbm_python
