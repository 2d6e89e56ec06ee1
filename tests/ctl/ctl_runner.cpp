// SPDX-License-Identifier: Apache-2.0
#include "ctl/ctl_runner.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>

#include <fmt/format.h>

#ifndef KVBM_CTL_PATH
#error "KVBM_CTL_PATH must name the kvbm-ctl binary"
#endif

namespace kvbm::ctltest {

std::string describe(const std::vector<std::string>& args, const Run& r) {
  std::string cmd = "kvbm-ctl";
  for (const auto& a : args) {
    cmd += " " + a;
  }
  return fmt::format("$ {}\nexit {}{}\n--- stdout ---\n{}\n--- stderr ---\n{}", cmd, r.code,
                     r.timed_out ? " (TIMED OUT)" : "", r.out.substr(0, 4000),
                     r.err.substr(0, 4000));
}

Run run_ctl(const std::vector<std::string>& args,
            int timeout_s,
            const std::function<bool(const Run&)>& stop) {
  int out_pipe[2], err_pipe[2];
  REQUIRE(::pipe2(out_pipe, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err_pipe, O_CLOEXEC) == 0);
  std::vector<std::string> storage;
  storage.push_back(KVBM_CTL_PATH);
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : storage) {
    argv.push_back(s.data());
  }
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) {
      ::_exit(127);
    }
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) {
      ::dup2(devnull, 0);
    }
    // No inherited descriptor (Signal pipes, segment fds) survives into the tool.
    ::syscall(SYS_close_range, 3u, ~0u, 0u);
    ::execv(argv[0], argv.data());
    ::_exit(126);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  Run r;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  bool stopped = false;
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) {
      r.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    const int n = ::poll(fds, 2, static_cast<int>(left));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        char buf[65536];
        const ssize_t got = ::read(fds[i].fd, buf, sizeof(buf));
        if (got > 0) {
          sinks[i]->append(buf, static_cast<std::size_t>(got));
          if (stop && !stopped && stop(r)) {
            stopped = true;
            ::kill(pid, SIGTERM);
          }
        } else if (got == 0 || errno != EINTR) {
          ::close(fds[i].fd);
          fds[i].fd = -1;
          --open_fds;
        }
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) {
      ::close(f.fd);
    }
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - deadline +
                                            std::chrono::seconds(timeout_s))
                  .count();
  return r;
}

json parse_json(const Run& r) {
  INFO("output: " << r.out.substr(0, 4000));
  json j;
  REQUIRE_NOTHROW(j = json::parse(r.out));
  return j;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string lower(std::string s) {
  for (auto& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

std::string shm_path(const std::string& name) {
  return "/dev/shm/" + name;
}

std::vector<unsigned char> read_file(const std::string& path) {
  std::vector<unsigned char> bytes;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  bytes.resize(static_cast<std::size_t>(st.st_size));
  REQUIRE(::pread(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  return bytes;
}

// Writes `bytes` at `offset` of an existing file (in place: keeps the inode).
void write_at(const std::string& path, std::uint64_t offset, const void* data, std::size_t n) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, data, n, static_cast<off_t>(offset)) == static_cast<ssize_t>(n));
  ::close(fd);
}

// Creates (or replaces) /dev/shm/<name> holding exactly `bytes`.
void write_new_file(const std::string& name, const std::vector<unsigned char>& bytes) {
  const std::string path = shm_path(name);
  ::unlink(path.c_str());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

}  // namespace kvbm::ctltest
