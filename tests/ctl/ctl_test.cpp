// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl, run as a real binary (fork + execv, stdout/stderr captured, exact exit status, hard
// timeout) against real segments: round trips, agreement with the library, dead workers, a worker
// killed inside the store mutex, every output format, usage errors, damaged segments and a seeded
// random-corruption run.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvbm/kvbm.hpp"

#include "ctl/ctl_runner.hpp"
#include "segment/segment.hpp"
#include "shm/control.hpp"
#include "shm/header.hpp"
#include "shm/layout.hpp"
#include "shm/slot.hpp"
#include "store/block_store.hpp"
#include "support/temp_segment.hpp"
#include "testing/hooks.hpp"

#ifndef KVBM_CTL_PATH
#error "KVBM_CTL_PATH must name the kvbm-ctl binary"
#endif

namespace {

using kvbm::BlockManager;
using kvbm::SequenceHash;
using kvbm::testing::Child;
using kvbm::testing::Signal;
using kvbm::testing::TempSegment;
using nlohmann::json;
using namespace kvbm::ctltest;

// --- segments ------------------------------------------------------------------------------------

const std::vector<std::string> kMetricNames = {"kvbm_allocations_total",
                                               "kvbm_allocations_from_reset_total",
                                               "kvbm_evictions_total",
                                               "kvbm_registrations_total",
                                               "kvbm_duplicate_blocks_total",
                                               "kvbm_registration_dedup_total",
                                               "kvbm_stagings_total",
                                               "kvbm_match_hashes_requested_total",
                                               "kvbm_match_blocks_returned_total",
                                               "kvbm_scan_hashes_requested_total",
                                               "kvbm_scan_blocks_returned_total",
                                               "kvbm_reaped_processes_total",
                                               "kvbm_recoveries_total",
                                               "kvbm_events_total",
                                               "kvbm_prefix_cache_queries_total",
                                               "kvbm_prefix_cache_hits_total",
                                               "kvbm_reset_pool_size",
                                               "kvbm_inactive_pool_size",
                                               "kvbm_inflight_mutable",
                                               "kvbm_inflight_immutable",
                                               "kvbm_attached_processes",
                                               "kvbm_capacity_blocks",
                                               "kvbm_dead_processes"};

bool is_counter(const std::string& full_name) {
  return full_name.size() > 6 && full_name.ends_with("_total");
}

SequenceHash H(int i) {
  return SequenceHash::make(5000 + static_cast<std::uint64_t>(i), std::nullopt, 0);
}

// Blocks held by the test process in every state but Reset.
struct Population {
  std::vector<kvbm::MutableBlock> mut;      // Mutable
  std::vector<kvbm::CompleteBlock> staged;  // Staged
  std::vector<kvbm::ImmutableBlock> held;   // Primary (and one Duplicate with kAllow)
  std::vector<kvbm::BlockId> inactive_ids;  // released: Inactive
};

Population populate(BlockManager& m, bool with_duplicate) {
  Population p;
  auto blocks = m.allocate_blocks(12).value();
  // 0..3 registered and held (H0..H3), 4..5 registered then dropped (Inactive, H4, H5),
  // 6..7 staged (H6, H7), 8..10 mutable, 11: duplicate of H0 (Allow) or mutable.
  std::vector<kvbm::CompleteBlock> to_register;
  for (int i = 0; i < 6; ++i) {
    to_register.push_back(std::move(blocks[i]).stage(H(i), m.block_size()).value());
  }
  auto imm = m.register_blocks(std::move(to_register));
  REQUIRE(imm.size() == 6);
  for (int i = 0; i < 4; ++i) {
    p.held.push_back(imm[i]);
  }
  p.inactive_ids = {imm[4].block_id(), imm[5].block_id()};
  p.held[1].set_reset_on_release(true);
  imm.clear();
  for (int i = 6; i < 8; ++i) {
    p.staged.push_back(std::move(blocks[i]).stage(H(i), m.block_size()).value());
  }
  for (int i = 8; i < 11; ++i) {
    p.mut.push_back(std::move(blocks[i]));
  }
  if (with_duplicate) {
    p.held.push_back(m.register_block(std::move(blocks[11]).stage(H(0), m.block_size()).value()));
  } else {
    p.mut.push_back(std::move(blocks[11]));
  }
  // A prefix match and a scan, so the match/scan counters are not all zero.
  const std::vector<SequenceHash> q = {H(0), H(1), H(99)};
  auto matched = m.match_blocks(q);
  auto scanned = m.scan_matches(q, false);
  return p;
}

kvbm::shm::RegionEntry region_of(const std::string& name, kvbm::shm::Region r) {
  kvbm::shm::RegionEntry e{};
  const int fd = ::open(shm_path(name).c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  const off_t at = static_cast<off_t>(offsetof(kvbm::shm::SegmentHeader, regions) +
                                      r * sizeof(kvbm::shm::RegionEntry));
  REQUIRE(::pread(fd, &e, sizeof(e), at) == static_cast<ssize_t>(sizeof(e)));
  ::close(fd);
  return e;
}

std::map<std::string, std::int64_t> metrics_of(const std::string& name) {
  CTL_EXPECT(r, 0, "metrics", name, "--format", "json");
  std::map<std::string, std::int64_t> out;
  const json j = parse_json(r);
  for (const auto& [k, v] : j.items()) {
    out[k] = v.get<std::int64_t>();
  }
  return out;
}

const json* find_process(const json& procs, std::int64_t pid) {
  for (const auto& p : procs) {
    if (p.at("pid").get<std::int64_t>() == pid) {
      return &p;
    }
  }
  return nullptr;
}

// Runs `setup` in a forked worker, then signals `ready` (1) and waits to be SIGKILLed. If setup
// throws or fails, signals 2 instead, so the parent's ready.wait() never blocks forever (the
// parent holds the pipe's write end too, so it would not see EOF).
template <class F>
int park_after(Signal& ready, F setup) {
  try {
    if (setup()) {
      ready.notify(1);
      for (;;) {
        ::pause();
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "worker: %s\n", e.what());
  }
  ready.notify(2);
  return 97;
}

// A worker that opens the segment, holds blocks in every per-process form, signals and waits to
// be killed. Holds: 2 Mutable, 1 Staged, 2 registered Primaries of its own (H(100), H(101)) and a
// holder bit on the parent's H(0).
int worker_holding_blocks(const std::string& name, Signal& ready) {
  std::shared_ptr<BlockManager> m;
  std::vector<kvbm::MutableBlock> blocks;
  kvbm::CompleteBlock staged;
  std::vector<kvbm::ImmutableBlock> held;
  return park_after(ready, [&] {
    m = BlockManager::open(name).value();
    blocks = m->allocate_blocks(5).value();
    staged = std::move(blocks[2]).stage(H(102), m->block_size()).value();
    held.push_back(m->register_block(std::move(blocks[3]).stage(H(100), m->block_size()).value()));
    held.push_back(m->register_block(std::move(blocks[4]).stage(H(101), m->block_size()).value()));
    const std::vector<SequenceHash> q = {H(0)};
    auto shared = m->match_blocks(q);
    if (shared.size() != 1) {
      return false;
    }
    held.insert(held.end(), shared.begin(), shared.end());
    return true;
  });
}

}  // namespace

// --- 1 -------------------------------------------------------------------------------------------

TEST_CASE("create / info --json / destroy round trip", "[ctl]") {
  TempSegment seg("ctl-rt");
  const auto& name = seg.name();
  {
    CTL_EXPECT(r, 0, "create", name, "--blocks", "128", "--eviction", "lru", "--duplication",
               "reject", "--bytes-per-block", "64", "--mode", "0660");
  }
  struct stat st {};
  REQUIRE(::stat(shm_path(name).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);
  REQUIRE(::stat(shm_path(name + ".payload").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);
  CHECK(st.st_size >= 128 * 64);
  {
    CTL_EXPECT(r, 0, "info", name, "--json");
    const json j = parse_json(r);
    CHECK(j.at("name") == name);
    CHECK(j.at("block_count") == 128);
    CHECK(j.at("block_size") == 16);
    CHECK(j.at("eviction") == "lru");
    CHECK(j.at("duplication") == "reject");
    const json& c = j.at("counts");
    for (const char* k : {"reset", "mutable", "staged", "primary", "duplicate", "inactive"}) {
      INFO(k);
      REQUIRE(c.contains(k));
      CHECK(c.at(k) == (std::string(k) == "reset" ? 128 : 0));
    }
    REQUIRE(j.at("processes").is_array());
    CHECK(j.at("processes").empty());  // creating does not attach
    const json& m = j.at("metrics");
    REQUIRE(m.is_object());
    CHECK(m.size() == kMetricNames.size());
    for (const auto& full : kMetricNames) {
      INFO(full);
      CHECK(m.contains(full.substr(5)));
    }
    CHECK(m.at("reset_pool_size") == 128);
    CHECK(m.at("allocations_total") == 0);
    CHECK(m.at("attached_processes") == 0);
  }
  {
    // The library agrees on the config the CLI wrote.
    auto mgr = BlockManager::open(name);
    REQUIRE(mgr.has_value());
    const auto& cfg = (*mgr)->config();
    CHECK(cfg.block_count == 128);
    CHECK(cfg.eviction == kvbm::EvictionPolicy::kLru);
    CHECK(cfg.duplication == kvbm::DuplicationPolicy::kReject);
    CHECK(cfg.bytes_per_block == 64);
  }
  {
    CTL_EXPECT(r, 0, "info", name);  // text form
    CHECK(contains(r.out, name));
  }
  { CTL_EXPECT(r, 0, "destroy", name); }
  CHECK(::access(shm_path(name).c_str(), F_OK) != 0);
  CHECK(::access(shm_path(name + ".payload").c_str(), F_OK) != 0);
  {
    CTL_EXPECT(r, 3, "destroy", name);
    CHECK_FALSE(r.err.empty());
  }
  { CTL_EXPECT(r, 3, "info", name, "--json"); }
}

TEST_CASE("create refuses an existing name; destroy refuses live attachments without --force",
          "[ctl]") {
  TempSegment seg("ctl-ex");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "8"); }
  {
    CTL_EXPECT(r, 1, "create", seg.name(), "--blocks", "8");
    CHECK(contains(r.err, "exists"));
  }
  auto m = seg.open();
  {
    CTL_EXPECT(r, 1, "destroy", seg.name());
    CHECK(contains(r.err, "--force"));
  }
  CHECK(::access(shm_path(seg.name()).c_str(), F_OK) == 0);
  { CTL_EXPECT(r, 0, "destroy", seg.name(), "--force"); }
  CHECK(::access(shm_path(seg.name()).c_str(), F_OK) != 0);
  // The attached process keeps a valid mapping.
  CHECK(m->counts().reset == 8);
}

// --- 2 -------------------------------------------------------------------------------------------

TEST_CASE("info --json agrees with the library and lists the attached test process", "[ctl]") {
  TempSegment seg("ctl-agree");
  auto cfg = seg.config(64);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  auto m = seg.create(cfg);
  auto pop = populate(*m, /*with_duplicate=*/true);

  CTL_EXPECT(r, 0, "info", seg.name(), "--json");
  const json j = parse_json(r);
  const auto c = m->counts();
  CHECK(c.mutable_ == 3);
  CHECK(c.staged == 2);
  CHECK(c.primary == 4);
  CHECK(c.duplicate == 1);
  CHECK(c.inactive == 2);
  const json& jc = j.at("counts");
  CHECK(jc.at("reset") == c.reset);
  CHECK(jc.at("mutable") == c.mutable_);
  CHECK(jc.at("staged") == c.staged);
  CHECK(jc.at("primary") == c.primary);
  CHECK(jc.at("duplicate") == c.duplicate);
  CHECK(jc.at("inactive") == c.inactive);

  const auto snap = m->metrics();
  const json& jm = j.at("metrics");
  CHECK(jm.size() == kMetricNames.size());
  for (const auto& full : kMetricNames) {
    INFO(full);
    REQUIRE(snap.get(full).has_value());
    REQUIRE(jm.contains(full.substr(5)));
    CHECK(jm.at(full.substr(5)).get<std::int64_t>() == *snap.get(full));
  }
  CHECK(jm.at("registrations_total").get<std::int64_t>() >= 7);
  CHECK(jm.at("attached_processes") == 1);

  const json& procs = j.at("processes");
  REQUIRE(procs.is_array());
  REQUIRE(procs.size() == 1);
  const json* me = find_process(procs, ::getpid());
  REQUIRE(me != nullptr);
  CHECK(me->at("alive") == true);
  CHECK(me->at("index") == m->process_index());
}

TEST_CASE("read-only commands never take a process entry", "[ctl]") {
  TempSegment seg("ctl-ro");
  auto m = seg.create(32);
  auto pop = populate(*m, true);
  const auto before = m->metrics().attached_processes;
  REQUIRE(before == 1);
  const std::vector<std::vector<std::string>> cmds = {{"info", seg.name()},
                                                      {"info", seg.name(), "--json"},
                                                      {"dump", seg.name()},
                                                      {"dump", seg.name(), "--json"},
                                                      {"processes", seg.name()},
                                                      {"processes", seg.name(), "--json"},
                                                      {"verify", seg.name()},
                                                      {"metrics", seg.name()},
                                                      {"metrics", seg.name(), "--format", "json"},
                                                      {"list"},
                                                      {"list", "--json"}};
  for (const auto& args : cmds) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK(r.code == 0);
    CHECK(m->metrics().attached_processes == before);
  }
  // The process table as the tool sees it: still only us.
  CTL_EXPECT(r, 0, "processes", seg.name(), "--json");
  const json procs = parse_json(r);
  REQUIRE(procs.is_array());
  CHECK(procs.size() == 1);
  CHECK(m->verify().empty());
}

TEST_CASE("read-only commands work when the process table is full", "[ctl]") {
  TempSegment seg("ctl-full");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "16", "--max-processes", "1"); }
  auto m = seg.open();
  {
    auto second = BlockManager::open(seg.name());
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().code == kvbm::Errc::kProcessTableFull);
  }
  auto blocks = m->allocate_blocks(2).value();
  const std::vector<std::vector<std::string>> cmds = {
      {"info", seg.name(), "--json"}, {"dump", seg.name(), "--json"}, {"processes", seg.name()},
      {"verify", seg.name()},         {"metrics", seg.name()},        {"list", "--json"}};
  for (const auto& args : cmds) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK(r.code == 0);
  }
  CHECK(m->metrics().attached_processes == 1);
  CTL_EXPECT(r, 0, "info", seg.name(), "--json");
  const json j = parse_json(r);
  CHECK(j.at("counts").at("mutable") == 2);
  CHECK(j.at("metrics").at("attached_processes") == 1);
}

// --- 3 -------------------------------------------------------------------------------------------

TEST_CASE("a SIGKILLed worker: processes shows it dead, verify fails, repair releases", "[ctl]") {
  TempSegment seg("ctl-dead");
  auto cfg = seg.config(64);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  auto m = seg.create(cfg);
  auto own = m->register_block(std::move(m->allocate_blocks(1).value()[0]).stage(H(0), 16).value());
  const auto counts_before = m->counts();

  Signal ready;
  Child worker([&] { return worker_holding_blocks(seg.name(), ready); });
  REQUIRE(ready.wait() == 1);
  const pid_t dead_pid = worker.pid();
  worker.kill();

  {
    CTL_EXPECT(r, 0, "processes", seg.name());
    CHECK(contains(r.out, "DEAD"));
    CHECK(contains(r.out, std::to_string(dead_pid)));
    CHECK(contains(r.out, "alive"));
  }
  {
    CTL_EXPECT(r, 0, "processes", seg.name(), "--json");
    const json procs = parse_json(r);
    REQUIRE(procs.is_array());
    CHECK(procs.size() == 2);
    const json* dead = find_process(procs, dead_pid);
    REQUIRE(dead != nullptr);
    CHECK(dead->at("alive") == false);
    const json* me = find_process(procs, ::getpid());
    REQUIRE(me != nullptr);
    CHECK(me->at("alive") == true);
  }
  {
    CTL_EXPECT(r, 1, "verify", seg.name());
    CHECK(contains(lower(r.out), "dead"));
    CHECK(contains(r.out, std::to_string(dead_pid)));
    // BUG (reported): verify suggested a reap subcommand that did not exist.
    CHECK(contains(r.out, "kvbm-ctl reap " + seg.name()));
  }
  {
    // BUG (reported): list said "ok" for a segment with a dead, unreaped process.
    CTL_EXPECT(r, 0, "list", "--json");
    bool found = false;
    for (const auto& e : parse_json(r)) {
      if (e.at("name") == seg.name()) {
        found = true;
        CHECK(e.at("status") == "dead_processes");
        CHECK(e.at("dead_processes") == 1);
      }
    }
    CHECK(found);
    CTL_EXPECT(t, 0, "list");
    CHECK(contains(t.out, "dead processes (1)"));  // this segment's line (others have none)
  }
  const auto mid = m->counts();
  CHECK(mid.mutable_ == counts_before.mutable_ + 2);
  CHECK(mid.staged == counts_before.staged + 1);
  CHECK(mid.primary == counts_before.primary + 2);

  std::string dump_before;
  {
    CTL_EXPECT(r, 0, "dump", seg.name(), "--json");
    dump_before = r.out;
  }
  const auto metrics_before = metrics_of(seg.name());

  SECTION("repair --dry-run changes nothing") {
    {
      CTL_EXPECT(r, 0, "repair", seg.name(), "--dry-run");
      CHECK(contains(r.out, std::to_string(dead_pid)));
    }
    CTL_EXPECT(d, 0, "dump", seg.name(), "--json");
    CHECK(d.out == dump_before);
    CHECK(metrics_of(seg.name()) == metrics_before);
    CTL_EXPECT(v, 1, "verify", seg.name());
  }
  // BUG (reported): repair refused without --force whenever any worker was alive, although
  // reaping is safe beside live workers. Now: repair (no --force), repair --force and reap all
  // release the dead worker and leave this live process's blocks alone.
  std::vector<std::string> release;
  SECTION("repair beside this live process reaps without --force") {
    release = {"repair", seg.name()};
  }
  SECTION("repair --force beside this live process") {
    release = {"repair", seg.name(), "--force"};
  }
  SECTION("kvbm-ctl reap beside this live process") {
    release = {"reap", seg.name()};
  }
  if (!release.empty()) {
    {
      const Run r = run_ctl(release);
      INFO(describe(release, r));
      REQUIRE(r.code == 0);
      CHECK(contains(r.out, std::to_string(dead_pid)));
    }
    { CTL_EXPECT(v, 0, "verify", seg.name()); }
    CHECK(m->verify().empty());
    const auto after = m->counts();
    CHECK(after.mutable_ == counts_before.mutable_);
    CHECK(after.staged == counts_before.staged);
    CHECK(after.primary == counts_before.primary);
    CHECK(after.inactive == counts_before.inactive + 2);  // the worker's H100/H101 stay cached
    CHECK(m->inspect_block(own.block_id()).holder_processes == 1);
    const auto mt = metrics_of(seg.name());
    CHECK(mt.at("reaped_processes_total") == metrics_before.at("reaped_processes_total") + 1);
    CHECK(mt.at("attached_processes") == 1);
    CTL_EXPECT(p, 0, "processes", seg.name());
    CHECK_FALSE(contains(p.out, "DEAD"));
    // Idempotent: nothing left to reap.
    CTL_EXPECT(again, 0, "reap", seg.name());
    CHECK(contains(again.out, "no dead process"));
    CTL_EXPECT(l, 0, "list", "--json");
    for (const auto& e : parse_json(l)) {
      if (e.at("name") == seg.name()) {
        CHECK(e.at("status") == "ok");
      }
    }
  }
  SECTION("with no live process attached, repair needs no --force") {
    own = kvbm::ImmutableBlock();
    m.reset();
    { CTL_EXPECT(r, 0, "repair", seg.name()); }
    { CTL_EXPECT(v, 0, "verify", seg.name()); }
    CTL_EXPECT(i, 0, "info", seg.name(), "--json");
    const json j = parse_json(i);
    CHECK(j.at("processes").empty());
    CHECK(j.at("counts").at("mutable") == 0);
    CHECK(j.at("counts").at("staged") == 0);
    CHECK(j.at("counts").at("primary") == 0);
    CHECK(j.at("counts").at("inactive") == 3);
  }
}

// --- 4 -------------------------------------------------------------------------------------------

TEST_CASE("a worker killed inside the store mutex: repair recovers", "[ctl]") {
  TempSegment seg("ctl-mutex");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "32", "--eviction", "lru"); }
  bool half_done = false;
  SECTION("between operations") {}
  SECTION("in the middle of an operation (armed intent, slot 20 damaged)") {
    half_done = true;
  }
  Signal ready;
  Child worker([&] {
    std::shared_ptr<BlockManager> m;
    std::vector<kvbm::MutableBlock> blocks;
    kvbm::ImmutableBlock imm;
    return park_after(ready, [&] {
      m = BlockManager::open(seg.name()).value();
      blocks = m->allocate_blocks(3).value();
      imm = m->register_block(std::move(blocks[0]).stage(H(1), 16).value());
      if (half_done) {
        kvbm::testing::Peer::half_done_operation_and_hold(*m, 20);
      } else {
        kvbm::testing::Peer::lock_store_and_hold(*m);
      }
      return true;
    });
  });
  REQUIRE(ready.wait() == 1);
  worker.kill();
  const auto before = metrics_of(seg.name());
  if (half_done) {
    CTL_EXPECT(d, 0, "dump", seg.name(), "--json");
    const json j = parse_json(d);
    CHECK(j.at("header").at("intent_armed") == true);
  }
  {
    CTL_EXPECT(r, 0, "repair", seg.name());
    CHECK(contains(r.out, "died"));
    if (half_done) {
      CHECK(contains(r.out, "rolled"));
    }
  }
  { CTL_EXPECT(v, 0, "verify", seg.name()); }
  const auto after = metrics_of(seg.name());
  CHECK(after.at("recoveries_total") > before.at("recoveries_total"));
  CHECK(after.at("reaped_processes_total") == before.at("reaped_processes_total") + 1);
  CHECK(after.at("attached_processes") == 0);
  CHECK(after.at("inflight_mutable") == 0);
  CHECK(after.at("inactive_pool_size") == 1);  // the worker's registered H(1) stays cached
  CHECK(after.at("reset_pool_size") == 31);
  // A worker can use the segment again.
  auto m = seg.open();
  CHECK(m->verify().empty());
  CHECK(m->inspect_block(20).state == kvbm::SlotState::kReset);
  const std::vector<SequenceHash> q = {H(1)};
  CHECK(m->match_blocks(q).size() == 1);
  CHECK(m->allocate_blocks(31).has_value());
}

TEST_CASE("a live process holding the store mutex: read-only commands do not hang", "[ctl]") {
  TempSegment seg("ctl-held");
  auto m = seg.create(16);
  auto blocks = m->allocate_blocks(2).value();
  Signal ready;
  Child holder([&] {
    std::shared_ptr<BlockManager> mine;
    return park_after(ready, [&] {
      mine = BlockManager::open(seg.name()).value();
      kvbm::testing::Peer::lock_store_and_hold(*mine);
      return true;
    });
  });
  REQUIRE(ready.wait() == 1);
  // Lock-free readers answer at once.
  for (const auto& args : std::vector<std::vector<std::string>>{{"info", seg.name(), "--json"},
                                                                {"dump", seg.name(), "--json"},
                                                                {"processes", seg.name()},
                                                                {"metrics", seg.name()}}) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK(r.code == 0);
    CHECK(r.seconds < 1.5);
  }
  {
    // verify waits at most ~2 s for the mutex, then reports it and its holder.
    const Run r = run_ctl({"verify", seg.name()});
    INFO(describe({"verify", seg.name()}, r));
    CHECK_FALSE(r.timed_out);
    CHECK(r.code == 1);
    CHECK(contains(r.out, "held by a live process"));
    CHECK(contains(r.out, fmt::format("(pid {}, holding it for", holder.pid())));
    CHECK(r.seconds < 4.0);
  }
  holder.kill();
  // The next locker recovers; the test process's blocks are intact.
  CHECK(m->verify().empty() == false);  // the dead holder's entry is not reaped yet
  CHECK(m->reap_dead_processes() == 1);
  CHECK(m->verify().empty());
  CHECK(m->counts().mutable_ == 2);
  CTL_EXPECT(v, 0, "verify", seg.name());
}

// BUG (reported): `repair --dry-run` takes the store mutex like a real repair; on EOWNERDEAD that
// runs the full recovery (intent rollback, index rebuild, recoveries_total + 1, epoch + 1), so
// the "only say what would be done" run changes the segment.
TEST_CASE("repair --dry-run after a death inside the store mutex changes nothing", "[ctl]") {
  TempSegment seg("ctl-mutex-dry");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "32", "--eviction", "lru"); }
  Signal ready;
  Child worker([&] {
    std::shared_ptr<BlockManager> m;
    std::vector<kvbm::MutableBlock> blocks;
    return park_after(ready, [&] {
      m = BlockManager::open(seg.name()).value();
      blocks = m->allocate_blocks(2).value();
      kvbm::testing::Peer::lock_store_and_hold(*m);
      return true;
    });
  });
  REQUIRE(ready.wait() == 1);
  worker.kill();
  std::string dump_before;
  {
    CTL_EXPECT(d, 0, "dump", seg.name(), "--json");
    dump_before = d.out;
  }
  const auto before = metrics_of(seg.name());
  { CTL_EXPECT(r, 0, "repair", seg.name(), "--dry-run"); }
  const auto after = metrics_of(seg.name());
  CHECK(after.at("recoveries_total") == before.at("recoveries_total"));
  CTL_EXPECT(d, 0, "dump", seg.name(), "--json");
  CHECK(d.out == dump_before);  // includes the header's epoch
}

// --- 5 -------------------------------------------------------------------------------------------

TEST_CASE("metrics: Prometheus text format and JSON", "[ctl]") {
  TempSegment seg("ctl-prom");
  auto m = seg.create(32);
  auto pop = populate(*m, true);
  CTL_EXPECT(r, 0, "metrics", seg.name());
  const std::regex help_re(R"re(# HELP (kvbm_[a-z_]+) \S.*)re");
  const std::regex type_re(R"re(# TYPE (kvbm_[a-z_]+) (counter|gauge))re");
  const std::regex sample_re(R"re((kvbm_[a-z_]+)\{pool="([^"]*)"\} (-?[0-9]+))re");
  std::istringstream lines(r.out);
  std::string line;
  std::map<std::string, std::string> types;
  std::map<std::string, std::int64_t> values;
  std::string last_typed, last_helped;
  int n_lines = 0;
  while (std::getline(lines, line)) {
    ++n_lines;
    INFO("line: " << line);
    std::smatch mt;
    if (std::regex_match(line, mt, help_re)) {
      last_helped = mt[1];
    } else if (std::regex_match(line, mt, type_re)) {
      CHECK(mt[1] == last_helped);  // each family: HELP, then TYPE
      CHECK(types.count(mt[1]) == 0);
      types[mt[1]] = mt[2];
      last_typed = mt[1];
      const std::string want = is_counter(mt[1]) ? "counter" : "gauge";
      CHECK(mt[2] == want);
    } else if (std::regex_match(line, mt, sample_re)) {
      CHECK(mt[1] == last_typed);  // each sample follows its TYPE line
      CHECK(mt[2] == seg.name());
      CHECK(values.count(mt[1]) == 0);
      values[mt[1]] = std::stoll(mt[3]);
      CHECK(values[mt[1]] >= 0);
    } else {
      FAIL("unexpected line in Prometheus output");
    }
  }
  CHECK(n_lines == 3 * static_cast<int>(kMetricNames.size()));
  std::set<std::string> want(kMetricNames.begin(), kMetricNames.end());
  std::set<std::string> got_types, got_values;
  for (const auto& [k, v] : types) {
    got_types.insert(k);
  }
  for (const auto& [k, v] : values) {
    got_values.insert(k);
  }
  CHECK(got_types == want);
  CHECK(got_values == want);

  const auto js = metrics_of(seg.name());
  const auto snap = m->metrics();
  for (const auto& full : kMetricNames) {
    INFO(full);
    REQUIRE(js.count(full.substr(5)) == 1);
    CHECK(js.at(full.substr(5)) == values[full]);
    CHECK(js.at(full.substr(5)) == *snap.get(full));
  }
  CHECK(js.size() == kMetricNames.size());
}

// --- 6 -------------------------------------------------------------------------------------------

TEST_CASE("dump --json lists every non-reset slot as the library sees it", "[ctl]") {
  TempSegment seg("ctl-dump");
  auto cfg = seg.config(48);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  auto m = seg.create(cfg);
  auto pop = populate(*m, true);
  const std::uint32_t me = m->process_index();

  CTL_EXPECT(r, 0, "dump", seg.name(), "--json");
  const json j = parse_json(r);
  REQUIRE(j.contains("header"));
  REQUIRE(j.contains("processes"));
  REQUIRE(j.contains("slots"));
  CHECK(j.at("header").at("name") == seg.name());
  CHECK(j.at("header").at("block_count") == 48);
  REQUIRE(j.at("processes").is_array());
  const json* self = find_process(j.at("processes"), ::getpid());
  REQUIRE(self != nullptr);
  CHECK(self->at("alive") == true);

  std::map<std::uint32_t, std::string> from_lib;
  for (kvbm::BlockId id = 0; id < m->total_blocks(); ++id) {
    const auto info = m->inspect_block(id);
    if (info.state != kvbm::SlotState::kReset) {
      from_lib[id] = std::string(kvbm::to_string(info.state));
    }
  }
  CHECK(from_lib.size() == 12);
  std::map<std::uint32_t, std::string> from_dump;
  for (const auto& s : j.at("slots")) {
    for (const char* k :
         {"id", "state", "hash", "holders", "owner", "duplicate_of", "reset_on_release"}) {
      INFO("slot " << s.dump() << " key " << k);
      REQUIRE(s.contains(k));
    }
    const auto id = s.at("id").get<std::uint32_t>();
    INFO("slot " << s.dump());
    CHECK(from_dump.count(id) == 0);
    from_dump[id] = s.at("state").get<std::string>();
    const auto info = m->inspect_block(id);
    CHECK(s.at("reset_on_release").get<bool>() == info.reset_on_release);
    const std::string st = from_dump[id];
    if (st == "staged" || st == "primary" || st == "duplicate" || st == "inactive") {
      CHECK(s.at("hash") == info.hash.to_string());
    } else {
      CHECK(s.at("hash").is_null());  // a Mutable block has no hash yet
    }
    if (st == "mutable" || st == "staged") {
      CHECK(s.at("owner") == me);
    } else {
      CHECK(s.at("owner").is_null());
    }
    if (st == "primary" || st == "duplicate") {
      CHECK(s.at("holders").get<std::uint64_t>() == (std::uint64_t{1} << me));
    } else {
      CHECK(s.at("holders") == 0);
    }
    if (st == "duplicate") {
      CHECK(s.at("duplicate_of") == pop.held[0].block_id());
    } else {
      CHECK(s.at("duplicate_of").is_null());
    }
  }
  CHECK(from_dump == from_lib);
  CHECK(from_dump.at(pop.held[1].block_id()) == "primary");
  for (auto id : pop.inactive_ids) {
    CHECK(from_dump.at(id) == "inactive");
  }
  // The reset-on-release flag set through the library shows in the dump.
  for (const auto& s : j.at("slots")) {
    if (s.at("id") == pop.held[1].block_id()) {
      CHECK(s.at("reset_on_release") == true);
    }
  }

  CTL_EXPECT(t, 0, "dump", seg.name());
  for (const char* word : {"mutable", "staged", "primary", "duplicate", "inactive"}) {
    INFO(word);
    CHECK(contains(t.out, word));
  }
  CHECK(contains(t.out, pop.held[0].sequence_hash().to_string()));
}

// --- 7 -------------------------------------------------------------------------------------------

TEST_CASE("list shows the segment", "[ctl]") {
  TempSegment seg("ctl-list");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "24", "--eviction", "fifo"); }
  {
    CTL_EXPECT(r, 0, "list");
    CHECK(contains(r.out, seg.name()));
  }
  {
    CTL_EXPECT(r, 0, "list", "--json");
    const json arr = parse_json(r);
    REQUIRE(arr.is_array());
    const json* found = nullptr;
    for (const auto& e : arr) {
      if (e.at("name") == seg.name()) {
        found = &e;
      }
    }
    REQUIRE(found != nullptr);
    CHECK(found->at("block_count") == 24);
    CHECK(found->at("eviction") == "fifo");
    CHECK(found->at("processes") == 0);
  }
  { CTL_EXPECT(r, 0, "destroy", seg.name()); }
  CTL_EXPECT(r, 0, "list", "--json");
  for (const auto& e : parse_json(r)) {
    CHECK(e.at("name") != seg.name());
  }
}

// --- 8 -------------------------------------------------------------------------------------------

TEST_CASE("usage errors exit 2 and point at the help", "[ctl]") {
  TempSegment seg("ctl-usage");
  const std::string& x = seg.name();
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"bogus"},
      {"bogus", x},
      {"create", x, "--blocks", "0"},
      {"create", x},
      {"create", x, "--blocks", "-3"},
      {"create", x, "--blocks", "ten"},
      {"metrics", x, "--format", "xml"},
      {"create", x, "--blocks", "10", "--eviction", "bogus"},
      {"create", x, "--blocks", "10", "--duplication", "maybe"},
      {"create", x, "--blocks", "10", "--lineage-order", "random"},
      {"create", x, "--blocks", "10", "--block-size", "3"},
      {"create", x, "--blocks", "10", "--max-processes", "0"},
      {"create", x, "--blocks", "10", "--max-processes", "65"},
      {"create", x, "--blocks", "10", "--mode", "999"},
      {"create", "/bad-name", "--blocks", "10"},
      {"create", x, "--blocks", "10", "--no-such-flag"},
      {"info"},
      {"info", x, "--frobnicate"},
      {"verify"},
      {"repair"},
      {"destroy"},
  };
  for (const auto& args : bad) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK_FALSE(r.timed_out);
    CHECK(r.code == 2);
    CHECK_FALSE(r.all().empty());
  }
  // CLI parse errors point at --help.
  for (const auto& args : std::vector<std::vector<std::string>>{
           {}, {"bogus"}, {"create", x}, {"metrics", x, "--format", "xml"}}) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK(contains(r.all(), "--help"));
  }
  // Nothing was created by the rejected invocations.
  CHECK(::access(shm_path(x).c_str(), F_OK) != 0);
}

TEST_CASE("a missing segment exits 3", "[ctl]") {
  TempSegment seg("ctl-missing");
  const std::string& x = seg.name();
  const std::vector<std::vector<std::string>> cmds = {
      {"info", x},      {"info", x, "--json"},
      {"dump", x},      {"dump", x, "--json"},
      {"processes", x}, {"verify", x},
      {"repair", x},    {"repair", x, "--dry-run"},
      {"metrics", x},   {"metrics", x, "--format", "json"},
      {"destroy", x},   {"destroy", x, "--force"}};
  for (const auto& args : cmds) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK_FALSE(r.timed_out);
    CHECK(r.code == 3);
    CHECK(contains(r.err, x));
  }
}

TEST_CASE("--help on every subcommand exits 0 and shows an example", "[ctl]") {
  const std::vector<std::vector<std::string>> cmds = {
      {"--help"},           {"create", "--help"},    {"info", "--help"},
      {"dump", "--help"},   {"processes", "--help"}, {"verify", "--help"},
      {"repair", "--help"}, {"metrics", "--help"},   {"list", "--help"},
      {"destroy", "--help"}};
  for (const auto& args : cmds) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK(r.code == 0);
    CHECK(contains(r.out, "example"));
  }
}

// --- 9 -------------------------------------------------------------------------------------------

TEST_CASE("a file of random bytes is a layout mismatch (exit 4)", "[ctl]") {
  TempSegment seg("ctl-rand");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "32"); }
  auto bytes = read_file(shm_path(seg.name()));
  std::mt19937_64 rng(12345);
  for (auto& b : bytes) {
    b = static_cast<unsigned char>(rng());
  }
  bytes[0] = 0xAB;  // certainly not the kvbm magic, certainly not zero
  write_at(shm_path(seg.name()), 0, bytes.data(), bytes.size());
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"info", seg.name()},
                                             {"info", seg.name(), "--json"},
                                             {"verify", seg.name()},
                                             {"dump", seg.name()},
                                             {"dump", seg.name(), "--json"},
                                             {"processes", seg.name()},
                                             {"metrics", seg.name()},
                                             {"repair", seg.name()},
                                             {"repair", seg.name(), "--force"}}) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK_FALSE(r.timed_out);
    CHECK(r.code == 4);
    CHECK(contains(r.err, "layout"));
  }
  // list does not claim it is a kvbm segment.
  CTL_EXPECT(l, 0, "list", "--json");
  for (const auto& e : parse_json(l)) {
    CHECK(e.at("name") != seg.name());
  }
}

TEST_CASE("a kvbm header of another layout or ABI is refused with exit 4, repair too", "[ctl]") {
  TempSegment seg("ctl-abi");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "16"); }
  const std::string path = shm_path(seg.name());
  SECTION("layout major") {
    const std::uint16_t major = kvbm::shm::kLayoutMajor + 7;
    write_at(path, offsetof(kvbm::shm::SegmentHeader, layout_major), &major, sizeof(major));
  }
  SECTION("the previous layout major (no store-lock holder record)") {
    const std::uint16_t major = kvbm::shm::kLayoutMajor - 1;
    write_at(path, offsetof(kvbm::shm::SegmentHeader, layout_major), &major, sizeof(major));
  }
  SECTION("ABI fingerprint") {
    std::uint64_t fp = 0;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(::pread(fd, &fp, 8, offsetof(kvbm::shm::SegmentHeader, abi_fingerprint)) == 8);
    ::close(fd);
    fp ^= 0x0101;
    write_at(path, offsetof(kvbm::shm::SegmentHeader, abi_fingerprint), &fp, sizeof(fp));
  }
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"info", seg.name()},
                                             {"verify", seg.name()},
                                             {"dump", seg.name(), "--json"},
                                             {"repair", seg.name()},
                                             {"repair", seg.name(), "--dry-run"}}) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK_FALSE(r.timed_out);
    CHECK(r.code == 4);
    CHECK_FALSE(r.err.empty());
  }
  // The library agrees.
  auto m = BlockManager::open(seg.name());
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().code == kvbm::Errc::kLayoutMismatch);
}

TEST_CASE("a truncated segment is reported, never a crash", "[ctl]") {
  TempSegment seg("ctl-trunc");
  auto cfg = seg.config(64);
  { auto m = seg.create(cfg); }
  const std::string path = shm_path(seg.name());
  const auto full = read_file(path);
  std::uint64_t size = 0;
  SECTION("half") {
    size = full.size() / 2;
  }
  SECTION("inside the header") {
    size = 100;
  }
  SECTION("one byte short") {
    size = full.size() - 1;
  }
  REQUIRE(::truncate(path.c_str(), static_cast<off_t>(size)) == 0);
  {
    // list keeps going and names the damaged segment with an error.
    CTL_EXPECT(l, 0, "list", "--json");
    for (const auto& e : parse_json(l)) {
      if (e.at("name") == seg.name()) {
        CHECK(e.contains("error"));
      }
    }
  }
  for (const auto& args : std::vector<std::vector<std::string>>{{"info", seg.name()},
                                                                {"verify", seg.name()},
                                                                {"dump", seg.name(), "--json"},
                                                                {"processes", seg.name()},
                                                                {"metrics", seg.name()},
                                                                {"repair", seg.name()}}) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK_FALSE(r.timed_out);
    CHECK(r.code < 128);
    CHECK((r.code == 1 || r.code == 4));
    CHECK_FALSE(r.err.empty());
  }
}

TEST_CASE("an empty (zero-length) segment object is reported, never a hang", "[ctl]") {
  TempSegment seg("ctl-empty");
  { auto m = seg.create(8); }
  REQUIRE(::truncate(shm_path(seg.name()).c_str(), 0) == 0);
  // open waits up to 2 s for a segment being initialised, then reports it.
  const Run r = run_ctl({"info", seg.name()});
  INFO(describe({"info", seg.name()}, r));
  CHECK_FALSE(r.timed_out);
  CHECK((r.code == 1 || r.code == 4));
  CHECK_FALSE(r.err.empty());
  CHECK(r.seconds < 4.0);
  // Removed here: BlockManager::destroy (TempSegment's cleanup) would wait another 2 s on it.
  ::unlink(shm_path(seg.name()).c_str());
}

// BUG (reported): a segment whose payload object is missing (removed by hand, or a header whose
// bytes_per_block was damaged) is reported as "not found" (exit 3) by every command, and
// `destroy` - even with --force - refuses to remove it: the operator cannot clean it up with
// kvbm-ctl. BlockManager::destroy handles the same case.
TEST_CASE("a segment whose payload object is missing can still be destroyed", "[ctl]") {
  TempSegment seg("ctl-nopl");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "8", "--bytes-per-block", "64"); }
  REQUIRE(::unlink(shm_path(seg.name() + ".payload").c_str()) == 0);
  {
    const Run r = run_ctl({"info", seg.name()});
    INFO(describe({"info", seg.name()}, r));
    CHECK(r.code == 1);  // the segment exists: corrupted, not "not found"
  }
  {
    const Run r = run_ctl({"destroy", seg.name()});
    INFO(describe({"destroy", seg.name()}, r));
    CHECK(r.code == 0);
  }
  CHECK(::access(shm_path(seg.name()).c_str(), F_OK) != 0);
}

// A consistent segment (populated, then detached) whose slot table the test then damages.
struct DamagedSlots {
  TempSegment seg{"ctl-slots"};
  kvbm::shm::RegionEntry slots{};
  std::string path;

  DamagedSlots() {
    auto cfg = seg.config(32);
    cfg.eviction = kvbm::EvictionPolicy::kLru;
    {
      auto m = seg.create(cfg);
      auto pop = populate(*m, false);
      // Detach: everything held goes back (registered -> Inactive), the segment is consistent.
    }
    CTL_EXPECT(v, 0, "verify", seg.name());
    slots = region_of(seg.name(), kvbm::shm::kRegionSlots);
    REQUIRE(slots.bytes == 32 * sizeof(kvbm::shm::SlotMeta));
    path = shm_path(seg.name());
  }
  template <class T>
  void write_field(std::uint32_t id, std::size_t field, T value) {
    write_at(path, slots.offset + id * sizeof(kvbm::shm::SlotMeta) + field, &value, sizeof(T));
  }
};

TEST_CASE("damaged slots: verify lists problems, dump survives, repair fixes", "[ctl]") {
  DamagedSlots d;
  const auto& name = d.seg.name();
  // Slot 3 (Inactive): an invalid state value.
  d.write_field<std::uint8_t>(3, offsetof(kvbm::shm::SlotMeta, state), 0x7F);
  // Slot 25 (Reset): Mutable, owned by an entry nobody uses.
  d.write_field<std::uint8_t>(25, offsetof(kvbm::shm::SlotMeta, state),
                              static_cast<std::uint8_t>(kvbm::shm::SlotState::kMutable));
  d.write_field<std::uint32_t>(25, offsetof(kvbm::shm::SlotMeta, owner), 7);
  {
    CTL_EXPECT(v, 1, "verify", name);
    CHECK(contains(v.out, "slot 3"));
    CHECK(contains(v.out, "slot 25"));
    CHECK(contains(v.out, "problem"));
  }
  {
    const Run r = run_ctl({"dump", name, "--json"});
    INFO(describe({"dump", name, "--json"}, r));
    REQUIRE((r.code == 0 || r.code == 1));
    if (r.code == 0) {
      const json j = parse_json(r);
      std::map<std::uint32_t, std::string> states;
      for (const auto& s : j.at("slots")) {
        states[s.at("id").get<std::uint32_t>()] = s.at("state").get<std::string>();
      }
      CHECK(states[3] == "invalid");
      CHECK(states[25] == "mutable");
    }
  }
  {
    const Run r = run_ctl({"dump", name});
    INFO(describe({"dump", name}, r));
    CHECK((r.code == 0 || r.code == 1));
  }
  {
    CTL_EXPECT(r, 0, "repair", name, "--dry-run");
    CHECK(contains(r.out, "slot 3"));
    CTL_EXPECT(v, 1, "verify", name);  // the dry run changed nothing
  }
  { CTL_EXPECT(r, 0, "repair", name); }
  { CTL_EXPECT(v, 0, "verify", name); }
  auto m = d.seg.open();
  CHECK(m->verify().empty());
  CHECK(m->inspect_block(3).state == kvbm::SlotState::kReset);
  CHECK(m->inspect_block(25).state == kvbm::SlotState::kReset);
}

TEST_CASE("flipped bytes across the slot region: verify lists them, repair rebuilds", "[ctl]") {
  DamagedSlots d;
  const auto& name = d.seg.name();
  std::vector<std::uint32_t> inactive;
  {
    CTL_EXPECT(r, 0, "dump", name, "--json");
    const json j = parse_json(r);
    for (const auto& s : j.at("slots")) {
      CHECK(s.at("state") == "inactive");
      inactive.push_back(s.at("id").get<std::uint32_t>());
    }
  }
  REQUIRE(inactive.size() >= 4);
  std::mt19937 rng(7);
  auto flip = [&](std::uint32_t id, std::size_t field) {
    const std::uint64_t at = d.slots.offset + id * sizeof(kvbm::shm::SlotMeta) + field;
    unsigned char b = 0;
    const int fd = ::open(d.path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(::pread(fd, &b, 1, static_cast<off_t>(at)) == 1);
    ::close(fd);
    b ^= static_cast<unsigned char>(0x80 | (rng() & 0x7F));
    write_at(d.path, at, &b, 1);
  };
  // Two cached slots get another hash (the index no longer finds them), two an invalid state.
  flip(inactive[0], offsetof(kvbm::shm::SlotMeta, hash_lo) + 3);
  flip(inactive[1], offsetof(kvbm::shm::SlotMeta, hash_hi) + 1);
  flip(inactive[2], offsetof(kvbm::shm::SlotMeta, state));
  flip(inactive[3], offsetof(kvbm::shm::SlotMeta, state));
  {
    CTL_EXPECT(v, 1, "verify", name);
    for (int i = 0; i < 4; ++i) {
      INFO("slot " << inactive[i]);
      CHECK(contains(v.out, fmt::format("slot {}", inactive[i])));
    }
  }
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"dump", name}, {"dump", name, "--json"}, {"info", name, "--json"}}) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    CHECK((r.code == 0 || r.code == 1));
  }
  { CTL_EXPECT(r, 0, "repair", name); }
  { CTL_EXPECT(v, 0, "verify", name); }
  CTL_EXPECT(i, 0, "info", name, "--json");
  const json j = parse_json(i);
  CHECK(j.at("counts").at("inactive") == inactive.size() - 2);
  CHECK(j.at("counts").at("reset") == 32 - (inactive.size() - 2));
}

// BUG (reported): repair releases only holder bits of DEAD entries it reaps; bits of entries not
// in use at all (verify: "held by process entry N, which is not in use") stay, so repair exits 1
// with "problem(s) remain after repair" instead of "verify passes afterwards".
TEST_CASE("damaged slots: verify and verify --exclusive report the same problems", "[ctl]") {
  DamagedSlots d;
  const auto& name = d.seg.name();
  d.write_field<std::uint8_t>(3, offsetof(kvbm::shm::SlotMeta, state), 0x7F);
  d.write_field<std::uint64_t>(20, offsetof(kvbm::shm::SlotMeta, holders), 0xF0);
  CTL_EXPECT(paced, 1, "verify", name, "--json");
  CTL_EXPECT(exclusive, 1, "verify", name, "--exclusive", "--json");
  const json p = parse_json(paced);
  const json x = parse_json(exclusive);
  CHECK(p.at("exclusive") == false);
  CHECK(x.at("exclusive") == true);
  CHECK(p.at("complete") == true);  // nothing ran meanwhile
  CHECK(x.at("complete") == true);
  REQUIRE(x.at("problems").size() >= 2);
  CHECK(p.at("problems") == x.at("problems"));
  CTL_EXPECT(text, 1, "verify", name, "--exclusive");
  CHECK(contains(text.out, "slot 3"));
  CHECK(contains(text.out, "slot 20"));
  CTL_EXPECT(help, 0, "verify", "--help");
  CHECK(contains(help.out, "--exclusive"));
}

TEST_CASE("damaged slots: repair clears holder bits of entries not in use", "[ctl]") {
  DamagedSlots d;
  const auto& name = d.seg.name();
  d.write_field<std::uint64_t>(20, offsetof(kvbm::shm::SlotMeta, holders), 0xF0);  // a Reset slot
  {
    CTL_EXPECT(v, 1, "verify", name);
    CHECK(contains(v.out, "slot 20"));
  }
  { CTL_EXPECT(r, 0, "repair", name); }
  { CTL_EXPECT(v, 0, "verify", name); }
}

// BUG (reported): repair reaps dead processes through the derived structures (inactive list,
// hash index) BEFORE rebuilding them, so a damaged derived structure - which verify reports and
// which repair promises to rebuild - crashes it (SIGSEGV in list_push_back).
TEST_CASE("repair survives a damaged inactive list while reaping a dead worker", "[ctl]") {
  TempSegment seg("ctl-dlist");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "16", "--eviction", "lru"); }
  Signal ready;
  Child worker([&] {
    std::shared_ptr<BlockManager> m;
    kvbm::ImmutableBlock imm;
    return park_after(ready, [&] {
      m = BlockManager::open(seg.name()).value();
      imm = m->register_block(std::move(m->allocate_blocks(1).value()[0]).stage(H(1), 16).value());
      return true;
    });
  });
  REQUIRE(ready.wait() == 1);
  worker.kill();
  // The inactive list is empty; give it a tail far past the slot table.
  const auto control = region_of(seg.name(), kvbm::shm::kRegionControl);
  const std::uint32_t tail = 0x00FFFFFF;
  write_at(shm_path(seg.name()),
           control.offset + offsetof(kvbm::shm::ControlBlock, inactive_list) +
               offsetof(kvbm::shm::SlotList, tail),
           &tail, sizeof(tail));
  {
    CTL_EXPECT(v, 1, "verify", seg.name());
    CHECK(contains(v.out, "inactive list"));
  }
  {
    const Run r = run_ctl({"repair", seg.name()});
    INFO(describe({"repair", seg.name()}, r));
    REQUIRE_FALSE(r.timed_out);
    CHECK(r.code < 128);
    CHECK(r.code == 0);
  }
  CTL_EXPECT(v, 0, "verify", seg.name());
}

TEST_CASE("corruption found by the library hook: verify fails, repair fixes", "[ctl]") {
  TempSegment seg("ctl-hook");
  auto m = seg.create(16);
  auto pop = populate(*m, true);
  // Slot of an Inactive block gets an invalid state value (no intent: unrecoverable damage).
  kvbm::testing::Peer::corrupt_slot_state(*m, pop.inactive_ids[0], 0x42);
  {
    CTL_EXPECT(v, 1, "verify", seg.name());
    CHECK(contains(v.out, fmt::format("slot {}", pop.inactive_ids[0])));
  }
  { CTL_EXPECT(r, 0, "repair", seg.name(), "--force"); }
  { CTL_EXPECT(v, 0, "verify", seg.name()); }
  CHECK(m->verify().empty());
  CHECK(m->inspect_block(pop.inactive_ids[0]).state == kvbm::SlotState::kReset);
  // The test process's own blocks survived the forced repair.
  CHECK(m->counts().mutable_ == pop.mut.size());
  CHECK(m->counts().staged == pop.staged.size());
}

// --- 10 ------------------------------------------------------------------------------------------

namespace {

// `image` with 1-16 random bytes (from `seed`) XORed with a non-zero mask, at offsets >= `lo`.
// `what` lists the flips ("offset^mask") for the failure message.
std::vector<unsigned char> corrupt(const std::vector<unsigned char>& image,
                                   std::uint64_t seed,
                                   std::size_t lo,
                                   std::string& what) {
  std::mt19937_64 rng(seed);
  auto copy = image;
  const int flips = 1 + static_cast<int>(rng() % 16);
  what.clear();
  for (int f = 0; f < flips; ++f) {
    const std::size_t at = lo + static_cast<std::size_t>(rng() % (copy.size() - lo));
    const auto mask = static_cast<unsigned char>(1 + rng() % 255);
    copy[at] ^= mask;
    what += fmt::format("{}{}^{:02x}", what.empty() ? "" : " ", at, mask);
  }
  return copy;
}

// A corrupted copy in /dev/shm, removed at scope exit unless KVBM_CTL_FUZZ_KEEP is set (to
// reproduce a failure by hand: the name and the flips are in the failure message).
struct ShmFile {
  std::string name;
  ~ShmFile() {
    if (std::getenv("KVBM_CTL_FUZZ_KEEP") == nullptr) {
      ::unlink(shm_path(name).c_str());
    }
  }
};

}  // namespace

TEST_CASE("seeded random corruption never crashes or hangs kvbm-ctl", "[ctl][fuzz]") {
  TempSegment seg("ctl-fuzz-src");
  auto cfg = seg.config(24);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  std::vector<unsigned char> image;
  {
    auto m = seg.create(cfg);
    auto pop = populate(*m, true);
    // Image taken while we hold blocks: our process entry is in use (dead in the copies, which
    // have no liveness lock), with Mutable, Staged, Primary, Duplicate and Inactive slots.
    image = read_file(shm_path(seg.name()));
  }
  REQUIRE(image.size() > 4096);
  const auto start = std::chrono::steady_clock::now();
  const int kSeeds = 500;
  int ran = 0, clean_verifies = 0;
  std::map<int, int> verify_codes, dump_codes;
  std::vector<std::string> slow;  // runs that waited (a lock or an initialisation) > 1 s
  for (int seed = 1; seed <= kSeeds; ++seed) {
    // Keep the whole run under a minute whatever the machine.
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(45)) {
      WARN("fuzz stopped early after " << ran << " seeds (time budget)");
      break;
    }
    // Even seeds spare the first 64 bytes (magic, version, fingerprint): deeper damage.
    std::string what;
    const auto copy =
        corrupt(image, static_cast<std::uint64_t>(seed), seed % 2 == 0 ? 64 : 0, what);
    ShmFile file{fmt::format("kvbm-test-ctl-fuzz-{}-{}", ::getpid(), seed)};
    write_new_file(file.name, copy);
    INFO("seed " << seed << " flips " << what);
    for (const char* cmd : {"verify", "dump", "info"}) {
      std::vector<std::string> args = {cmd, file.name};
      if (std::string(cmd) != "verify") {
        args.push_back("--json");
      }
      const Run r = run_ctl(args, 10);
      INFO(describe(args, r));
      REQUIRE_FALSE(r.timed_out);
      REQUIRE(r.code < 128);
      REQUIRE(r.code <= 4);
      if (r.seconds > 1.0) {
        slow.push_back(fmt::format("seed {} {} {:.1f} s exit {} ({}): {}", seed, cmd, r.seconds,
                                   r.code, what, (r.out + r.err).substr(0, 200)));
      }
      if (std::string(cmd) == "info") {
        if (r.code == 0) {
          json j;
          REQUIRE_NOTHROW(j = json::parse(r.out));
        }
      } else if (std::string(cmd) == "dump") {
        ++dump_codes[r.code];
        if (r.code == 0) {
          json j;
          REQUIRE_NOTHROW(j = json::parse(r.out));
          CHECK(j.contains("slots"));
        }
      } else {
        ++verify_codes[r.code];
        clean_verifies += r.code == 0 ? 1 : 0;
      }
    }
    ++ran;
  }
  CHECK(ran >= 50);
  const auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string summary = fmt::format("fuzz: {} seeds in {:.1f} s; verify exits", ran, secs);
  for (auto [c, n] : verify_codes) {
    summary += fmt::format(" {}:{}", c, n);
  }
  summary += "; dump exits";
  for (auto [c, n] : dump_codes) {
    summary += fmt::format(" {}:{}", c, n);
  }
  summary += fmt::format("; {} runs took > 1 s", slow.size());
  for (const auto& line : slow) {
    summary += "\n  " + line;
  }
  WARN(summary);
  // The source image itself has our (now dead) entry: verify must not call a copy clean unless
  // the flips happened to land somewhere harmless; most copies are reported.
  CHECK(clean_verifies < ran);
}

// Beyond the brief's verify/dump: repair is the command that WRITES through the damaged
// structures. Failures are collected so one run shows how many seeds break it.
TEST_CASE("seeded random corruption: repair never crashes or hangs", "[ctl][fuzz]") {
  TempSegment seg("ctl-fuzzr-src");
  auto cfg = seg.config(24);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  std::vector<unsigned char> image;
  {
    auto m = seg.create(cfg);
    auto pop = populate(*m, true);
    image = read_file(shm_path(seg.name()));
  }
  const auto start = std::chrono::steady_clock::now();
  int ran = 0;
  std::vector<std::string> failures;
  std::map<int, int> codes;
  for (int seed = 1001; seed <= 1200; ++seed) {
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(30)) {
      WARN("repair fuzz stopped early after " << ran << " seeds (time budget)");
      break;
    }
    std::string what;
    const auto copy = corrupt(image, static_cast<std::uint64_t>(seed), 64, what);
    ShmFile file{fmt::format("kvbm-test-ctl-fuzzr-{}-{}", ::getpid(), seed)};
    write_new_file(file.name, copy);
    if (std::getenv("KVBM_CTL_FUZZ_KEEP") != nullptr) {  // repair changes it: keep the input too
      write_new_file(file.name + ".input", copy);
    }
    const Run r = run_ctl({"repair", file.name, "--force"}, 10);
    ++codes[r.timed_out ? -1 : r.code];
    if (r.timed_out || r.code >= 128) {
      failures.push_back(fmt::format("seed {}: repair {} (flips {})", seed,
                                     r.timed_out ? "HUNG" : fmt::format("exit {}", r.code), what));
    } else if (r.code == 0) {
      // "verify passes afterwards"
      const Run v = run_ctl({"verify", file.name}, 10);
      if (v.timed_out || v.code != 0) {
        failures.push_back(fmt::format("seed {}: repair exit 0 but verify exit {} (flips {}): {}",
                                       seed, v.code, what, v.out.substr(0, 300)));
      }
    }
    ++ran;
  }
  std::string summary = fmt::format("repair fuzz: {} seeds; repair exits", ran);
  for (auto [c, n] : codes) {
    summary += fmt::format(" {}:{}", c, n);
  }
  WARN(summary);
  CHECK(ran >= 30);
  INFO(fmt::format("{}", fmt::join(failures, "\n")));
  CHECK(failures.empty());
}

// --- untrusted names (DESIGN.md section 12) ------------------------------------------------------

namespace {

bool exists_no_follow(const std::string& name) {
  struct stat st {};
  return ::lstat(shm_path(name).c_str(), &st) == 0;
}

void make_unix_socket(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof(addr.sun_path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  ::close(fd);
}

}  // namespace

// BUG (reported): a FIFO named like a segment made list, info and destroy hang forever.
TEST_CASE("a FIFO, socket, directory or symlink named like a segment: exit 4, never a hang",
          "[ctl]") {
  TempSegment target("ctl-lnk");
  { CTL_EXPECT(r, 0, "create", target.name(), "--blocks", "8"); }
  const std::string name = fmt::format("ctl-obj-{}", ::getpid());
  const std::string path = shm_path(name);
  SECTION("FIFO") {
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  }
  SECTION("socket") {
    make_unix_socket(path);
  }
  SECTION("directory") {
    REQUIRE(::mkdir(path.c_str(), 0700) == 0);
  }
  SECTION("symlink to a real segment") {
    REQUIRE(::symlink(shm_path(target.name()).c_str(), path.c_str()) == 0);
  }
  for (const auto& args : std::vector<std::vector<std::string>>{{"info", name},
                                                                {"info", name, "--json"},
                                                                {"verify", name},
                                                                {"dump", name},
                                                                {"processes", name},
                                                                {"metrics", name},
                                                                {"repair", name},
                                                                {"destroy", name},
                                                                {"destroy", name, "--force"}}) {
    const Run r = run_ctl(args, 5);
    INFO(describe(args, r));
    CHECK_FALSE(r.timed_out);
    CHECK(r.code == 4);
    CHECK(contains(r.err, "not a kvbm segment"));
  }
  CHECK(exists_no_follow(name));
  {
    const Run r = run_ctl({"list", "--json"}, 5);
    INFO(describe({"list", "--json"}, r));
    REQUIRE_FALSE(r.timed_out);
    REQUIRE(r.code == 0);
    for (const auto& e : parse_json(r)) {
      CHECK(e.at("name") != name);
    }
  }
  if (::rmdir(path.c_str()) != 0) {
    ::unlink(path.c_str());
  }
  // The symlink's target is untouched.
  CTL_EXPECT(v, 0, "verify", target.name());
}

// BUG (reported): destroy without --force removed empty files and garbage.
TEST_CASE("destroy without --force refuses an object that is not a kvbm segment", "[ctl]") {
  const std::string name = fmt::format("ctl-notours-{}", ::getpid());
  std::vector<unsigned char> bytes;
  SECTION("empty file") {}
  SECTION("garbage") {
    bytes.assign(4096, 0);
    std::mt19937_64 rng(7);
    for (auto& b : bytes) {
      b = static_cast<unsigned char>(rng() | 1);
    }
  }
  SECTION("zeros") {
    bytes.assign(4096, 0);
  }
  write_new_file(name, bytes);
  {
    const Run r = run_ctl({"destroy", name}, 5);
    INFO(describe({"destroy", name}, r));
    CHECK_FALSE(r.timed_out);
    CHECK(r.code == 4);
    CHECK(contains(r.err, "not a kvbm segment"));
    CHECK(contains(r.err, "--force"));
  }
  CHECK(exists_no_follow(name));
  { CTL_EXPECT(r, 0, "destroy", name, "--force"); }
  CHECK_FALSE(exists_no_follow(name));
}

// BUG (reported): destroy X.payload removed a live segment's payload, and a segment could be
// created as X.payload (then hidden by list).
TEST_CASE("payload names: never destroyed by name, never created", "[ctl]") {
  TempSegment seg("ctl-plname");
  auto c = seg.config(8);
  c.bytes_per_block = 64;
  auto m = seg.create(c);
  const std::string pname = seg.name() + ".payload";
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"destroy", pname}, {"destroy", pname, "--force"}, {"info", pname}}) {
    const Run r = run_ctl(args, 5);
    INFO(describe(args, r));
    CHECK(r.code == 2);
    CHECK(contains(r.err, ".payload"));
  }
  CHECK(exists_no_follow(pname));
  auto blocks = m->allocate_blocks(1);
  REQUIRE(blocks);
  (*blocks)[0].data()[0] = std::byte{42};
  {
    const std::string other = fmt::format("ctl-x-{}.payload", ::getpid());
    const Run r = run_ctl({"create", other, "--blocks", "8"}, 5);
    INFO(describe({"create", other}, r));
    CHECK(r.code == 2);
    CHECK_FALSE(exists_no_follow(other));
  }
}

TEST_CASE("create --mode accepts 0600, 0660, 0666 only", "[ctl]") {
  TempSegment seg("ctl-mode");
  for (const char* mode : {"0644", "0640", "0700", "0604"}) {
    const Run r = run_ctl({"create", seg.name(), "--blocks", "8", "--mode", mode}, 5);
    INFO(describe({"create", seg.name(), "--mode", mode}, r));
    CHECK(r.code == 2);
    CHECK(contains(r.err, "permissions"));
    CHECK_FALSE(exists_no_follow(seg.name()));
  }
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "8", "--mode", "0666"); }
}

// BUG (reported): a corrupted magic made destroy --force leak the .payload.
TEST_CASE("destroy --force of a segment with damaged magic removes its payload", "[ctl]") {
  TempSegment seg("ctl-badmagic");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "8", "--bytes-per-block", "64"); }
  const std::uint64_t garbage = 0x1122334455667788ull;
  write_at(shm_path(seg.name()), 0, &garbage, sizeof(garbage));
  {
    const Run r = run_ctl({"destroy", seg.name()}, 5);
    INFO(describe({"destroy", seg.name()}, r));
    CHECK(r.code == 4);  // no longer recognisably ours: only with --force
  }
  CHECK(exists_no_follow(seg.name() + ".payload"));
  { CTL_EXPECT(r, 0, "destroy", seg.name(), "--force"); }
  CHECK_FALSE(exists_no_follow(seg.name()));
  CHECK_FALSE(exists_no_follow(seg.name() + ".payload"));
}

// BUG (reported): a creator killed mid-create left a segment only destroy --force removed.
TEST_CASE("a creator killed mid-create: info says corrupted, destroy removes it", "[ctl]") {
  TempSegment seg("ctl-midcreate");
  auto c = seg.config(64);
  c.bytes_per_block = 64;
  Child creator([c] {
    auto s = kvbm::detail::Segment::create(c, [](kvbm::detail::Segment& sg) {
      kvbm::detail::BlockStore::init_regions(sg);
      ::raise(SIGKILL);
    });
    return s ? 1 : 2;
  });
  REQUIRE(creator.wait() == 128 + SIGKILL);
  {
    const Run r = run_ctl({"info", seg.name()}, 5);
    INFO(describe({"info", seg.name()}, r));
    CHECK(r.code == 1);
    CHECK(contains(r.err, "corrupted"));
    CHECK(r.seconds < 1.5);
  }
  { CTL_EXPECT(r, 0, "destroy", seg.name()); }
  CHECK_FALSE(exists_no_follow(seg.name()));
  CHECK_FALSE(exists_no_follow(seg.name() + ".payload"));
}

// Repair beside live workers does only what is safe there; anything more needs --force and the
// refusal says why (defect 7).
TEST_CASE("repair beside a live worker refuses to fix damaged slots without --force", "[ctl]") {
  TempSegment seg("ctl-repairlive");
  auto cfg = seg.config(32);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  auto m = seg.create(cfg);
  const auto slots = region_of(seg.name(), kvbm::shm::kRegionSlots);
  const std::uint8_t bad_state = 0xEE;
  write_at(shm_path(seg.name()),
           slots.offset + 5 * sizeof(kvbm::shm::SlotMeta) + offsetof(kvbm::shm::SlotMeta, state),
           &bad_state, sizeof(bad_state));
  { CTL_EXPECT(v, 1, "verify", seg.name()); }
  std::string dump_before;
  {
    CTL_EXPECT(d, 0, "dump", seg.name(), "--json");
    dump_before = d.out;
  }
  {
    CTL_EXPECT(r, 1, "repair", seg.name());
    CHECK(contains(r.err, "live"));
    CHECK(contains(r.err, "--force"));
    CHECK(contains(r.err, "kvbm-ctl reap"));
  }
  {
    CTL_EXPECT(d, 0, "dump", seg.name(), "--json");
    CHECK(d.out == dump_before);
  }
  { CTL_EXPECT(r, 0, "repair", seg.name(), "--force"); }
  { CTL_EXPECT(v, 0, "verify", seg.name()); }
  CHECK(m->verify().empty());
}

TEST_CASE("reap: a missing segment exits 3, a healthy one has nothing to reap", "[ctl]") {
  TempSegment seg("ctl-reap");
  { CTL_EXPECT(r, 3, "reap", seg.name()); }
  auto m = seg.create(8);
  auto held = m->allocate_blocks(2);
  REQUIRE(held);
  CTL_EXPECT(r, 0, "reap", seg.name());
  CHECK(contains(r.out, "no dead process"));
  CHECK(m->counts().mutable_ == 2);
}

TEST_CASE("list --all shows other objects as not a kvbm segment and list shows damaged ones",
          "[ctl]") {
  TempSegment seg("ctl-listall");
  { CTL_EXPECT(r, 0, "create", seg.name(), "--blocks", "8"); }
  const std::string fifo = fmt::format("ctl-listfifo-{}", ::getpid());
  const std::string junk = fmt::format("ctl-listjunk-{}", ::getpid());
  REQUIRE(::mkfifo(shm_path(fifo).c_str(), 0600) == 0);
  write_new_file(junk, std::vector<unsigned char>(64, 0x5A));
  // A damaged segment is listed with its verdict, never hidden.
  const std::uint16_t major = kvbm::shm::kLayoutMajor + 3;
  TempSegment other("ctl-listother");
  { CTL_EXPECT(r, 0, "create", other.name(), "--blocks", "8"); }
  write_at(shm_path(other.name()), offsetof(kvbm::shm::SegmentHeader, layout_major), &major,
           sizeof(major));
  auto status_of = [](const json& arr, const std::string& n) -> std::string {
    for (const auto& e : arr) {
      if (e.at("name") == n) {
        return e.at("status").get<std::string>();
      }
    }
    return "(absent)";
  };
  {
    const Run r = run_ctl({"list", "--json"}, 5);
    INFO(describe({"list", "--json"}, r));
    REQUIRE(r.code == 0);
    const json arr = parse_json(r);
    CHECK(status_of(arr, seg.name()) == "ok");
    CHECK(status_of(arr, other.name()) == "layout_mismatch");
    CHECK(status_of(arr, fifo) == "(absent)");
    CHECK(status_of(arr, junk) == "(absent)");
  }
  {
    const Run r = run_ctl({"list", "--all", "--json"}, 5);
    INFO(describe({"list", "--all", "--json"}, r));
    REQUIRE(r.code == 0);
    const json arr = parse_json(r);
    CHECK(status_of(arr, fifo) == "not_a_segment");
    CHECK(status_of(arr, junk) == "not_a_segment");
    CHECK(status_of(arr, seg.name()) == "ok");
  }
  {
    const Run r = run_ctl({"list", "--all"}, 5);
    INFO(describe({"list", "--all"}, r));
    REQUIRE(r.code == 0);
    CHECK(contains(r.out, "not a kvbm segment (FIFO)"));
  }
  ::unlink(shm_path(fifo).c_str());
  ::unlink(shm_path(junk).c_str());
}

// --- events (DESIGN.md section 10) ---------------------------------------------------------------

namespace {

// A segment that keeps token ids, with one chain of `n` blocks registered (dropped: Inactive).
std::vector<SequenceHash> store_chain(BlockManager& m, std::uint32_t seed, std::size_t n) {
  const std::uint32_t bs = m.block_size();
  std::vector<std::uint32_t> toks(n * bs);
  for (std::size_t i = 0; i < toks.size(); ++i) {
    toks[i] = seed * 100000 + static_cast<std::uint32_t>(i);
  }
  const auto hs = kvbm::hash_token_blocks(toks, bs);
  auto blocks = m.allocate_blocks(n).value();
  std::vector<kvbm::CompleteBlock> staged;
  for (std::size_t i = 0; i < n; ++i) {
    staged.push_back(std::move(blocks[i])
                         .stage(hs[i], bs, std::span<const std::uint32_t>(toks).subspan(i * bs, bs))
                         .value());
  }
  (void)m.register_blocks(std::move(staged));
  return hs;
}

std::vector<json> json_lines(const std::string& out) {
  std::vector<json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) {
      lines.push_back(json::parse(line));
    }
  }
  return lines;
}

std::size_t count_lines(const std::string& out) {
  return static_cast<std::size_t>(std::count(out.begin(), out.end(), '\n'));
}

}  // namespace

TEST_CASE("events: a missing segment, a bad endpoint, a port in use fail at once", "[ctl]") {
  { CTL_EXPECT(r, 3, "events", "kvbm-no-such-segment-ev"); }
  TempSegment seg("ctl-ev");
  auto cfg = seg.config(16);
  cfg.store_token_ids = true;
  auto m = seg.create(cfg);
  for (const char* bad : {"nonsense", "tcp://*:99999", "tcp://*:http", "udp://*:5000", "ipc://"}) {
    CTL_EXPECT(r, 2, "events", seg.name(), "--endpoint", bad);
    CHECK(contains(r.err, "endpoint"));
  }
  { CTL_EXPECT(r, 2, "events", seg.name(), "--encoding", "yaml"); }
  { CTL_EXPECT(r, 2, "events", seg.name(), "--endpoint", "tcp://*:65535", "--dp-rank", "3"); }
  // A port some other socket listens on.
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(s >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = 0;
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::listen(s, 1) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const std::string ep = fmt::format("tcp://*:{}", ntohs(addr.sin_port));
  {
    CTL_EXPECT(r, 1, "events", seg.name(), "--endpoint", ep);
    CHECK(contains(r.err, ep));
    CHECK(r.seconds < 5);
  }
  ::close(s);
}

TEST_CASE("events: segments without token ids or without a ring are refused", "[ctl]") {
  TempSegment seg("ctl-ev");
  auto m = seg.create(16);  // store_token_ids false
  {
    CTL_EXPECT(r, 1, "events", seg.name(), "--json");
    CHECK(contains(r.err, "--no-tokens"));
  }
  TempSegment none("ctl-ev");
  auto cfg = none.config(16);
  cfg.event_capacity = 0;
  auto m2 = none.create(cfg);
  {
    CTL_EXPECT(r, 1, "events", none.name(), "--json", "--no-tokens");
    CHECK(contains(r.err, "event_capacity"));
  }
}

TEST_CASE("events --json prints the snapshot, then live events, and stops on SIGTERM", "[ctl]") {
  TempSegment seg("ctl-ev");
  auto cfg = seg.config(8);
  cfg.eviction = kvbm::EvictionPolicy::kLru;
  cfg.block_size = 4;
  cfg.store_token_ids = true;
  auto m = seg.create(cfg);
  const auto first = store_chain(*m, 1, 2);
  std::vector<SequenceHash> second;
  // The snapshot is 1 line per chain run + AllBlocksCleared; then one chain registered in one
  // call is one BlockStored line; then the pool overflows: a BlockRemoved line.
  int phase = 0;
  const std::vector<std::string> args{"events", seg.name(), "--json", "--batch-ms", "5"};
  const Run r = run_ctl(args, 20, [&](const Run& now) {
    const std::size_t n = count_lines(now.out);
    if (phase == 0 && n >= 2) {
      phase = 1;
      second = store_chain(*m, 2, 3);
    } else if (phase == 1 && n >= 3) {
      phase = 2;
      store_chain(*m, 3, 6);  // 8 blocks: evicts three
    } else if (phase == 2 && contains(now.out, "BlockRemoved")) {
      return true;
    }
    return false;
  });
  INFO(describe(args, r));
  REQUIRE_FALSE(r.timed_out);
  CHECK(r.code == 0);  // SIGTERM: clean stop
  const auto lines = json_lines(r.out);
  REQUIRE(lines.size() >= 4);
  CHECK(lines[0] == json{{"type", "AllBlocksCleared"}, {"seq", 0}});
  const json& snap = lines[1];
  // `type` is the first key of every event on the wire.
  for (std::istringstream in(r.out); !in.eof();) {
    std::string line;
    std::getline(in, line);
    CHECK((line.empty() || line.rfind("{\"type\":", 0) == 0));
  }
  CHECK(snap.at("type") == "BlockStored");
  CHECK(snap.at("seq") == 0);
  CHECK(snap.at("block_size") == 4);
  CHECK(snap.at("medium") == "CPU");
  CHECK(snap.at("lora_id").is_null());
  CHECK(snap.at("lora_name").is_null());
  CHECK(snap.at("parent_block_hash").is_null());
  CHECK(snap.at("block_hashes") == json{first[0].current_fragment(), first[1].current_fragment()});
  CHECK(snap.at("token_ids") ==
        json{100000, 100001, 100002, 100003, 100004, 100005, 100006, 100007});
  const json& live = lines[2];
  CHECK(live.at("type") == "BlockStored");
  CHECK(live.at("seq") == 1);
  CHECK(live.at("block_hashes").size() == 3);
  CHECK(live.at("block_hashes")[0] == second[0].current_fragment());
  CHECK(live.at("token_ids").size() == 12);
  bool removed = false;
  for (const json& l : lines) {
    if (l.at("type") == "BlockRemoved") {
      removed = true;
      CHECK(l.size() == 4);  // type, block_hashes, medium, seq
      CHECK(l.at("medium") == "CPU");
    }
  }
  CHECK(removed);
}

TEST_CASE("events --no-tokens publishes location-only events", "[ctl]") {
  TempSegment seg("ctl-ev");
  auto m = seg.create(8);
  auto b = std::move(m->allocate_blocks(1).value()[0]);
  const auto h = SequenceHash::make(42, std::nullopt, 0);
  auto held = m->register_block(std::move(b).stage(h, 16).value());
  const std::vector<std::string> args{"events",      seg.name(), "--json",
                                      "--no-tokens", "--medium", "GPU"};
  const Run r = run_ctl(args, 20, [](const Run& now) { return count_lines(now.out) >= 2; });
  INFO(describe(args, r));
  REQUIRE_FALSE(r.timed_out);
  CHECK(r.code == 0);
  const auto lines = json_lines(r.out);
  REQUIRE(lines.size() >= 2);
  CHECK(lines[1].at("block_hashes") == json{h.current_fragment()});
  CHECK(lines[1].at("token_ids") == json::array());
  CHECK(lines[1].at("medium") == "GPU");
}

// --- --json on every printing command, verify --json, dump filters -------------------------

TEST_CASE("json: every printing command takes --json and prints one JSON document", "[ctl][json]") {
  TempSegment seg("ctl-json");
  const std::string name = seg.name();
  {
    CTL_EXPECT(r, 0, "create", name, "--blocks", "64", "--json");
    const json j = parse_json(r);
    CHECK(j.at("created") == name);
    CHECK(j.at("block_count") == 64);
    CHECK(j.at("block_size") == 16);
    CHECK(j.at("segment_bytes").get<std::uint64_t>() > 0);
  }
  auto m = BlockManager::open(name).value();
  auto pop = populate(*m, true);
  // Each read-only printing command, with --json: stdout is exactly one JSON value.
  const std::vector<std::vector<std::string>> commands = {
      {"info", name, "--json"},    {"processes", name, "--json"},
      {"dump", name, "--json"},    {"verify", name, "--json"},
      {"metrics", name, "--json"}, {"metrics", name, "--format", "json"},
      {"list", "--json"},          {"top", name, "--once", "--json"},
      {"reap", name, "--json"},    {"repair", name, "--dry-run", "--json"}};
  for (const auto& args : commands) {
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    REQUIRE(r.code == 0);
    json j;
    REQUIRE_NOTHROW(j = json::parse(r.out));
    CHECK((j.is_object() || j.is_array()));
  }
  {
    // events runs until stopped and prints one JSON document per line (one per wire event): the
    // snapshot of the populated segment comes first; SIGTERM once it is there.
    const std::vector<std::string> args{"events", name, "--json", "--no-tokens"};
    const Run r = run_ctl(args, 20, [](const Run& now) {
      return std::count(now.out.begin(), now.out.end(), '\n') >= 2;
    });
    INFO(describe(args, r));
    REQUIRE_FALSE(r.timed_out);
    CHECK(r.code == 0);
    std::istringstream in(r.out);
    std::size_t documents = 0;
    for (std::string line; std::getline(in, line);) {
      json j;
      REQUIRE_NOTHROW(j = json::parse(line));
      CHECK(j.is_object());
      CHECK(j.contains("type"));
      ++documents;
    }
    CHECK(documents >= 2);
  }
  // The two spellings of JSON metrics agree.
  CHECK(json::parse(run_ctl({"metrics", name, "--json"}).out) ==
        json::parse(run_ctl({"metrics", name, "--format", "json"}).out));
  {
    CTL_EXPECT(r, 0, "reap", name, "--json");
    const json j = parse_json(r);
    CHECK(j.at("name") == name);
    CHECK(j.at("reaped").empty());  // the only attached process is alive
  }
  {
    CTL_EXPECT(r, 0, "repair", name, "--dry-run", "--json");
    const json j = parse_json(r);
    CHECK(j.at("dry_run") == true);
    CHECK(j.at("ok") == true);
    CHECK(j.at("remaining").empty());
  }
  pop = Population{};
  m.reset();
  {
    CTL_EXPECT(r, 0, "destroy", name, "--json");
    CHECK(parse_json(r).at("destroyed") == name);
  }
  // Errors keep their exit codes and go to stderr; stdout stays empty.
  {
    CTL_EXPECT(r, 3, "verify", name, "--json");
    CHECK(r.out.empty());
  }
}

TEST_CASE("verify --json: ok and the list of problems", "[ctl][json]") {
  TempSegment seg("ctl-verify-json");
  auto m = seg.create(32);
  auto own = m->register_block(std::move(m->allocate_blocks(1).value()[0]).stage(H(0), 16).value());
  {
    CTL_EXPECT(r, 0, "verify", seg.name(), "--json");
    const json j = parse_json(r);
    CHECK(j.at("ok") == true);
    CHECK(j.at("problems") == json::array());
    // A quiet segment: the paced walk compared everything.
    CHECK(j.at("complete") == true);
    CHECK(j.at("notes") == json::array());
    CHECK(j.at("exclusive") == false);
  }
  Signal ready;
  Child worker([&] { return worker_holding_blocks(seg.name(), ready); });
  REQUIRE(ready.wait() == 1);
  const pid_t dead_pid = worker.pid();
  worker.kill();
  {
    CTL_EXPECT(r, 1, "verify", seg.name(), "--json");
    const json j = parse_json(r);
    CHECK(j.at("ok") == false);
    REQUIRE(j.at("problems").size() == 1);
    CHECK(contains(j.at("problems")[0].get<std::string>(), std::to_string(dead_pid)));
  }
  {
    CTL_EXPECT(r, 0, "reap", seg.name(), "--json");
    CHECK(parse_json(r).at("reaped").size() == 1);
  }
  {
    CTL_EXPECT(r, 0, "verify", seg.name(), "--json");
    CHECK(parse_json(r).at("ok") == true);
  }
}

TEST_CASE("dump filters: --state, --process, --limit", "[ctl][json]") {
  TempSegment seg("ctl-dump-filter");
  auto m = seg.create(64);
  auto pop = populate(*m, true);
  const auto counts = m->counts();
  auto slots_of = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"dump", seg.name()});
    args.push_back("--json");
    const Run r = run_ctl(args);
    INFO(describe(args, r));
    REQUIRE(r.code == 0);
    return json::parse(r.out);
  };
  {
    const json j = slots_of({"--state", "primary"});
    CHECK(j.at("slots").size() == counts.primary);
    for (const auto& s : j.at("slots")) {
      CHECK(s.at("state") == "primary");
    }
    CHECK(j.at("omitted") == 0);
  }
  {
    const json j = slots_of({"--state", "mutable,staged"});
    CHECK(j.at("slots").size() == counts.mutable_ + counts.staged);
    for (const auto& s : j.at("slots")) {
      CHECK((s.at("state") == "mutable" || s.at("state") == "staged"));
    }
  }
  {
    // Slots this process owns or holds: everything but the inactive ones.
    const std::uint32_t me = m->process_index();
    const json j = slots_of({"--process", std::to_string(me)});
    CHECK(j.at("slots").size() ==
          counts.mutable_ + counts.staged + counts.primary + counts.duplicate);
    for (const auto& s : j.at("slots")) {
      const bool owns = s.at("owner") == me;
      const bool holds = ((s.at("holders").get<std::uint64_t>() >> me) & 1) != 0;
      CHECK((owns || holds));
    }
    // An entry that holds nothing.
    CHECK(slots_of({"--process", std::to_string(me + 1)}).at("slots").empty());
  }
  {
    const std::size_t total = 64 - counts.reset;
    const json j = slots_of({"--limit", "3"});
    CHECK(j.at("slots").size() == 3);
    CHECK(j.at("omitted") == total - 3);
    const Run r = run_ctl({"dump", seg.name(), "--limit", "3"});
    CHECK(contains(r.out, fmt::format("{} more slot(s) not shown", total - 3)));
  }
  { CTL_EXPECT(r, 2, "dump", seg.name(), "--state", "bogus"); }
  { CTL_EXPECT(r, 2, "dump", seg.name(), "--process", "64"); }
}
