// SPDX-License-Identifier: Apache-2.0
// A worker is SIGKILLed while holding blocks; the survivor sees what it held, reaps it, and
// carries on with a consistent cache.
//   usage: crash_recovery [SEGMENT]   (creates and finally destroys the segment)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kvbm/kvbm.hpp"

int main(int argc, char** argv) {
  kvbm::SegmentConfig config;
  config.name = argc > 1 ? argv[1] : fmt::format("kvbm-crash-example-{}", ::getpid());
  config.block_count = 256;
  (void)kvbm::BlockManager::destroy(config.name);
  auto created = kvbm::BlockManager::create(config);
  if (!created) {
    fmt::print(stderr, "create failed: {}\n", created.error());
    return 1;
  }
  auto survivor = *created;

  // The survivor caches a prompt; the worker will share it.
  std::vector<std::uint32_t> tokens(16 * 8);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<std::uint32_t>(i * 7 + 3);
  }
  const auto hashes = kvbm::hash_token_blocks(tokens, config.block_size);
  {
    auto blocks = survivor->allocate_blocks(hashes.size()).value();
    std::vector<kvbm::CompleteBlock> complete;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      complete.push_back(std::move(blocks[i]).stage(hashes[i], config.block_size).value());
    }
    // The handles are dropped at once: the blocks stay cached, inactive.
    (void)survivor->register_blocks(std::move(complete));
  }

  int ready[2];
  if (::pipe(ready) != 0) {
    return 1;
  }
  const pid_t worker = ::fork();
  if (worker == 0) {
    // A fork child opens the segment itself (the parent's BlockManager is not usable here).
    auto mine = kvbm::BlockManager::open(config.name).value();
    auto prefix = mine->match_blocks(hashes);          // shares the cached prompt
    auto scratch = mine->allocate_blocks(20).value();  // and is mid-way through new blocks
    char c = 1;
    (void)::write(ready[1], &c, 1);
    ::pause();  // killed here, holding everything
    return 0;
  }
  char c = 0;
  (void)::read(ready[0], &c, 1);
  auto before = survivor->counts();
  fmt::print("worker {} holds blocks: primary={} mutable={} inactive={}\n", worker, before.primary,
             before.mutable_, before.inactive);
  ::kill(worker, SIGKILL);
  ::waitpid(worker, nullptr, 0);
  fmt::print("worker SIGKILLed; verify() says:\n");
  for (const auto& p : survivor->verify()) {
    fmt::print("  - {}\n", p);
  }
  const auto start = std::chrono::steady_clock::now();
  const std::size_t reaped = survivor->reap_dead_processes();
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::steady_clock::now() - start)
                      .count();
  const auto after = survivor->counts();
  fmt::print("reaped {} process(es) in {} us: primary={} mutable={} inactive={} reset={}\n", reaped,
             us, after.primary, after.mutable_, after.inactive, after.reset);
  const auto problems = survivor->verify();
  const bool prefix_cached = survivor->match_blocks(hashes).size() == hashes.size();
  fmt::print("verify: {}; the shared prompt is {}\n",
             problems.empty() ? "consistent" : problems.front(),
             prefix_cached ? "still cached" : "LOST");
  survivor.reset();
  (void)kvbm::BlockManager::destroy(config.name);
  return reaped == 1 && problems.empty() && prefix_cached && after.mutable_ == 0 ? 0 : 1;
}
