// SPDX-License-Identifier: Apache-2.0
// Test support: unique segment names removed on scope exit, and real child processes.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>

#include "kvbm/kvbm.hpp"

namespace kvbm::testing {

/// A segment name unique to this process and call, destroyed (with its payload) on scope exit.
class TempSegment {
 public:
  explicit TempSegment(std::string_view tag = "t");
  ~TempSegment();
  TempSegment(const TempSegment&) = delete;
  TempSegment& operator=(const TempSegment&) = delete;
  const std::string& name() const { return name_; }
  /// A config for this name with `blocks` blocks (other fields default).
  SegmentConfig config(std::uint32_t blocks) const;
  /// create(config) that fails the test on error.
  std::shared_ptr<BlockManager> create(const SegmentConfig& config) const;
  std::shared_ptr<BlockManager> create(std::uint32_t blocks) const {
    return create(config(blocks));
  }
  std::shared_ptr<BlockManager> open() const;

 private:
  std::string name_;
};

/// A forked child running `body`; its return value is the exit code. The child dies with the
/// test process (PR_SET_PDEATHSIG) and never runs Catch2 code.
class Child {
 public:
  explicit Child(std::function<int()> body);
  ~Child();  // SIGKILLs and reaps a child still running
  pid_t pid() const { return pid_; }
  /// Waits for exit; returns the exit code, or 128 + signal.
  int wait();
  void kill();  // SIGKILL, then wait

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

/// A one-way pipe for "I am ready" handshakes between processes (no sleeps).
class Signal {
 public:
  Signal();
  ~Signal();
  void notify(char value = 1);  // in the writer
  /// Blocks until a byte arrives (or the writer exits: returns 0).
  char wait();

 private:
  int fds_[2];
};

}  // namespace kvbm::testing
