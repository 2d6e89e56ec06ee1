// SPDX-License-Identifier: Apache-2.0
#include "errors.hpp"

#include <stdexcept>

namespace kvbm_python {

namespace {

// kvbm._errors._make: code, errno, message -> exception instance. Kept for the life of the
// process on purpose (never decref'd at exit, when the interpreter may already be gone).
PyObject* g_make_error = nullptr;
PyObject* g_block_size_mismatch = nullptr;

[[noreturn]] void raise_instance(py::object exc) {
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

}  // namespace

void raise_py(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw py::error_already_set();
}

void raise_error(std::string_view code, int sys_errno, const std::string& message) {
  py::object make = py::reinterpret_borrow<py::object>(g_make_error);
  raise_instance(make(py::str(code.data(), code.size()), sys_errno, message));
}

void raise_error(const kvbm::Error& error) {
  raise_error(kvbm::errc_name(error.code), error.sys_errno, error.message);
}

void raise_block_size_mismatch(std::uint32_t expected, std::uint32_t actual, py::object block) {
  py::object cls = py::reinterpret_borrow<py::object>(g_block_size_mismatch);
  std::string msg = "kvbm: stage: block size " + std::to_string(actual) +
                    " does not match the segment's block size " + std::to_string(expected) +
                    " (the block is handed back as .block)";
  raise_instance(cls(msg, py::arg("expected") = expected, py::arg("actual") = actual,
                     py::arg("block") = std::move(block)));
}

std::uint64_t to_uint(py::handle value, std::uint64_t max, const char* what) {
  if (!PyLong_Check(value.ptr())) {
    raise_py(PyExc_TypeError, std::string(what) + " must be an int, not " +
                                  std::string(Py_TYPE(value.ptr())->tp_name));
  }
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  if (overflow == 0 && v == -1 && PyErr_Occurred()) {
    throw py::error_already_set();
  }
  std::uint64_t u = 0;
  if (overflow < 0 || (overflow == 0 && v < 0)) {
    raise_py(PyExc_ValueError, std::string(what) + " must not be negative");
  }
  if (overflow > 0) {
    u = PyLong_AsUnsignedLongLong(value.ptr());
    if (u == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
      PyErr_Clear();
      raise_py(PyExc_ValueError, std::string(what) + " is too large");
    }
  } else {
    u = static_cast<std::uint64_t>(v);
  }
  if (u > max) {
    raise_py(PyExc_ValueError,
             std::string(what) + " is too large (at most " + std::to_string(max) + ")");
  }
  return u;
}

void bind_errors(py::module_& m) {
  py::module_ errors = py::module_::import("kvbm._errors");
  g_make_error = py::object(errors.attr("_make")).release().ptr();
  g_block_size_mismatch = py::object(errors.attr("BlockSizeMismatchError")).release().ptr();
  (void)m;

  // Exceptions escaping from the library's calls. std::invalid_argument and std::out_of_range
  // are misuse (ValueError); std::logic_error is what an inherited attachment throws in a fork
  // child (RuntimeError); kvbm::SegmentError carries a kvbm::Error (poisoned segment, fenced
  // attachment, failed system call).
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) {
        std::rethrow_exception(p);
      }
    } catch (const kvbm::SegmentError& e) {
      try {
        raise_error(e.error());
      } catch (py::error_already_set& set) {
        set.restore();
      }
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::out_of_range& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::logic_error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
}

}  // namespace kvbm_python
