// SPDX-License-Identifier: Apache-2.0
// kvbm.BlockManager, kvbm.BlockInfo and kvbm.destroy.
#include <chrono>
#include <string>

#include <pybind11/stl.h>

#include "binding.hpp"
#include "errors.hpp"

namespace kvbm_python {

// --- ManagerState ---------------------------------------------------------------------------

ManagerState::ManagerState(std::shared_ptr<kvbm::BlockManager> m)
    : mgr(std::move(m)), config(mgr->config()) {}

ManagerState::~ManagerState() {
  if (mgr) {
    without_gil([&] { mgr.reset(); });  // detaching takes the store mutex
  }
}

std::shared_ptr<kvbm::BlockManager> ManagerState::get() {
  if (!mgr) {
    raise_py(PyExc_ValueError, "kvbm: the BlockManager of segment '" + config.name + "' is closed");
  }
  if (forked()) {
    raise_py(PyExc_RuntimeError,
             "kvbm: attachment belongs to the parent process; open the segment again");
  }
  return mgr;
}

void ManagerState::close() {
  if (!mgr) {
    return;
  }
  if (forked()) {
    raise_py(PyExc_RuntimeError,
             "kvbm: attachment belongs to the parent process; open the segment again");
  }
  if (exports > 0) {
    raise_py(PyExc_BufferError, "kvbm: cannot close the BlockManager of segment '" + config.name +
                                    "': " + std::to_string(exports) +
                                    " payload view(s) are still alive");
  }
  GuardBin bin;
  for (CellBase* c = cells; c != nullptr; c = c->next) {
    c->take_guard(bin);
    if (c->state == CellState::kLive) {
      c->state = CellState::kClosed;
    }
  }
  std::shared_ptr<kvbm::BlockManager> m = std::move(mgr);
  without_gil([&] {
    bin = GuardBin();
    m.reset();  // the last handle is gone: detaches (releases the process entry)
  });
}

// --- BlockManager ---------------------------------------------------------------------------

namespace {

using State = std::shared_ptr<ManagerState>;

State adopt(kvbm::Result<std::shared_ptr<kvbm::BlockManager>>&& r) {
  auto m = unwrap(std::move(r));
  return std::make_shared<ManagerState>(std::move(m));
}

py::list mutable_list(const State& s, std::vector<kvbm::MutableBlock>&& blocks) {
  py::list out(blocks.size());
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i),
                    make_mutable(s, std::move(blocks[i])).release().ptr());
  }
  return out;
}

py::list immutable_list(const State& s, std::vector<kvbm::ImmutableBlock>&& blocks) {
  py::list out(blocks.size());
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i),
                    make_immutable(s, std::move(blocks[i])).release().ptr());
  }
  return out;
}

std::size_t count_arg(py::handle n) {
  return static_cast<std::size_t>(to_uint(n, ~std::uint32_t{0}, "count"));
}

/// Moves the guards out of the CompleteBlock handles in `blocks` (all checked first: nothing is
/// consumed when one is invalid).
std::vector<kvbm::CompleteBlock> take_completes(const State& s, py::handle blocks) {
  py::object seq = py::reinterpret_steal<py::object>(
      PySequence_Fast(blocks.ptr(), "kvbm: register_blocks expects a list of CompleteBlock"));
  if (!seq) {
    throw py::error_already_set();
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  std::vector<CompleteCell*> cells(static_cast<std::size_t>(n));
  struct Unmark {
    std::vector<CompleteCell*>& cells;
    ~Unmark() {
      for (auto* c : cells) {
        if (c != nullptr) {
          c->pending = false;
        }
      }
    }
  } unmark{cells};
  for (Py_ssize_t i = 0; i < n; ++i) {
    CompleteCell* c = as_complete(items[i]);
    if (c == nullptr) {
      raise_py(PyExc_TypeError, "kvbm: item " + std::to_string(i) + " is a " +
                                    std::string(Py_TYPE(items[i])->tp_name) +
                                    ", not a kvbm.CompleteBlock");
    }
    c->check(true);
    if (c->mgr != s) {
      raise_py(PyExc_ValueError,
               "kvbm: item " + std::to_string(i) + " is a block of another BlockManager");
    }
    if (c->pending) {
      raise_py(PyExc_ValueError,
               "kvbm: item " + std::to_string(i) + " appears twice in the same call");
    }
    c->pending = true;
    cells[static_cast<std::size_t>(i)] = c;
  }
  std::vector<kvbm::CompleteBlock> out;
  out.reserve(cells.size());
  for (auto* c : cells) {
    out.push_back(std::move(c->guard));
    c->state = CellState::kConsumed;
  }
  return out;
}

py::object info_state(kvbm::SlotState s) {
  return py::str(std::string(kvbm::to_string(s)));
}

}  // namespace

void bind_manager(py::module_& m) {
  py::class_<kvbm::BlockInfo>(m, "BlockInfo", "One block's state (BlockManager.inspect_block).")
      .def_property_readonly(
          "state", [](const kvbm::BlockInfo& i) { return info_state(i.state); },
          "'reset', 'mutable', 'staged', 'primary', 'duplicate' or 'inactive'.")
      .def_property_readonly(
          "hash",
          [](const kvbm::BlockInfo& i) -> py::object {
            if (i.state == kvbm::SlotState::kReset || i.state == kvbm::SlotState::kMutable) {
              return py::none();
            }
            return py::cast(i.hash);
          },
          "The block's SequenceHash, or None where the block has none (reset, mutable).")
      .def_readonly("holder_processes", &kvbm::BlockInfo::holder_processes,
                    "Processes holding the block (primary/duplicate), else 0.")
      .def_readonly("duplicate_refs", &kvbm::BlockInfo::duplicate_refs,
                    "Live duplicates of a primary, else 0.")
      .def_readonly("reset_on_release", &kvbm::BlockInfo::reset_on_release,
                    "Whether the block goes to Reset instead of inactive when released.")
      .def("__repr__", [](const kvbm::BlockInfo& i) {
        std::string h = (i.state == kvbm::SlotState::kReset || i.state == kvbm::SlotState::kMutable)
                            ? "None"
                            : "'" + i.hash.to_string() + "'";
        return "kvbm.BlockInfo(state='" + std::string(kvbm::to_string(i.state)) + "', hash=" + h +
               ", holder_processes=" + std::to_string(i.holder_processes) +
               ", duplicate_refs=" + std::to_string(i.duplicate_refs) +
               ", reset_on_release=" + (i.reset_on_release ? "True" : "False") + ")";
      });

  auto destroy = [](const std::string& name) {
    unwrap(without_gil([&] { return kvbm::BlockManager::destroy(name); }));
  };
  m.def("destroy", destroy, py::arg("name"),
        R"doc(Unlinks segment `name` and its payload object. Processes still attached keep working
on their mappings; new opens get NotFoundError. NotFoundError if it does not exist.)doc");

  py::class_<ManagerState, State> cls(m, "BlockManager", R"doc(
One process's attachment to a kvbm shared-memory segment (one process-table entry).

Create or attach with BlockManager.create(config), .open(name) or .open_or_create(config).
Every method is thread-safe and releases the GIL while it works on the segment. Blocks go
through MutableBlock (allocate_blocks) -> CompleteBlock (stage) -> ImmutableBlock
(register_blocks); match_blocks finds registered blocks by hash, from any process.

close() (or leaving a `with mgr:` block) detaches: it empties every handle of this manager
still held and releases the process entry. A BlockManager inherited through os.fork() raises
RuntimeError in the child: open the segment again there.
)doc");
  cls.def_static(
         "create",
         [](py::handle cfg) {
           const kvbm::SegmentConfig& c = config_arg(cfg);
           return adopt(without_gil([&] { return kvbm::BlockManager::create(c); }));
         },
         py::arg("config"),
         "Creates the segment and attaches. AlreadyExistsError if it exists, InvalidConfigError "
         "for a bad config.")
      .def_static(
          "open",
          [](const std::string& name) {
            return adopt(without_gil([&] { return kvbm::BlockManager::open(name); }));
          },
          py::arg("name"),
          "Attaches to an existing segment: NotFoundError, LayoutMismatchError, CorruptedError, "
          "PermissionDeniedError, ProcessTableFullError. Waits up to 2 s for a segment still "
          "being initialised.")
      .def_static(
          "open_or_create",
          [](py::handle cfg) {
            const kvbm::SegmentConfig& c = config_arg(cfg);
            return adopt(without_gil([&] { return kvbm::BlockManager::open_or_create(c); }));
          },
          py::arg("config"),
          "Opens the segment if it exists (its config must equal `config` in every field but "
          "permissions, else InvalidConfigError naming the first difference), else creates it.")
      .def_static("destroy", destroy, py::arg("name"), "Same as kvbm.destroy(name).")
      .def(
          "close", [](ManagerState& s) { s.close(); },
          R"doc(Detaches: empties every handle of this manager still held (their later use raises
ValueError) and releases the process entry. BufferError while payload views are alive. A second
call does nothing; any other call on a closed manager raises ValueError.)doc")
      .def_property_readonly(
          "closed", [](const ManagerState& s) { return !s.mgr; }, "Whether close() was called.")
      .def("__enter__",
           [](py::object self) {
             (void)self.cast<ManagerState&>().get();
             return self;
           })
      .def("__exit__", [](ManagerState& s, py::args) { s.close(); })
      .def("__repr__",
           [](const ManagerState& s) {
             return "<kvbm.BlockManager segment='" + s.config.name +
                    "' blocks=" + std::to_string(s.config.block_count) +
                    " block_size=" + std::to_string(s.config.block_size) +
                    (s.mgr ? (s.forked() ? " inherited" : " open") : " closed") + ">";
           })
      .def(
          "allocate_blocks",
          [](const State& s, py::handle count) -> py::object {
            const std::size_t n = count_arg(count);
            auto keep = s->get();
            auto& mgr = *keep;
            auto r = without_gil([&] { return mgr.allocate_blocks(n); });
            if (!r) {
              return py::none();
            }
            return mutable_list(s, std::move(*r));
          },
          py::arg("count"),
          R"doc(`count` MutableBlocks, or None if not enough blocks are free or evictable
(all-or-nothing). Takes the reset pool first (FIFO), then evicts from the inactive pool.)doc")
      .def(
          "allocate_blocks_with_evictions",
          [](const State& s, py::handle count) -> py::object {
            const std::size_t n = count_arg(count);
            auto keep = s->get();
            auto& mgr = *keep;
            auto r = without_gil([&] { return mgr.allocate_blocks_with_evictions(n); });
            if (!r) {
              return py::none();
            }
            return py::make_tuple(mutable_list(s, std::move(r->first)), hash_list(r->second));
          },
          py::arg("count"),
          R"doc((blocks, evicted_hashes) or None: like allocate_blocks, plus the hashes evicted to
satisfy it, in eviction order (the reset-pool blocks come first in `blocks`).)doc")
      .def(
          "register_block",
          [](const State& s, py::handle block) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto v = take_completes(s, py::make_tuple(block));
            auto r = without_gil([&] { return mgr.register_block(std::move(v[0])); });
            return make_immutable(s, std::move(r));
          },
          py::arg("block"),
          R"doc(Registers a CompleteBlock (consuming it) and returns an ImmutableBlock: the block
itself (new hash), a duplicate (hash present, duplication 'allow') or the existing primary
(hash present, 'reject'; the staged block then returns to the reset pool).)doc")
      .def(
          "register_blocks",
          [](const State& s, py::handle blocks) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto v = take_completes(s, blocks);
            auto r = without_gil([&] { return mgr.register_blocks(std::move(v)); });
            return immutable_list(s, std::move(r));
          },
          py::arg("blocks"),
          "register_block for a list of CompleteBlocks under one lock; results in input order.")
      .def(
          "match_blocks",
          [](const State& s, py::handle hashes) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto hs = hashes_from(hashes);
            auto r = without_gil([&] { return mgr.match_blocks(hs); });
            return immutable_list(s, std::move(r));
          },
          py::arg("hashes"),
          R"doc(Longest cached prefix of `hashes` (list of SequenceHash) as ImmutableBlocks: stops
at the first hash not cached in any process; inactive blocks are brought back.)doc")
      .def(
          "match_blocks_scattered",
          [](const State& s, py::handle hashes) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto hs = hashes_from(hashes);
            auto r = without_gil([&] { return mgr.match_blocks_scattered(hs); });
            py::list out(r.size());
            for (std::size_t i = 0; i < r.size(); ++i) {
              py::object item = r[i] ? make_immutable(s, std::move(*r[i])) : py::none();
              PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), item.release().ptr());
            }
            return out;
          },
          py::arg("hashes"),
          "One entry per hash: an ImmutableBlock, or None where the hash is not cached.")
      .def(
          "scan_matches",
          [](const State& s, py::handle hashes, bool touch) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto hs = hashes_from(hashes);
            auto r = without_gil([&] { return mgr.scan_matches(hs, touch); });
            py::dict out;
            for (auto& [hash, block] : r) {
              out[py::cast(hash)] = make_immutable(s, std::move(block));
            }
            return out;
          },
          py::arg("hashes"), py::arg("touch") = false,
          R"doc(dict {SequenceHash: ImmutableBlock} of every cached hash among `hashes` (each once).
`touch` counts them in the frequency sketch (eviction 'multi_lru').)doc")
      .def(
          "peek_blocks",
          [](const State& s, py::handle hashes) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto hs = hashes_from(hashes);
            auto r = without_gil([&] { return mgr.peek_blocks(hs); });
            py::list out(r.size());
            for (std::size_t i = 0; i < r.size(); ++i) {
              py::str v(std::string(kvbm::to_string(r[i])));
              PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), v.release().ptr());
            }
            return out;
          },
          py::arg("hashes"),
          R"doc(One str per hash, looked up without any side effect (nothing acquired or brought
back, no recency, frequency or metric change): 'cached' (inactive, or held and staying cached),
'reset_on_release' (held and marked to leave the cache with its last holder) or 'absent'.)doc")
      .def(
          "lookup_prefix",
          [](const State& s, py::handle hashes) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto hs = hashes_from(hashes);
            return without_gil([&] { return mgr.lookup_prefix(hs); });
          },
          py::arg("hashes"),
          "How many leading hashes are 'cached' (see peek_blocks), without any side effect.")
      .def(
          "reset_inactive_pool",
          [](const State& s) {
            auto keep = s->get();
            auto& mgr = *keep;
            unwrap(without_gil([&] { return mgr.reset_inactive_pool(); }));
          },
          "Drains the inactive pool to Reset; then BlocksInUseError if any block is still in use.")
      .def(
          "reap_dead_processes",
          [](const State& s) {
            auto keep = s->get();
            auto& mgr = *keep;
            return without_gil([&] { return mgr.reap_dead_processes(); });
          },
          "Releases everything held by processes that died; returns how many were reaped.")
      .def(
          "verify",
          [](const State& s, bool exclusive) {
            auto keep = s->get();
            auto& mgr = *keep;
            return without_gil([&] {
              return mgr.verify(exclusive ? kvbm::VerifyMode::kExclusive : kvbm::VerifyMode::kPaced)
                  .problems;
            });
          },
          py::kw_only(), py::arg("exclusive") = false,
          "Every broken invariant, one string each; [] when the segment is consistent. Gives "
          "the store lock up for a moment every few microseconds; on a segment too busy for a "
          "whole "
          "consistent walk it checks what each chunk can check alone. exclusive=True holds the "
          "lock for the whole walk (workers wait) and always compares everything.")
      .def(
          "total_blocks", [](const State& s) { return s->get()->total_blocks(); },
          "Blocks in the segment.")
      .def(
          "available_blocks",
          [](const State& s) {
            auto keep = s->get();
            auto& mgr = *keep;
            return without_gil([&] { return mgr.available_blocks(); });
          },
          "Blocks that allocate_blocks can hand out now (reset + inactive).")
      .def(
          "block_size", [](const State& s) { return s->get()->block_size(); }, "Tokens per block.")
      .def(
          "duplication_policy",
          [](const State& s) {
            return std::string(kvbm::to_string(s->get()->duplication_policy()));
          },
          "'allow' or 'reject'.")
      .def(
          "config", [](const State& s) { return config_from_cpp(s->get()->config()); },
          "The segment's SegmentConfig (as recorded in the segment).")
      .def(
          "process_index", [](const State& s) { return s->get()->process_index(); },
          "This attachment's process-table index.")
      .def(
          "counts",
          [](const State& s) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto c = without_gil([&] { return mgr.counts(); });
            py::dict d;
            d["reset"] = c.reset;
            d["mutable"] = c.mutable_;
            d["staged"] = c.staged;
            d["primary"] = c.primary;
            d["duplicate"] = c.duplicate;
            d["inactive"] = c.inactive;
            return d;
          },
          "Blocks per state, one consistent snapshot: dict with keys reset, mutable, staged, "
          "primary, duplicate, inactive.")
      .def(
          "metrics",
          [](const State& s) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto snap = without_gil([&] { return mgr.metrics(); });
            py::dict d;
            for (auto& [name, value] : snap.all()) {
              d[py::str(name.data(), name.size())] = value;
            }
            return d;
          },
          "The segment-wide kvbm_* counters and gauges: dict {full name: int}.")
      .def(
          "inspect_block",
          [](const State& s, py::handle id) {
            auto keep = s->get();
            auto& mgr = *keep;
            const auto b = static_cast<kvbm::BlockId>(to_uint(id, ~std::uint32_t{0}, "block id"));
            return without_gil([&] { return mgr.inspect_block(b); });
          },
          py::arg("block_id"), "BlockInfo of one block; ValueError if the id is out of range.")
      .def(
          "payload",
          [](const State& s) {
            auto keep = s->get();
            auto& mgr = *keep;
            auto p = mgr.payload();
            if (p.empty()) {
              raise_py(PyExc_ValueError, "kvbm: segment '" + s->config.name +
                                             "' has no payload region (bytes_per_block = 0)");
            }
            return payload_view(s, nullptr, p.data(), p.size(), false);
          },
          R"doc(The whole payload region as one writable memoryview (1-D, format 'B'), for bulk
copies; block `id` starts at block_offset(id). close() raises BufferError while it is alive.)doc")
      .def(
          "block_offset",
          [](const State& s, py::handle id) {
            auto keep = s->get();
            auto& mgr = *keep;
            return mgr.block_offset(
                static_cast<kvbm::BlockId>(to_uint(id, ~std::uint32_t{0}, "block id")));
          },
          py::arg("block_id"), "Byte offset of block `block_id` in payload().")
      .def(
          "start_background_reaper",
          [](const State& s, double interval) {
            auto keep = s->get();
            auto& mgr = *keep;
            if (!(interval > 0)) {
              raise_py(PyExc_ValueError, "kvbm: interval must be > 0 seconds");
            }
            without_gil([&] {
              mgr.start_background_reaper(std::chrono::milliseconds(
                  std::max<long long>(1, static_cast<long long>(interval * 1000))));
            });
          },
          py::arg("interval") = 1.0,
          "Reaps dead processes every `interval` seconds from a background thread.")
      .def(
          "stop_background_reaper",
          [](const State& s) {
            auto keep = s->get();
            auto& mgr = *keep;
            without_gil([&] { mgr.stop_background_reaper(); });
          },
          "Stops the background reaper.");
}

}  // namespace kvbm_python
