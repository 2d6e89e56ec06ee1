// SPDX-License-Identifier: Apache-2.0
// kvbm.MutableBlock and kvbm.CompleteBlock (plain CPython types, see raw_handle.hpp).
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "errors.hpp"
#include "raw_handle.hpp"

namespace kvbm_python {

PyTypeObject* g_mutable_type = nullptr;
PyTypeObject* g_complete_type = nullptr;

std::string handle_repr_text(const CellBase& c, const std::string& live_details) {
  std::string out = std::string("<kvbm.") + c.kind() + " " + c.state_name();
  if (c.state == CellState::kLive) {
    out += live_details;
  }
  return out + ">";
}

PyTypeObject* add_handle_type(py::module_& m,
                              const char* name,
                              std::size_t basicsize,
                              const char* doc,
                              PyGetSetDef* getset,
                              PyMethodDef* methods,
                              destructor dealloc,
                              reprfunc repr) {
  // Handles come only from the manager's calls: no tp_new, so kvbm.X() raises TypeError.
  PyType_Slot slots[] = {{Py_tp_doc, const_cast<char*>(doc)},
                         {Py_tp_dealloc, reinterpret_cast<void*>(dealloc)},
                         {Py_tp_repr, reinterpret_cast<void*>(repr)},
                         {Py_tp_getset, getset},
                         {Py_tp_methods, methods},
                         {0, nullptr}};
  // The type keeps pointing at the spec's name: `name` is a string literal.
  PyType_Spec spec = {name, static_cast<int>(basicsize), 0, Py_TPFLAGS_DEFAULT, slots};
  PyObject* type = PyType_FromSpec(&spec);
  if (type == nullptr) {
    throw py::error_already_set();
  }
  m.add_object(name + std::strlen("kvbm."), py::reinterpret_borrow<py::object>(type));
  return reinterpret_cast<PyTypeObject*>(type);
}

py::object make_mutable(const std::shared_ptr<ManagerState>& m, kvbm::MutableBlock&& b) {
  return new_handle<MutableCell>(g_mutable_type, m, std::move(b), "MutableBlock");
}

py::object make_complete(const std::shared_ptr<ManagerState>& m, kvbm::CompleteBlock&& b) {
  return new_handle<CompleteCell>(g_complete_type, m, std::move(b), "CompleteBlock");
}

CompleteCell* as_complete(PyObject* o) {
  if (Py_TYPE(o) != g_complete_type) {
    return nullptr;
  }
  return &cell_of<CompleteCell>(o);
}

namespace {

// --- MutableBlock ---------------------------------------------------------------------------

PyObject* mutable_sequence_hash(PyObject* self, void*) {
  return guarded([&] {
    cell_of<MutableCell>(self).check();
    Py_RETURN_NONE;
  });
}

PyObject* mutable_data(PyObject* self, void*) {
  return guarded([&] {
    auto& cell = cell_ptr<MutableCell>(self);
    cell->check(true);
    auto s = cell->guard.data();
    if (s.empty()) {
      raise_py(PyExc_ValueError,
               "kvbm: this segment has no payload region (created with bytes_per_block = 0)");
    }
    return payload_view(cell->mgr, cell, s.data(), s.size(), false).release().ptr();
  });
}

PyObject* mutable_stage(PyObject* self,
                        PyObject* const* args,
                        Py_ssize_t nargs,
                        PyObject* kwnames) {
  return guarded([&] {
    PyObject* hash_arg = nullptr;
    PyObject* size_arg = nullptr;
    PyObject* ids_arg = nullptr;
    if (kwnames == nullptr && (nargs == 2 || nargs == 3)) {
      hash_arg = args[0];
      size_arg = args[1];
      ids_arg = nargs == 3 ? args[2] : nullptr;
    } else {
      // Keywords: the rare path, through the generic parser.
      static const char* kw[] = {"hash", "block_size", "token_ids", nullptr};
      py::tuple pos(nargs);
      for (Py_ssize_t i = 0; i < nargs; ++i) {
        pos[static_cast<std::size_t>(i)] = py::reinterpret_borrow<py::object>(args[i]);
      }
      py::dict kwargs;
      if (kwnames != nullptr) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); ++i) {
          kwargs[PyTuple_GET_ITEM(kwnames, i)] =
              py::reinterpret_borrow<py::object>(args[nargs + i]);
        }
      }
      if (!PyArg_ParseTupleAndKeywords(pos.ptr(), kwargs.ptr(), "OO|O:stage",
                                       const_cast<char**>(kw), &hash_arg, &size_arg, &ids_arg)) {
        throw py::error_already_set();
      }
    }
    if (!is_hash(hash_arg)) {
      raise_py(PyExc_TypeError, std::string("kvbm: stage: hash must be a kvbm.SequenceHash, not ") +
                                    Py_TYPE(hash_arg)->tp_name);
    }
    const kvbm::SequenceHash hash = reinterpret_cast<HashObject*>(hash_arg)->hash;
    auto& c = cell_ptr<MutableCell>(self);
    c->check(true);
    const auto bs = static_cast<std::uint32_t>(to_uint(size_arg, 0xFFFFFFFFu, "block_size"));
    std::optional<std::vector<std::uint32_t>> ids;
    if (ids_arg != nullptr && ids_arg != Py_None) {
      py::object seq = py::reinterpret_steal<py::object>(
          PySequence_Fast(ids_arg, "kvbm: stage: token_ids must be a sequence of ints"));
      if (!seq) {
        throw py::error_already_set();
      }
      const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
      ids.emplace();
      ids->reserve(static_cast<std::size_t>(n));
      for (Py_ssize_t i = 0; i < n; ++i) {
        ids->push_back(static_cast<std::uint32_t>(
            to_uint(PySequence_Fast_GET_ITEM(seq.ptr(), i), 0xFFFFFFFFu, "token id")));
      }
    }
    if (hash.hi() == ~std::uint64_t{0} && hash.lo() == ~std::uint64_t{0}) {
      raise_py(PyExc_ValueError, "kvbm: stage: the SequenceHash with all 128 bits set is reserved");
    }
    if (c->exports > 0) {
      raise_py(PyExc_BufferError,
               "kvbm: stage: payload views of this block are still alive; release them first "
               "(memoryview.release() or a with statement)");
    }
    kvbm::MutableBlock block = std::move(c->guard);
    c->state = CellState::kConsumed;
    auto r = without_gil([&] {
      return ids ? std::move(block).stage(hash, bs, *ids) : std::move(block).stage(hash, bs);
    });
    if (!r) {
      auto& e = r.error();
      raise_block_size_mismatch(e.expected, e.actual, make_mutable(c->mgr, std::move(e.block)));
    }
    return make_complete(c->mgr, std::move(*r)).release().ptr();
  });
}

PyObject* key_object(std::span<const std::byte> k) {
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(k.data()),
                                   static_cast<Py_ssize_t>(k.size()));
}

PyObject* mutable_key(PyObject* self, void*) {
  return guarded([&] {
    auto& c = cell_of<MutableCell>(self);
    c.check(true);
    return key_object(c.guard.key());
  });
}

PyObject* mutable_set_key(PyObject* self, PyObject* key) {
  return guarded([&] {
    if (PyUnicode_Check(key) || PyLong_Check(key)) {
      raise_py(PyExc_TypeError,
               std::string("kvbm: a key is bytes-like, not ") + Py_TYPE(key)->tp_name);
    }
    auto kb = py::reinterpret_steal<py::object>(PyBytes_FromObject(key));
    if (!kb) {
      throw py::error_already_set();
    }
    auto& c = cell_of<MutableCell>(self);
    c.check(true);
    c.guard.set_key({reinterpret_cast<const std::byte*>(PyBytes_AS_STRING(kb.ptr())),
                     static_cast<std::size_t>(PyBytes_GET_SIZE(kb.ptr()))});
    Py_RETURN_NONE;
  });
}

PyObject* mutable_repr(PyObject* self) {
  return guarded([&] {
    auto& c = cell_of<MutableCell>(self);
    return PyUnicode_FromString(
        handle_repr_text(c, " block_id=" + std::to_string(c.guard.block_id())).c_str());
  });
}

// --- CompleteBlock --------------------------------------------------------------------------

PyObject* complete_sequence_hash(PyObject* self, void*) {
  return guarded([&] {
    auto& c = cell_of<CompleteCell>(self);
    c.check();
    return new_hash(c.guard.sequence_hash());
  });
}

PyObject* complete_key(PyObject* self, void*) {
  return guarded([&] {
    auto& c = cell_of<CompleteCell>(self);
    c.check(true);
    return key_object(c.guard.key());
  });
}

PyObject* complete_reset(PyObject* self, PyObject*) {
  return guarded([&] {
    auto& c = cell_ptr<CompleteCell>(self);
    c->check(true);
    kvbm::CompleteBlock block = std::move(c->guard);
    c->state = CellState::kConsumed;
    return make_mutable(c->mgr, without_gil([&] { return std::move(block).reset(); }))
        .release()
        .ptr();
  });
}

PyObject* complete_repr(PyObject* self) {
  return guarded([&] {
    auto& c = cell_of<CompleteCell>(self);
    return PyUnicode_FromString(
        handle_repr_text(c, " block_id=" + std::to_string(c.guard.block_id()) +
                                " hash=" + c.guard.sequence_hash().to_string())
            .c_str());
  });
}

}  // namespace

void bind_mutable(py::module_& m) {
  static PyGetSetDef mutable_getset[] = {
      {"block_id", handle_block_id<MutableCell>, nullptr, "Index of the block in the segment.",
       nullptr},
      {"block_size", handle_block_size<MutableCell>, nullptr, "Tokens per block of the segment.",
       nullptr},
      {"sequence_hash", mutable_sequence_hash, nullptr, "None: a mutable block has no hash yet.",
       nullptr},
      {"data", mutable_data, nullptr,
       "Writable memoryview (1-D, format 'B') over this block's payload bytes, no copy.\n"
       "While the view is alive the block stays held (even after release()) and stage() raises\n"
       "BufferError. ValueError when the segment has no payload region.",
       nullptr},
      {"key", mutable_key, nullptr,
       "The key last recorded in this block's slot (bytes): the one set_key wrote, or for a\n"
       "block that allocate_blocks_with_evictions took by eviction, the evicted block's key.",
       nullptr},
      {nullptr, nullptr, nullptr, nullptr, nullptr}};
  static PyMethodDef mutable_methods[] = {
      {"set_key", mutable_set_key, METH_O,
       "set_key(key: bytes) -> None\n\nRecords the block's application key (at most the "
       "segment's key_bytes, else ValueError) in the segment; it stays with the block."},
      {"stage", as_cfunction(mutable_stage), METH_FASTCALL | METH_KEYWORDS,
       "stage(hash, block_size) -> CompleteBlock\n\nMutable -> Staged with `hash`; returns a "
       "CompleteBlock and consumes this handle.\n`block_size` must equal the segment's block "
       "size, else BlockSizeMismatchError whose .block is\nthis block handed back in a new "
       "MutableBlock (this handle is consumed either way)."},
      {"release", handle_release<MutableCell>, METH_NOARGS,
       "release() -> None\n\nReturns the block to the reset pool now (or when its last payload "
       "view goes). A second call does nothing."},
      {"__enter__", handle_enter<MutableCell>, METH_NOARGS, "Returns the handle itself."},
      {"__exit__", handle_exit<MutableCell>, METH_VARARGS,
       "Releases the handle (nothing if it was staged meanwhile)."},
      {nullptr, nullptr, 0, nullptr}};
  g_mutable_type = add_handle_type(
      m, "kvbm.MutableBlock", sizeof(HandleObject<MutableCell>),
      "A block owned by this process for writing (slot state Mutable); from "
      "allocate_blocks().\n\nDropping or release()-ing it returns the block to the reset pool. "
      "stage(hash, block_size)\nconsumes it and returns a CompleteBlock. `data` is a writable "
      "memoryview over its payload bytes.\nA context manager: `with blocks[0] as b: ...` "
      "releases on exit unless it was staged.",
      mutable_getset, mutable_methods, handle_dealloc<MutableCell>, mutable_repr);

  static PyGetSetDef complete_getset[] = {
      {"block_id", handle_block_id<CompleteCell>, nullptr, "Index of the block in the segment.",
       nullptr},
      {"block_size", handle_block_size<CompleteCell>, nullptr, "Tokens per block of the segment.",
       nullptr},
      {"sequence_hash", complete_sequence_hash, nullptr, "The SequenceHash it was staged with.",
       nullptr},
      {"key", complete_key, nullptr, "The key recorded with MutableBlock.set_key (bytes).",
       nullptr},
      {nullptr, nullptr, nullptr, nullptr, nullptr}};
  static PyMethodDef complete_methods[] = {
      {"reset", complete_reset, METH_NOARGS,
       "reset() -> MutableBlock\n\nStaged -> Mutable: returns a MutableBlock for the same block "
       "and consumes this handle."},
      {"release", handle_release<CompleteCell>, METH_NOARGS,
       "release() -> None\n\nReturns the block to the reset pool now. A second call does "
       "nothing."},
      {"__enter__", handle_enter<CompleteCell>, METH_NOARGS, "Returns the handle itself."},
      {"__exit__", handle_exit<CompleteCell>, METH_VARARGS, "Releases the handle."},
      {nullptr, nullptr, 0, nullptr}};
  g_complete_type = add_handle_type(
      m, "kvbm.CompleteBlock", sizeof(HandleObject<CompleteCell>),
      "A staged block (its hash set, not yet registered); from MutableBlock.stage().\n\n"
      "BlockManager.register_block(s) consumes it. reset() turns it back into a MutableBlock; "
      "dropping\nor release()-ing it returns the block to the reset pool. A context manager.",
      complete_getset, complete_methods, handle_dealloc<CompleteCell>, complete_repr);
}

}  // namespace kvbm_python
