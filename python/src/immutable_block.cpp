// SPDX-License-Identifier: Apache-2.0
// kvbm.ImmutableBlock (a plain CPython type, see raw_handle.hpp): match_blocks and
// register_blocks return one per block.
#include <string>

#include "errors.hpp"
#include "raw_handle.hpp"

namespace kvbm_python {

namespace {

PyTypeObject* g_imm_type = nullptr;

PyObject* get_sequence_hash(PyObject* self, void*) {
  return guarded([&] {
    auto& c = cell_of<ImmutableCell>(self);
    c.check();
    return new_hash(c.guard.sequence_hash());
  });
}

PyObject* get_data(PyObject* self, void*) {
  return guarded([&] {
    auto& cell = cell_ptr<ImmutableCell>(self);
    cell->check(true);
    auto s = cell->guard.data();
    if (s.empty()) {
      raise_py(PyExc_ValueError,
               "kvbm: this segment has no payload region (created with bytes_per_block = 0)");
    }
    return payload_view(cell->mgr, cell, const_cast<std::byte*>(s.data()), s.size(), true)
        .release()
        .ptr();
  });
}

PyObject* imm_use_count(PyObject* self, PyObject*) {
  return guarded([&] {
    auto& c = cell_of<ImmutableCell>(self);
    c.check();
    return PyLong_FromSize_t(c.guard.use_count());
  });
}

PyObject* imm_downgrade(PyObject* self, PyObject*) {
  return guarded([&] {
    auto& c = cell_of<ImmutableCell>(self);
    c.check();
    WeakState w{c.guard.downgrade(), c.guard.block_id(), false};
    return py::cast(std::make_shared<WeakCell>(c.mgr, std::move(w), "WeakBlock")).release().ptr();
  });
}

PyObject* imm_set_reset_on_release(PyObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"value", nullptr};
  int value = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "p:set_reset_on_release", const_cast<char**>(kw),
                                   &value)) {
    return nullptr;
  }
  return guarded([&] {
    auto& c = cell_of<ImmutableCell>(self);
    c.check(true);
    without_gil([&] { c.guard.set_reset_on_release(value != 0); });
    Py_RETURN_NONE;
  });
}

PyObject* imm_key(PyObject* self, void*) {
  return guarded([&] {
    auto& c = cell_of<ImmutableCell>(self);
    c.check(true);
    const auto k = c.guard.key();
    return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(k.data()),
                                     static_cast<Py_ssize_t>(k.size()));
  });
}

PyObject* imm_repr(PyObject* self) {
  return guarded([&] {
    auto& c = cell_of<ImmutableCell>(self);
    return PyUnicode_FromString(
        handle_repr_text(c, " block_id=" + std::to_string(c.guard.block_id()) +
                                " hash=" + c.guard.sequence_hash().to_string())
            .c_str());
  });
}

}  // namespace

py::object make_immutable(const std::shared_ptr<ManagerState>& m, kvbm::ImmutableBlock&& b) {
  return new_handle<ImmutableCell>(g_imm_type, m, std::move(b), "ImmutableBlock");
}

void bind_immutable(py::module_& m) {
  static PyGetSetDef getset[] = {
      {"block_id", handle_block_id<ImmutableCell>, nullptr, "Index of the block in the segment.",
       nullptr},
      {"block_size", handle_block_size<ImmutableCell>, nullptr, "Tokens per block of the segment.",
       nullptr},
      {"sequence_hash", get_sequence_hash, nullptr, "The block's SequenceHash.", nullptr},
      {"data", get_data, nullptr,
       "Read-only memoryview (1-D, format 'B') over this block's payload bytes, no copy.\n"
       "While the view is alive the block stays held, even after release().",
       nullptr},
      {"key", imm_key, nullptr,
       "The key recorded with MutableBlock.set_key by the process that stored it (bytes).",
       nullptr},
      {nullptr, nullptr, nullptr, nullptr, nullptr}};
  static PyMethodDef methods[] = {
      {"use_count", imm_use_count, METH_NOARGS,
       "use_count() -> int\n\nHandles to this block alive in this process."},
      {"downgrade", imm_downgrade, METH_NOARGS,
       "downgrade() -> WeakBlock\n\nA WeakBlock for this block: does not keep it, upgrade() "
       "re-acquires it by hash."},
      {"set_reset_on_release", as_cfunction(imm_set_reset_on_release), METH_VARARGS | METH_KEYWORDS,
       "set_reset_on_release(value: bool) -> None\n\nWhether the block goes to Reset instead of "
       "the inactive pool when released by its last holder. Shared by every holder; survives "
       "resurrection."},
      {"release", handle_release<ImmutableCell>, METH_NOARGS,
       "release() -> None\n\nDrops this handle's reference now (or when its last payload view "
       "goes). A second call does nothing."},
      {"__enter__", handle_enter<ImmutableCell>, METH_NOARGS, "Returns the handle itself."},
      {"__exit__", handle_exit<ImmutableCell>, METH_VARARGS, "Releases the handle."},
      {nullptr, nullptr, 0, nullptr}};
  g_imm_type = add_handle_type(
      m, "kvbm.ImmutableBlock", sizeof(HandleObject<ImmutableCell>),
      "A registered block (Primary or Duplicate), shared by every process that holds it.\n\n"
      "From register_block(s), match_blocks(), scan_matches() and WeakBlock.upgrade(). While "
      "any\nprocess holds the block it is never evicted; when the last handle in the last "
      "process is\nreleased it goes to the inactive pool (or Reset with "
      "set_reset_on_release(True)). `data` is a\nread-only memoryview of its payload. A context "
      "manager.",
      getset, methods, handle_dealloc<ImmutableCell>, imm_repr);
}

}  // namespace kvbm_python
