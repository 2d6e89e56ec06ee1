// SPDX-License-Identifier: Apache-2.0
// The whole block lifecycle in one process: attach -> allocate -> stage -> register -> match ->
// drop, printing the state of the block after each step.
//   usage: minimal_worker [SEGMENT]   (default "kvbm-minimal"; a segment it creates is destroyed
//   at the end)
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kvbm/kvbm.hpp"

int main(int argc, char** argv) {
  kvbm::SegmentConfig config;
  config.name = argc > 1 ? argv[1] : "kvbm-minimal";
  config.block_count = 64;
  config.block_size = 4;
  config.eviction = kvbm::EvictionPolicy::kLru;
  auto opened = kvbm::BlockManager::create(config);
  const bool created_here = opened.has_value();
  if (!opened && opened.error().code == kvbm::Errc::kAlreadyExists) {
    opened = kvbm::BlockManager::open(config.name);
  }
  if (!opened) {
    fmt::print(stderr, "cannot attach: {}\n", opened.error());
    return 1;
  }
  auto manager = *opened;
  auto show = [&](const char* step, kvbm::BlockId id) {
    const kvbm::BlockInfo info = manager->inspect_block(id);
    fmt::print("{:<34} block {:>2}: {:<9} holders={} available={}\n", step, id,
               kvbm::to_string(info.state), info.holder_processes, manager->available_blocks());
  };

  // 8 tokens -> 2 blocks of 4 tokens, each with its sequence hash.
  const std::vector<std::uint32_t> tokens{101, 102, 103, 104, 105, 106, 107, 108};
  const auto hashes = kvbm::hash_token_blocks(tokens, config.block_size);
  fmt::print("attached to '{}' as process entry {}; hashes {} and {}\n", config.name,
             manager->process_index(), hashes[0], hashes[1]);

  auto blocks = manager->allocate_blocks(2).value();
  const kvbm::BlockId id = blocks[0].block_id();
  show("allocate_blocks(2)", id);
  std::vector<kvbm::CompleteBlock> complete;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    auto staged = std::move(blocks[i]).stage(hashes[i], config.block_size);
    if (!staged) {
      fmt::print(stderr, "stage failed: block size {} != {}\n", staged.error().actual,
                 staged.error().expected);
      return 1;
    }
    complete.push_back(std::move(*staged));
  }
  show("stage(hash)", id);
  {
    auto registered = manager->register_blocks(std::move(complete));
    show("register_blocks", id);
    auto matched = manager->match_blocks(hashes);
    fmt::print("{:<34} {} of {} hashes matched, use_count={}\n", "match_blocks(hashes)",
               matched.size(), hashes.size(), matched[0].use_count());
  }
  show("drop every handle", id);
  {
    auto again = manager->match_blocks(hashes);
    show("match_blocks again (resurrected)", id);
  }
  auto evicting = manager->allocate_blocks_with_evictions(manager->available_blocks()).value();
  fmt::print("{:<34} {} blocks, {} hashes evicted\n", "allocate everything", evicting.first.size(),
             evicting.second.size());
  evicting.first.clear();
  fmt::print("{:<34} {} of {} hashes still cached\n", "after eviction",
             manager->match_blocks(hashes).size(), hashes.size());
  const auto problems = manager->verify();
  fmt::print("verify: {}\n", problems.empty() ? "consistent" : problems.front());
  evicting.first.clear();
  manager.reset();
  if (created_here) {
    (void)kvbm::BlockManager::destroy(config.name);
  }
  return problems.empty() ? 0 : 1;
}
