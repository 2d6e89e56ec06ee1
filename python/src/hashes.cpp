// SPDX-License-Identifier: Apache-2.0
// kvbm.SequenceHash and kvbm.hash_token_blocks.
#include <cstring>
#include <optional>
#include <vector>

#include <pybind11/stl.h>

#include "kvbm/sequence_hash.hpp"

#include "binding.hpp"
#include "errors.hpp"

namespace kvbm_python {

namespace {

constexpr std::uint64_t kU64Max = ~std::uint64_t{0};
// Hashing a few thousand tokens takes microseconds; below this the GIL round trip costs more.
constexpr std::size_t kReleaseGilTokens = 4096;

py::int_ as_int128(const kvbm::SequenceHash& h) {
  py::int_ hi(h.hi());
  py::int_ lo(h.lo());
  return py::reinterpret_steal<py::int_>(PyNumber_Or(
      py::reinterpret_steal<py::object>(PyNumber_Lshift(hi.ptr(), py::int_(64).ptr())).ptr(),
      lo.ptr()));
}

// Whether a buffer's items are 4-byte unsigned/signed integers (array('I'), numpy uint32/int32).
bool is_u32_format(const Py_buffer& b) {
  if (b.itemsize != 4 || b.format == nullptr) {
    return false;
  }
  const char* f = b.format;
  if (*f == '<' || *f == '=' || *f == '@') {
    ++f;
  }
  return (std::strcmp(f, "I") == 0 || std::strcmp(f, "i") == 0 || std::strcmp(f, "L") == 0 ||
          std::strcmp(f, "l") == 0);
}
bool is_byte_format(const Py_buffer& b) {
  return b.itemsize == 1 && (b.format == nullptr || std::strcmp(b.format, "B") == 0 ||
                             std::strcmp(b.format, "b") == 0 || std::strcmp(b.format, "c") == 0);
}

std::vector<kvbm::SequenceHash> hash_tokens(py::handle tokens,
                                            std::uint32_t block_size,
                                            std::uint64_t salt) {
  if (block_size == 0) {
    raise_py(PyExc_ValueError, "kvbm: hash_token_blocks: block_size must be > 0");
  }
  if (PyObject_CheckBuffer(tokens.ptr())) {
    Py_buffer b;
    if (PyObject_GetBuffer(tokens.ptr(), &b, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) != 0) {
      PyErr_Clear();  // not contiguous: treat it as a sequence below
    } else {
      struct Release {
        Py_buffer* b;
        ~Release() { PyBuffer_Release(b); }
      } release{&b};
      const bool u32 = is_u32_format(b);
      if (u32 || is_byte_format(b)) {
        if (!u32 && b.len % 4 != 0) {
          raise_py(PyExc_ValueError,
                   "kvbm: hash_token_blocks: a byte buffer of tokens must hold whole uint32 "
                   "values (its length is not a multiple of 4)");
        }
        const std::size_t n = static_cast<std::size_t>(b.len) / 4;
        std::vector<std::uint32_t> copy;
        const std::uint32_t* data = static_cast<const std::uint32_t*>(b.buf);
        if (reinterpret_cast<std::uintptr_t>(b.buf) % alignof(std::uint32_t) != 0) {
          copy.resize(n);  // e.g. a bytes slice at an odd offset
          std::memcpy(copy.data(), b.buf, n * 4);
          data = copy.data();
        }
        std::span<const std::uint32_t> span(data, n);
        if (n >= kReleaseGilTokens) {
          py::gil_scoped_release nogil;
          return kvbm::hash_token_blocks(span, block_size, salt);
        }
        return kvbm::hash_token_blocks(span, block_size, salt);
      }
      // Any other item type (int64 arrays, ...): element by element below.
    }
  }
  py::object seq = py::reinterpret_steal<py::object>(
      PySequence_Fast(tokens.ptr(),
                      "kvbm: hash_token_blocks: tokens must be a sequence of ints "
                      "or a buffer of uint32"));
  if (!seq) {
    throw py::error_already_set();
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  std::vector<std::uint32_t> ids(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = items[i];
    // Token ids: exact ints, and integer-like objects such as numpy scalars.
    unsigned long long v = PyLong_Check(item) ? PyLong_AsUnsignedLongLong(item) : 0;
    if (!PyLong_Check(item)) {
      py::object idx = py::reinterpret_steal<py::object>(PyNumber_Index(item));
      if (!idx) {
        throw py::error_already_set();
      }
      v = PyLong_AsUnsignedLongLong(idx.ptr());
    }
    if ((v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) || v > 0xFFFFFFFFull) {
      PyErr_Clear();
      raise_py(PyExc_ValueError, "kvbm: hash_token_blocks: token " + std::to_string(i) +
                                     " is not a uint32 (0 <= id < 2**32)");
    }
    ids[static_cast<std::size_t>(i)] = static_cast<std::uint32_t>(v);
  }
  py::gil_scoped_release nogil;
  return kvbm::hash_token_blocks(ids, block_size, salt);
}

}  // namespace

py::list hash_list(const std::vector<kvbm::SequenceHash>& hashes) {
  py::list out(hashes.size());
  for (std::size_t i = 0; i < hashes.size(); ++i) {
    PyObject* o = new_hash(hashes[i]);
    if (o == nullptr) {
      throw py::error_already_set();
    }
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), o);
  }
  return out;
}

std::vector<kvbm::SequenceHash> hashes_from(py::handle hashes) {
  py::object seq = py::reinterpret_steal<py::object>(
      PySequence_Fast(hashes.ptr(), "kvbm: expected a sequence of SequenceHash"));
  if (!seq) {
    throw py::error_already_set();
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  std::vector<kvbm::SequenceHash> out(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!is_hash(items[i])) {
      raise_py(PyExc_TypeError, "kvbm: item " + std::to_string(i) + " is a " +
                                    std::string(Py_TYPE(items[i])->tp_name) +
                                    ", not a kvbm.SequenceHash");
    }
    out[static_cast<std::size_t>(i)] = reinterpret_cast<HashObject*>(items[i])->hash;
  }
  return out;
}

PyTypeObject* g_hash_type = nullptr;

PyObject* new_hash(const kvbm::SequenceHash& h) noexcept {
  auto* o = PyObject_New(HashObject, g_hash_type);
  if (o != nullptr) {
    o->hash = h;
  }
  return reinterpret_cast<PyObject*>(o);
}

namespace {

const kvbm::SequenceHash& hash_of(PyObject* self) {
  return reinterpret_cast<HashObject*>(self)->hash;
}

PyObject* hash_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  if (PyTuple_GET_SIZE(args) != 0 || (kwargs != nullptr && PyDict_GET_SIZE(kwargs) != 0)) {
    PyErr_SetString(PyExc_TypeError,
                    "kvbm.SequenceHash() takes no arguments (the all-zero hash); use "
                    "SequenceHash.make, from_parts or from_int");
    return nullptr;
  }
  auto* o = reinterpret_cast<HashObject*>(type->tp_alloc(type, 0));
  if (o != nullptr) {
    o->hash = kvbm::SequenceHash();
  }
  return reinterpret_cast<PyObject*>(o);
}

void hash_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(self);
  Py_DECREF(type);  // heap type
}

PyObject* hash_repr(PyObject* self) {
  return PyUnicode_FromString(("kvbm.SequenceHash('" + hash_of(self).to_string() + "')").c_str());
}

PyObject* hash_str(PyObject* self) {
  return PyUnicode_FromString(hash_of(self).to_string().c_str());
}

Py_hash_t hash_hash(PyObject* self) {
  auto h = static_cast<Py_hash_t>(std::hash<kvbm::SequenceHash>{}(hash_of(self)));
  return h == -1 ? -2 : h;
}

PyObject* hash_richcompare(PyObject* a, PyObject* b, int op) {
  if (!is_hash(b) || (op != Py_EQ && op != Py_NE)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  const bool eq = hash_of(a) == hash_of(b);
  return PyBool_FromLong((op == Py_EQ) == eq ? 1 : 0);
}

PyObject* hash_int(PyObject* self) {
  return guarded([&] { return as_int128(hash_of(self)).release().ptr(); });
}

PyObject* get_hi(PyObject* self, void*) {
  return PyLong_FromUnsignedLongLong(hash_of(self).hi());
}
PyObject* get_lo(PyObject* self, void*) {
  return PyLong_FromUnsignedLongLong(hash_of(self).lo());
}
PyObject* get_position(PyObject* self, void*) {
  return PyLong_FromUnsignedLong(hash_of(self).position());
}
PyObject* get_current(PyObject* self, void*) {
  return PyLong_FromUnsignedLongLong(hash_of(self).current_fragment());
}
PyObject* get_parent(PyObject* self, void*) {
  return PyLong_FromUnsignedLongLong(hash_of(self).parent_fragment());
}

std::uint64_t u64_arg(PyObject* o, const char* what) {
  return to_uint(o, kU64Max, what);
}

PyObject* hash_make(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"current", "parent", "position", nullptr};
  PyObject *current = nullptr, *parent = nullptr, *position = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:make", const_cast<char**>(kw), &current,
                                   &parent, &position)) {
    return nullptr;
  }
  return guarded([&] {
    const std::uint64_t c = u64_arg(current, "current");
    std::optional<std::uint64_t> p;
    if (parent != Py_None) {
      p = u64_arg(parent, "parent");
    }
    const std::uint64_t pos = u64_arg(position, "position");
    if (pos >= (1u << 24)) {
      raise_py(PyExc_ValueError,
               "kvbm: SequenceHash.make: position " + std::to_string(pos) + " is >= 2**24");
    }
    return new_hash(kvbm::SequenceHash::make(c, p, static_cast<std::uint32_t>(pos)));
  });
}

PyObject* hash_from_parts(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"hi", "lo", nullptr};
  PyObject *hi = nullptr, *lo = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:from_parts", const_cast<char**>(kw), &hi,
                                   &lo)) {
    return nullptr;
  }
  return guarded([&] {
    return new_hash(kvbm::SequenceHash::from_parts(u64_arg(hi, "hi"), u64_arg(lo, "lo")));
  });
}

PyObject* hash_from_int(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"value", nullptr};
  PyObject* value = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:from_int", const_cast<char**>(kw), &value)) {
    return nullptr;
  }
  return guarded([&] {
    if (!PyLong_Check(value)) {
      raise_py(PyExc_TypeError, "kvbm: SequenceHash.from_int expects an int");
    }
    py::int_ mask(kU64Max);
    py::object hi = py::reinterpret_steal<py::object>(PyNumber_Rshift(value, py::int_(64).ptr()));
    py::object lo = py::reinterpret_steal<py::object>(PyNumber_And(value, mask.ptr()));
    if (!hi || !lo) {
      throw py::error_already_set();
    }
    return new_hash(kvbm::SequenceHash::from_parts(to_uint(hi, kU64Max, "SequenceHash value >> 64"),
                                                   to_uint(lo, kU64Max, "value")));
  });
}

// Pickling: SequenceHash() then __setstate__((hi, lo)).
PyObject* hash_reduce(PyObject* self, PyObject*) {
  return guarded([&] {
    return py::make_tuple(
               py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(g_hash_type)),
               py::tuple(), py::make_tuple(hash_of(self).hi(), hash_of(self).lo()))
        .release()
        .ptr();
  });
}

PyObject* hash_setstate(PyObject* self, PyObject* state) {
  return guarded([&] {
    if (!PyTuple_Check(state) || PyTuple_GET_SIZE(state) != 2) {
      raise_py(PyExc_TypeError, "kvbm: SequenceHash.__setstate__ expects (hi, lo)");
    }
    py::tuple t = py::reinterpret_borrow<py::tuple>(state);
    reinterpret_cast<HashObject*>(self)->hash =
        kvbm::SequenceHash::from_parts(to_uint(t[0], kU64Max, "hi"), to_uint(t[1], kU64Max, "lo"));
    Py_RETURN_NONE;
  });
}

PyTypeObject* make_hash_type() {
  static PyGetSetDef getset[] = {
      {"hi", get_hi, nullptr, "Upper 64 bits (mode, position, parent fragment's top).", nullptr},
      {"lo", get_lo, nullptr, "Lower 64 bits.", nullptr},
      {"position", get_position, nullptr, "Block position in its sequence.", nullptr},
      {"current_fragment", get_current, nullptr,
       "The fragment of this block's own hash kept in the 128 bits.", nullptr},
      {"parent_fragment", get_parent, nullptr,
       "The fragment of the parent block's hash (0 at position 0).", nullptr},
      {nullptr, nullptr, nullptr, nullptr, nullptr}};
  static PyMethodDef methods[] = {
      {"make", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(hash_make)),
       METH_VARARGS | METH_KEYWORDS | METH_STATIC,
       "make(current, parent, position) -> SequenceHash\n\nThe hash of the block at `position` "
       "(< 2**24, else ValueError) whose own 64-bit hash is `current` and whose parent block's "
       "64-bit hash is `parent` (None for position 0)."},
      {"from_parts", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(hash_from_parts)),
       METH_VARARGS | METH_KEYWORDS | METH_STATIC,
       "from_parts(hi, lo) -> SequenceHash\n\nThe hash with upper 64 bits `hi` and lower 64 "
       "bits `lo`."},
      {"from_int", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(hash_from_int)),
       METH_VARARGS | METH_KEYWORDS | METH_STATIC,
       "from_int(value) -> SequenceHash\n\nThe hash whose 128-bit value is `value` (the "
       "inverse of int(h))."},
      {"__reduce__", hash_reduce, METH_NOARGS, "Pickling support."},
      {"__setstate__", hash_setstate, METH_O, "Pickling support."},
      {nullptr, nullptr, 0, nullptr}};
  static PyType_Slot slots[] = {
      {Py_tp_doc,
       const_cast<char*>("128-bit positional lineage hash of a block (bit-compatible with "
                         "dynamo-tokens).\n\nBuild one with SequenceHash.make(current, parent, "
                         "position) or SequenceHash.from_parts(hi, lo), or get one per complete "
                         "block of a token sequence from kvbm.hash_token_blocks(). Immutable, "
                         "hashable and comparable with ==; int(h) is the 128-bit value, str(h) is "
                         "\"<position>:<32 hex digits>\". SequenceHash() is the all-zero hash.")},
      {Py_tp_new, reinterpret_cast<void*>(hash_new)},
      {Py_tp_dealloc, reinterpret_cast<void*>(hash_dealloc)},
      {Py_tp_repr, reinterpret_cast<void*>(hash_repr)},
      {Py_tp_str, reinterpret_cast<void*>(hash_str)},
      {Py_tp_hash, reinterpret_cast<void*>(hash_hash)},
      {Py_tp_richcompare, reinterpret_cast<void*>(hash_richcompare)},
      {Py_nb_int, reinterpret_cast<void*>(hash_int)},
      {Py_nb_index, reinterpret_cast<void*>(hash_int)},
      {Py_tp_getset, getset},
      {Py_tp_methods, methods},
      {0, nullptr}};
  static PyType_Spec spec = {"kvbm.SequenceHash", sizeof(HashObject), 0, Py_TPFLAGS_DEFAULT, slots};
  PyObject* type = PyType_FromSpec(&spec);
  if (type == nullptr) {
    throw py::error_already_set();
  }
  return reinterpret_cast<PyTypeObject*>(type);  // kept for the life of the process
}

}  // namespace

void bind_hashes(py::module_& m) {
  g_hash_type = make_hash_type();
  m.add_object("SequenceHash",
               py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(g_hash_type)));

  m.def(
      "hash_token_blocks",
      [](py::handle tokens, std::uint32_t block_size, std::uint64_t salt) {
        return hash_list(hash_tokens(tokens, block_size, salt));
      },
      py::arg("tokens"), py::arg("block_size"), py::arg("salt") = 0,
      R"doc(One SequenceHash per COMPLETE block of `tokens` (a trailing partial block gets none).

`tokens` is any buffer of uint32 (bytes of little-endian uint32, array('I'), a numpy uint32 or
int32 array: hashed in place, no per-token Python work) or any sequence of ints in [0, 2**32).
block_hash = XXH3_64(seed=salt, the block's tokens); the sequence hash of block 0 is its
block_hash, of block i > 0 XXH3_64(seed=salt, [parent sequence hash, block_hash]).)doc");
}

}  // namespace kvbm_python
