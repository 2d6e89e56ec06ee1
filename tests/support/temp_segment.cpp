// SPDX-License-Identifier: Apache-2.0
#include "support/temp_segment.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>

#include <catch2/catch.hpp>
#include <fmt/format.h>

namespace kvbm::testing {

TempSegment::TempSegment(std::string_view tag) {
  static std::atomic<int> counter{0};
  name_ = fmt::format("kvbm-test-{}-{}-{}", tag, ::getpid(), counter.fetch_add(1));
  (void)BlockManager::destroy(name_);
}

TempSegment::~TempSegment() {
  (void)BlockManager::destroy(name_);
}

SegmentConfig TempSegment::config(std::uint32_t blocks) const {
  SegmentConfig c;
  c.name = name_;
  c.block_count = blocks;
  return c;
}

std::shared_ptr<BlockManager> TempSegment::create(const SegmentConfig& config) const {
  auto m = BlockManager::create(config);
  if (!m) {
    FAIL("create failed: " << fmt::format("{}", m.error()));
  }
  return *m;
}

std::shared_ptr<BlockManager> TempSegment::open() const {
  auto m = BlockManager::open(name_);
  if (!m) {
    FAIL("open failed: " << fmt::format("{}", m.error()));
  }
  return *m;
}

Child::Child(std::function<int()> body) {
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ < 0) {
    FAIL("fork failed");
  }
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) {
      ::_exit(99);
    }
    int code = 97;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: exception: %s\n", e.what());
      code = 98;
    }
    ::_exit(code);
  }
}

Child::~Child() {
  if (pid_ > 0 && status_ == -1) {
    kill();
  }
}

int Child::wait() {
  if (status_ != -1) {
    return status_;
  }
  int st = 0;
  while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return status_;
}

void Child::kill() {
  if (status_ == -1) {
    ::kill(pid_, SIGKILL);
    wait();
  }
}

Signal::Signal() {
  if (::pipe(fds_) != 0) {
    std::abort();
  }
}

Signal::~Signal() {
  ::close(fds_[0]);
  ::close(fds_[1]);
}

void Signal::notify(char value) {
  if (::write(fds_[1], &value, 1) != 1) {
    std::abort();
  }
}

char Signal::wait() {
  char c = 0;
  ssize_t n;
  do {
    n = ::read(fds_[0], &c, 1);
  } while (n < 0 && errno == EINTR);
  return n == 1 ? c : 0;
}

}  // namespace kvbm::testing
