// SPDX-License-Identifier: Apache-2.0
// Progress of a long kvbm-ctl command (verify, repair of a large segment) on stderr, never on
// stdout (which stays parseable, e.g. with --json): nothing while the command is quick; once it
// has run for 2 s (KVBM_CTL_PROGRESS_AFTER_MS overrides), one line every 2 s saying it is still
// at work, rewritten in place when stderr is a terminal. Ends when the object is destroyed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace kvbm::ctl {

class Progress {
 public:
  explicit Progress(std::string what);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

 private:
  void run();

  std::string what_;
  std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  bool printed_ = false;
  std::thread thread_;
};

}  // namespace kvbm::ctl
