// SPDX-License-Identifier: Apache-2.0
// Segment foundation: create/open/open_or_create/destroy, config validation, foreign and damaged
// objects, permissions, the process table, fork behaviour, robust-mutex recovery and detach.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "kvbm/kvbm.hpp"

#include "segment/liveness.hpp"
#include "shm/header.hpp"
#include "shm/process_entry.hpp"
#include "support/temp_segment.hpp"
#include "testing/hooks.hpp"

using namespace kvbm;
using Catch::Matchers::Contains;
using kvbm::testing::Child;
using kvbm::testing::Peer;
using kvbm::testing::Signal;
using kvbm::testing::TempSegment;

namespace {

constexpr char kReady = 'R';
constexpr char kFailed = 'F';

std::string shm_path(const std::string& name) {
  return "/dev/shm/" + name;
}

bool shm_exists(const std::string& name) {
  struct stat st {};
  return ::stat(shm_path(name).c_str(), &st) == 0;
}

unsigned mode_of(const std::string& name) {
  struct stat st {};
  REQUIRE(::stat(shm_path(name).c_str(), &st) == 0);
  return st.st_mode & 07777;
}

off_t size_of(const std::string& name) {
  struct stat st {};
  REQUIRE(::stat(shm_path(name).c_str(), &st) == 0);
  return st.st_size;
}

std::int64_t metric(const BlockManager& m, std::string_view name) {
  auto v = m.metrics().get(name);
  REQUIRE(v.has_value());
  return *v;
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  REQUIRE(f.good());
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

std::vector<char> random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<char> v(n);
  for (auto& c : v) {
    c = static_cast<char>(rng() & 0xFF);
  }
  // Never all-zero in the magic word (that would read as "still being initialised").
  v[0] = static_cast<char>(0xA5);
  return v;
}

void patch_bytes(const std::string& path, std::streamoff offset, const void* data, std::size_t n) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  REQUIRE(f.good());
  f.seekp(offset);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  REQUIRE(f.good());
}

template <class T>
T read_at(const std::string& path, std::streamoff offset) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  f.seekg(offset);
  T v{};
  f.read(reinterpret_cast<char*>(&v), sizeof(v));
  REQUIRE(f.good());
  return v;
}

// The segment with this name, created and dropped (no attachment left).
void create_and_drop(const SegmentConfig& c) {
  auto m = BlockManager::create(c);
  REQUIRE(m);
}

void expect_invalid(const SegmentConfig& c, std::string_view field) {
  INFO("config field under test: " << field << ", name '" << c.name << "'");
  auto r = BlockManager::create(c);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::kInvalidConfig);
  CHECK_FALSE(r.error().message.empty());
  CHECK_THAT(r.error().message, Contains(std::string(field)));
  auto r2 = BlockManager::open_or_create(c);
  REQUIRE_FALSE(r2);
  CHECK(r2.error().code == Errc::kInvalidConfig);
  CHECK_THAT(r2.error().message, Contains(std::string(field)));
}

// Removes a segment (or any object: a payload name is no segment name) named outside
// TempSegment at scope exit.
struct NameGuard {
  std::string name;
  ~NameGuard() {
    if (!BlockManager::destroy(name)) {
      ::unlink(shm_path(name).c_str());
    }
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// 1. create / open / destroy
// ---------------------------------------------------------------------------------------------

TEST_CASE("create then open sees the same config", "[segment][unit]") {
  TempSegment seg("cfg");
  SegmentConfig c = seg.config(37);
  c.block_size = 64;
  c.max_processes = 5;
  c.eviction = EvictionPolicy::kLru;
  c.lineage_order = LineageOrder::kFifo;
  c.duplication = DuplicationPolicy::kReject;
  c.default_reset_on_release = true;
  c.multi_lru_thresholds = {2, 5, 9};
  c.frequency_capacity = 1u << 12;
  c.permissions = 0660;
  auto created = seg.create(c);
  auto opened = seg.open();

  for (const auto* m : {created.get(), opened.get()}) {
    const SegmentConfig& got = m->config();
    CHECK(got.name == seg.name());
    CHECK(got.block_count == 37);
    CHECK(got.block_size == 64);
    CHECK(got.max_processes == 5);
    CHECK(got.eviction == EvictionPolicy::kLru);
    CHECK(got.lineage_order == LineageOrder::kFifo);
    CHECK(got.duplication == DuplicationPolicy::kReject);
    CHECK(got.default_reset_on_release);
    CHECK(got.multi_lru_thresholds == std::array<std::uint8_t, 3>{2, 5, 9});
    CHECK(got.frequency_capacity == (1u << 12));
    CHECK(got.bytes_per_block == 0);
    CHECK(got.permissions == 0660);
    CHECK(m->total_blocks() == 37);
    CHECK(m->block_size() == 64);
    CHECK(m->duplication_policy() == DuplicationPolicy::kReject);
    CHECK(m->available_blocks() == 37);
  }
  CHECK(created->process_index() != opened->process_index());
  CHECK(metric(*opened, "kvbm_attached_processes") == 2);
  CHECK(opened->verify().empty());
}

TEST_CASE("create on an existing name is kAlreadyExists and leaves it intact", "[segment][unit]") {
  TempSegment seg("exists");
  auto m = seg.create(8);
  auto held = m->allocate_blocks(3);
  REQUIRE(held);

  SegmentConfig other = seg.config(100);  // even with another config
  auto again = BlockManager::create(other);
  REQUIRE_FALSE(again);
  CHECK(again.error().code == Errc::kAlreadyExists);
  CHECK_THAT(again.error().message, Contains(seg.name()));

  // The existing segment is untouched: same size, same state, still attached once.
  CHECK(m->counts().mutable_ == 3);
  CHECK(m->counts().reset == 5);
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  auto o = seg.open();
  CHECK(o->total_blocks() == 8);
  CHECK(m->verify().empty());
}

TEST_CASE("open and destroy of a missing name are kNotFound", "[segment][unit]") {
  TempSegment seg("missing");
  auto o = BlockManager::open(seg.name());
  REQUIRE_FALSE(o);
  CHECK(o.error().code == Errc::kNotFound);
  CHECK_FALSE(o.error().message.empty());
  auto d = BlockManager::destroy(seg.name());
  REQUIRE_FALSE(d);
  CHECK(d.error().code == Errc::kNotFound);
  CHECK_FALSE(shm_exists(seg.name()));
}

TEST_CASE("destroy unlinks while an existing attachment keeps working", "[segment][unit]") {
  TempSegment seg("destroy");
  auto m = seg.create(8);
  auto before = m->allocate_blocks(2);
  REQUIRE(before);
  REQUIRE(shm_exists(seg.name()));

  REQUIRE(BlockManager::destroy(seg.name()));
  CHECK_FALSE(shm_exists(seg.name()));
  auto o = BlockManager::open(seg.name());
  REQUIRE_FALSE(o);
  CHECK(o.error().code == Errc::kNotFound);
  auto d = BlockManager::destroy(seg.name());
  REQUIRE_FALSE(d);
  CHECK(d.error().code == Errc::kNotFound);

  // The unlinked mapping still works.
  auto more = m->allocate_blocks(3);
  REQUIRE(more);
  CHECK(more->size() == 3);
  CHECK(m->counts().mutable_ == 5);
  CHECK(m->available_blocks() == 3);
  CHECK(m->verify().empty());
  before.reset();
  more.reset();
  CHECK(m->counts().reset == 8);

  // The name is free again: a new, independent segment.
  auto fresh = seg.create(4);
  CHECK(fresh->total_blocks() == 4);
  CHECK(fresh->counts().reset == 4);
  CHECK(m->total_blocks() == 8);
  CHECK(metric(*fresh, "kvbm_attached_processes") == 1);
}

TEST_CASE("destroy also removes the payload object", "[segment][unit]") {
  TempSegment seg("payload");
  SegmentConfig c = seg.config(4);
  c.bytes_per_block = 128;
  create_and_drop(c);
  CHECK(shm_exists(seg.name()));
  CHECK(shm_exists(seg.name() + ".payload"));
  REQUIRE(BlockManager::destroy(seg.name()));
  CHECK_FALSE(shm_exists(seg.name()));
  CHECK_FALSE(shm_exists(seg.name() + ".payload"));
}

TEST_CASE("payload() is the whole region and block_offset(id) a block's place in it",
          "[segment][unit]") {
  TempSegment seg("region");
  SegmentConfig c = seg.config(4);
  c.bytes_per_block = 64;
  auto m = seg.create(c);
  auto region = m->payload();
  REQUIRE(region.size() == 4 * 64);
  auto blocks = m->allocate_blocks(3);
  REQUIRE(blocks);
  auto& b = (*blocks)[2];
  CHECK(m->block_offset(b.block_id()) == std::uint64_t{b.block_id()} * 64);
  b.data()[5] = std::byte{0x5a};
  CHECK(region[m->block_offset(b.block_id()) + 5] == std::byte{0x5a});
  CHECK_THROWS_AS(m->block_offset(4), std::invalid_argument);
  TempSegment bare_seg("bare");
  auto bare = bare_seg.create(4);
  CHECK(bare->payload().empty());
  CHECK(bare->block_offset(3) == 0);
}

// ---------------------------------------------------------------------------------------------
// 2. config validation
// ---------------------------------------------------------------------------------------------

TEST_CASE("invalid configs are kInvalidConfig naming the cause", "[segment][unit]") {
  TempSegment seg("invalid");
  const SegmentConfig good = seg.config(16);

  SECTION("block_count 0") {
    auto c = good;
    c.block_count = 0;
    expect_invalid(c, "block_count");
  }
  SECTION("block_size 0, 3, 2048") {
    for (std::uint32_t bs : {0u, 3u, 2048u}) {
      auto c = good;
      c.block_size = bs;
      expect_invalid(c, "block_size");
    }
  }
  SECTION("max_processes 0 and 65") {
    for (std::uint32_t mp : {0u, 65u}) {
      auto c = good;
      c.max_processes = mp;
      expect_invalid(c, "max_processes");
    }
  }
  SECTION("multi_lru_thresholds") {
    const std::array<std::uint8_t, 3> bad[] = {{0, 8, 15}, {3, 3, 15}, {3, 8, 16}, {3, 9, 8}};
    for (const auto& t : bad) {
      auto c = good;
      c.multi_lru_thresholds = t;
      expect_invalid(c, "multi_lru_thresholds");
    }
  }
  SECTION("multi_lru_thresholds are validated whatever the policy") {
    for (auto p : {EvictionPolicy::kLineage, EvictionPolicy::kLru, EvictionPolicy::kMultiLru,
                   EvictionPolicy::kFifo}) {
      auto c = good;
      c.eviction = p;
      c.multi_lru_thresholds = {3, 8, 16};
      expect_invalid(c, "multi_lru_thresholds");
    }
  }
  SECTION("frequency_capacity") {
    for (std::uint32_t fc : {0u, 3000u, (1u << 10) + 1, 1u << 9, 1u << 27, 1u << 31}) {
      auto c = good;
      c.frequency_capacity = fc;
      expect_invalid(c, "frequency_capacity");
    }
  }
  SECTION("block_count too large") {
    auto c = good;
    c.block_count = 0x80000000u;
    expect_invalid(c, "block_count");
  }
  SECTION("permissions outside 0600, 0660, 0666") {
    for (std::uint32_t p : {04600u, 01777u, 010000u, 0644u, 0640u}) {
      auto c = good;
      c.permissions = p;
      expect_invalid(c, "permissions");
    }
  }
  SECTION("payload larger than 1 TiB") {
    auto c = good;
    c.bytes_per_block = (std::uint64_t{1} << 40) / c.block_count + 1;
    expect_invalid(c, "bytes_per_block");
  }
  // None of the above left an object behind.
  CHECK_FALSE(shm_exists(seg.name()));
  // And the boundaries are accepted.
  SECTION("boundary values are valid") {
    auto c = good;
    c.block_size = 1024;
    c.max_processes = 64;
    c.multi_lru_thresholds = {1, 2, 15};
    c.frequency_capacity = 1u << 10;
    auto m = BlockManager::create(c);
    REQUIRE(m);
    REQUIRE(BlockManager::destroy(seg.name()));
    c.block_size = 1;
    c.max_processes = 1;
    c.frequency_capacity = 1u << 26;
    c.eviction = EvictionPolicy::kMultiLru;
    auto m2 = BlockManager::create(c);
    REQUIRE(m2);
    CHECK((*m2)->block_size() == 1);
  }
}

TEST_CASE("invalid segment names are kInvalidConfig", "[segment][unit]") {
  TempSegment seg("names");
  const std::string too_long = std::string(201, 'a');
  const std::vector<std::string> bad = {"",      "a/b",  "/leading",  "with space", too_long,
                                        "-dash", ".dot", "tab\tname", "trailing/",  "ümlaut-x"};
  for (const auto& name : bad) {
    INFO("name '" << name << "'");
    SegmentConfig c = seg.config(8);
    c.name = name;
    expect_invalid(c, "name");
    auto o = BlockManager::open(name);
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kInvalidConfig);
    auto d = BlockManager::destroy(name);
    REQUIRE_FALSE(d);
    CHECK(d.error().code == Errc::kInvalidConfig);
  }
}

TEST_CASE("a 200-character name is valid, 201 is not", "[segment][unit]") {
  std::string name = fmt::format("kvbm-test-long-{}-", ::getpid());
  name.append(200 - name.size(), 'x');
  REQUIRE(name.size() == 200);
  NameGuard guard{name};
  (void)BlockManager::destroy(name);

  SegmentConfig c;
  c.name = name;
  c.block_count = 4;
  {
    auto m = BlockManager::create(c);
    REQUIRE(m);
    CHECK((*m)->config().name == name);
    CHECK(shm_exists(name));
  }
  auto o = BlockManager::open(name);
  REQUIRE(o);
  CHECK((*o)->total_blocks() == 4);

  c.name = name + "y";
  auto r = BlockManager::create(c);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::kInvalidConfig);
  CHECK_THAT(r.error().message, Contains("name"));
}

// ---------------------------------------------------------------------------------------------
// 3. open_or_create
// ---------------------------------------------------------------------------------------------

TEST_CASE("open_or_create creates when absent and opens when present", "[segment][unit]") {
  TempSegment seg("ooc");
  SegmentConfig c = seg.config(12);
  c.block_size = 32;
  auto first = BlockManager::open_or_create(c);
  REQUIRE(first);
  CHECK(shm_exists(seg.name()));
  CHECK((*first)->total_blocks() == 12);
  CHECK(mode_of(seg.name()) == 0600);
  auto held = (*first)->allocate_blocks(2);
  REQUIRE(held);

  SECTION("equal config opens the same segment") {
    auto second = BlockManager::open_or_create(c);
    REQUIRE(second);
    CHECK((*second)->counts().mutable_ == 2);
    CHECK((*second)->process_index() != (*first)->process_index());
    CHECK(metric(**second, "kvbm_attached_processes") == 2);
  }
  SECTION("different permissions are allowed and do not change the object") {
    auto c2 = c;
    c2.permissions = 0660;
    auto second = BlockManager::open_or_create(c2);
    REQUIRE(second);
    CHECK((*second)->counts().mutable_ == 2);
    CHECK((*second)->config().permissions == 0600);
    CHECK(mode_of(seg.name()) == 0600);
  }
}

TEST_CASE("open_or_create with a differing field names the first difference", "[segment][unit]") {
  TempSegment seg("oocdiff");
  const SegmentConfig c = seg.config(12);
  auto m = seg.create(c);

  struct Case {
    const char* field;
    SegmentConfig cfg;
  };
  std::vector<Case> cases;
  auto add = [&](const char* field, auto mutate) {
    SegmentConfig d = c;
    mutate(d);
    cases.push_back({field, d});
  };
  add("block_count", [](SegmentConfig& d) { d.block_count = 13; });
  add("block_count", [](SegmentConfig& d) {  // two differences: the first one is named
    d.block_count = 13;
    d.block_size = 32;
  });
  add("block_size", [](SegmentConfig& d) { d.block_size = 32; });
  add("max_processes", [](SegmentConfig& d) { d.max_processes = 8; });
  add("eviction", [](SegmentConfig& d) { d.eviction = EvictionPolicy::kFifo; });
  add("lineage_order", [](SegmentConfig& d) { d.lineage_order = LineageOrder::kFifo; });
  add("duplication", [](SegmentConfig& d) { d.duplication = DuplicationPolicy::kReject; });
  add("default_reset_on_release", [](SegmentConfig& d) { d.default_reset_on_release = true; });
  add("multi_lru_thresholds", [](SegmentConfig& d) { d.multi_lru_thresholds = {2, 8, 15}; });
  add("frequency_capacity", [](SegmentConfig& d) { d.frequency_capacity = 1u << 20; });
  add("bytes_per_block", [](SegmentConfig& d) { d.bytes_per_block = 64; });
  add("key_bytes", [](SegmentConfig& d) { d.key_bytes = 32; });
  add("layout_tag", [](SegmentConfig& d) { d.layout_tag = 0x1234; });

  for (const auto& k : cases) {
    INFO("differing field " << k.field);
    auto r = BlockManager::open_or_create(k.cfg);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::kInvalidConfig);
    CHECK_THAT(r.error().message, Contains(k.field));
    if (std::string_view(k.field) == "block_count") {
      CHECK_THAT(r.error().message, !Contains("block_size"));
    }
  }
  // The refused attempts left no attachment behind and did not touch the segment.
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 0);
  CHECK(m->total_blocks() == 12);
  CHECK(m->verify().empty());
  CHECK_FALSE(shm_exists(seg.name() + ".payload"));
}

// ---------------------------------------------------------------------------------------------
// 4. concurrent creation
// ---------------------------------------------------------------------------------------------

TEST_CASE("concurrent open_or_create from 6 processes all succeed on one segment",
          "[segment][multiprocess]") {
  TempSegment seg("race");
  const SegmentConfig c = seg.config(64);
  constexpr int kChildren = 6;
  Signal go;
  Signal report;
  Signal release;
  std::vector<std::unique_ptr<Child>> children;
  for (int i = 0; i < kChildren; ++i) {
    children.push_back(std::make_unique<Child>([&]() -> int {
      ::alarm(20);
      go.wait();
      auto m = BlockManager::open_or_create(c);
      if (!m) {
        report.notify(kFailed);
        return 10 + static_cast<int>(m.error().code);
      }
      if ((*m)->total_blocks() != 64 || (*m)->config().block_count != 64) {
        report.notify(kFailed);
        return 30;
      }
      auto blocks = (*m)->allocate_blocks(2);
      if (!blocks) {
        report.notify(kFailed);
        return 31;
      }
      report.notify(static_cast<char>((*m)->process_index() + 1));
      release.wait();
      return 0;
    }));
  }
  for (int i = 0; i < kChildren; ++i) {
    go.notify();
  }
  std::set<int> indexes;
  for (int i = 0; i < kChildren; ++i) {
    char v = report.wait();
    CHECK(v != kFailed);
    CHECK(v > 0);
    indexes.insert(v - 1);
  }
  CHECK(indexes.size() == kChildren);  // one process-table entry each

  {
    auto m = seg.open();
    CHECK(m->total_blocks() == 64);
    CHECK(metric(*m, "kvbm_attached_processes") == kChildren + 1);
    CHECK(m->counts().mutable_ == 2 * kChildren);
    CHECK(m->verify().empty());
  }
  for (int i = 0; i < kChildren; ++i) {
    release.notify();
  }
  for (auto& ch : children) {
    CHECK(ch->wait() == 0);
  }
  auto m = seg.open();
  CHECK(m->verify().empty());
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 0);
  CHECK(m->counts().reset == 64);
}

TEST_CASE("concurrent create from 6 processes: exactly one creates", "[segment][multiprocess]") {
  TempSegment seg("crace");
  const SegmentConfig c = seg.config(32);
  constexpr int kChildren = 6;
  Signal go;
  std::vector<std::unique_ptr<Child>> children;
  for (int i = 0; i < kChildren; ++i) {
    children.push_back(std::make_unique<Child>([&]() -> int {
      ::alarm(20);
      go.wait();
      auto m = BlockManager::create(c);
      if (m) {
        return (*m)->verify().empty() ? 0 : 2;
      }
      return m.error().code == Errc::kAlreadyExists ? 1 : 10 + static_cast<int>(m.error().code);
    }));
  }
  for (int i = 0; i < kChildren; ++i) {
    go.notify();
  }
  int created = 0;
  int already = 0;
  for (auto& ch : children) {
    const int code = ch->wait();
    INFO("child exit code " << code);
    CHECK((code == 0 || code == 1));
    created += code == 0 ? 1 : 0;
    already += code == 1 ? 1 : 0;
  }
  CHECK(created == 1);
  CHECK(already == kChildren - 1);
  auto m = seg.open();
  CHECK(m->total_blocks() == 32);
  CHECK(m->verify().empty());
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
}

// ---------------------------------------------------------------------------------------------
// 5. foreign and damaged objects
// ---------------------------------------------------------------------------------------------

TEST_CASE("foreign objects are refused with kLayoutMismatch", "[segment][unit]") {
  TempSegment seg("foreign");
  const std::string path = shm_path(seg.name());

  SECTION("64 KiB of random bytes") {
    write_bytes(path, random_bytes(64 * 1024, 1));
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kLayoutMismatch);
    CHECK_FALSE(o.error().message.empty());
  }
  SECTION("100 random bytes") {
    write_bytes(path, random_bytes(100, 2));
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kLayoutMismatch);
    CHECK_FALSE(o.error().message.empty());
  }
  SECTION("open_or_create does not overwrite a foreign object") {
    auto bytes = random_bytes(4096, 3);
    write_bytes(path, bytes);
    auto o = BlockManager::open_or_create(seg.config(8));
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kLayoutMismatch);
    CHECK(size_of(seg.name()) == 4096);
    CHECK(read_at<std::uint64_t>(path, 0) == [&] {
      std::uint64_t v;
      std::memcpy(&v, bytes.data(), sizeof(v));
      return v;
    }());
  }
  // A foreign object is still removable by name.
  REQUIRE(BlockManager::destroy(seg.name()));
  CHECK_FALSE(shm_exists(seg.name()));
}

TEST_CASE("a damaged kvbm header is refused", "[segment][unit]") {
  TempSegment seg("damaged");
  const std::string path = shm_path(seg.name());
  create_and_drop(seg.config(1024));
  const off_t full = size_of(seg.name());
  REQUIRE(full > 4096);

  SECTION("magic byte flipped -> kLayoutMismatch") {
    auto b = read_at<std::uint8_t>(path, 0);
    b ^= 0x01;
    patch_bytes(path, 0, &b, 1);
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kLayoutMismatch);
    CHECK_FALSE(o.error().message.empty());
  }
  SECTION("layout_major changed -> kLayoutMismatch with a message") {
    auto major = read_at<std::uint16_t>(path, 8);
    CHECK(major >= 1);
    std::uint16_t other = static_cast<std::uint16_t>(major + 1);
    patch_bytes(path, 8, &other, sizeof(other));
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kLayoutMismatch);
    CHECK_THAT(o.error().message, Contains("layout"));
  }
  SECTION("ABI fingerprint changed -> kLayoutMismatch") {
    auto fp = read_at<std::uint64_t>(path, 16);
    fp ^= 0x8000000000000001ull;
    patch_bytes(path, 16, &fp, sizeof(fp));
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kLayoutMismatch);
    CHECK_FALSE(o.error().message.empty());
  }
  SECTION("truncated to half -> kCorrupted") {
    REQUIRE(::truncate(path.c_str(), full / 2) == 0);
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kCorrupted);
    CHECK_FALSE(o.error().message.empty());
  }
  SECTION("truncated inside the header -> kCorrupted") {
    REQUIRE(::truncate(path.c_str(), 100) == 0);
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kCorrupted);
  }
  SECTION("invalid config recorded in the header -> kCorrupted") {
    const auto off = static_cast<std::streamoff>(offsetof(shm::SegmentHeader, config) +
                                                 offsetof(shm::ConfigRecord, block_size));
    const std::uint32_t bad = 3;
    patch_bytes(path, off, &bad, sizeof(bad));
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kCorrupted);
    CHECK_THAT(o.error().message, Contains("block_size"));
  }
  SECTION("recorded block_count disagrees with the region table -> kCorrupted") {
    const auto off = static_cast<std::streamoff>(offsetof(shm::SegmentHeader, config) +
                                                 offsetof(shm::ConfigRecord, block_count));
    const std::uint32_t more = 2048;
    patch_bytes(path, off, &more, sizeof(more));
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kCorrupted);
  }
  SECTION("recorded size beyond the object -> kCorrupted") {
    const auto off = static_cast<std::streamoff>(offsetof(shm::SegmentHeader, segment_bytes));
    const std::uint64_t huge = static_cast<std::uint64_t>(full) * 4;
    patch_bytes(path, off, &huge, sizeof(huge));
    auto o = BlockManager::open(seg.name());
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kCorrupted);
  }
  SECTION("the undamaged segment opens") {
    auto o = BlockManager::open(seg.name());
    REQUIRE(o);
    CHECK((*o)->verify().empty());
  }
}

// A zero-length object nobody is creating (no init lock held) is not a kvbm segment; one whose
// creator holds the init lock is waited for, up to about 2 s.
TEST_CASE("a zero-length object: not a segment at once, or waited for while its creator lives",
          "[segment][unit][slow]") {
  TempSegment seg("empty");
  const std::string obj = "/" + seg.name();
  const int fd = ::shm_open(obj.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(size_of(seg.name()) == 0);
  SECTION("nobody creating it") {
    const auto t0 = std::chrono::steady_clock::now();
    auto o = BlockManager::open(seg.name());
    const auto waited = std::chrono::steady_clock::now() - t0;
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kLayoutMismatch);
    CHECK_THAT(o.error().message, Contains("empty"));
    CHECK(waited < std::chrono::milliseconds(1000));
  }
  SECTION("a live creator holds the init lock") {
    REQUIRE(detail::ofd_try_lock(fd, shm::kInitLockOffset));
    const auto t0 = std::chrono::steady_clock::now();
    auto o = BlockManager::open(seg.name());
    const auto waited = std::chrono::steady_clock::now() - t0;
    REQUIRE_FALSE(o);
    CHECK(o.error().code == Errc::kCorrupted);
    CHECK_THAT(o.error().message, Contains("still being initialised"));
    CHECK(waited >= std::chrono::milliseconds(1900));
    CHECK(waited < std::chrono::milliseconds(4000));
  }
  ::close(fd);
}

TEST_CASE("open waits for a segment that is still being initialised", "[segment][unit]") {
  TempSegment seg("initwait");
  const std::string path = shm_path(seg.name());
  create_and_drop(seg.config(8));
  const auto init_off = static_cast<std::streamoff>(offsetof(shm::SegmentHeader, init_state));
  REQUIRE(read_at<std::uint32_t>(path, init_off) ==
          static_cast<std::uint32_t>(shm::InitState::kReady));
  // Play the creator: hold the init lock (as Segment::create does) while init_state says
  // initialising.
  const int creator_fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(creator_fd >= 0);
  REQUIRE(detail::ofd_try_lock(creator_fd, shm::kInitLockOffset));
  const auto initialising = static_cast<std::uint32_t>(shm::InitState::kInitializing);
  patch_bytes(path, init_off, &initialising, sizeof(initialising));

  // A "creator" that finishes a little later. The delay only simulates slow initialisation: the
  // test's verdict does not depend on it (open must succeed either way, well before 2 s).
  std::thread creator([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const auto ready = static_cast<std::uint32_t>(shm::InitState::kReady);
    (void)::pwrite(creator_fd, &ready, sizeof(ready), init_off);
    detail::ofd_unlock(creator_fd, shm::kInitLockOffset);
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto o = BlockManager::open(seg.name());
  const auto waited = std::chrono::steady_clock::now() - t0;
  creator.join();
  ::close(creator_fd);
  REQUIRE(o);
  CHECK(waited < std::chrono::milliseconds(1900));
  CHECK((*o)->total_blocks() == 8);
  CHECK((*o)->verify().empty());
}

// ---------------------------------------------------------------------------------------------
// 6. permissions
// ---------------------------------------------------------------------------------------------

TEST_CASE("segment object mode follows permissions", "[segment][unit]") {
  TempSegment seg("perm");
  const mode_t old_umask = ::umask(022);
  SECTION("default is 0600") {
    create_and_drop(seg.config(4));
    CHECK(mode_of(seg.name()) == 0600);
  }
  SECTION("0666") {
    auto c = seg.config(4);
    c.permissions = 0666;
    create_and_drop(c);
    CHECK(mode_of(seg.name()) == 0666);
  }
  SECTION("0660 is not narrowed by the umask, payload too") {
    auto c = seg.config(4);
    c.permissions = 0660;
    c.bytes_per_block = 64;
    create_and_drop(c);
    CHECK(mode_of(seg.name()) == 0660);
    CHECK(mode_of(seg.name() + ".payload") == 0660);
  }
  ::umask(old_umask);
}

TEST_CASE("another user is refused with kPermissionDenied", "[segment][multiprocess]") {
  if (::geteuid() != 0) {
    WARN("not running as root: cannot switch to another user; skipped");
    return;
  }
  TempSegment seg("permuser");
  auto m = seg.create(8);  // mode 0600, owned by root
  auto held = m->allocate_blocks(1);
  REQUIRE(held);
  const auto attached = metric(*m, "kvbm_attached_processes");

  auto as_nobody = [](const std::string& name, bool expect_ok) {
    return [name, expect_ok]() -> int {
      ::alarm(20);
      if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) {
        return 20;
      }
      auto o = BlockManager::open(name);
      if (expect_ok) {
        if (!o) {
          return 30 + static_cast<int>(o.error().code);
        }
        return (*o)->counts().mutable_ == 1 && (*o)->verify().empty() ? 0 : 21;
      }
      if (o) {
        return 1;
      }
      if (o.error().code != Errc::kPermissionDenied) {
        return 30 + static_cast<int>(o.error().code);
      }
      return o.error().message.empty() ? 22 : 0;
    };
  };

  Child denied(as_nobody(seg.name(), false));
  CHECK(denied.wait() == 0);
  CHECK(m->verify().empty());
  CHECK(metric(*m, "kvbm_attached_processes") == attached);
  CHECK(m->counts().mutable_ == 1);

  SECTION("with 0666 the other user may attach") {
    TempSegment shared("permshared");
    auto c = shared.config(8);
    c.permissions = 0666;
    auto s = shared.create(c);
    auto h = s->allocate_blocks(1);
    REQUIRE(h);
    Child allowed(as_nobody(shared.name(), true));
    CHECK(allowed.wait() == 0);
    CHECK(s->verify().empty());
    CHECK(metric(*s, "kvbm_attached_processes") == 1);
  }
}

// ---------------------------------------------------------------------------------------------
// 7. process table
// ---------------------------------------------------------------------------------------------

TEST_CASE("process table: one entry per BlockManager, full table is kProcessTableFull",
          "[segment][unit]") {
  TempSegment seg("ptable");
  auto c = seg.config(8);
  c.max_processes = 2;
  auto a = seg.create(c);
  auto b = seg.open();  // same process, second entry
  CHECK(a->process_index() != b->process_index());
  CHECK(a->process_index() < 2);
  CHECK(b->process_index() < 2);
  CHECK(metric(*a, "kvbm_attached_processes") == 2);

  auto third = BlockManager::open(seg.name());
  REQUIRE_FALSE(third);
  CHECK(third.error().code == Errc::kProcessTableFull);
  CHECK_FALSE(third.error().message.empty());
  auto third_ooc = BlockManager::open_or_create(c);
  REQUIRE_FALSE(third_ooc);
  CHECK(third_ooc.error().code == Errc::kProcessTableFull);
  CHECK(metric(*a, "kvbm_attached_processes") == 2);

  const auto freed = b->process_index();
  b.reset();
  CHECK(metric(*a, "kvbm_attached_processes") == 1);
  auto again = BlockManager::open(seg.name());
  REQUIRE(again);
  CHECK((*again)->process_index() == freed);
  CHECK(metric(*a, "kvbm_attached_processes") == 2);
  CHECK(metric(*a, "kvbm_reaped_processes_total") == 0);
  CHECK(a->verify().empty());
}

TEST_CASE("a SIGKILLed process's entry is reclaimed by a new open", "[segment][multiprocess]") {
  TempSegment seg("reclaim");
  auto c = seg.config(8);
  c.max_processes = 2;
  auto m = seg.create(c);
  Signal ready;
  Child child([&]() -> int {
    auto o = BlockManager::open(seg.name());
    if (!o) {
      ready.notify(kFailed);
      return 1;
    }
    auto blocks = (*o)->allocate_blocks(3);
    if (!blocks) {
      ready.notify(kFailed);
      return 2;
    }
    ready.notify(static_cast<char>((*o)->process_index() + 1));
    for (;;) {
      ::pause();
    }
  });
  const char v = ready.wait();
  REQUIRE(v != kFailed);
  REQUIRE(v > 0);
  const std::uint32_t child_index = static_cast<std::uint32_t>(v - 1);
  CHECK(child_index != m->process_index());
  child.kill();

  // Dead but unreaped: still counted, listed by verify, its blocks still held.
  CHECK(metric(*m, "kvbm_attached_processes") == 2);
  CHECK(m->counts().mutable_ == 3);
  const auto problems = m->verify();
  REQUIRE(problems.size() == 1);
  CHECK_THAT(problems[0], Contains("dead"));
  const auto reaped_before = metric(*m, "kvbm_reaped_processes_total");

  auto n = BlockManager::open(seg.name());
  REQUIRE(n);
  CHECK((*n)->process_index() == child_index);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == reaped_before + 1);
  CHECK(metric(*m, "kvbm_attached_processes") == 2);
  CHECK(m->counts().mutable_ == 0);
  CHECK(m->counts().reset == 8);
  CHECK(m->verify().empty());
  CHECK(m->reap_dead_processes() == 0);
}

TEST_CASE("an allocation that comes up short reaps dead processes and retries",
          "[segment][multiprocess]") {
  TempSegment seg("shortreap");
  auto m = seg.create(4);
  Signal ready;
  Child child([&]() -> int {
    auto o = BlockManager::open(seg.name());
    auto blocks = o ? (*o)->allocate_blocks(4) : std::nullopt;
    ready.notify(blocks ? kReady : kFailed);
    for (;;) {
      ::pause();
    }
  });
  REQUIRE(ready.wait() == kReady);
  CHECK(m->available_blocks() == 0);
  child.kill();
  auto blocks = m->allocate_blocks(4);
  REQUIRE(blocks);
  CHECK(blocks->size() == 4);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 1);
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  CHECK(m->verify().empty());
}

// ---------------------------------------------------------------------------------------------
// 8. fork
// ---------------------------------------------------------------------------------------------

TEST_CASE("an inherited BlockManager is unusable in a fork child and its handles are inert",
          "[segment][multiprocess]") {
  TempSegment seg("fork");
  auto m = seg.create(16);
  auto mut = m->allocate_blocks(2);
  REQUIRE(mut);
  auto one = m->allocate_blocks(1);
  REQUIRE(one);
  const auto hash = SequenceHash::make(0x1234, std::nullopt, 0);
  auto staged = std::move(one->front()).stage(hash, m->block_size());
  REQUIRE(staged);
  std::optional<ImmutableBlock> imm = m->register_block(std::move(*staged));
  REQUIRE(*imm);
  const BlockId imm_id = imm->block_id();
  const WeakBlock weak = imm->downgrade();
  const std::uint32_t block_size = m->block_size();
  const std::uint32_t parent_index = m->process_index();
  const auto counts_before = m->counts();
  REQUIRE(counts_before.mutable_ == 2);
  REQUIRE(counts_before.primary == 1);

  Child child([&]() -> int {
    ::alarm(20);
    int rc = 0;
    int code = 10;
    auto expect_logic_error = [&](auto&& f) {
      ++code;
      try {
        f();
      } catch (const std::logic_error& e) {
        if (std::string_view(e.what()).find("open the segment again") == std::string_view::npos) {
          rc = rc != 0 ? rc : code + 40;
        }
        return;
      } catch (...) {
        rc = rc != 0 ? rc : code + 80;
        return;
      }
      rc = rc != 0 ? rc : code;
    };
    expect_logic_error([&] { (void)m->allocate_blocks(1); });
    expect_logic_error([&] { (void)m->allocate_blocks_with_evictions(1); });
    expect_logic_error([&] { (void)m->counts(); });
    expect_logic_error([&] { (void)m->total_blocks(); });
    expect_logic_error([&] { (void)m->available_blocks(); });
    expect_logic_error([&] { (void)m->block_size(); });
    expect_logic_error([&] { (void)m->metrics(); });
    expect_logic_error([&] { (void)m->verify(); });
    expect_logic_error([&] { (void)m->reap_dead_processes(); });
    expect_logic_error([&] { (void)m->inspect_block(0); });
    expect_logic_error([&] { (void)m->process_index(); });
    expect_logic_error([&] { (void)m->match_blocks(std::span<const SequenceHash>(&hash, 1)); });
    // Inherited handles refuse to act on the parent's attachment too.
    expect_logic_error([&] { (void)imm->use_count(); });
    expect_logic_error([&] { imm->set_reset_on_release(true); });
    expect_logic_error([&] { (void)weak.upgrade(); });
    expect_logic_error([&] { (void)mut->front().block_size(); });
    expect_logic_error([&] {
      (void)std::move(mut->back()).stage(SequenceHash::make(0x55, std::nullopt, 0), block_size);
    });
    if (rc != 0) {
      return rc;
    }
    // Copies and moves of inherited handles are inert as well.
    {
      ImmutableBlock copy = *imm;
      ImmutableBlock moved = std::move(copy);
      MutableBlock taken = std::move(mut->front());
    }
    // Destroy every inherited handle and the inherited manager in the child.
    mut.reset();
    imm.reset();
    m.reset();
    // Then attach on its own.
    auto own = BlockManager::open(seg.name());
    if (!own) {
      return 2;
    }
    if ((*own)->process_index() == parent_index) {
      return 3;
    }
    const auto c = (*own)->counts();
    if (c.mutable_ != 2 || c.primary != 1) {
      return 4;  // the inherited handles' destructors changed the segment
    }
    auto matched = (*own)->match_blocks(std::span<const SequenceHash>(&hash, 1));
    if (matched.size() != 1 || matched[0].block_id() != imm_id) {
      return 5;
    }
    if ((*own)->inspect_block(imm_id).holder_processes != 2) {
      return 6;
    }
    if ((*own)->metrics().get("kvbm_attached_processes") != std::optional<std::int64_t>(2)) {
      return 7;
    }
    return 0;
  });
  CHECK(child.wait() == 0);

  // Nothing changed in the parent.
  const auto after = m->counts();
  CHECK(after.mutable_ == 2);
  CHECK(after.primary == 1);
  CHECK(after.inactive == 0);
  CHECK(after.reset == counts_before.reset);
  const auto info = m->inspect_block(imm_id);
  CHECK(info.state == SlotState::kPrimary);
  CHECK(info.holder_processes == 1);
  CHECK_FALSE(info.reset_on_release);
  CHECK(imm->use_count() == 1);
  CHECK(mut->front());  // the child's move did not empty the parent's handle
  CHECK(mut->back());
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 0);
  CHECK(m->verify().empty());
  // And the parent's handles still work.
  auto staged2 =
      std::move(mut->front()).stage(SequenceHash::make(0x99, std::nullopt, 0), m->block_size());
  REQUIRE(staged2);
  CHECK(m->counts().staged == 1);
  imm.reset();
  CHECK(m->counts().inactive == 1);
  auto up = weak.upgrade();  // resurrects from the inactive pool
  REQUIRE(up);
  CHECK(up->block_id() == imm_id);
}

TEST_CASE("a live fork grandchild does not keep a dead parent's entry alive",
          "[segment][multiprocess]") {
  TempSegment seg("grandchild");
  auto m = seg.create(8);
  Signal ready;
  Signal release_grandchild;
  Child parent([&]() -> int {
    auto o = BlockManager::open(seg.name());
    auto blocks = o ? (*o)->allocate_blocks(2) : std::nullopt;
    if (!blocks) {
      ready.notify(kFailed);
      ready.notify(kFailed);
      return 1;
    }
    const pid_t g = ::fork();
    if (g == 0) {
      // The grandchild outlives its parent, holding (copies of) the parent's handles.
      ::alarm(20);
      ready.notify(kReady);
      release_grandchild.wait();
      ::_exit(0);
    }
    if (g < 0) {
      ready.notify(kFailed);
    }
    ready.notify(g > 0 ? kReady : kFailed);
    for (;;) {
      ::pause();
    }
  });
  REQUIRE(ready.wait() == kReady);
  REQUIRE(ready.wait() == kReady);
  CHECK(metric(*m, "kvbm_attached_processes") == 2);
  parent.kill();

  // The grandchild is still running, yet the entry is dead and reapable.
  CHECK(m->verify().size() == 1);
  CHECK(m->reap_dead_processes() == 1);
  CHECK(m->counts().mutable_ == 0);
  CHECK(m->verify().empty());
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  release_grandchild.notify();
}

// ---------------------------------------------------------------------------------------------
// 9. robust mutex recovery
// ---------------------------------------------------------------------------------------------

namespace {

// A child that opens the segment, runs `prepare` on its own attachment, signals the parent and
// waits to be SIGKILLed.
template <class F>
std::unique_ptr<Child> start_holder(const std::string& name, Signal& ready, F prepare) {
  return std::make_unique<Child>([&ready, name, prepare]() -> int {
    ::alarm(20);
    auto o = BlockManager::open(name);
    if (!o) {
      ready.notify(kFailed);
      return 1;
    }
    prepare(**o);
    ready.notify(kReady);
    for (;;) {
      ::pause();
    }
  });
}

}  // namespace

TEST_CASE("a process killed holding the store mutex is recovered by the next caller",
          "[segment][multiprocess]") {
  TempSegment seg("robust");
  auto m = seg.create(16);
  const auto epoch0 = Peer::epoch(*m);
  CHECK(metric(*m, "kvbm_recoveries_total") == 0);
  Signal ready;
  std::optional<std::vector<MutableBlock>> kept;  // child-side only
  auto child = start_holder(seg.name(), ready, [&kept](BlockManager& o) {
    kept = o.allocate_blocks(2);
    Peer::lock_store_and_hold(o);
  });
  REQUIRE(ready.wait() == kReady);
  child->kill();

  auto got = m->allocate_blocks(1);  // must not hang; recovers
  REQUIRE(got);
  CHECK(got->size() == 1);
  CHECK(metric(*m, "kvbm_recoveries_total") == 1);
  CHECK(Peer::epoch(*m) > epoch0);
  CHECK(m->counts().mutable_ == 3);  // the dead child's 2 are still held until reaped

  auto problems = m->verify();
  REQUIRE(problems.size() == 1);
  CHECK_THAT(problems[0], Contains("dead"));
  CHECK(metric(*m, "kvbm_attached_processes") == 2);

  CHECK(m->reap_dead_processes() == 1);
  CHECK(m->verify().empty());
  CHECK(m->counts().mutable_ == 1);
  CHECK(m->counts().reset == 15);
  CHECK(metric(*m, "kvbm_attached_processes") == 1);
  CHECK(metric(*m, "kvbm_reaped_processes_total") == 1);
  CHECK(metric(*m, "kvbm_recoveries_total") == 1);  // one crash, one recovery
  CHECK(m->reap_dead_processes() == 0);
}

TEST_CASE("a half-done operation is rolled back after its process is killed",
          "[segment][multiprocess]") {
  TempSegment seg("halfdone");
  auto m = seg.create(16);
  const BlockId victim = 5;
  REQUIRE(m->inspect_block(victim).state == SlotState::kReset);
  const auto epoch0 = Peer::epoch(*m);
  Signal ready;
  auto child = start_holder(seg.name(), ready, [victim](BlockManager& o) {
    Peer::half_done_operation_and_hold(o, victim);
  });
  REQUIRE(ready.wait() == kReady);
  child->kill();

  const auto c = m->counts();  // must not hang; recovers
  CHECK(c.reset == 16);
  CHECK(c.mutable_ + c.staged + c.primary + c.duplicate + c.inactive == 0);
  CHECK(m->inspect_block(victim).state == SlotState::kReset);
  CHECK(metric(*m, "kvbm_recoveries_total") == 1);
  CHECK(Peer::epoch(*m) > epoch0);
  CHECK(m->verify().size() == 1);  // only the dead process entry
  CHECK(m->reap_dead_processes() == 1);
  CHECK(m->verify().empty());

  // The free list was rebuilt with every block, the victim included.
  auto all = m->allocate_blocks(16);
  REQUIRE(all);
  std::set<BlockId> ids;
  for (const auto& b : *all) {
    ids.insert(b.block_id());
  }
  CHECK(ids.size() == 16);
  CHECK(ids.count(victim) == 1);
  CHECK_FALSE(m->allocate_blocks(1));
}

TEST_CASE("unrecoverable damage poisons the segment: every call throws kCorrupted, none hangs",
          "[segment][multiprocess]") {
  TempSegment seg("poison");
  auto m = seg.create(16);
  Signal ready;
  auto child = start_holder(seg.name(), ready, [](BlockManager& o) {
    Peer::corrupt_slot_state(o, 3, 0x7F);  // no intent: cannot be rolled back
    Peer::lock_store_and_hold(o);
  });
  REQUIRE(ready.wait() == kReady);
  child->kill();

  auto expect_corrupted = [](auto&& f) {
    try {
      f();
    } catch (const SegmentError& e) {
      CHECK(e.error().code == Errc::kCorrupted);
      CHECK_FALSE(e.error().message.empty());
      return;
    }
    FAIL("expected kvbm::SegmentError(kCorrupted)");
  };
  expect_corrupted([&] { (void)m->allocate_blocks(1); });
  expect_corrupted([&] { (void)m->allocate_blocks(1); });  // again: no hang, same verdict
  expect_corrupted([&] { (void)m->counts(); });
  expect_corrupted([&] { (void)m->verify(); });

  // Another process's open returns (it may refuse with kCorrupted); it must not hang.
  Child opener([&]() -> int {
    ::alarm(10);  // a hang shows up as exit code 128 + SIGALRM
    auto o = BlockManager::open(seg.name());
    if (!o) {
      return o.error().code == Errc::kCorrupted ? 0 : 10 + static_cast<int>(o.error().code);
    }
    return 1;
  });
  const int code = opener.wait();
  INFO("opener exit code " << code);
  CHECK((code == 0 || code == 1));

  // The poisoned segment can still be destroyed by name.
  CHECK(BlockManager::destroy(seg.name()));
}

// ---------------------------------------------------------------------------------------------
// 10. detach
// ---------------------------------------------------------------------------------------------

TEST_CASE("dropping the last shared_ptr<BlockManager> detaches and frees its entry",
          "[segment][unit]") {
  TempSegment seg("detach");
  auto c = seg.config(8);
  c.max_processes = 2;
  auto a = seg.create(c);
  auto b = seg.open();
  const auto b_index = b->process_index();
  CHECK(metric(*a, "kvbm_attached_processes") == 2);

  auto b_copy = b;
  b.reset();
  CHECK(metric(*a, "kvbm_attached_processes") == 2);  // still one owner left
  b_copy.reset();
  CHECK(metric(*a, "kvbm_attached_processes") == 1);
  CHECK(metric(*a, "kvbm_reaped_processes_total") == 0);  // a detach is not a reap
  CHECK(a->verify().empty());

  auto again = seg.open();
  CHECK(again->process_index() == b_index);
  CHECK(metric(*a, "kvbm_attached_processes") == 2);

  SECTION("blocks outliving their manager stay valid and release on drop") {
    auto blocks = again->allocate_blocks(2);
    REQUIRE(blocks);
    again.reset();
    CHECK(a->counts().mutable_ == 2);
    CHECK(a->verify().empty());
    auto staged =
        std::move(blocks->front()).stage(SequenceHash::make(7, std::nullopt, 0), a->block_size());
    REQUIRE(staged);
    CHECK(a->counts().staged == 1);
    staged = tl::unexpected(BlockSizeMismatch{0, 0, MutableBlock{}});  // drop the staged block
    blocks.reset();
    CHECK(a->counts().reset == 8);
    CHECK(metric(*a, "kvbm_attached_processes") == 1);
    auto next = seg.open();
    CHECK(next->process_index() == b_index);
    CHECK(a->verify().empty());
  }
  SECTION("registered blocks outliving their manager keep it attached until the last drop") {
    auto blocks = again->allocate_blocks(2);
    REQUIRE(blocks);
    std::vector<CompleteBlock> staged;
    for (std::uint64_t i = 0; i < 2; ++i) {
      auto c = std::move((*blocks)[i])
                   .stage(SequenceHash::make(70 + i, std::nullopt, 0), again->block_size());
      REQUIRE(c);
      staged.push_back(std::move(*c));
    }
    auto held = again->register_blocks(std::move(staged));
    const BlockId first = held[0].block_id();
    const BlockId second = held[1].block_id();
    ImmutableBlock copy = held[0];
    WeakBlock weak = held[1].downgrade();
    again.reset();
    // Copies, flags, upgrades and payload access still work without the manager.
    CHECK(metric(*a, "kvbm_attached_processes") == 2);
    CHECK(copy.use_count() == 2);
    held[0].set_reset_on_release(true);
    auto up = weak.upgrade();
    REQUIRE(up);
    CHECK(up->block_id() == second);
    held.clear();
    CHECK(a->inspect_block(first).state == SlotState::kPrimary);   // `copy` still holds it
    CHECK(a->inspect_block(second).state == SlotState::kPrimary);  // `up` still holds it
    copy = ImmutableBlock();
    CHECK(a->inspect_block(first).state == SlotState::kReset);  // released, reset-on-release
    up.reset();
    CHECK(a->inspect_block(second).state == SlotState::kInactive);
    CHECK(metric(*a, "kvbm_attached_processes") == 2);  // the WeakBlock keeps the attachment
    weak = WeakBlock();
    CHECK(metric(*a, "kvbm_attached_processes") == 1);  // detached with its last handle
    CHECK(a->verify().empty());
    auto next = seg.open();
    CHECK(next->process_index() == b_index);
  }
  SECTION("a single-entry table is reusable after the only manager is dropped") {
    again.reset();
    a.reset();
    TempSegment one("detach1");
    auto c1 = one.config(4);
    c1.max_processes = 1;
    auto first = one.create(c1);
    CHECK(first->process_index() == 0);
    auto full = BlockManager::open(one.name());
    REQUIRE_FALSE(full);
    CHECK(full.error().code == Errc::kProcessTableFull);
    first.reset();
    auto second = one.open();
    CHECK(second->process_index() == 0);
    CHECK(metric(*second, "kvbm_attached_processes") == 1);
    CHECK(metric(*second, "kvbm_reaped_processes_total") == 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Names of different segments never touch each other's objects
// ---------------------------------------------------------------------------------------------

// "X.payload" is no segment name (DESIGN.md section 12), but an object of that name may exist
// (another program's, or a segment made by an older build): it is not X's to remove.
TEST_CASE("destroy(X) leaves an object named X.payload alone when X has no payload",
          "[segment][unit]") {
  TempSegment seg("pcoll");
  const std::string other = seg.name() + ".payload";
  NameGuard guard{other};
  auto x = seg.create(4);  // no payload region
  write_bytes(shm_path(other), std::vector<char>(64, 'p'));
  x.reset();
  REQUIRE(BlockManager::destroy(seg.name()));
  CHECK_FALSE(shm_exists(seg.name()));
  CHECK(shm_exists(other));
  CHECK(size_of(other) == 64);
}

TEST_CASE("a failed create with a payload leaves an existing X.payload alone", "[segment][unit]") {
  TempSegment seg("pcoll2");
  const std::string other = seg.name() + ".payload";
  NameGuard guard{other};
  write_bytes(shm_path(other), std::vector<char>(64, 'p'));
  SegmentConfig c = seg.config(4);
  c.bytes_per_block = 64;
  auto x = BlockManager::create(c);
  // Refusing is fine (the payload name is taken); removing or resizing the object is not.
  REQUIRE_FALSE(x);
  CHECK_FALSE(x.error().message.empty());
  CHECK_FALSE(shm_exists(seg.name()));
  CHECK(shm_exists(other));
  CHECK(size_of(other) == 64);
}

TEST_CASE("errors format with their code name", "[segment][unit]") {
  TempSegment seg("fmt");
  auto o = BlockManager::open(seg.name());
  REQUIRE_FALSE(o);
  const std::string text = fmt::format("{}", o.error());
  CHECK_THAT(text, Contains("not_found"));
  CHECK_THAT(text, Contains(seg.name()));
  CHECK(errc_name(Errc::kInvalidConfig) == "invalid_config");
  CHECK(errc_name(Errc::kLayoutMismatch) != errc_name(Errc::kCorrupted));
}

// ---------------------------------------------------------------------------------------------
// Payload region
// ---------------------------------------------------------------------------------------------

TEST_CASE("the payload region is shared between attachments", "[segment][unit]") {
  TempSegment seg("pshare");
  auto c = seg.config(4);
  c.bytes_per_block = 256;
  auto a = seg.create(c);
  auto b = seg.open();
  CHECK(b->config().bytes_per_block == 256);
  CHECK(size_of(seg.name() + ".payload") >= static_cast<off_t>(4 * 256));

  auto blocks = a->allocate_blocks(1);
  REQUIRE(blocks);
  auto span = blocks->front().data();
  REQUIRE(span.size() == 256);
  for (std::size_t i = 0; i < span.size(); ++i) {
    span[i] = static_cast<std::byte>(i * 7 + 1);
  }
  const auto hash = SequenceHash::make(42, std::nullopt, 0);
  auto staged = std::move(blocks->front()).stage(hash, a->block_size());
  REQUIRE(staged);
  auto imm = a->register_block(std::move(*staged));

  auto seen = b->match_blocks(std::span<const SequenceHash>(&hash, 1));
  REQUIRE(seen.size() == 1);
  auto bytes = seen[0].data();
  REQUIRE(bytes.size() == 256);
  bool same = true;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    same = same && bytes[i] == static_cast<std::byte>(i * 7 + 1);
  }
  CHECK(same);
}

TEST_CASE("a truncated payload object is kCorrupted", "[segment][unit]") {
  TempSegment seg("ptrunc");
  auto c = seg.config(8);
  c.bytes_per_block = 4096;
  create_and_drop(c);
  const std::string ppath = shm_path(seg.name() + ".payload");
  REQUIRE(::truncate(ppath.c_str(), 4096) == 0);
  auto o = BlockManager::open(seg.name());
  REQUIRE_FALSE(o);
  CHECK(o.error().code == Errc::kCorrupted);
  CHECK_THAT(o.error().message, Contains("payload"));
}
