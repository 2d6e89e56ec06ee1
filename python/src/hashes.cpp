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
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), py::cast(hashes[i]).release().ptr());
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
  py::detail::make_caster<kvbm::SequenceHash> caster;
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!caster.load(items[i], false)) {
      raise_py(PyExc_TypeError, "kvbm: item " + std::to_string(i) + " is a " +
                                    std::string(Py_TYPE(items[i])->tp_name) +
                                    ", not a kvbm.SequenceHash");
    }
    out[static_cast<std::size_t>(i)] = py::detail::cast_op<kvbm::SequenceHash&>(caster);
  }
  return out;
}

void bind_hashes(py::module_& m) {
  using kvbm::SequenceHash;
  py::class_<SequenceHash>(m, "SequenceHash", R"doc(
128-bit positional lineage hash of a block (bit-compatible with dynamo-tokens).

Build one with SequenceHash.make(current, parent, position) or SequenceHash.from_parts(hi, lo),
or get one per complete block of a token sequence from kvbm.hash_token_blocks(). Immutable,
hashable and comparable with ==; int(h) is the 128-bit value, str(h) is "<position>:<32 hex>".
)doc")
      .def(py::init<>(), "The all-zero hash.")
      .def_static(
          "make",
          [](std::uint64_t current, std::optional<std::uint64_t> parent, py::handle position) {
            const std::uint64_t pos = to_uint(position, kU64Max, "position");
            if (pos >= (1u << 24)) {
              raise_py(PyExc_ValueError,
                       "kvbm: SequenceHash.make: position " + std::to_string(pos) + " is >= 2**24");
            }
            return SequenceHash::make(current, parent, static_cast<std::uint32_t>(pos));
          },
          py::arg("current"), py::arg("parent"), py::arg("position"),
          R"doc(The hash of the block at `position` (< 2**24) whose own 64-bit hash is `current`
and whose parent block's 64-bit hash is `parent` (None for position 0).)doc")
      .def_static("from_parts", &SequenceHash::from_parts, py::arg("hi"), py::arg("lo"),
                  "The hash with upper 64 bits `hi` and lower 64 bits `lo`.")
      .def_static(
          "from_int",
          [](py::int_ value) {
            py::int_ mask(kU64Max);
            py::object hi =
                py::reinterpret_steal<py::object>(PyNumber_Rshift(value.ptr(), py::int_(64).ptr()));
            py::object lo =
                py::reinterpret_steal<py::object>(PyNumber_And(value.ptr(), mask.ptr()));
            if (!hi || !lo) {
              throw py::error_already_set();
            }
            return SequenceHash::from_parts(
                static_cast<std::uint64_t>(to_uint(hi, kU64Max, "SequenceHash value >> 64")),
                static_cast<std::uint64_t>(to_uint(lo, kU64Max, "SequenceHash value")));
          },
          py::arg("value"), "The hash whose 128-bit value is `value` (the inverse of int(h)).")
      .def_property_readonly("hi", &SequenceHash::hi, "Upper 64 bits (mode, position, ...).")
      .def_property_readonly("lo", &SequenceHash::lo, "Lower 64 bits.")
      .def_property_readonly("position", &SequenceHash::position, "Block position in its sequence.")
      .def_property_readonly("current_fragment", &SequenceHash::current_fragment,
                             "The fragment of this block's own hash kept in the 128 bits.")
      .def_property_readonly("parent_fragment", &SequenceHash::parent_fragment,
                             "The fragment of the parent block's hash (0 at position 0).")
      .def("__int__", &as_int128, "The 128-bit value.")
      .def("__index__", &as_int128)
      .def("__str__", &SequenceHash::to_string)
      .def("__repr__",
           [](const SequenceHash& h) { return "kvbm.SequenceHash('" + h.to_string() + "')"; })
      .def("__hash__", [](const SequenceHash& h) { return std::hash<SequenceHash>{}(h); })
      .def(
          "__eq__",
          [](const SequenceHash& a, py::handle b) -> py::object {
            py::detail::make_caster<SequenceHash> c;
            if (!c.load(b, false)) {
              return py::reinterpret_borrow<py::object>(Py_NotImplemented);
            }
            return py::bool_(a == py::detail::cast_op<SequenceHash&>(c));
          },
          py::is_operator())
      .def(
          "__ne__",
          [](const SequenceHash& a, py::handle b) -> py::object {
            py::detail::make_caster<SequenceHash> c;
            if (!c.load(b, false)) {
              return py::reinterpret_borrow<py::object>(Py_NotImplemented);
            }
            return py::bool_(!(a == py::detail::cast_op<SequenceHash&>(c)));
          },
          py::is_operator())
      .def(py::pickle([](const SequenceHash& h) { return py::make_tuple(h.hi(), h.lo()); },
                      [](py::tuple t) {
                        return SequenceHash::from_parts(t[0].cast<std::uint64_t>(),
                                                        t[1].cast<std::uint64_t>());
                      }));

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
