// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl create NAME --blocks N [...]: creates a segment without attaching to it.
#include <fmt/format.h>

#include "common.hpp"
#include "store/block_store.hpp"

namespace kvbm::ctl {
namespace {

struct CreateOptions {
  SegmentConfig config;
  std::string eviction = "lineage", order = "tick", duplication = "allow", mode = "0600";
  bool as_json = false;
};

int run_create(CreateOptions& o) {
  SegmentConfig& config = o.config;
  config.eviction = o.eviction == "lru"         ? EvictionPolicy::kLru
                    : o.eviction == "multi-lru" ? EvictionPolicy::kMultiLru
                    : o.eviction == "fifo"      ? EvictionPolicy::kFifo
                                                : EvictionPolicy::kLineage;
  config.lineage_order = o.order == "fifo" ? LineageOrder::kFifo : LineageOrder::kTick;
  config.duplication =
      o.duplication == "reject" ? DuplicationPolicy::kReject : DuplicationPolicy::kAllow;
  try {
    std::size_t used = 0;
    config.permissions = static_cast<std::uint32_t>(std::stoul(o.mode, &used, 8));
    if (used != o.mode.size()) {
      throw std::invalid_argument(o.mode);
    }
  } catch (...) {
    fmt::print(stderr, "kvbm-ctl: --mode '{}' is not an octal file mode\n", o.mode);
    return kUsage;
  }
  if (auto ok = validate_config(config); !ok) {
    return fail(ok.error());
  }
  // Creating does not attach.
  auto seg = d::Segment::create(config, d::BlockStore::init_regions);
  if (!seg) {
    return fail(seg.error());
  }
  if (o.as_json) {
    print_json(json{{"created", config.name},
                    {"block_count", config.block_count},
                    {"block_size", config.block_size},
                    {"segment_bytes", (*seg)->header()->segment_bytes},
                    {"payload_bytes", config.bytes_per_block * config.block_count}});
    return kOk;
  }
  fmt::print("created {}: {} blocks x {} tokens, {:.1f} MiB\n", config.name, config.block_count,
             config.block_size, (*seg)->header()->segment_bytes / 1048576.0);
  return kOk;
}

}  // namespace

Command add_create(CLI::App& app) {
  auto o = std::make_shared<CreateOptions>();
  auto* create = app.add_subcommand("create",
                                    "Create a segment.\n  example: kvbm-ctl create "
                                    "kv-gpu0 --blocks 65536 --eviction lru");
  create->add_option("NAME", o->config.name, "segment name")->required();
  create->add_option("--blocks", o->config.block_count, "number of blocks (> 0)")
      ->required()
      ->check(CLI::Range(1u, 0x7FFFFFFEu));
  create
      ->add_option("--block-size", o->config.block_size, "tokens per block (power of two, 1..1024)")
      ->default_val(16);
  create->add_option("--max-processes", o->config.max_processes, "process-table entries (1..64)")
      ->default_val(64)
      ->check(CLI::Range(1u, 64u));
  create->add_option("--eviction", o->eviction, "inactive-pool eviction order")
      ->check(CLI::IsMember({"lineage", "lru", "multi-lru", "fifo"}));
  create->add_option("--lineage-order", o->order, "leaf order of lineage eviction")
      ->check(CLI::IsMember({"tick", "fifo"}));
  create->add_option("--duplication", o->duplication, "registering a present hash")
      ->check(CLI::IsMember({"allow", "reject"}));
  create->add_option("--bytes-per-block", o->config.bytes_per_block, "payload bytes per block");
  create->add_option("--key-bytes", o->config.key_bytes, "application key bytes per block (0..64)")
      ->check(CLI::Range(0u, 64u));
  create
      ->add_option("--event-capacity", o->config.event_capacity,
                   "KV event ring records (0 = no events, else a power of two in [256, 2^24])")
      ->default_val(65536);
  create->add_flag("--store-token-ids", o->config.store_token_ids,
                   "keep each block's token ids so KV events carry them (kvbm-ctl events)");
  create->add_flag("--reset-on-release", o->config.default_reset_on_release,
                   "released blocks go to the reset pool instead of the inactive pool");
  create->add_option("--mode", o->mode, "file mode of the shm object(s), e.g. 0660");
  add_json_flag(create, o->as_json);
  return {create, [o] { return run_create(*o); }};
}

}  // namespace kvbm::ctl
