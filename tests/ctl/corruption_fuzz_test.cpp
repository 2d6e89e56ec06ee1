// SPDX-License-Identifier: Apache-2.0
// Seeded corruption fuzzer over whole segment images (DESIGN.md section 12): for each mutated
// image, the library (open + a few operations) runs in a child process and kvbm-ctl verify,
// info and repair run as the binary, each under a timeout. No run may die of a signal or hang.
// The seed is printed; KVBM_FUZZ_SEED=<n> replays a run, KVBM_FUZZ_CASES=<n> changes its size.
// Prints the outcome table (clean / error / repaired).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "kvbm/kvbm.hpp"

#include "ctl/ctl_runner.hpp"
#include "shm/control.hpp"
#include "shm/header.hpp"
#include "shm/slot.hpp"
#include "support/temp_segment.hpp"

namespace {

using namespace kvbm::ctltest;
using kvbm::BlockManager;
using kvbm::SequenceHash;
using kvbm::testing::TempSegment;

SequenceHash Hf(std::uint64_t i) {
  return SequenceHash::make(7000 + i, std::nullopt, 0);
}

// A segment image with every slot state in use and this process's entry in use (dead in the
// copies: nobody holds their liveness locks).
std::vector<unsigned char> make_image(kvbm::EvictionPolicy policy) {
  TempSegment seg("fz-src");
  auto cfg = seg.config(32);
  cfg.eviction = policy;
  cfg.bytes_per_block = 0;
  auto m = seg.create(cfg);
  auto blocks = m->allocate_blocks(14).value();
  std::vector<kvbm::CompleteBlock> staged;
  for (int i = 0; i < 8; ++i) {
    staged.push_back(std::move(blocks[i]).stage(Hf(i), m->block_size()).value());
  }
  auto imm = m->register_blocks(std::move(staged));
  std::vector<kvbm::ImmutableBlock> held(imm.begin(), imm.begin() + 4);
  imm.clear();  // 4 Inactive
  auto dup = m->register_block(std::move(blocks[8]).stage(Hf(0), m->block_size()).value());
  auto st = std::move(blocks[9]).stage(Hf(20), m->block_size()).value();
  const auto path = shm_path(seg.name());
  return read_file(path);
}

// Seeded damage: byte flips anywhere, in the control block (mutex, intent, list heads) or in the
// store mutex itself, or random 32-bit values (mostly out-of-range indices) written at
// 4-byte-aligned offsets.
std::vector<unsigned char> mutate(const std::vector<unsigned char>& image,
                                  std::mt19937_64& rng,
                                  std::string& what) {
  auto copy = image;
  const std::size_t ctl_off = kvbm::shm::align_up(sizeof(kvbm::shm::SegmentHeader), 64);
  const int kind = static_cast<int>(rng() % 5);
  const int n = 1 + static_cast<int>(rng() % 8);
  what = fmt::format("kind {}:", kind);
  for (int i = 0; i < n; ++i) {
    std::size_t at = 0;
    switch (kind) {
      case 0:  // anywhere past the magic/version/fingerprint (those are refused at open)
        at = 64 + rng() % (copy.size() - 64);
        break;
      case 1:  // the control block: mutex word and type, intent, list heads, counts
        at = ctl_off + rng() % sizeof(kvbm::shm::ControlBlock);
        break;
      case 2:  // the store mutex itself (lock word, owner, type): glibc must never see garbage
        at = ctl_off + rng() % sizeof(pthread_mutex_t);
        break;
      default: {  // an aligned 32-bit word anywhere past the header gets a random value
        at = (ctl_off + rng() % (copy.size() - ctl_off - 4)) & ~std::size_t{3};
        const std::uint32_t v = (rng() % 2) ? static_cast<std::uint32_t>(rng())
                                            : static_cast<std::uint32_t>(rng() % 128);
        std::memcpy(&copy[at], &v, 4);
        what += fmt::format(" {}={:#x}", at, v);
        continue;
      }
    }
    const auto mask = static_cast<unsigned char>(1 + rng() % 255);
    copy[at] ^= mask;
    what += fmt::format(" {}^{:02x}", at, mask);
  }
  return copy;
}

enum LibOutcome { kClean = 0, kOpenError = 10, kThrew = 11, kHang = 90, kSignal = 91 };

// The library on the image, in a child: open, then a few operations (each batch may throw
// SegmentCorrupted / SegmentError), then detach. Exit code = outcome.
int library_child(const std::string& name) {
  auto m = BlockManager::open(name);
  if (!m) {
    return kOpenError;
  }
  try {
    auto& mgr = **m;
    (void)mgr.verify();
    (void)mgr.counts();
    if (auto blocks = mgr.allocate_blocks(3)) {
      auto cb = std::move((*blocks)[0]).stage(Hf(100), mgr.block_size());
      if (cb) {
        auto imm = mgr.register_block(std::move(*cb));
      }
    }
    const std::vector<SequenceHash> q = {Hf(0), Hf(1), Hf(5), Hf(100)};
    (void)mgr.match_blocks(q);
    (void)mgr.scan_matches(q, true);
    (void)mgr.allocate_blocks_with_evictions(6);
    (void)mgr.reap_dead_processes();
    (void)mgr.metrics();
  } catch (const kvbm::SegmentCorrupted&) {
    return kThrew;
  } catch (const kvbm::SegmentError&) {
    return kThrew;
  }
  return kClean;
}

int run_library(const std::string& name, int timeout_ms) {
  if (std::getenv("KVBM_FUZZ_IN_PROCESS") != nullptr) {
    return library_child(name);  // for a debugger, with KVBM_FUZZ_ONLY
  }
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::_exit(library_child(name));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  int status = 0;
  for (;;) {
    const pid_t got = ::waitpid(pid, &status, WNOHANG);
    if (got == pid) {
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return kHang;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (WIFSIGNALED(status)) {
    return kSignal + WTERMSIG(status);
  }
  return WEXITSTATUS(status);
}

}  // namespace

TEST_CASE("corruption fuzzer: the library and kvbm-ctl never crash or hang", "[ctl][fuzz]") {
  const char* env_seed = std::getenv("KVBM_FUZZ_SEED");
  const char* env_cases = std::getenv("KVBM_FUZZ_CASES");
  const std::uint64_t seed = env_seed != nullptr ? std::strtoull(env_seed, nullptr, 0) : 20261206;
  const int cases = env_cases != nullptr ? std::atoi(env_cases) : 240;
  WARN(fmt::format("corruption fuzzer: seed {} ({} cases); replay with KVBM_FUZZ_SEED={}", seed,
                   cases, seed));
  const std::vector<kvbm::EvictionPolicy> policies = {
      kvbm::EvictionPolicy::kLru, kvbm::EvictionPolicy::kLineage, kvbm::EvictionPolicy::kMultiLru};
  std::vector<std::vector<unsigned char>> images;
  for (auto p : policies) {
    images.push_back(make_image(p));
  }
  std::mt19937_64 rng(seed);
  std::map<std::string, int> table;
  std::vector<std::string> failures;
  const auto start = std::chrono::steady_clock::now();
  const char* only = std::getenv("KVBM_FUZZ_ONLY");  // replay one case (keeps its image)
  for (int c = 0; c < cases; ++c) {
    const auto& image = images[static_cast<std::size_t>(c) % images.size()];
    std::string what;
    const auto copy = mutate(image, rng, what);
    const std::string name = fmt::format("kvbm-test-fz-{}-{}", ::getpid(), c);
    if (only != nullptr && std::atoi(only) != c) {
      continue;
    }
    const std::string tag =
        fmt::format("case {} ({}) {}", c, static_cast<int>(policies[c % 3]), what);
    // The library.
    write_new_file(name, copy);
    const int lib = run_library(name, 5000);
    switch (lib) {
      case kClean:
        ++table["library: clean"];
        break;
      case kOpenError:
        ++table["library: open refused"];
        break;
      case kThrew:
        ++table["library: error (SegmentCorrupted)"];
        break;
      default:
        failures.push_back(
            fmt::format("{}: library {}", tag,
                        lib == kHang ? "HUNG" : fmt::format("signal {}", lib - kSignal)));
    }
    // kvbm-ctl on a fresh copy: verify, info, repair, verify again.
    write_new_file(name, copy);
    int verify_code = -1;
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"verify", name}, {"info", name, "--json"}, {"repair", name}, {"verify", name}}) {
      const Run r = run_ctl(args, 10);
      if (r.timed_out || r.code >= 128 || r.code > 4) {
        failures.push_back(fmt::format("{}: {}", tag, describe(args, r)));
        continue;
      }
      if (args[0] == "verify" && verify_code < 0) {
        verify_code = r.code;
        ++table[r.code == 0 ? "verify: clean" : "verify: error"];
      } else if (args[0] == "repair") {
        ++table[r.code == 0 ? "repair: repaired" : "repair: error"];
      } else if (args[0] == "verify") {
        ++table[r.code == 0 ? "verify after repair: clean" : "verify after repair: error"];
      }
    }
    if (only == nullptr) {
      ::unlink(shm_path(name).c_str());
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string out =
      fmt::format("corruption fuzzer outcome (seed {}, {} images, {:.1f} s):", seed, cases, secs);
  for (const auto& [k, v] : table) {
    out += fmt::format("\n  {:<36} {:>5}", k, v);
  }
  WARN(out);
  for (const auto& f : failures) {
    FAIL_CHECK(f);
  }
  CHECK(failures.empty());
}

// --- named regressions (defect 5) ----------------------------------------------------------------

namespace {

std::size_t control_offset() {
  return kvbm::shm::align_up(sizeof(kvbm::shm::SegmentHeader), 64);
}

// kvbm-ctl repair makes the segment usable again: verify passes and a new attachment works.
void expect_repaired(const std::string& name) {
  { CTL_EXPECT(r, 0, "repair", name); }
  { CTL_EXPECT(v, 0, "verify", name); }
  auto m = BlockManager::open(name);
  REQUIRE(m);
  auto blocks = (*m)->allocate_blocks(2);
  REQUIRE(blocks);
  CHECK((*m)->verify().empty());
}

}  // namespace

TEST_CASE("a broken list link: SegmentCorrupted now and later, until kvbm-ctl repair",
          "[ctl][corruption]") {
  TempSegment seg("fz-link");
  auto cfg = seg.config(16);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  { auto m = seg.create(cfg); }
  const std::uint32_t bad = 0x7ffffff0;
  write_at(shm_path(seg.name()), control_offset() + offsetof(kvbm::shm::ControlBlock, free_list),
           &bad, sizeof(bad));
  {
    auto m = BlockManager::open(seg.name());
    REQUIRE(m);
    CHECK_THROWS_AS((*m)->allocate_blocks(1), kvbm::SegmentCorrupted);
    // Poisoned: every later operation throws the same, never trusts the list again.
    CHECK_THROWS_AS((*m)->allocate_blocks(1), kvbm::SegmentCorrupted);
    const std::vector<SequenceHash> q = {Hf(1)};
    CHECK_THROWS_AS((*m)->match_blocks(q), kvbm::SegmentCorrupted);
    try {
      (void)(*m)->allocate_blocks(1);
    } catch (const kvbm::SegmentCorrupted& e) {
      CHECK(e.error().code == kvbm::Errc::kCorrupted);
      CHECK(contains(e.what(), "kvbm-ctl repair"));
    }
  }
  {
    auto again = BlockManager::open(seg.name());
    REQUIRE_FALSE(again);  // a new attachment meets the poison at once
    CHECK(again.error().code == kvbm::Errc::kCorrupted);
  }
  { CTL_EXPECT(v, 1, "verify", seg.name()); }
  expect_repaired(seg.name());
}

TEST_CASE("a damaged store mutex type or lock word: no abort, no hang; repair re-initialises",
          "[ctl][corruption]") {
  TempSegment seg("fz-mutex");
  { auto m = seg.create(16); }
  const std::string path = shm_path(seg.name());
  const std::size_t mu = control_offset() + offsetof(kvbm::shm::ControlBlock, mutex);
  SECTION("type") {
    const int kind = 0x40;  // a priority-protect type: glibc asserts on it
    write_at(path, mu + offsetof(pthread_mutex_t, __data.__kind), &kind, sizeof(kind));
  }
  SECTION("lock word held by a thread that is not its owner") {
    const int word = 0x1234;
    write_at(path, mu + offsetof(pthread_mutex_t, __data.__lock), &word, sizeof(word));
  }
  SECTION("lock word with only the waiters bit") {
    const unsigned word = 0x80000000u;
    write_at(path, mu + offsetof(pthread_mutex_t, __data.__lock), &word, sizeof(word));
  }
  const auto start = std::chrono::steady_clock::now();
  auto m = BlockManager::open(seg.name());
  REQUIRE_FALSE(m);
  CHECK(m.error().code == kvbm::Errc::kCorrupted);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  {
    CTL_EXPECT(v, 1, "verify", seg.name());
    CHECK(contains(v.out, "mutex"));
  }
  { CTL_EXPECT(i, 0, "info", seg.name()); }
  expect_repaired(seg.name());
}
