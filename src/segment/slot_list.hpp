// SPDX-License-Identifier: Apache-2.0
// Index-linked lists through SlotMeta::prev/next (the free list and the LRU/FIFO inactive list).
// A slot is in at most one list at a time. Callers hold the store mutex.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "segment/damage.hpp"
#include "shm/control.hpp"
#include "shm/slot.hpp"

namespace kvbm::detail {

// Every link read from a list head or a slot is checked against `n` (segment/damage.hpp): a
// damaged link is recorded and replaced by a safe index, never followed outside the slot table.
inline void list_push_back(shm::SlotList& l,
                           shm::SlotMeta* slots,
                           std::uint32_t n,
                           std::uint32_t s) {
  s = checked(s, n, "slot pushed on a list");
  slots[s].next = shm::kNil;
  slots[s].prev = l.tail;
  if (l.tail == shm::kNil) {
    l.head = s;
  } else {
    slots[checked(l.tail, n, "list tail")].next = s;
  }
  l.tail = s;
  ++l.length;
}

inline void list_unlink(shm::SlotList& l, shm::SlotMeta* slots, std::uint32_t n, std::uint32_t s) {
  auto& m = slots[checked(s, n, "slot unlinked from a list")];
  if (m.prev == shm::kNil) {
    l.head = m.next;
  } else {
    slots[checked(m.prev, n, "slot prev link")].next = m.next;
  }
  if (m.next == shm::kNil) {
    l.tail = m.prev;
  } else {
    slots[checked(m.next, n, "slot next link")].prev = m.prev;
  }
  m.prev = m.next = shm::kNil;
  --l.length;
}

inline std::uint32_t list_pop_front(shm::SlotList& l, shm::SlotMeta* slots, std::uint32_t n) {
  const std::uint32_t s = l.head;
  if (s == shm::kNil) {
    return s;
  }
  const std::uint32_t safe = checked(s, n, "list head");
  list_unlink(l, slots, n, safe);
  return safe;
}

/// Replaces the list by `ids` in that order.
inline void list_assign(shm::SlotList& l,
                        shm::SlotMeta* slots,
                        std::uint32_t n,
                        std::span<const std::uint32_t> ids) {
  l = shm::SlotList{shm::kNil, shm::kNil, 0};
  for (std::uint32_t s : ids) {
    list_push_back(l, slots, n, s);
  }
}

/// The slots in `state`, ordered by tick: the order every derived list is rebuilt in.
inline std::vector<std::uint32_t> slots_by_tick(const shm::SlotMeta* slots,
                                                std::uint32_t n,
                                                shm::SlotState state) {
  std::vector<std::uint32_t> ids;
  for (std::uint32_t s = 0; s < n; ++s) {
    if (slots[s].state == static_cast<std::uint8_t>(state)) {
      ids.push_back(s);
    }
  }
  std::sort(ids.begin(), ids.end(),
            [slots](std::uint32_t a, std::uint32_t b) { return slots[a].tick < slots[b].tick; });
  return ids;
}

}  // namespace kvbm::detail
