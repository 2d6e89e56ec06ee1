// SPDX-License-Identifier: Apache-2.0
// Index-linked lists through SlotMeta::prev/next (the free list and the LRU/FIFO inactive list).
// A slot is in at most one list at a time. Callers hold the store mutex.
#pragma once

#include <cstdint>
#include <span>

#include "shm/control.hpp"
#include "shm/slot.hpp"

namespace kvbm::detail {

inline void list_push_back(shm::SlotList& l, shm::SlotMeta* slots, std::uint32_t s) {
  slots[s].next = shm::kNil;
  slots[s].prev = l.tail;
  if (l.tail == shm::kNil) {
    l.head = s;
  } else {
    slots[l.tail].next = s;
  }
  l.tail = s;
  ++l.length;
}

inline void list_unlink(shm::SlotList& l, shm::SlotMeta* slots, std::uint32_t s) {
  auto& m = slots[s];
  if (m.prev == shm::kNil) {
    l.head = m.next;
  } else {
    slots[m.prev].next = m.next;
  }
  if (m.next == shm::kNil) {
    l.tail = m.prev;
  } else {
    slots[m.next].prev = m.prev;
  }
  m.prev = m.next = shm::kNil;
  --l.length;
}

inline std::uint32_t list_pop_front(shm::SlotList& l, shm::SlotMeta* slots) {
  const std::uint32_t s = l.head;
  if (s != shm::kNil) {
    list_unlink(l, slots, s);
  }
  return s;
}

/// Replaces the list by `ids` in that order.
inline void list_assign(shm::SlotList& l,
                        shm::SlotMeta* slots,
                        std::span<const std::uint32_t> ids) {
  l = shm::SlotList{shm::kNil, shm::kNil, 0};
  for (std::uint32_t s : ids) {
    list_push_back(l, slots, s);
  }
}

}  // namespace kvbm::detail
