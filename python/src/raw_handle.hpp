// SPDX-License-Identifier: Apache-2.0
// Block handles as plain CPython types (not pybind11 classes): the batch calls create and drop
// one handle per block, so a handle must cost little more than the C++ guard itself. Each
// object holds its cell (binding.hpp) through a shared_ptr, like a payload view's exporter.
#pragma once

#include <new>
#include <string>

#include "binding.hpp"

namespace kvbm_python {

template <class C>
struct HandleObject {
  PyObject_HEAD std::shared_ptr<C> cell;
};

template <class C>
C& cell_of(PyObject* self) {
  return *reinterpret_cast<HandleObject<C>*>(self)->cell;
}
template <class C>
std::shared_ptr<C>& cell_ptr(PyObject* self) {
  return reinterpret_cast<HandleObject<C>*>(self)->cell;
}

template <class C>
void handle_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  // May release the block; the cell releases the GIL first if that takes the store mutex.
  reinterpret_cast<HandleObject<C>*>(self)->cell.~shared_ptr();
  type->tp_free(self);
  Py_DECREF(type);
}

/// A new handle object of `type` around a new cell for `guard`.
template <class C, class G>
py::object new_handle(PyTypeObject* type,
                      const std::shared_ptr<ManagerState>& m,
                      G&& guard,
                      const char* name) {
  auto cell = std::make_shared<C>(m, std::move(guard), name);
  auto* o = PyObject_New(HandleObject<C>, type);
  if (o == nullptr) {
    throw py::error_already_set();  // `cell` releases the block
  }
  new (&o->cell) std::shared_ptr<C>(std::move(cell));
  return py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(o));
}

template <class C>
PyObject* handle_release(PyObject* self, PyObject*) {
  return guarded([&] {
    cell_of<C>(self).release();
    Py_RETURN_NONE;
  });
}

template <class C>
PyObject* handle_enter(PyObject* self, PyObject*) {
  return guarded([&] {
    cell_of<C>(self).check();
    Py_INCREF(self);
    return self;
  });
}

template <class C>
PyObject* handle_exit(PyObject* self, PyObject*) {
  return handle_release<C>(self, nullptr);
}

template <class C>
PyObject* handle_block_id(PyObject* self, void*) {
  return guarded([&] {
    auto& c = cell_of<C>(self);
    c.check();
    return PyLong_FromUnsignedLong(c.guard.block_id());
  });
}

template <class C>
PyObject* handle_block_size(PyObject* self, void*) {
  return guarded([&] {
    auto& c = cell_of<C>(self);
    c.check();
    return PyLong_FromUnsignedLong(c.mgr->config.block_size);
  });
}

/// "<kvbm.Kind state[ block_id=N][ hash=...]>"
std::string handle_repr_text(const CellBase& c, const std::string& live_details);

template <class F>
PyCFunction as_cfunction(F f) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

/// Creates the heap type `name` ("kvbm.X", a string literal) and adds it to `m` as X; kept for
/// the life of the process.
PyTypeObject* add_handle_type(py::module_& m,
                              const char* name,
                              std::size_t basicsize,
                              const char* doc,
                              PyGetSetDef* getset,
                              PyMethodDef* methods,
                              destructor dealloc,
                              reprfunc repr);

}  // namespace kvbm_python
