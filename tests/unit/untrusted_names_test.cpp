// SPDX-License-Identifier: Apache-2.0
// Names in /dev/shm that anyone on the host may have created (DESIGN.md section 12): FIFOs,
// sockets, directories and symlinks named like a segment; payload names; modes that let a
// read-only user block liveness locks; segments owned by another user; damaged magic; a creator
// killed in the middle of creating. Every call that could block runs in a child process with an
// alarm, so a hang fails the test instead of stalling the suite.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "kvbm/kvbm.hpp"

#include "segment/segment.hpp"
#include "shm/header.hpp"
#include "store/block_store.hpp"
#include "support/temp_segment.hpp"

using namespace kvbm;
using Catch::Matchers::Contains;
using kvbm::testing::Child;
using kvbm::testing::TempSegment;

namespace {

std::string shm_path(const std::string& name) {
  return "/dev/shm/" + name;
}

bool exists_no_follow(const std::string& name) {
  struct stat st {};
  return ::lstat(shm_path(name).c_str(), &st) == 0;
}

// Runs `body` in a child that SIGALRM kills after 5 s; returns the child's exit code (128 + 14
// for a hang).
int in_child(std::function<int()> body) {
  Child c([body] {
    ::alarm(5);
    return body();
  });
  return c.wait();
}

constexpr int kSigAlrm = 128 + SIGALRM;

// Makes a non-regular object called `name` in /dev/shm; returns its kind for messages.
enum class Kind { kFifo, kSocket, kDirectory, kSymlink };

void make_object(Kind kind, const std::string& name, const std::string& symlink_target) {
  const std::string path = shm_path(name);
  switch (kind) {
    case Kind::kFifo:
      REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
      break;
    case Kind::kSocket: {
      const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
      REQUIRE(fd >= 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      REQUIRE(path.size() < sizeof(addr.sun_path));
      std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
      REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
      ::close(fd);  // the socket file stays
      break;
    }
    case Kind::kDirectory:
      REQUIRE(::mkdir(path.c_str(), 0700) == 0);
      break;
    case Kind::kSymlink:
      REQUIRE(::symlink(shm_path(symlink_target).c_str(), path.c_str()) == 0);
      break;
  }
}

void remove_object(const std::string& name) {
  const std::string path = shm_path(name);
  if (::rmdir(path.c_str()) != 0) {
    ::unlink(path.c_str());
  }
}

Errc code_of(const Result<std::shared_ptr<BlockManager>>& r) {
  return r ? Errc::kSystem : r.error().code;
}

}  // namespace

TEST_CASE("FIFOs, sockets, directories and symlinks named like a segment", "[untrusted][unit]") {
  TempSegment target("untr-target");
  auto real = target.create(8);  // a symlink points at a real segment: still refused
  const std::string name = fmt::format("untr-obj-{}", ::getpid());
  Kind kind = Kind::kFifo;
  SECTION("FIFO") {
    kind = Kind::kFifo;
  }
  SECTION("socket") {
    kind = Kind::kSocket;
  }
  SECTION("directory") {
    kind = Kind::kDirectory;
  }
  SECTION("symlink to a real segment") {
    kind = Kind::kSymlink;
  }
  make_object(kind, name, target.name());
  INFO("object kind " << static_cast<int>(kind));

  // open, open_or_create and destroy each fail at once with kLayoutMismatch, removing nothing.
  CHECK(in_child([&] {
          auto r = BlockManager::open(name);
          return code_of(r) == Errc::kLayoutMismatch ? 0 : 1;
        }) == 0);
  CHECK(in_child([&] {
          SegmentConfig c;
          c.name = name;
          c.block_count = 8;
          auto r = BlockManager::open_or_create(c);
          return code_of(r) == Errc::kLayoutMismatch ? 0 : 1;
        }) == 0);
  CHECK(in_child([&] {
          auto r = BlockManager::destroy(name);
          return !r && r.error().code == Errc::kLayoutMismatch ? 0 : 1;
        }) == 0);
  CHECK(exists_no_follow(name));
  // The message says what the object is.
  auto r = BlockManager::open(name);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Contains("not a kvbm segment"));
  remove_object(name);
  // The symlink's target was never touched.
  CHECK(real->verify().empty());
}

TEST_CASE("a FIFO as a segment's payload is reported, never waited on", "[untrusted][unit]") {
  TempSegment seg("untr-plfifo");
  auto c = seg.config(8);
  c.bytes_per_block = 64;
  { auto m = seg.create(c); }
  const std::string pname = seg.name() + ".payload";
  REQUIRE(::unlink(shm_path(pname).c_str()) == 0);
  REQUIRE(::mkfifo(shm_path(pname).c_str(), 0600) == 0);
  CHECK(in_child([&] {
          auto r = BlockManager::open(seg.name());
          return code_of(r) == Errc::kCorrupted ? 0 : 1;
        }) == 0);
  // Destroying the segment does not remove the FIFO (not a payload we made).
  REQUIRE(BlockManager::destroy(seg.name()));
  CHECK(exists_no_follow(pname));
  ::unlink(shm_path(pname).c_str());
}

TEST_CASE("names ending in .payload are not segment names", "[untrusted][unit]") {
  TempSegment seg("untr-pl");
  auto c = seg.config(8);
  c.bytes_per_block = 64;
  auto m = seg.create(c);
  const std::string pname = seg.name() + ".payload";
  SegmentConfig as_payload = c;
  as_payload.name = "untr-new.payload";
  auto created = BlockManager::create(as_payload);
  REQUIRE_FALSE(created);
  CHECK(created.error().code == Errc::kInvalidConfig);
  CHECK_THAT(created.error().message, Contains(".payload"));
  auto opened = BlockManager::open(pname);
  REQUIRE_FALSE(opened);
  CHECK(opened.error().code == Errc::kInvalidConfig);
  auto destroyed = BlockManager::destroy(pname);
  REQUIRE_FALSE(destroyed);
  CHECK(destroyed.error().code == Errc::kInvalidConfig);
  // The live segment's payload is still there and still works.
  CHECK(exists_no_follow(pname));
  auto blocks = m->allocate_blocks(1);
  REQUIRE(blocks);
  CHECK((*blocks)[0].data().size() == 64);
}

TEST_CASE("permissions grant read and write together per class", "[untrusted][unit]") {
  TempSegment seg("untr-mode");
  for (std::uint32_t p : {0644u, 0640u, 0604u, 0400u, 0700u, 0622u, 0664u, 0606u, 0000u}) {
    auto c = seg.config(4);
    c.permissions = p;
    auto r = BlockManager::create(c);
    INFO(fmt::format("{:04o}", p));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::kInvalidConfig);
    CHECK_THAT(r.error().message, Contains("permissions"));
    CHECK_FALSE(exists_no_follow(seg.name()));
  }
  for (std::uint32_t p : {0600u, 0660u, 0666u}) {
    auto c = seg.config(4);
    c.permissions = p;
    { auto m = seg.create(c); }
    REQUIRE(BlockManager::destroy(seg.name()));
  }
}

// Root may chown the object to another user and so play the other user's part.
TEST_CASE("a segment owned by another user: open_or_create refuses, open follows the mode",
          "[untrusted][unit]") {
  if (::geteuid() != 0) {
    WARN("not running as root: cannot give a segment to another user; skipped");
    return;
  }
  constexpr uid_t kOther = 4242;
  TempSegment seg("untr-owner");
  std::uint32_t mode = 0600;
  SECTION("0600") {
    mode = 0600;
  }
  SECTION("0666") {
    mode = 0666;
  }
  auto c = seg.config(8);
  c.permissions = mode;
  { auto m = seg.create(c); }
  REQUIRE(::chown(shm_path(seg.name()).c_str(), kOther, kOther) == 0);

  auto o = BlockManager::open_or_create(c);
  REQUIRE_FALSE(o);
  CHECK(o.error().code == Errc::kPermissionDenied);
  CHECK_THAT(o.error().message, Contains("uid 4242"));

  auto opened = BlockManager::open(seg.name());
  if (mode == 0666) {
    REQUIRE(opened);  // the mode lets everyone write: an explicit open attaches
    CHECK((*opened)->verify().empty());
  } else {
    // Root could write it, but the mode does not grant it to anyone but uid 4242.
    REQUIRE_FALSE(opened);
    CHECK(opened.error().code == Errc::kPermissionDenied);
    CHECK_THAT(opened.error().message, Contains("uid 4242"));
  }
}

TEST_CASE("destroy of a segment with damaged magic still removes its payload",
          "[untrusted][unit]") {
  TempSegment seg("untr-magic");
  auto c = seg.config(8);
  c.bytes_per_block = 64;
  { auto m = seg.create(c); }
  const std::uint64_t garbage = 0x0123456789abcdefull;
  const int fd = ::open(shm_path(seg.name()).c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, &garbage, sizeof(garbage), 0) == sizeof(garbage));
  ::close(fd);
  REQUIRE(BlockManager::destroy(seg.name()));
  CHECK_FALSE(exists_no_follow(seg.name()));
  CHECK_FALSE(exists_no_follow(seg.name() + ".payload"));
}

TEST_CASE("a creator killed mid-create leaves a segment open reports as corrupted",
          "[untrusted][unit]") {
  TempSegment seg("untr-midcreate");
  auto c = seg.config(64);
  c.bytes_per_block = 64;
  // A real SIGKILL after the header is written and before init_state = ready is published.
  Child creator([c] {
    auto s = detail::Segment::create(c, [](detail::Segment& seg) {
      detail::BlockStore::init_regions(seg);
      ::raise(SIGKILL);
    });
    return s ? 1 : 2;
  });
  REQUIRE(creator.wait() == 128 + SIGKILL);
  REQUIRE(exists_no_follow(seg.name()));
  const auto start = std::chrono::steady_clock::now();
  auto o = BlockManager::open(seg.name());
  REQUIRE_FALSE(o);
  CHECK(o.error().code == Errc::kCorrupted);
  CHECK_THAT(o.error().message, Contains("died"));
  // Known dead at once (its init lock is free): no waiting out the 2 s for a live creator.
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(1500));
  REQUIRE(BlockManager::destroy(seg.name()));
  CHECK_FALSE(exists_no_follow(seg.name()));
}

TEST_CASE("an empty object nobody is creating is not a kvbm segment", "[untrusted][unit]") {
  const std::string name = fmt::format("untr-empty-{}", ::getpid());
  const int fd = ::open(shm_path(name).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  ::close(fd);
  const auto start = std::chrono::steady_clock::now();
  auto o = BlockManager::open(name);
  REQUIRE_FALSE(o);
  CHECK(o.error().code == Errc::kLayoutMismatch);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(1500));
  ::unlink(shm_path(name).c_str());
}
