// SPDX-License-Identifier: Apache-2.0
// kvbm.MutableBlock, CompleteBlock, ImmutableBlock, WeakBlock and the payload memoryviews.
#include <string>

#include <pybind11/stl.h>

#include "binding.hpp"
#include "errors.hpp"

namespace kvbm_python {

// --- cells ----------------------------------------------------------------------------------

CellBase::CellBase(std::shared_ptr<ManagerState> m) : mgr(std::move(m)) {
  next = mgr->cells;
  if (next != nullptr) {
    next->prev = this;
  }
  mgr->cells = this;
}

CellBase::~CellBase() {
  unlink();
}

void CellBase::unlink() {
  if (!linked) {
    return;
  }
  linked = false;
  if (prev != nullptr) {
    prev->next = next;
  } else {
    mgr->cells = next;
  }
  if (next != nullptr) {
    next->prev = prev;
  }
  prev = next = nullptr;
}

std::string CellBase::state_name() const {
  switch (state) {
    case CellState::kLive:
      return fork_gen != fork_generation() ? "inherited" : "live";
    case CellState::kReleased:
      return "released";
    case CellState::kConsumed:
      return "consumed";
    case CellState::kClosed:
      return "closed";
  }
  return "?";
}

void CellBase::check(bool mutating) const {
  switch (state) {
    case CellState::kLive:
      break;
    case CellState::kReleased:
      raise_py(PyExc_ValueError, std::string("kvbm: this ") + kind() + " was released");
    case CellState::kConsumed:
      raise_py(PyExc_ValueError,
               std::string("kvbm: this ") + kind() +
                   " was consumed (stage(), reset() and register_block(s) hand the block to a "
                   "new handle)");
    case CellState::kClosed:
      raise_py(PyExc_ValueError,
               std::string("kvbm: this ") + kind() + " was emptied by BlockManager.close()");
  }
  if (mutating && fork_gen != fork_generation()) {
    raise_py(PyExc_RuntimeError,
             std::string("kvbm: this ") + kind() +
                 " belongs to the parent process (inherited through fork); open the segment "
                 "again in the child");
  }
}

void CellBase::release() {
  if (state != CellState::kLive) {
    return;  // a second release() is a no-op
  }
  state = CellState::kReleased;
  if (exports > 0) {
    return;  // the last payload view's exporter drops the cell, and with it the block
  }
  GuardBin bin;
  take_guard(bin);
  without_gil([&] { bin = GuardBin(); });
}

template <>
void Cell<kvbm::MutableBlock>::take_guard(GuardBin& bin) {
  if (guard) {
    bin.mutables.push_back(std::move(guard));
  }
}
template <>
void Cell<kvbm::CompleteBlock>::take_guard(GuardBin& bin) {
  if (guard) {
    bin.completes.push_back(std::move(guard));
  }
}
template <>
void Cell<kvbm::ImmutableBlock>::take_guard(GuardBin& bin) {
  if (guard) {
    bin.immutables.push_back(std::move(guard));
  }
}
template <>
void Cell<WeakState>::take_guard(GuardBin& bin) {
  if (!guard.empty) {
    bin.weaks.push_back(std::move(guard.weak));
    guard.weak = kvbm::WeakBlock();
    guard.empty = true;
  }
}

namespace {

template <class C>
py::object wrap(const std::shared_ptr<ManagerState>& m, auto&& guard, const char* name) {
  return py::cast(std::make_shared<C>(m, std::move(guard), name));
}

}  // namespace

py::object make_mutable(const std::shared_ptr<ManagerState>& m, kvbm::MutableBlock&& b) {
  return wrap<MutableCell>(m, std::move(b), "MutableBlock");
}
py::object make_complete(const std::shared_ptr<ManagerState>& m, kvbm::CompleteBlock&& b) {
  return wrap<CompleteCell>(m, std::move(b), "CompleteBlock");
}
py::object make_immutable(const std::shared_ptr<ManagerState>& m, kvbm::ImmutableBlock&& b) {
  return wrap<ImmutableCell>(m, std::move(b), "ImmutableBlock");
}

// --- payload views --------------------------------------------------------------------------

namespace {

/// The object a payload memoryview refers to (memoryview.obj): keeps the bytes mapped and, for
/// a block's view, the block held.
struct PayloadExport {
  std::shared_ptr<ManagerState> mgr;
  std::shared_ptr<CellBase> cell;
  std::byte* data;
  std::size_t size;
  bool readonly;

  PayloadExport(std::shared_ptr<ManagerState> m,
                std::shared_ptr<CellBase> c,
                std::byte* d,
                std::size_t n,
                bool ro)
      : mgr(std::move(m)), cell(std::move(c)), data(d), size(n), readonly(ro) {
    ++mgr->exports;
    if (cell) {
      ++cell->exports;
    }
  }
  ~PayloadExport() {
    --mgr->exports;
    // The handle was released while this view was alive: the block goes with the last view.
    if (cell && --cell->exports == 0 && cell->state != CellState::kLive) {
      GuardBin bin;
      cell->take_guard(bin);
      without_gil([&] { bin = GuardBin(); });
    }
  }
  PayloadExport(const PayloadExport&) = delete;
  PayloadExport& operator=(const PayloadExport&) = delete;
};

}  // namespace

py::object payload_view(std::shared_ptr<ManagerState> mgr,
                        std::shared_ptr<CellBase> cell,
                        std::byte* data,
                        std::size_t size,
                        bool readonly) {
  py::object exporter = py::cast(
      std::make_unique<PayloadExport>(std::move(mgr), std::move(cell), data, size, readonly));
  py::object view = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(exporter.ptr()));
  if (!view) {
    throw py::error_already_set();
  }
  return view;
}

// --- handle classes -------------------------------------------------------------------------

namespace {

template <class C>
std::string handle_repr(const C& c, const std::string& extra) {
  std::string out = std::string("<kvbm.") + c.kind() + " " + c.state_name();
  if (c.state == CellState::kLive) {
    out += extra;
  }
  return out + ">";
}

std::string hash_text(const kvbm::SequenceHash& h) {
  return " hash=" + h.to_string();
}

template <class C>
py::object enter(py::object self) {
  self.cast<C&>().check();
  return self;
}

template <class C>
void exit_(C& c, py::args) {
  c.release();
}

std::byte* block_data_or_raise(std::span<std::byte> s) {
  if (s.empty()) {
    raise_py(PyExc_ValueError,
             "kvbm: this segment has no payload region (created with bytes_per_block = 0)");
  }
  return s.data();
}

}  // namespace

void bind_handles(py::module_& m) {
  py::class_<PayloadExport>(m, "_PayloadExport", py::buffer_protocol(),
                            "Owner of a payload memoryview (keeps its block and mapping alive).")
      .def_buffer([](PayloadExport& e) {
        return py::buffer_info(e.data, 1, "B", 1, {static_cast<py::ssize_t>(e.size)}, {1},
                               e.readonly);
      });

  py::class_<MutableCell, std::shared_ptr<MutableCell>>(m, "MutableBlock", R"doc(
A block owned by this process for writing (slot state Mutable); from allocate_blocks().

Dropping or release()-ing it returns the block to the reset pool. stage(hash, block_size)
consumes it and returns a CompleteBlock. `data` is a writable memoryview over its payload bytes.
A context manager: `with blocks[0] as b: ...` releases on exit unless it was staged.
)doc")
      .def_property_readonly(
          "block_id",
          [](const MutableCell& c) {
            c.check();
            return c.guard.block_id();
          },
          "Index of the block in the segment.")
      .def_property_readonly(
          "block_size",
          [](const MutableCell& c) {
            c.check();
            return c.mgr->config.block_size;
          },
          "Tokens per block of the segment.")
      .def_property_readonly(
          "sequence_hash",
          [](const MutableCell& c) -> py::object {
            c.check();
            return py::none();
          },
          "None: a mutable block has no hash yet.")
      .def_property_readonly(
          "data",
          [](const std::shared_ptr<MutableCell>& c) {
            c->check(true);
            std::byte* d = block_data_or_raise(c->guard.data());
            return payload_view(c->mgr, c, d, c->guard.data().size(), false);
          },
          R"doc(Writable memoryview (1-D, format 'B') over this block's payload bytes, no copy.
While the view is alive the block stays held (even after release()) and stage() raises
BufferError. ValueError when the segment has no payload region.)doc")
      .def(
          "stage",
          [](const std::shared_ptr<MutableCell>& c, const kvbm::SequenceHash& hash,
             py::handle block_size) {
            c->check(true);
            const auto bs =
                static_cast<std::uint32_t>(to_uint(block_size, 0xFFFFFFFFu, "block_size"));
            if (hash.hi() == ~std::uint64_t{0} && hash.lo() == ~std::uint64_t{0}) {
              raise_py(PyExc_ValueError,
                       "kvbm: stage: the SequenceHash with all 128 bits set is reserved");
            }
            if (c->exports > 0) {
              raise_py(PyExc_BufferError,
                       "kvbm: stage: payload views of this block are still alive; release them "
                       "first (memoryview.release() or a with statement)");
            }
            kvbm::MutableBlock block = std::move(c->guard);
            c->state = CellState::kConsumed;
            auto r = without_gil([&] { return std::move(block).stage(hash, bs); });
            if (!r) {
              auto& e = r.error();
              raise_block_size_mismatch(e.expected, e.actual,
                                        make_mutable(c->mgr, std::move(e.block)));
            }
            return make_complete(c->mgr, std::move(*r));
          },
          py::arg("hash"), py::arg("block_size"),
          R"doc(Mutable -> Staged with `hash`; returns a CompleteBlock and consumes this handle.

`block_size` must equal the segment's block size, else BlockSizeMismatchError whose .block is
this block handed back in a new MutableBlock (this handle is consumed either way).)doc")
      .def("release", &MutableCell::release,
           "Returns the block to the reset pool now (or when its last payload view goes). A "
           "second call does nothing.")
      .def("__enter__", &enter<MutableCell>)
      .def("__exit__", &exit_<MutableCell>)
      .def("__repr__", [](const MutableCell& c) {
        return handle_repr(c, " block_id=" + std::to_string(c.guard.block_id()));
      });

  py::class_<CompleteCell, std::shared_ptr<CompleteCell>>(m, "CompleteBlock", R"doc(
A staged block (its hash set, not yet registered); from MutableBlock.stage().

BlockManager.register_block(s) consumes it. reset() turns it back into a MutableBlock; dropping
or release()-ing it returns the block to the reset pool. A context manager.
)doc")
      .def_property_readonly(
          "block_id",
          [](const CompleteCell& c) {
            c.check();
            return c.guard.block_id();
          },
          "Index of the block in the segment.")
      .def_property_readonly(
          "block_size",
          [](const CompleteCell& c) {
            c.check();
            return c.mgr->config.block_size;
          },
          "Tokens per block of the segment.")
      .def_property_readonly(
          "sequence_hash",
          [](const CompleteCell& c) {
            c.check();
            return c.guard.sequence_hash();
          },
          "The SequenceHash it was staged with.")
      .def(
          "reset",
          [](const std::shared_ptr<CompleteCell>& c) {
            c->check(true);
            kvbm::CompleteBlock block = std::move(c->guard);
            c->state = CellState::kConsumed;
            return make_mutable(c->mgr, without_gil([&] { return std::move(block).reset(); }));
          },
          "Staged -> Mutable: returns a MutableBlock for the same block and consumes this handle.")
      .def("release", &CompleteCell::release,
           "Returns the block to the reset pool now. A second call does nothing.")
      .def("__enter__", &enter<CompleteCell>)
      .def("__exit__", &exit_<CompleteCell>)
      .def("__repr__", [](const CompleteCell& c) {
        return handle_repr(c, " block_id=" + std::to_string(c.guard.block_id()) +
                                  hash_text(c.guard.sequence_hash()));
      });

  py::class_<ImmutableCell, std::shared_ptr<ImmutableCell>>(m, "ImmutableBlock", R"doc(
A registered block (Primary or Duplicate), shared by every process that holds it.

From register_block(s), match_blocks(), scan_matches() and WeakBlock.upgrade(). While any
process holds the block it is never evicted; when the last handle in the last process is
released it goes to the inactive pool (or Reset with set_reset_on_release(True)). `data` is a
read-only memoryview of its payload. A context manager.
)doc")
      .def_property_readonly(
          "block_id",
          [](const ImmutableCell& c) {
            c.check();
            return c.guard.block_id();
          },
          "Index of the block in the segment.")
      .def_property_readonly(
          "block_size",
          [](const ImmutableCell& c) {
            c.check();
            return c.mgr->config.block_size;
          },
          "Tokens per block of the segment.")
      .def_property_readonly(
          "sequence_hash",
          [](const ImmutableCell& c) {
            c.check();
            return c.guard.sequence_hash();
          },
          "The block's SequenceHash.")
      .def(
          "use_count",
          [](const ImmutableCell& c) {
            c.check();
            return c.guard.use_count();
          },
          "Handles to this block alive in this process.")
      .def(
          "downgrade",
          [](const std::shared_ptr<ImmutableCell>& c) {
            c->check();
            WeakState w{c->guard.downgrade(), c->guard.block_id(), false};
            return py::cast(std::make_shared<WeakCell>(c->mgr, std::move(w), "WeakBlock"));
          },
          "A WeakBlock for this block: does not keep it, upgrade() re-acquires it by hash.")
      .def(
          "set_reset_on_release",
          [](const ImmutableCell& c, bool value) {
            c.check(true);
            without_gil([&] { c.guard.set_reset_on_release(value); });
          },
          py::arg("value"),
          "Whether the block goes to Reset instead of the inactive pool when released by its "
          "last holder. Shared by every holder; survives resurrection.")
      .def_property_readonly(
          "data",
          [](const std::shared_ptr<ImmutableCell>& c) {
            c->check(true);
            auto s = c->guard.data();
            std::byte* d = block_data_or_raise({const_cast<std::byte*>(s.data()), s.size()});
            return payload_view(c->mgr, c, d, s.size(), true);
          },
          R"doc(Read-only memoryview (1-D, format 'B') over this block's payload bytes, no copy.
While the view is alive the block stays held, even after release().)doc")
      .def("release", &ImmutableCell::release,
           "Drops this handle's reference now (or when its last payload view goes). A second "
           "call does nothing.")
      .def("__enter__", &enter<ImmutableCell>)
      .def("__exit__", &exit_<ImmutableCell>)
      .def("__repr__", [](const ImmutableCell& c) {
        return handle_repr(c, " block_id=" + std::to_string(c.guard.block_id()) +
                                  hash_text(c.guard.sequence_hash()));
      });

  py::class_<WeakCell, std::shared_ptr<WeakCell>>(m, "WeakBlock", R"doc(
A reference to a registered block that does not keep it (from ImmutableBlock.downgrade()).

upgrade() returns an ImmutableBlock while the hash is still cached (held by any process or in
the inactive pool), else None.
)doc")
      .def_property_readonly(
          "block_id",
          [](const WeakCell& c) {
            c.check();
            return c.guard.id;
          },
          "Index of the block it was made from (upgrade() may return another block).")
      .def_property_readonly(
          "block_size",
          [](const WeakCell& c) {
            c.check();
            return c.mgr->config.block_size;
          },
          "Tokens per block of the segment.")
      .def_property_readonly(
          "sequence_hash",
          [](const WeakCell& c) {
            c.check();
            return c.guard.weak.sequence_hash();
          },
          "The block's SequenceHash.")
      .def(
          "upgrade",
          [](const std::shared_ptr<WeakCell>& c) -> py::object {
            c->check(true);
            auto r = without_gil([&] { return c->guard.weak.upgrade(); });
            if (!r) {
              return py::none();
            }
            return make_immutable(c->mgr, std::move(*r));
          },
          "An ImmutableBlock for the hash if it is still cached, else None.")
      .def("release", &WeakCell::release, "Forgets the block. A second call does nothing.")
      .def("__enter__", &enter<WeakCell>)
      .def("__exit__", &exit_<WeakCell>)
      .def("__repr__", [](const WeakCell& c) {
        return handle_repr(
            c, " block_id=" + std::to_string(c.guard.id) + hash_text(c.guard.weak.sequence_hash()));
      });
}

}  // namespace kvbm_python
