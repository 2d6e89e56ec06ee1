// SPDX-License-Identifier: Apache-2.0
// A synthetic inference worker. Requests share long common prefixes (a few "system prompts")
// and then diverge. For each request it hashes the tokens, matches the cached prefix (computed by
// any worker), "computes" the missing blocks (bytes derived from the tokens) into the payload,
// registers them, and checks that every matched block carries exactly the bytes its tokens imply.
//   usage: kv_worker SEGMENT WORKER_ID REQUESTS [--hold]
// With --hold the worker keeps its last request's blocks (plus two unregistered ones), prints
// "holding" and waits to be killed. Prints one summary line: key=value pairs.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>

#include "kvbm/kvbm.hpp"

namespace {

constexpr int kPrompts = 6;
constexpr int kPromptBlocks = 12;

// Deterministic bytes of a block: a function of its sequence hash, i.e. of all tokens up to it.
void fill(std::span<std::byte> out, const kvbm::SequenceHash& h) {
  std::uint64_t x = h.lo() ^ (h.hi() * 0x9E3779B97F4A7C15ull);
  for (std::size_t i = 0; i < out.size(); ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    out[i] = static_cast<std::byte>(x >> 56);
  }
}

bool check(std::span<const std::byte> in, const kvbm::SequenceHash& h) {
  std::vector<std::byte> want(in.size());
  fill(want, h);
  return std::memcmp(want.data(), in.data(), in.size()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    fmt::print(stderr, "usage: kv_worker SEGMENT WORKER_ID REQUESTS [--hold]\n");
    return 2;
  }
  const std::string name = argv[1];
  const int worker = std::atoi(argv[2]);
  const int requests = std::atoi(argv[3]);
  const bool hold = argc > 4 && std::strcmp(argv[4], "--hold") == 0;
  auto opened = kvbm::BlockManager::open(name);
  if (!opened) {
    fmt::print(stderr, "worker {}: {}\n", worker, opened.error());
    return 1;
  }
  auto mgr = *opened;
  const std::uint32_t bs = mgr->block_size();

  std::mt19937_64 rng(1000 + worker);
  std::vector<std::vector<std::uint32_t>> prompts(kPrompts);
  for (int p = 0; p < kPrompts; ++p) {  // the same prompts in every worker
    std::mt19937 prng(p);
    for (std::uint32_t t = 0; t < kPromptBlocks * bs; ++t) {
      prompts[p].push_back(prng() % 32000);
    }
  }
  std::unordered_set<kvbm::SequenceHash> computed_here;
  std::uint64_t matched = 0, computed = 0, cross = 0, bytes_verified = 0, bad = 0, no_room = 0;
  std::vector<kvbm::ImmutableBlock> last;
  for (int r = 0; r < requests; ++r) {
    std::vector<std::uint32_t> tokens = prompts[rng() % kPrompts];
    const std::size_t user_blocks = 1 + rng() % 4;
    for (std::size_t t = 0; t < user_blocks * bs + rng() % bs; ++t) {
      tokens.push_back(static_cast<std::uint32_t>(rng() % 32000));
    }
    const auto hashes = kvbm::hash_token_blocks(tokens, bs);
    auto blocks = mgr->match_blocks(hashes);
    for (const auto& b : blocks) {
      ++matched;
      cross += computed_here.count(b.sequence_hash()) == 0 ? 1 : 0;
      if (!b.data().empty()) {
        if (check(b.data(), b.sequence_hash())) {
          bytes_verified += b.data().size();
        } else {
          ++bad;
        }
      }
    }
    auto fresh = mgr->allocate_blocks(hashes.size() - blocks.size());
    if (!fresh) {
      ++no_room;
      continue;
    }
    std::vector<kvbm::CompleteBlock> complete;
    for (std::size_t i = 0; i < fresh->size(); ++i) {
      const auto& h = hashes[blocks.size() + i];
      fill((*fresh)[i].data(), h);
      complete.push_back(std::move((*fresh)[i]).stage(h, bs).value());
      computed_here.insert(h);
      ++computed;
    }
    for (auto& b : mgr->register_blocks(std::move(complete))) {
      blocks.push_back(std::move(b));
    }
    last = std::move(blocks);  // the previous request's blocks are released here
  }
  fmt::print(
      "worker={} pid={} requests={} matched={} computed={} cross_process={} "
      "bytes_verified={} bad_bytes={} no_room={}\n",
      worker, ::getpid(), requests, matched, computed, cross, bytes_verified, bad, no_room);
  std::fflush(stdout);
  if (hold) {
    auto mutable_blocks = mgr->allocate_blocks(2);
    fmt::print("holding {} registered and {} mutable blocks\n", last.size(),
               mutable_blocks ? mutable_blocks->size() : 0);
    std::fflush(stdout);
    for (;;) {
      ::pause();  // until SIGKILL
    }
  }
  return bad == 0 ? 0 : 1;
}
