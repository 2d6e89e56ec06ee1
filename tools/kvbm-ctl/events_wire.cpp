// SPDX-License-Identifier: Apache-2.0
#include "events_wire.hpp"

#include <msgpack.hpp>

namespace kvbm::ctl {

void append_stored(std::vector<WireEvent>& out,
                   const SequenceHash& hash,
                   std::uint32_t block_size,
                   const std::vector<std::uint32_t>& token_ids) {
  const std::uint32_t pos = hash.position();
  if (!out.empty()) {
    WireEvent& last = out.back();
    if (last.type == WireEvent::Type::kStored && pos > 0 && last.last_position + 1 == pos &&
        last.hashes.back() == hash.parent_fragment() && last.block_size == block_size) {
      last.hashes.push_back(hash.current_fragment());
      last.token_ids.insert(last.token_ids.end(), token_ids.begin(), token_ids.end());
      last.last_position = pos;
      return;
    }
  }
  WireEvent e;
  e.type = WireEvent::Type::kStored;
  e.hashes.push_back(hash.current_fragment());
  if (pos > 0) {
    e.parent = hash.parent_fragment();
  }
  e.token_ids = token_ids;
  e.block_size = block_size;
  e.last_position = pos;
  out.push_back(std::move(e));
}

void append_removed(std::vector<WireEvent>& out, const SequenceHash& hash) {
  if (!out.empty() && out.back().type == WireEvent::Type::kRemoved) {
    out.back().hashes.push_back(hash.current_fragment());
    return;
  }
  WireEvent e;
  e.type = WireEvent::Type::kRemoved;
  e.hashes.push_back(hash.current_fragment());
  out.push_back(std::move(e));
}

void append_cleared(std::vector<WireEvent>& out) {
  out.push_back(WireEvent{});
}

namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

void str(Packer& p, std::string_view s) {
  p.pack_str(static_cast<std::uint32_t>(s.size()));
  p.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

void u64s(Packer& p, const std::vector<std::uint64_t>& v) {
  p.pack_array(static_cast<std::uint32_t>(v.size()));
  for (std::uint64_t x : v) {
    p.pack_uint64(x);
  }
}

void u32s(Packer& p, const std::vector<std::uint32_t>& v) {
  p.pack_array(static_cast<std::uint32_t>(v.size()));
  for (std::uint32_t x : v) {
    p.pack_uint32(x);
  }
}

void pack_event(Packer& p, const WireEvent& e, const WireOptions& o) {
  const bool map = o.encoding == Encoding::kMap;
  switch (e.type) {
    case WireEvent::Type::kStored:
      if (map) {
        p.pack_map(8);
        str(p, "type");
        str(p, "BlockStored");
        str(p, "block_hashes");
        u64s(p, e.hashes);
        str(p, "parent_block_hash");
        e.parent ? p.pack_uint64(*e.parent) : p.pack_nil();
        str(p, "token_ids");
        u32s(p, e.token_ids);
        str(p, "block_size");
        p.pack_uint32(e.block_size);
        str(p, "lora_id");
        p.pack_nil();
        str(p, "medium");
        str(p, o.medium);
        str(p, "lora_name");
        p.pack_nil();
      } else {
        p.pack_array(8);
        str(p, "BlockStored");
        u64s(p, e.hashes);
        e.parent ? p.pack_uint64(*e.parent) : p.pack_nil();
        u32s(p, e.token_ids);
        p.pack_uint32(e.block_size);
        p.pack_nil();
        str(p, o.medium);
        p.pack_nil();
      }
      break;
    case WireEvent::Type::kRemoved:
      if (map) {
        p.pack_map(3);
        str(p, "type");
        str(p, "BlockRemoved");
        str(p, "block_hashes");
        u64s(p, e.hashes);
        str(p, "medium");
        str(p, o.medium);
      } else {
        p.pack_array(3);
        str(p, "BlockRemoved");
        u64s(p, e.hashes);
        str(p, o.medium);
      }
      break;
    case WireEvent::Type::kCleared:
      if (map) {
        p.pack_map(1);
        str(p, "type");
        str(p, "AllBlocksCleared");
      } else {
        p.pack_array(1);
        str(p, "AllBlocksCleared");
      }
      break;
  }
}

}  // namespace

std::string encode_batch(const std::vector<WireEvent>& events, double ts, const WireOptions& o) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_array(3);
  p.pack_double(ts);  // always float64 (0xcb), as vLLM's encoder writes time.time()
  p.pack_array(static_cast<std::uint32_t>(events.size()));
  for (const WireEvent& e : events) {
    pack_event(p, e, o);
  }
  p.pack_int64(o.dp_rank);
  return std::string(buf.data(), buf.size());
}

nlohmann::ordered_json event_json(const WireEvent& e, const WireOptions& o) {
  nlohmann::ordered_json j;
  switch (e.type) {
    case WireEvent::Type::kStored:
      j["type"] = "BlockStored";
      j["block_hashes"] = e.hashes;
      j["parent_block_hash"] = e.parent ? nlohmann::ordered_json(*e.parent) : nullptr;
      j["token_ids"] = e.token_ids;
      j["block_size"] = e.block_size;
      j["lora_id"] = nullptr;
      j["medium"] = o.medium;
      j["lora_name"] = nullptr;
      break;
    case WireEvent::Type::kRemoved:
      j["type"] = "BlockRemoved";
      j["block_hashes"] = e.hashes;
      j["medium"] = o.medium;
      break;
    case WireEvent::Type::kCleared:
      j["type"] = "AllBlocksCleared";
      break;
  }
  return j;
}

}  // namespace kvbm::ctl
