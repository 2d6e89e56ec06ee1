// SPDX-License-Identifier: Apache-2.0
// Shared by the multi-process integration tests (multiprocess_*_test.cpp): real fork()ed
// processes sharing one segment (DESIGN.md sections 3, 4, 8; kvbm-logical spec sections 3 and 6
// across processes).
//
// Conventions: a child never touches the parent's BlockManager or handles (they are unusable in a
// fork child by design); it opens the segment itself. A child reports a failed check through a
// distinct non-zero exit code (and a line on stderr), which the parent REQUIREs to be 0. A child
// that has to stay alive holding blocks blocks on a Signal from the parent, so the parent can
// SIGKILL it at a known point. Child -> parent handshakes go through a Reporter, which sends
// kFailed if the child ends early, so the parent never blocks forever on a child that failed.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kvbm/kvbm.hpp"

#include "support/temp_segment.hpp"

namespace multiprocess_test {

using kvbm::BlockId;
using kvbm::BlockManager;
using kvbm::CompleteBlock;
using kvbm::DuplicationPolicy;
using kvbm::ImmutableBlock;
using kvbm::MutableBlock;
using kvbm::PoolCounts;
using kvbm::SequenceHash;
using kvbm::SlotState;
using kvbm::WeakBlock;
using kvbm::testing::Child;
using kvbm::testing::Signal;
using kvbm::testing::TempSegment;

constexpr std::uint32_t kBlockSize = 16;
constexpr char kOk = 'k';
constexpr char kFailed = 'F';

// In a child: on failure print the condition and return `code` (the child's exit code).
#define CHILD_REQUIRE(cond, code)                                                     \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "[child %d] %s:%d: CHILD_REQUIRE(%s) failed -> exit %d\n", \
                   static_cast<int>(::getpid()), __FILE__, __LINE__, #cond,           \
                   static_cast<int>(code));                                           \
      return (code);                                                                  \
    }                                                                                 \
  } while (0)

/// Child side of a child -> parent Signal. If the child ends (failed check, exception) before
/// finish(), the parent receives kFailed instead of waiting forever.
class Reporter {
 public:
  explicit Reporter(Signal& s) : s_(s) {}
  ~Reporter() {
    if (!finished_) {
      s_.notify(kFailed);
    }
  }
  Reporter(const Reporter&) = delete;
  Reporter& operator=(const Reporter&) = delete;
  void send(char c = kOk) { s_.notify(c); }
  int finish() {
    finished_ = true;
    return 0;
  }

 private:
  Signal& s_;
  bool finished_ = false;
};

/// Parent side: waits for `expected` from `child`; on anything else fails with the exit code.
inline void await(Signal& s, Child& child, char expected = kOk) {
  const char got = s.wait();
  if (got != expected) {
    const int code = child.wait();
    FAIL("child " << child.pid() << " sent '" << got << "' instead of '" << expected
                  << "' (exit code " << code << ")");
  }
}

inline std::shared_ptr<BlockManager> create_lru(const TempSegment& seg,
                                                std::uint32_t blocks,
                                                DuplicationPolicy dup = DuplicationPolicy::kAllow) {
  kvbm::SegmentConfig c = seg.config(blocks);
  c.block_size = kBlockSize;
  c.eviction = kvbm::EvictionPolicy::kLru;
  c.duplication = dup;
  return seg.create(c);
}

inline std::vector<std::uint32_t> make_tokens(std::uint32_t seed, std::size_t n) {
  std::vector<std::uint32_t> t(n);
  for (std::size_t i = 0; i < n; ++i) {
    t[i] = seed * 1000003u + static_cast<std::uint32_t>(i) * 7u + 1u;
  }
  return t;
}

/// `blocks` sequence hashes of a token sequence of exactly that many complete blocks.
inline std::vector<SequenceHash> seq_hashes(std::uint32_t seed, std::size_t blocks) {
  return kvbm::hash_token_blocks(make_tokens(seed, blocks * kBlockSize), kBlockSize);
}

/// Allocates, stages and registers one block per hash (throws on failure: exit 98 in a child).
inline std::vector<ImmutableBlock> register_hashes(BlockManager& m,
                                                   std::span<const SequenceHash> hs) {
  auto blocks = m.allocate_blocks(hs.size());
  if (!blocks) {
    throw std::runtime_error(fmt::format("allocate_blocks({}) failed", hs.size()));
  }
  std::vector<CompleteBlock> staged;
  staged.reserve(hs.size());
  for (std::size_t i = 0; i < hs.size(); ++i) {
    auto c = std::move((*blocks)[i]).stage(hs[i], m.block_size());
    if (!c) {
      throw std::runtime_error("stage failed");
    }
    staged.push_back(std::move(*c));
  }
  return m.register_blocks(std::move(staged));
}

inline std::vector<ImmutableBlock> register_hashes(BlockManager& m,
                                                   std::initializer_list<SequenceHash> hs) {
  const std::vector<SequenceHash> v(hs);
  return register_hashes(m, std::span<const SequenceHash>(v));
}

inline std::shared_ptr<BlockManager> open_or_null(const std::string& name) {
  auto r = BlockManager::open(name);
  if (!r) {
    std::fprintf(stderr, "[child %d] open(%s) failed: %s\n", static_cast<int>(::getpid()),
                 name.c_str(), fmt::format("{}", r.error()).c_str());
    return nullptr;
  }
  return *r;
}

inline std::size_t sum(const PoolCounts& c) {
  return c.reset + c.mutable_ + c.staged + c.primary + c.duplicate + c.inactive;
}

inline std::string describe(const PoolCounts& c) {
  return fmt::format("reset={} mutable={} staged={} primary={} duplicate={} inactive={}", c.reset,
                     c.mutable_, c.staged, c.primary, c.duplicate, c.inactive);
}

/// Counts slots by state through inspect_block (every slot in exactly one state).
inline PoolCounts tally(const BlockManager& m) {
  PoolCounts c;
  for (BlockId id = 0; id < m.total_blocks(); ++id) {
    switch (m.inspect_block(id).state) {
      case SlotState::kReset:
        ++c.reset;
        break;
      case SlotState::kMutable:
        ++c.mutable_;
        break;
      case SlotState::kStaged:
        ++c.staged;
        break;
      case SlotState::kPrimary:
        ++c.primary;
        break;
      case SlotState::kDuplicate:
        ++c.duplicate;
        break;
      case SlotState::kInactive:
        ++c.inactive;
        break;
    }
  }
  return c;
}

/// Ids of the slots carrying `h` (Staged, Primary, Duplicate or Inactive).
inline std::vector<BlockId> slots_with_hash(const BlockManager& m, SequenceHash h) {
  std::vector<BlockId> out;
  for (BlockId id = 0; id < m.total_blocks(); ++id) {
    const auto info = m.inspect_block(id);
    if (info.state != SlotState::kReset && info.state != SlotState::kMutable && info.hash == h) {
      out.push_back(id);
    }
  }
  return out;
}

inline std::vector<BlockId> slots_in_state(const BlockManager& m, SlotState s) {
  std::vector<BlockId> out;
  for (BlockId id = 0; id < m.total_blocks(); ++id) {
    if (m.inspect_block(id).state == s) {
      out.push_back(id);
    }
  }
  return out;
}

inline std::int64_t metric(const BlockManager& m, std::string_view name) {
  const auto v = m.metrics().get(name);
  INFO(name);
  REQUIRE(v.has_value());
  return *v;
}

inline std::string join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) {
    out += l;
    out += '\n';
  }
  return out;
}

/// Quiescent consistency, seen from the parent: verify() clean, the per-slot tally equals
/// counts(), the counts add up to block_count and the gauges equal the counts.
inline void check_consistent(const BlockManager& m) {
  const auto problems = m.verify();
  INFO(join(problems));
  CHECK(problems.empty());
  const PoolCounts c = m.counts();
  CHECK(describe(tally(m)) == describe(c));
  CHECK(sum(c) == m.total_blocks());
  CHECK(m.available_blocks() == c.reset + c.inactive);
  const auto snap = m.metrics();
  CHECK(snap.reset_pool_size == static_cast<std::int64_t>(c.reset));
  CHECK(snap.inactive_pool_size == static_cast<std::int64_t>(c.inactive));
  CHECK(snap.inflight_mutable == static_cast<std::int64_t>(c.mutable_));
  CHECK(snap.inflight_immutable == static_cast<std::int64_t>(c.primary + c.duplicate));
}

}  // namespace multiprocess_test

using namespace multiprocess_test;  // NOLINT: shared by the multiprocess_test topic files
