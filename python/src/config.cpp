// SPDX-License-Identifier: Apache-2.0
// kvbm.SegmentConfig: keyword arguments for every field of section 4 (enums as lower-case
// strings), validated on construction (InvalidConfigError), read back as attributes.
#include <array>
#include <string>
#include <string_view>

#include "binding.hpp"
#include "errors.hpp"

namespace kvbm_python {

namespace {

constexpr std::uint32_t kDefaultEventCapacity = 65536;

// The event fields of DESIGN.md section 10 are forwarded to the library once it has them.
template <class C>
concept HasEventFields = requires(C c) {
  c.event_capacity;
  c.store_token_ids;
};

[[noreturn]] void bad(const std::string& message) {
  raise_error("invalid_config", 0, "kvbm: SegmentConfig: " + message);
}

std::uint64_t field_uint(py::handle v, std::uint64_t max, const char* field) {
  if (!PyLong_Check(v.ptr()) || PyBool_Check(v.ptr())) {
    bad(std::string(field) + " must be an int, not " + Py_TYPE(v.ptr())->tp_name);
  }
  try {
    return to_uint(v, max, field);
  } catch (py::error_already_set&) {
    PyErr_Clear();
    bad(std::string(field) + " = " + std::string(py::str(v)) + " is out of range (0.." +
        std::to_string(max) + ")");
  }
}

bool field_bool(py::handle v, const char* field) {
  if (!PyBool_Check(v.ptr())) {
    bad(std::string(field) + " must be a bool, not " + Py_TYPE(v.ptr())->tp_name);
  }
  return v.ptr() == Py_True;
}

std::string field_str(py::handle v, const char* field) {
  if (!PyUnicode_Check(v.ptr())) {
    bad(std::string(field) + " must be a str, not " + Py_TYPE(v.ptr())->tp_name);
  }
  return v.cast<std::string>();
}

kvbm::EvictionPolicy parse_eviction(const std::string& s) {
  if (s == "lineage") {
    return kvbm::EvictionPolicy::kLineage;
  }
  if (s == "lru") {
    return kvbm::EvictionPolicy::kLru;
  }
  if (s == "multi_lru" || s == "multi-lru") {
    return kvbm::EvictionPolicy::kMultiLru;
  }
  if (s == "fifo") {
    return kvbm::EvictionPolicy::kFifo;
  }
  bad("eviction = '" + s + "' is not one of 'lineage', 'lru', 'multi_lru', 'fifo'");
}

kvbm::LineageOrder parse_order(const std::string& s) {
  if (s == "tick") {
    return kvbm::LineageOrder::kTick;
  }
  if (s == "fifo") {
    return kvbm::LineageOrder::kFifo;
  }
  bad("lineage_order = '" + s + "' is not one of 'tick', 'fifo'");
}

kvbm::DuplicationPolicy parse_duplication(const std::string& s) {
  if (s == "allow") {
    return kvbm::DuplicationPolicy::kAllow;
  }
  if (s == "reject") {
    return kvbm::DuplicationPolicy::kReject;
  }
  bad("duplication = '" + s + "' is not one of 'allow', 'reject'");
}

std::string eviction_name(kvbm::EvictionPolicy p) {
  return p == kvbm::EvictionPolicy::kMultiLru ? "multi_lru" : std::string(kvbm::to_string(p));
}

}  // namespace

struct PyConfig {
  kvbm::SegmentConfig c;
  std::uint32_t event_capacity = kDefaultEventCapacity;
  bool store_token_ids = false;
};

namespace {

// Templates so that the branch for a library without the event fields is never instantiated.
template <class C>
void events_from_cpp(PyConfig& p, const C& c) {
  if constexpr (HasEventFields<C>) {
    p.event_capacity = c.event_capacity;
    p.store_token_ids = c.store_token_ids;
  }
}

template <class C>
void events_to_cpp(const PyConfig& p, C& c) {
  if constexpr (HasEventFields<C>) {
    c.event_capacity = p.event_capacity;
    c.store_token_ids = p.store_token_ids;
  } else {
    // This build of the library has no event ring: refuse what it could not honour.
    if (p.event_capacity != 0 && (p.event_capacity & (p.event_capacity - 1)) != 0) {
      bad("event_capacity = " + std::to_string(p.event_capacity) + " is not 0 or a power of two");
    }
    if (p.store_token_ids) {
      bad("store_token_ids = True needs KV events, which this build of kvbm does not have");
    }
  }
}

}  // namespace

const kvbm::SegmentConfig& config_arg(py::handle cfg) {
  py::detail::make_caster<PyConfig> caster;
  if (!caster.load(cfg, false)) {
    raise_py(PyExc_TypeError, std::string("kvbm: expected a kvbm.SegmentConfig, not ") +
                                  Py_TYPE(cfg.ptr())->tp_name);
  }
  return py::detail::cast_op<PyConfig&>(caster).c;
}

py::object config_from_cpp(const kvbm::SegmentConfig& c) {
  PyConfig p;
  p.c = c;
  events_from_cpp(p, c);
  return py::cast(std::move(p));
}

namespace {

PyConfig make_config(py::handle name,
                     py::handle block_count,
                     py::handle block_size,
                     py::handle max_processes,
                     py::handle eviction,
                     py::handle lineage_order,
                     py::handle duplication,
                     py::handle default_reset_on_release,
                     py::handle multi_lru_thresholds,
                     py::handle frequency_capacity,
                     py::handle bytes_per_block,
                     py::handle permissions,
                     py::handle event_capacity,
                     py::handle store_token_ids,
                     py::handle key_bytes,
                     py::handle layout_tag) {
  PyConfig p;
  auto& c = p.c;
  c.name = field_str(name, "name");
  c.block_count = static_cast<std::uint32_t>(field_uint(block_count, 0xFFFFFFFFu, "block_count"));
  c.block_size = static_cast<std::uint32_t>(field_uint(block_size, 0xFFFFFFFFu, "block_size"));
  c.max_processes =
      static_cast<std::uint32_t>(field_uint(max_processes, 0xFFFFFFFFu, "max_processes"));
  c.eviction = parse_eviction(field_str(eviction, "eviction"));
  c.lineage_order = parse_order(field_str(lineage_order, "lineage_order"));
  c.duplication = parse_duplication(field_str(duplication, "duplication"));
  c.default_reset_on_release = field_bool(default_reset_on_release, "default_reset_on_release");
  {
    py::object seq =
        py::reinterpret_steal<py::object>(PySequence_Tuple(multi_lru_thresholds.ptr()));
    if (!seq) {
      PyErr_Clear();
      bad("multi_lru_thresholds must be a sequence of 3 ints");
    }
    py::tuple t = seq.cast<py::tuple>();
    if (t.size() != 3) {
      bad("multi_lru_thresholds must hold exactly 3 values, not " + std::to_string(t.size()));
    }
    for (std::size_t i = 0; i < 3; ++i) {
      c.multi_lru_thresholds[i] =
          static_cast<std::uint8_t>(field_uint(t[i], 255, "multi_lru_thresholds"));
    }
  }
  c.frequency_capacity =
      static_cast<std::uint32_t>(field_uint(frequency_capacity, 0xFFFFFFFFu, "frequency_capacity"));
  c.bytes_per_block = field_uint(bytes_per_block, ~std::uint64_t{0}, "bytes_per_block");
  c.permissions = static_cast<std::uint32_t>(field_uint(permissions, 07777, "permissions"));
  c.key_bytes = static_cast<std::uint32_t>(field_uint(key_bytes, 0xFFFFFFFFu, "key_bytes"));
  c.layout_tag = field_uint(layout_tag, ~std::uint64_t{0}, "layout_tag");
  p.event_capacity =
      static_cast<std::uint32_t>(field_uint(event_capacity, 0xFFFFFFFFu, "event_capacity"));
  p.store_token_ids = field_bool(store_token_ids, "store_token_ids");
  events_to_cpp(p, c);
  if (auto ok = kvbm::validate_config(c); !ok) {
    raise_error(ok.error());
  }
  return p;
}

py::dict as_dict(const PyConfig& p) {
  const auto& c = p.c;
  py::dict d;
  d["name"] = c.name;
  d["block_count"] = c.block_count;
  d["block_size"] = c.block_size;
  d["max_processes"] = c.max_processes;
  d["eviction"] = eviction_name(c.eviction);
  d["lineage_order"] = std::string(kvbm::to_string(c.lineage_order));
  d["duplication"] = std::string(kvbm::to_string(c.duplication));
  d["default_reset_on_release"] = c.default_reset_on_release;
  d["multi_lru_thresholds"] = py::make_tuple(c.multi_lru_thresholds[0], c.multi_lru_thresholds[1],
                                             c.multi_lru_thresholds[2]);
  d["frequency_capacity"] = c.frequency_capacity;
  d["bytes_per_block"] = c.bytes_per_block;
  d["permissions"] = c.permissions;
  d["event_capacity"] = p.event_capacity;
  d["store_token_ids"] = p.store_token_ids;
  d["key_bytes"] = c.key_bytes;
  d["layout_tag"] = c.layout_tag;
  return d;
}

}  // namespace

void bind_config(py::module_& m) {
  py::class_<PyConfig> cls(m, "SegmentConfig", R"doc(
Everything fixed when a segment is created (DESIGN.md section 4), as keyword arguments.

    kvbm.SegmentConfig(name="demo", block_count=4096, block_size=16, max_processes=64,
                       eviction="lineage", lineage_order="tick", duplication="allow",
                       default_reset_on_release=False, multi_lru_thresholds=(3, 8, 15),
                       frequency_capacity=2**21, bytes_per_block=0, permissions=0o600,
                       event_capacity=65536, store_token_ids=False, key_bytes=0,
                       layout_tag=0)

`name` and `block_count` are required. eviction is "lineage" | "lru" | "multi_lru" | "fifo",
lineage_order "tick" | "fifo", duplication "allow" | "reject". A bad value (unknown string,
block_count 0, block_size not a power of two in [1, 1024], a bad segment name, ...) raises
kvbm.InvalidConfigError here. Fields read back as read-only attributes; to_dict() returns them.
)doc");
  cls.def(py::init(&make_config), py::kw_only(), py::arg("name"), py::arg("block_count"),
          py::arg("block_size") = 16, py::arg("max_processes") = 64,
          py::arg("eviction") = "lineage", py::arg("lineage_order") = "tick",
          py::arg("duplication") = "allow", py::arg("default_reset_on_release") = false,
          py::arg("multi_lru_thresholds") = py::make_tuple(3, 8, 15),
          py::arg("frequency_capacity") = 1u << 21, py::arg("bytes_per_block") = 0,
          py::arg("permissions") = 0600, py::arg("event_capacity") = kDefaultEventCapacity,
          py::arg("store_token_ids") = false, py::arg("key_bytes") = 0, py::arg("layout_tag") = 0);
  cls.def_property_readonly(
      "name", [](const PyConfig& p) { return p.c.name; }, "Segment name (/dev/shm/<name>).");
  cls.def_property_readonly(
      "block_count", [](const PyConfig& p) { return p.c.block_count; }, "Number of blocks.");
  cls.def_property_readonly(
      "block_size", [](const PyConfig& p) { return p.c.block_size; }, "Tokens per block.");
  cls.def_property_readonly(
      "max_processes", [](const PyConfig& p) { return p.c.max_processes; },
      "Process-table entries (processes attached at once).");
  cls.def_property_readonly(
      "eviction", [](const PyConfig& p) { return eviction_name(p.c.eviction); },
      "Inactive-pool eviction order: 'lineage', 'lru', 'multi_lru' or 'fifo'.");
  cls.def_property_readonly(
      "lineage_order",
      [](const PyConfig& p) { return std::string(kvbm::to_string(p.c.lineage_order)); },
      "Leaf order of the lineage policy: 'tick' or 'fifo'.");
  cls.def_property_readonly(
      "duplication",
      [](const PyConfig& p) { return std::string(kvbm::to_string(p.c.duplication)); },
      "Registering a present hash: 'allow' (a duplicate block) or 'reject'.");
  cls.def_property_readonly(
      "default_reset_on_release", [](const PyConfig& p) { return p.c.default_reset_on_release; },
      "Reset-on-release flag every block takes when it becomes mutable.");
  cls.def_property_readonly(
      "multi_lru_thresholds",
      [](const PyConfig& p) {
        const auto& t = p.c.multi_lru_thresholds;
        return py::make_tuple(t[0], t[1], t[2]);
      },
      "MultiLRU level thresholds (a, b, c) with 1 <= a < b < c <= 15.");
  cls.def_property_readonly(
      "frequency_capacity", [](const PyConfig& p) { return p.c.frequency_capacity; },
      "TinyLFU counters (MultiLRU only).");
  cls.def_property_readonly(
      "bytes_per_block", [](const PyConfig& p) { return p.c.bytes_per_block; },
      "Payload bytes per block (0 = no payload region).");
  cls.def_property_readonly(
      "permissions", [](const PyConfig& p) { return p.c.permissions; },
      "Mode of the shared-memory object(s), e.g. 0o600.");
  cls.def_property_readonly(
      "event_capacity", [](const PyConfig& p) { return p.event_capacity; },
      "Event ring entries (power of two; 0 = no events).");
  cls.def_property_readonly(
      "store_token_ids", [](const PyConfig& p) { return p.store_token_ids; },
      "Whether blocks' token ids are kept in the segment for events.");
  cls.def_property_readonly(
      "key_bytes", [](const PyConfig& p) { return p.c.key_bytes; },
      "Capacity of each block's application key (MutableBlock.set_key); 0 = no keys.");
  cls.def_property_readonly(
      "layout_tag", [](const PyConfig& p) { return p.c.layout_tag; },
      "The application's identity of what the payload holds; open_or_create compares it.");
  cls.def("to_dict", &as_dict, "Every field as a dict (keyword arguments of the constructor).");
  cls.def("__repr__", [](const PyConfig& p) {
    std::string out = "kvbm.SegmentConfig(";
    bool first = true;
    for (auto item : as_dict(p)) {
      if (!first) {
        out += ", ";
      }
      first = false;
      out += std::string(py::str(item.first)) + "=" + std::string(py::repr(item.second));
    }
    return out + ")";
  });
  cls.def("__eq__", [](const PyConfig& a, py::handle b) -> py::object {
    py::detail::make_caster<PyConfig> c;
    if (!c.load(b, false)) {
      return py::reinterpret_borrow<py::object>(Py_NotImplemented);
    }
    return as_dict(a).equal(as_dict(py::detail::cast_op<PyConfig&>(c))) ? py::bool_(true)
                                                                        : py::bool_(false);
  });
  cls.attr("__hash__") = py::none();
  cls.def(py::pickle([](const PyConfig& p) { return as_dict(p); },
                     [](py::dict d) {
                       py::object cfg =
                           py::module_::import("kvbm._native").attr("SegmentConfig")(**d);
                       return cfg.cast<PyConfig>();
                     }));
}

}  // namespace kvbm_python
