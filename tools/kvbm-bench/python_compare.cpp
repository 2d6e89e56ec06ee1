// SPDX-License-Identifier: Apache-2.0
// kvbm-bench-pycompare: the C++ half of tools/kvbm-bench/python_bench.py. Runs, from C++, exactly
// the workloads that python_bench.py runs from Python, so the two can be put side by side:
//   cycle      64 x (allocate_blocks(32) -> stage each -> register_blocks(32) -> drop the 32)
//   match1000  16 x (match_blocks of 1000 held hashes -> drop the 1000 handles)
//   hash1000   16 x hash_token_blocks of 16000 tokens (1000 blocks of 16)
// Hashes are made before the timed part in both languages. Keeps one idle thread alive, as
// kvbm-bench does. Prints one CSV line per repetition: "workload,ns_per_block".
//
// Usage: kvbm-bench-pycompare --reps N
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "kvbm/kvbm.hpp"

#include "harness.hpp"

namespace {

using kvbm::BlockManager;
using kvbm::SequenceHash;
using kvbm_bench::now_ns;

std::shared_ptr<BlockManager> create(const std::string& name, std::uint32_t blocks) {
  kvbm::SegmentConfig c;
  c.name = name;
  c.block_count = blocks;
  c.block_size = 16;
  c.eviction = kvbm::EvictionPolicy::kLru;
  (void)BlockManager::destroy(name);
  auto m = BlockManager::create(c);
  if (!m) {
    fmt::print(stderr, "create {}: {}\n", name, m.error());
    std::exit(1);
  }
  return *m;
}

double rep_cycle(BlockManager& m, std::uint64_t& counter) {
  constexpr std::size_t kIters = 64, kBatch = 32;
  std::vector<SequenceHash> hashes;
  for (std::size_t i = 0; i < kIters * kBatch; ++i) {
    hashes.push_back(SequenceHash::make(counter++, std::nullopt, 0));
  }
  (void)m.reset_inactive_pool();
  const auto t0 = now_ns();
  for (std::size_t it = 0; it < kIters; ++it) {
    auto blocks = m.allocate_blocks(kBatch);
    std::vector<kvbm::CompleteBlock> staged;
    staged.reserve(kBatch);
    for (std::size_t i = 0; i < kBatch; ++i) {
      staged.push_back(*std::move((*blocks)[i]).stage(hashes[it * kBatch + i], 16));
    }
    auto held = m.register_blocks(std::move(staged));
  }
  return static_cast<double>(now_ns() - t0) / (kIters * kBatch);
}

double rep_match(BlockManager& m, const std::vector<SequenceHash>& hashes) {
  constexpr std::size_t kIters = 16;
  const auto t0 = now_ns();
  for (std::size_t it = 0; it < kIters; ++it) {
    auto got = m.match_blocks(hashes);
    if (got.size() != hashes.size()) {
      std::exit(1);
    }
  }
  return static_cast<double>(now_ns() - t0) / (kIters * hashes.size());
}

double rep_hash(const std::vector<std::uint32_t>& tokens) {
  constexpr std::size_t kIters = 16;
  std::size_t n = 0;
  const auto t0 = now_ns();
  for (std::size_t it = 0; it < kIters; ++it) {
    n += kvbm::hash_token_blocks(tokens, 16).size();
  }
  return static_cast<double>(now_ns() - t0) / static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 15;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else {
      fmt::print(stderr, "usage: kvbm-bench-pycompare [--reps N]\n");
      return 2;
    }
  }
  // One idle thread for the whole run, as in a server (and as kvbm-bench does).
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::thread idle([&] {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return stop; });
  });

  const std::string base = fmt::format("kvbm-pycompare-{}", ::getpid());
  auto cycle = create(base + "-cycle", 1u << 14);
  auto match = create(base + "-match", 2048);
  std::vector<SequenceHash> hashes;
  std::vector<kvbm::ImmutableBlock> held;
  {
    auto blocks = match->allocate_blocks(1000);
    std::vector<kvbm::CompleteBlock> staged;
    for (std::size_t i = 0; i < 1000; ++i) {
      hashes.push_back(SequenceHash::make(1'000'000 + i, std::nullopt, 0));
      staged.push_back(*std::move((*blocks)[i]).stage(hashes.back(), 16));
    }
    held = match->register_blocks(std::move(staged));
  }
  std::vector<std::uint32_t> tokens(16000);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<std::uint32_t>(i * 2654435761u);
  }
  std::uint64_t counter = 1;
  rep_cycle(*cycle, counter);  // warm-up
  rep_match(*match, hashes);
  for (int r = 0; r < reps; ++r) {
    fmt::print("cycle,{:.2f}\n", rep_cycle(*cycle, counter));
    fmt::print("match1000,{:.2f}\n", rep_match(*match, hashes));
    fmt::print("hash1000,{:.2f}\n", rep_hash(tokens));
  }
  held.clear();
  cycle.reset();
  match.reset();
  (void)BlockManager::destroy(base + "-cycle");
  (void)BlockManager::destroy(base + "-match");
  {
    std::lock_guard<std::mutex> l(mu);
    stop = true;
  }
  cv.notify_all();
  idle.join();
  return 0;
}
