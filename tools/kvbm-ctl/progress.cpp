// SPDX-License-Identifier: Apache-2.0
#include "progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

namespace kvbm::ctl {
namespace {

std::chrono::milliseconds first_delay() {
  if (const char* v = std::getenv("KVBM_CTL_PROGRESS_AFTER_MS")) {
    return std::chrono::milliseconds(std::strtol(v, nullptr, 10));
  }
  return std::chrono::seconds(2);
}

}  // namespace

Progress::Progress(std::string what)
    : what_(std::move(what)),
      start_(std::chrono::steady_clock::now()),
      thread_([this] { run(); }) {}

Progress::~Progress() {
  {
    std::lock_guard lock(mutex_);
    done_ = true;
  }
  cv_.notify_one();
  thread_.join();
}

void Progress::run() {
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  auto print = [&] {
    const auto secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const std::string line = fmt::format("kvbm-ctl: {}: still working ({:.0f} s)", what_, secs);
    std::fputs(tty ? ("\r" + line).c_str() : (line + "\n").c_str(), stderr);
    std::fflush(stderr);
    printed_ = true;
  };
  std::unique_lock lock(mutex_);
  const auto delay = first_delay();
  if (delay.count() <= 0) {
    print();  // asked for at once (KVBM_CTL_PROGRESS_AFTER_MS=0), however quick the work is
  }
  auto next = start_ + std::max(delay, std::chrono::milliseconds(1)) +
              (delay.count() <= 0 ? std::chrono::milliseconds(2000) : std::chrono::milliseconds(0));
  while (!cv_.wait_until(lock, next, [this] { return done_; })) {
    print();
    next = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  }
  if (printed_ && tty) {
    std::fputs("\n", stderr);  // leave the terminal's last line to the command's own output
  }
}

}  // namespace kvbm::ctl
