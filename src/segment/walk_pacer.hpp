// SPDX-License-Identifier: Apache-2.0
// WalkPacer: lets a long walk over the segment's structures (verify of a million blocks) give the
// store mutex up now and then, so that no worker waits long behind it. The walk calls step() once
// per slot, bucket or list node; every kStepsPerCheck steps the pacer's check() runs, which may
// unlock, let a waiter in, relock, and throw to abandon a walk whose view is no longer consistent
// (store/paced_verify.hpp). The base class never yields: the exclusive walk of repair, recovery
// and `kvbm-ctl verify --exclusive`.
#pragma once

#include <cstdint>

namespace kvbm::detail {

class WalkPacer {
 public:
  /// Steps between two looks at the clock (~20 ns): at most a few microseconds of walking (a
  /// step is one slot, bucket or node; a random one is a cache miss of ~100 ns at a million
  /// blocks).
  static constexpr std::uint32_t kStepsPerCheck = 16;

  virtual ~WalkPacer() = default;
  WalkPacer() = default;
  WalkPacer(const WalkPacer&) = delete;
  WalkPacer& operator=(const WalkPacer&) = delete;

  /// Called by the walk between two units of work (never while one is half-read).
  void step() {
    if (++steps_ >= kStepsPerCheck) [[unlikely]] {
      steps_ = 0;
      check();
    }
  }

 protected:
  /// May yield the store mutex (and throw); the default never does.
  virtual void check() {}

 private:
  std::uint32_t steps_ = 0;
};

}  // namespace kvbm::detail
