// SPDX-License-Identifier: Apache-2.0
// Quick start (the README's C++ example): attach to a shared cache, find the cached prefix of a
// prompt, compute and register the rest.   usage: quickstart [SEGMENT]   (default "kv-gpu0")
#include <cstdint>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <kvbm/kvbm.hpp>

int main(int argc, char** argv) {
  kvbm::SegmentConfig config;
  config.name = argc > 1 ? argv[1] : "kv-gpu0";  // the object /dev/shm/kv-gpu0
  config.block_count = 4096;
  config.block_size = 16;  // tokens per block
  // bytes_per_block = 0 (the default): kvbm keeps only the blocks' metadata, and you keep the KV
  // bytes in your own memory (e.g. on the GPU) at block_id(). A value > 0 also maps a shared
  // payload region of block_count x bytes_per_block bytes, reached through data().
  config.bytes_per_block = 0;

  // Every worker runs this: the first creates the segment, the others attach. A worker whose
  // config differs from the segment's gets an error naming the field, not a crash.
  auto opened = kvbm::BlockManager::open_or_create(config);
  if (!opened) {
    fmt::print(stderr, "cannot attach to '{}': {}\n", config.name, opened.error());
    return 1;
  }
  std::shared_ptr<kvbm::BlockManager> manager = *opened;

  std::vector<std::uint32_t> tokens(100);  // the request's prompt
  for (std::uint32_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = 1000 + i;
  }
  // One hash per complete block (100 tokens -> 6 blocks); each hash covers the whole prefix.
  const auto hashes = kvbm::hash_token_blocks(tokens, config.block_size);

  auto cached = manager->match_blocks(hashes);  // the prefix ANY worker has registered
  auto fresh = manager->allocate_blocks(hashes.size() - cached.size());
  if (!fresh) {
    fmt::print(stderr, "no free or evictable blocks: every block is in use\n");
    return 1;
  }
  std::vector<kvbm::CompleteBlock> complete;
  for (std::size_t i = 0; i < fresh->size(); ++i) {
    // ... compute the KV of block cached.size() + i and store it at (*fresh)[i].block_id() ...
    auto staged = std::move((*fresh)[i]).stage(hashes[cached.size() + i], config.block_size);
    if (!staged) {  // only when the block size differs from the segment's
      fmt::print(stderr, "block size {} != {}\n", staged.error().actual, staged.error().expected);
      return 1;
    }
    complete.push_back(std::move(*staged));
  }
  const auto registered = manager->register_blocks(std::move(complete));
  fmt::print("{} blocks: {} cached, {} computed\n", hashes.size(), cached.size(),
             registered.size());
  // Dropping `cached` and `registered` keeps the blocks cached for other requests and workers.
  return 0;
}
