// SPDX-License-Identifier: Apache-2.0
// Running kvbm-ctl as a real binary for the ctl tests (fork + execv, stdout/stderr captured, exact
// exit status, hard timeout), and the file helpers the tests damage segments with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

namespace kvbm::ctltest {

using nlohmann::json;

struct Run {
  int code = -1;           // exit code, or 128 + signal
  bool timed_out = false;  // killed by us after the deadline
  double seconds = 0;      // wall time of the run
  std::string out, err;
  std::string all() const { return out + err; }
};

std::string describe(const std::vector<std::string>& args, const Run& r);
/// Runs kvbm-ctl with `args`; SIGKILLs it after `timeout_s` (then timed_out is set). With `stop`:
/// called whenever output arrives; once it returns true the tool gets SIGTERM (for commands that
/// run until stopped, e.g. events).
Run run_ctl(const std::vector<std::string>& args,
            int timeout_s = 10,
            const std::function<bool(const Run&)>& stop = nullptr);
json parse_json(const Run& r);
bool contains(const std::string& haystack, const std::string& needle);
std::string lower(std::string s);

std::string shm_path(const std::string& name);
std::vector<unsigned char> read_file(const std::string& path);
/// Writes `n` bytes at `offset` of an existing file (in place: keeps the inode).
void write_at(const std::string& path, std::uint64_t offset, const void* data, std::size_t n);
/// Creates (or replaces) /dev/shm/<name> holding exactly `bytes`.
void write_new_file(const std::string& name, const std::vector<unsigned char>& bytes);

}  // namespace kvbm::ctltest

// Runs and checks the exit code, showing the whole run on failure.
#define CTL_EXPECT(result, expected_code, ...)                                    \
  const ::kvbm::ctltest::Run result =                                             \
      ::kvbm::ctltest::run_ctl(std::vector<std::string>{__VA_ARGS__});            \
  INFO(::kvbm::ctltest::describe(std::vector<std::string>{__VA_ARGS__}, result)); \
  REQUIRE_FALSE(result.timed_out);                                                \
  REQUIRE(result.code == (expected_code))
