// SPDX-License-Identifier: Apache-2.0
// kvbm.EventReader and kvbm.Event (DESIGN.md section 10): the segment's KV event ring, read
// without attaching. Reads release the GIL (they take the store lock for bounded copies).
#include "kvbm/events.hpp"

#include <string>
#include <vector>

#include "binding.hpp"
#include "errors.hpp"

namespace kvbm_python {

namespace {

struct PyEvent {
  std::uint64_t seq;
  std::string kind;
  py::object hash;  // SequenceHash, None for "cleared"
  std::uint32_t block_size;
  std::vector<std::uint32_t> token_ids;
  bool token_ids_gone;
};

PyEvent to_py(const kvbm::Event& e) {
  PyEvent p{e.seq,
            std::string(kvbm::to_string(e.kind)),
            e.kind == kvbm::EventKind::kCleared ? py::none() : py::cast(e.hash),
            e.block_size,
            e.token_ids,
            e.token_ids_gone};
  return p;
}

}  // namespace

void bind_events(py::module_& m) {
  py::class_<PyEvent>(m, "Event", R"doc(One KV event of a segment's ring.

seq: gap-free sequence number from 0; kind: "stored", "removed" or "cleared"; hash: the block's
SequenceHash (None for "cleared"); block_size; token_ids: list of ints (stored events of a segment
with store_token_ids, when the block was staged with its ids); token_ids_gone: the block had
already left the cache when the event was read (a "removed" of the same hash follows).)doc")
      .def_readonly("seq", &PyEvent::seq)
      .def_readonly("kind", &PyEvent::kind)
      .def_readonly("hash", &PyEvent::hash)
      .def_readonly("block_size", &PyEvent::block_size)
      .def_property_readonly("token_ids",
                             [](const PyEvent& e) {
                               py::list ids(e.token_ids.size());
                               for (std::size_t i = 0; i < e.token_ids.size(); ++i) {
                                 ids[i] = py::int_(e.token_ids[i]);
                               }
                               return ids;
                             })
      .def_readonly("token_ids_gone", &PyEvent::token_ids_gone)
      .def("__repr__", [](const PyEvent& e) {
        std::string h = e.hash.is_none() ? "None" : std::string(py::str(e.hash));
        return "kvbm.Event(seq=" + std::to_string(e.seq) + ", kind='" + e.kind + "', hash=" + h +
               ", tokens=" + std::to_string(e.token_ids.size()) + ")";
      });

  py::class_<kvbm::EventReader>(m, "EventReader", R"doc(Reads a segment's KV event ring.

Takes no process entry (it is not an attachment) and holds the store lock only for bounded
copies. Open with EventReader.open(name).)doc")
      .def_static(
          "open",
          [](const std::string& name) {
            auto r = without_gil([&] { return kvbm::EventReader::open(name); });
            if (!r) {
              raise_error(r.error());
            }
            return std::move(*r);
          },
          py::arg("name"),
          "Opens the ring of segment `name`; InvalidConfigError if it keeps no events.")
      .def("oldest_seq", &kvbm::EventReader::oldest_seq, "The oldest event still in the ring.")
      .def("next_seq", &kvbm::EventReader::next_seq, "The sequence number the next event will get.")
      .def(
          "read",
          [](const kvbm::EventReader& r, py::handle from_seq, py::handle max_events) {
            const std::uint64_t from = to_uint(from_seq, ~std::uint64_t{0}, "from_seq");
            const std::uint64_t max = to_uint(max_events, ~std::uint64_t{0} >> 1, "max_events");
            auto ev = without_gil([&] { return r.read(from, static_cast<std::size_t>(max)); });
            if (!ev) {
              raise_error(ev.error());
            }
            py::list out;
            for (const kvbm::Event& e : *ev) {
              out.append(py::cast(to_py(e)));
            }
            return out;
          },
          py::arg("from_seq"), py::arg("max_events"),
          "Up to max_events events from from_seq on (list of kvbm.Event); EventsLostError if "
          "from_seq is older than oldest_seq().")
      .def_property_readonly("capacity", &kvbm::EventReader::capacity)
      .def_property_readonly("block_size", &kvbm::EventReader::block_size)
      .def_property_readonly("stores_token_ids", &kvbm::EventReader::stores_token_ids);
}

}  // namespace kvbm_python
