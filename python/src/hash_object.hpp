// SPDX-License-Identifier: Apache-2.0
// kvbm.SequenceHash as a plain CPython type (not a pybind11 class): a list of hashes per block is
// on every hot path (hash_token_blocks, match_blocks), and a plain object costs one small
// allocation instead of pybind11's instance bookkeeping. The type caster below lets every
// pybind11 function take and return kvbm::SequenceHash directly.
#pragma once

#include <pybind11/pybind11.h>

#include "kvbm/sequence_hash.hpp"

namespace kvbm_python {

struct HashObject {
  PyObject_HEAD kvbm::SequenceHash hash;
};

/// The kvbm.SequenceHash type (set by bind_hashes).
extern PyTypeObject* g_hash_type;

/// A new reference to a kvbm.SequenceHash holding `h` (nullptr with a Python error set).
PyObject* new_hash(const kvbm::SequenceHash& h) noexcept;

inline bool is_hash(PyObject* o) {
  return Py_TYPE(o) == g_hash_type || PyObject_TypeCheck(o, g_hash_type);
}

/// Calls `f` (returning a new reference or nullptr) and turns a C++ exception into the Python
/// exception pybind11 would raise for it: for functions called by CPython directly.
template <class F>
PyObject* guarded(F&& f) noexcept {
  try {
    return f();
  } catch (pybind11::error_already_set& e) {
    e.restore();
  } catch (...) {
    if (!pybind11::detail::apply_exception_translators(
            pybind11::detail::get_internals().registered_exception_translators)) {
      PyErr_SetString(PyExc_SystemError, "kvbm: unexpected C++ exception");
    }
  }
  return nullptr;
}

}  // namespace kvbm_python

namespace pybind11::detail {

template <>
struct type_caster<kvbm::SequenceHash> {
  PYBIND11_TYPE_CASTER(kvbm::SequenceHash, const_name("SequenceHash"));

  bool load(handle src, bool) {
    if (!src || !kvbm_python::is_hash(src.ptr())) {
      return false;
    }
    value = reinterpret_cast<kvbm_python::HashObject*>(src.ptr())->hash;
    return true;
  }
  static handle cast(const kvbm::SequenceHash& h, return_value_policy, handle) {
    PyObject* o = kvbm_python::new_hash(h);
    if (o == nullptr) {
      throw error_already_set();
    }
    return o;
  }
};

}  // namespace pybind11::detail
