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

}  // namespace

void bind_handles(py::module_& m) {
  py::class_<PayloadExport>(m, "_PayloadExport", py::buffer_protocol(),
                            "Owner of a payload memoryview (keeps its block and mapping alive).")
      .def_buffer([](PayloadExport& e) {
        return py::buffer_info(e.data, 1, "B", 1, {static_cast<py::ssize_t>(e.size)}, {1},
                               e.readonly);
      });

  bind_mutable(m);
  bind_immutable(m);

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
