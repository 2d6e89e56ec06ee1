// SPDX-License-Identifier: Apache-2.0
// Shared pieces of the kvbm._native module: the state behind a Python BlockManager, the cells
// behind the Python block handles, and each topic's bind_* function.
//
// Ownership: a Python handle object holds a shared_ptr to its cell; the cell holds the C++ guard
// (kvbm::MutableBlock, ...) and a shared_ptr to its ManagerState. A payload view (memoryview)
// holds an exporter that holds the cell too, so a live view keeps its block alive after the
// handle was released. Every cell is linked into its manager's list (guarded by the GIL) so that
// close() can empty the handles still held.
//
// The GIL: every C++ call that may take the store mutex runs with the GIL released, including
// the guard destructors (a last release takes the mutex); Python objects are only touched with
// the GIL held.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/pybind11.h>

#include "kvbm/block_manager.hpp"
#include "kvbm/blocks.hpp"
#include "kvbm/config.hpp"

#include "errors.hpp"
#include "hash_object.hpp"

namespace kvbm_python {

namespace py = pybind11;

/// Bumped in a fork child (pthread_atfork): state inherited from the parent then refuses work.
extern std::atomic<std::uint64_t> g_fork_generation;
inline std::uint64_t fork_generation() {
  return g_fork_generation.load(std::memory_order_relaxed);
}

/// Whether the interpreter is shutting down (then the GIL is not released any more).
bool finalizing();

/// Runs `f` with the GIL released (unless the interpreter is finalizing).
template <class F>
auto without_gil(F&& f) {
  if (finalizing() || !PyGILState_Check()) {
    return f();
  }
  py::gil_scoped_release nogil;
  return f();
}

struct CellBase;

/// Guards moved out of cells, destroyed later with the GIL released.
struct GuardBin {
  std::vector<kvbm::MutableBlock> mutables;
  std::vector<kvbm::CompleteBlock> completes;
  std::vector<kvbm::ImmutableBlock> immutables;
  std::vector<kvbm::WeakBlock> weaks;
};

/// Whether destroying `bin` may take the store mutex (then the GIL is released first). Dropping
/// an ImmutableBlock whose slot this process still holds through another handle only decrements
/// a local count. (Another thread dropping that other handle at the same moment can make this
/// drop the last one: it then takes the mutex with the GIL held, which only delays other Python
/// threads: the mutex's holders never wait for the GIL.)
inline bool may_lock(const GuardBin& bin) noexcept {
  if (!bin.mutables.empty() || !bin.completes.empty() || !bin.weaks.empty()) {
    return true;
  }
  try {
    for (const auto& b : bin.immutables) {
      if (b.use_count() <= 1) {
        return true;
      }
    }
  } catch (...) {
    return true;  // use_count() refuses in a fork child, where the drop does nothing anyway
  }
  return false;
}

inline bool holds(const kvbm::MutableBlock& g) {
  return static_cast<bool>(g);
}
inline bool holds(const kvbm::CompleteBlock& g) {
  return static_cast<bool>(g);
}
inline bool holds(const kvbm::ImmutableBlock& g) {
  return static_cast<bool>(g);
}
template <class Guard>
bool may_lock(const Guard&) noexcept {
  return true;
}
/// Dropping an ImmutableBlock whose slot this process holds through another handle only
/// decrements a local count (see may_lock(GuardBin) for the race).
inline bool may_lock(const kvbm::ImmutableBlock& g) noexcept {
  try {
    return g.use_count() <= 1;
  } catch (...) {
    return true;  // refused in a fork child, where the drop does nothing anyway
  }
}

/// The state behind one Python kvbm.BlockManager (one process-table entry).
struct ManagerState {
  std::shared_ptr<kvbm::BlockManager> mgr;  // null once closed
  kvbm::SegmentConfig config;
  std::uint64_t fork_gen = fork_generation();
  CellBase* cells = nullptr;  // every live cell of this manager (GIL)
  std::size_t exports = 0;    // live payload views of this manager (GIL)

  explicit ManagerState(std::shared_ptr<kvbm::BlockManager> m);
  ~ManagerState();
  bool forked() const { return fork_gen != fork_generation(); }
  /// The manager; ValueError once closed, RuntimeError in a fork child. Callers keep the
  /// returned reference for the length of their call (another thread may close() meanwhile).
  std::shared_ptr<kvbm::BlockManager> get();
  /// Empties every handle and detaches; BufferError while payload views are alive.
  void close();
};

/// Why a handle no longer holds its block (ValueError message on use).
enum class CellState : std::uint8_t { kLive, kReleased, kConsumed, kClosed };

struct CellBase {
  std::shared_ptr<ManagerState> mgr;
  CellBase* prev = nullptr;
  CellBase* next = nullptr;
  bool linked = true;
  std::size_t exports = 0;  // live payload views of this handle (GIL)
  CellState state = CellState::kLive;
  bool pending = false;  // marked while a batch call checks its arguments
  std::uint64_t fork_gen = fork_generation();

  explicit CellBase(std::shared_ptr<ManagerState> m);
  virtual ~CellBase();
  CellBase(const CellBase&) = delete;
  CellBase& operator=(const CellBase&) = delete;

  /// Leaves the manager's list (idempotent).
  void unlink();
  virtual const char* kind() const = 0;
  /// Moves the guard (if any) into `bin`; the cell no longer holds the block.
  virtual void take_guard(GuardBin& bin) = 0;
  /// ValueError if the handle was released/consumed/closed; RuntimeError in a fork child when
  /// `mutating` (the child must not change the parent's blocks).
  void check(bool mutating = false) const;
  /// The handle's release(): the block is released now, or when its last payload view goes.
  void release();
  std::string state_name() const;
};

template <class Guard>
struct Cell final : CellBase {
  Guard guard;
  const char* name;
  Cell(std::shared_ptr<ManagerState> m, Guard&& g, const char* n)
      : CellBase(std::move(m)), guard(std::move(g)), name(n) {}
  ~Cell() override {
    unlink();  // before the GIL is released below: the list is only touched under the GIL
    if (!holds(guard)) {
      return;
    }
    if (may_lock(guard)) {
      without_gil([&] { Guard dropped = std::move(guard); });
    } else {
      Guard dropped = std::move(guard);
    }
  }
  const char* kind() const override { return name; }
  void take_guard(GuardBin& bin) override;
};

template <>
void Cell<kvbm::MutableBlock>::take_guard(GuardBin& bin);
template <>
void Cell<kvbm::CompleteBlock>::take_guard(GuardBin& bin);
template <>
void Cell<kvbm::ImmutableBlock>::take_guard(GuardBin& bin);

using MutableCell = Cell<kvbm::MutableBlock>;
using CompleteCell = Cell<kvbm::CompleteBlock>;
using ImmutableCell = Cell<kvbm::ImmutableBlock>;

/// A WeakBlock also remembers the block id it was made from (the C++ guard does not expose it).
struct WeakState {
  kvbm::WeakBlock weak;
  kvbm::BlockId id = 0;
  bool empty = false;
};
inline bool holds(const WeakState& w) {
  return !w.empty;
}
template <>
void Cell<WeakState>::take_guard(GuardBin& bin);
using WeakCell = Cell<WeakState>;

/// Python handle objects (kvbm.MutableBlock, ...) for new guards, linked into `m`.
py::object make_mutable(const std::shared_ptr<ManagerState>& m, kvbm::MutableBlock&& b);
py::object make_complete(const std::shared_ptr<ManagerState>& m, kvbm::CompleteBlock&& b);
py::object make_immutable(const std::shared_ptr<ManagerState>& m, kvbm::ImmutableBlock&& b);

/// list[SequenceHash] from C++ hashes; C++ hashes from any sequence of SequenceHash.
py::list hash_list(const std::vector<kvbm::SequenceHash>& hashes);
std::vector<kvbm::SequenceHash> hashes_from(py::handle hashes);

/// A read-only or writable memoryview over `size` bytes at `data`, owned by an exporter that
/// keeps `cell` (may be null) and `mgr` alive and counts itself in both.
py::object payload_view(std::shared_ptr<ManagerState> mgr,
                        std::shared_ptr<CellBase> cell,
                        std::byte* data,
                        std::size_t size,
                        bool readonly);

/// Python config object <-> kvbm::SegmentConfig (plus section 10's fields when the library has
/// them).
/// The C++ config of a kvbm.SegmentConfig argument (TypeError for anything else); valid while
/// `cfg` is.
const kvbm::SegmentConfig& config_arg(py::handle cfg);
py::object config_from_cpp(const kvbm::SegmentConfig& c);

void bind_hashes(py::module_& m);
void bind_config(py::module_& m);
void bind_handles(py::module_& m);
void bind_immutable(py::module_& m);  // called by bind_handles
void bind_mutable(py::module_& m);    // called by bind_handles
/// The cell of a kvbm.CompleteBlock object, or nullptr if `o` is something else.
CompleteCell* as_complete(PyObject* o);
void bind_manager(py::module_& m);
void bind_events(py::module_& m);

}  // namespace kvbm_python
