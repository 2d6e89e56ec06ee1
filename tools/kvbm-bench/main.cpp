// SPDX-License-Identifier: Apache-2.0
// kvbm-bench: the benchmark driver of DESIGN.md section 7. Each case runs R timed repetitions and
// reports the median (and p10/p90) next to an in-process baseline (baseline.hpp) measured in the
// same run, with the repetitions of kvbm and baseline interleaved so that machine noise hits both.
//
// The whole run keeps one extra idle thread alive (blocked on a condition variable, as in a real
// server), so both kvbm and the baseline run in a multi-threaded process (libstdc++ uses atomic
// reference counts and real mutex calls only then).
//
// Usage: kvbm-bench [--reps N] [--quick] [--only CASES] [--markdown FILE] [--csv FILE]
//        kvbm-bench --evict-instructions lru|lineage|baseline N   (for callgrind, see bench.sh)
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kvbm/kvbm.hpp"

#include "baseline.hpp"
#include "harness.hpp"
#include "testing/hooks.hpp"

namespace kvbm_bench {
namespace {

using kvbm::BlockManager;
using kvbm::SequenceHash;

constexpr std::size_t kBatch = 32;

// --- process plumbing ---------------------------------------------------------------------------

bool g_is_child = false;
std::vector<std::string> g_segments;  // created by this process; destroyed at exit

[[noreturn]] void die(const std::string& what) {
  if (g_is_child) {
    std::fprintf(stderr, "kvbm-bench (child %d): %s\n", static_cast<int>(::getpid()), what.c_str());
    ::_exit(3);
  }
  std::fprintf(stderr, "kvbm-bench: %s\n", what.c_str());
  std::exit(1);  // runs cleanup_segments()
}

void cleanup_segments() {
  if (g_is_child) {
    return;
  }
  for (const std::string& name : g_segments) {
    (void)BlockManager::destroy(name);
  }
  g_segments.clear();
}

/// Removes kvbm-bench-<pid>-* segments left behind by runs whose process is gone.
void remove_stale_segments() {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string file = entry.path().filename().string();
    const std::string prefix = "kvbm-bench-";
    if (file.rfind(prefix, 0) != 0 || file.ends_with(".payload")) {
      continue;
    }
    const long pid = std::strtol(file.c_str() + prefix.size(), nullptr, 10);
    if (pid <= 0 || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)) {
      (void)BlockManager::destroy(file);
    }
  }
}

std::string segment_name(const std::string& which) {
  return fmt::format("kvbm-bench-{}-{}", ::getpid(), which);
}

std::shared_ptr<BlockManager> create_segment(
    const std::string& which,
    std::uint32_t blocks,
    kvbm::EvictionPolicy policy = kvbm::EvictionPolicy::kLru) {
  const std::string name = segment_name(which);
  (void)BlockManager::destroy(name);  // left over from an earlier run with the same pid
  kvbm::SegmentConfig cfg;
  cfg.name = name;
  cfg.block_count = blocks;
  cfg.eviction = policy;
  cfg.lineage_order = kvbm::LineageOrder::kTick;  // the default; only read by kLineage
  auto m = BlockManager::create(cfg);
  if (!m) {
    die(fmt::format("cannot create segment {}: {}", name, m.error()));
  }
  g_segments.push_back(name);
  return *m;
}

void destroy_segment(std::shared_ptr<BlockManager>& m) {
  const std::string name = m->config().name;
  m.reset();
  (void)BlockManager::destroy(name);
  std::erase(g_segments, name);
}

/// The second thread of the process, alive for the whole run and blocked on a condition variable.
class IdleThread {
 public:
  IdleThread()
      : thread_([this] {
          std::unique_lock<std::mutex> l(mu_);
          cv_.wait(l, [this] { return stop_; });
        }) {}
  ~IdleThread() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  IdleThread(const IdleThread&) = delete;
  IdleThread& operator=(const IdleThread&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

void write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) {
      continue;
    }
    if (w <= 0) {
      die(fmt::format("write to pipe: {}", std::strerror(errno)));
    }
    c += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// False on EOF.
bool read_all(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::read(fd, c, n);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r < 0) {
      die(fmt::format("read from pipe: {}", std::strerror(errno)));
    }
    if (r == 0) {
      return false;
    }
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

struct Pipe {
  int fd[2] = {-1, -1};
  Pipe() {
    if (::pipe2(fd, O_CLOEXEC) != 0) {
      die(fmt::format("pipe: {}", std::strerror(errno)));
    }
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  void close_read() {
    if (fd[0] >= 0) {
      ::close(fd[0]);
      fd[0] = -1;
    }
  }
  void close_write() {
    if (fd[1] >= 0) {
      ::close(fd[1]);
      fd[1] = -1;
    }
  }
};

/// In the child: never run the parent's atexit handlers, die with the parent.
void become_child() {
  g_is_child = true;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
}

void wait_child(pid_t pid, bool expect_kill) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      die(fmt::format("waitpid: {}", std::strerror(errno)));
    }
  }
  const bool ok = expect_kill ? (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
                              : (WIFEXITED(status) && WEXITSTATUS(status) == 0);
  if (!ok) {
    die(fmt::format("child {} ended unexpectedly (status {:#x})", pid, status));
  }
}

// --- hashes -------------------------------------------------------------------------------------

std::uint64_t g_next_hash = 1;

/// `n` hashes never used before in this run (position 0, no parent).
std::vector<SequenceHash> fresh_hashes(std::size_t n) {
  std::vector<SequenceHash> v;
  v.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    v.push_back(SequenceHash::make(g_next_hash++, std::nullopt, 0));
  }
  return v;
}

/// How the hashes of a batch relate to each other in the lineage tree.
enum class Shape {
  kSingle,  // independent blocks: position 0, no parent (every block a root and a leaf)
  kChain,   // chains of kBatch blocks, positions 0..31, each block the parent of the next
};

/// `n` new hashes of `shape`; kChain starts a new chain at every multiple of kBatch, so each
/// batch of a cycle registers one whole chain (one request's prompt of 32 blocks).
std::vector<SequenceHash> new_hashes(std::size_t n, Shape shape) {
  if (shape == Shape::kSingle) {
    return fresh_hashes(n);
  }
  std::vector<SequenceHash> v;
  v.reserve(n);
  std::uint64_t parent = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto pos = static_cast<std::uint32_t>(i % kBatch);
    const std::uint64_t current = g_next_hash++;
    v.push_back(SequenceHash::make(current, pos == 0 ? std::nullopt : std::optional(parent), pos));
    parent = current;
  }
  return v;
}

// --- the operations, written once for kvbm::BlockManager and baseline::Pool ---------------------

template <class M>
struct Types;
template <>
struct Types<BlockManager> {
  using Complete = kvbm::CompleteBlock;
};
template <>
struct Types<baseline::Pool> {
  using Complete = baseline::CompleteBlock;
};

void drain(BlockManager& m) {
  (void)m.reset_inactive_pool();  // kBlocksInUse only reports blocks held elsewhere
}
void drain(baseline::Pool& p) {
  p.reset_inactive_pool();
}

/// `iters` times: allocate_blocks(batch) -> stage each -> register_blocks -> drop all.
template <class M>
void cycle(M& m, const SequenceHash* h, std::size_t iters, std::size_t batch = kBatch) {
  using Complete = typename Types<M>::Complete;
  const std::uint32_t bs = m.block_size();
  for (std::size_t it = 0; it < iters; ++it, h += batch) {
    auto blocks = m.allocate_blocks(batch);
    if (!blocks) {
      die("allocate_blocks failed in the cycle");
    }
    std::vector<Complete> staged;
    staged.reserve(batch);
    for (std::size_t i = 0; i < batch; ++i) {
      auto r = std::move((*blocks)[i]).stage(h[i], bs);
      if (!r) {
        die("stage failed");
      }
      staged.push_back(std::move(*r));
    }
    auto registered = m.register_blocks(std::move(staged));
    if (registered.size() != batch) {
      die("register_blocks returned a short vector");
    }
  }  // every handle dropped here: the registered blocks go to the inactive pool
}

/// Fills the whole pool with registered, inactive blocks (free list empty, inactive pool full).
template <class M>
void fill_inactive(M& m, std::size_t n, Shape shape = Shape::kSingle) {
  auto h = new_hashes(n, shape);
  cycle(m, h.data(), n / kBatch);
  if (n % kBatch != 0) {
    cycle(m, h.data() + (n / kBatch) * kBatch, 1, n % kBatch);
  }
}

template <class M>
auto register_fresh(M& m, std::span<const SequenceHash> h) {
  using Complete = typename Types<M>::Complete;
  auto blocks = m.allocate_blocks(h.size());
  if (!blocks) {
    die("allocate_blocks failed");
  }
  std::vector<Complete> staged;
  for (std::size_t i = 0; i < h.size(); ++i) {
    auto r = std::move((*blocks)[i]).stage(h[i], m.block_size());
    if (!r) {
      die("stage failed");
    }
    staged.push_back(std::move(*r));
  }
  return m.register_blocks(std::move(staged));
}

// Case 1: ns per block of the full cycle; the inactive pool is drained before each repetition
// (untimed), so every allocation in the timed part comes from the reset pool.
template <class M>
double rep_cycle(M& m, std::size_t iters) {
  auto h = fresh_hashes(iters * kBatch);
  drain(m);
  const std::int64_t t0 = now_ns();
  cycle(m, h.data(), iters);
  const std::int64_t t1 = now_ns();
  return static_cast<double>(t1 - t0) / static_cast<double>(iters * kBatch);
}

// Cases 2 and 3: match_blocks of `h` (all present), results dropped inside the timed loop.
template <class M>
double rep_match(M& m, std::span<const SequenceHash> h, std::size_t iters) {
  const std::int64_t t0 = now_ns();
  for (std::size_t it = 0; it < iters; ++it) {
    auto got = m.match_blocks(h);
    if (got.size() != h.size()) {
      die("match_blocks missed a hash");
    }
  }
  const std::int64_t t1 = now_ns();
  return static_cast<double>(t1 - t0) / static_cast<double>(iters * h.size());
}

/// allocate_blocks(32) with an empty free list and a full inactive pool (32 evictions), then
/// drop the 32 mutable blocks (to Reset).
template <class M>
void evict_batch(M& m) {
  auto b = m.allocate_blocks(kBatch);
  if (!b || b->size() != kBatch) {
    die("allocate_blocks failed under pressure");
  }
}

// --evict-instructions: one evict_batch in a function of its own that is never inlined, so that
// callgrind's --toggle-collect counts exactly its instructions (and those of what it calls), not
// the refill around it.
__attribute__((noinline)) void evict_round(BlockManager& m) {
  evict_batch(m);
}
__attribute__((noinline)) void evict_round(baseline::Pool& p) {
  evict_batch(p);
}

// Case 4: evict_batch timed. Refill (re-register those 32 blocks under new hashes of `shape` and
// drop them to the inactive pool): untimed.
template <class M>
double rep_evict(M& m, std::size_t iters, Shape shape = Shape::kSingle) {
  auto refill = new_hashes(iters * kBatch, shape);
  std::int64_t timed = 0;
  for (std::size_t it = 0; it < iters; ++it) {
    const std::int64_t t0 = now_ns();
    evict_batch(m);
    timed += now_ns() - t0;
    cycle(m, refill.data() + it * kBatch, 1);
  }
  return static_cast<double>(timed) / static_cast<double>(iters * kBatch);
}

/// Runs kvbm and baseline repetitions interleaved (after one warm-up each).
template <class FK, class FB>
std::pair<Stats, Stats> paired(int reps, FK&& kv, FB&& base) {
  kv();
  base();
  std::vector<double> a;
  std::vector<double> b;
  for (int r = 0; r < reps; ++r) {
    if (r % 2 == 0) {
      a.push_back(kv());
      b.push_back(base());
    } else {
      b.push_back(base());
      a.push_back(kv());
    }
  }
  if (std::getenv("KVBM_BENCH_SAMPLES") != nullptr) {  // every repetition, for diagnosis
    fmt::print(stderr, "  kvbm:     {:.1f}\n  baseline: {:.1f}\n", fmt::join(a, " "),
               fmt::join(b, " "));
  }
  return {stats_of(std::move(a)), stats_of(std::move(b))};
}

// --- case 5: two processes (two threads for the baseline) ---------------------------------------

struct RunResult {
  double wall_per_block = 0;  // ns
  double cpu_per_block = 0;   // ns of CPU time of the workers
};

std::int64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

/// `nprocs` forked processes, each opening the segment and running `iters` cycles of case 1 from
/// a common start (a pipe closed by the parent). Before that, each child warms up with one pass
/// over the whole segment (so the timed part does not pay this fresh process's first-touch page
/// faults on the mapping), and the parent drains the inactive pool once every child is ready.
/// Returns wall ns per block over all processes ((last end - first start) / blocks) and the CPU
/// time per block of the timed parts (each worker's thread CPU clock, summed).
RunResult run_processes(BlockManager& parent, int nprocs, std::size_t iters) {
  const std::string name = parent.config().name;
  const std::size_t warm_cycles = parent.total_blocks() / kBatch;
  const std::uint64_t stride = (warm_cycles + iters) * kBatch;
  Pipe ready;
  Pipe go;
  Pipe result;
  std::vector<pid_t> pids;
  const std::uint64_t hash_base = g_next_hash;
  g_next_hash += static_cast<std::uint64_t>(nprocs) * stride;
  for (int k = 0; k < nprocs; ++k) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      die(fmt::format("fork: {}", std::strerror(errno)));
    }
    if (pid == 0) {
      become_child();
      ready.close_read();
      go.close_write();
      result.close_read();
      IdleThread idle;
      std::int64_t span[3] = {0, 0, 0};  // start, end (monotonic), thread CPU time
      {
        auto m = BlockManager::open(name);
        if (!m) {
          die(fmt::format("open {}: {}", name, m.error()));
        }
        g_next_hash = hash_base + static_cast<std::uint64_t>(k) * stride;
        auto warm = fresh_hashes(warm_cycles * kBatch);
        auto h = fresh_hashes(iters * kBatch);
        cycle(**m, warm.data(), warm_cycles);  // evicts once the reset pool is empty
        write_all(ready.fd[1], "r", 1);
        char c = 0;
        (void)read_all(go.fd[0], &c, 1);  // EOF = go
        const std::int64_t cpu0 = thread_cpu_ns();
        span[0] = now_ns();
        cycle(**m, h.data(), iters);
        span[1] = now_ns();
        span[2] = thread_cpu_ns() - cpu0;
      }  // detach before reporting, so the parent can drain a quiet segment
      write_all(result.fd[1], span, sizeof span);
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  ready.close_write();
  go.close_read();
  result.close_write();
  for (int k = 0; k < nprocs; ++k) {
    char c = 0;
    if (!read_all(ready.fd[0], &c, 1)) {
      die("a case-5 child died before it was ready");
    }
  }
  drain(parent);
  go.close_write();
  std::int64_t first = INT64_MAX;
  std::int64_t last = 0;
  std::int64_t cpu = 0;
  for (int k = 0; k < nprocs; ++k) {
    std::int64_t span[3];
    if (!read_all(result.fd[0], span, sizeof span)) {
      die("a case-5 child died before reporting");
    }
    first = std::min(first, span[0]);
    last = std::max(last, span[1]);
    cpu += span[2];
  }
  for (pid_t p : pids) {
    wait_child(p, false);
  }
  const auto blocks = static_cast<double>(static_cast<std::size_t>(nprocs) * iters * kBatch);
  return {static_cast<double>(last - first) / blocks, static_cast<double>(cpu) / blocks};
}

/// The baseline's counterpart: `nthreads` threads on one pool, same start rule.
RunResult run_threads(baseline::Pool& pool, int nthreads, std::size_t iters) {
  std::vector<std::vector<SequenceHash>> h;
  for (int k = 0; k < nthreads; ++k) {
    h.push_back(fresh_hashes(iters * kBatch));
  }
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::int64_t> start(static_cast<std::size_t>(nthreads));
  std::vector<std::int64_t> end(static_cast<std::size_t>(nthreads));
  std::vector<std::int64_t> cpu(static_cast<std::size_t>(nthreads));
  std::vector<std::thread> threads;
  for (int k = 0; k < nthreads; ++k) {
    threads.emplace_back([&, k] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
        std::this_thread::yield();
      }
      const std::int64_t cpu0 = thread_cpu_ns();
      start[static_cast<std::size_t>(k)] = now_ns();
      cycle(pool, h[static_cast<std::size_t>(k)].data(), iters);
      end[static_cast<std::size_t>(k)] = now_ns();
      cpu[static_cast<std::size_t>(k)] = thread_cpu_ns() - cpu0;
    });
  }
  while (ready.load() < nthreads) {
    std::this_thread::yield();
  }
  go.store(true, std::memory_order_release);
  for (auto& t : threads) {
    t.join();
  }
  const std::int64_t first = *std::min_element(start.begin(), start.end());
  const std::int64_t last = *std::max_element(end.begin(), end.end());
  const auto blocks = static_cast<double>(static_cast<std::size_t>(nthreads) * iters * kBatch);
  std::int64_t cpu_sum = 0;
  for (std::int64_t c : cpu) {
    cpu_sum += c;
  }
  return {static_cast<double>(last - first) / blocks, static_cast<double>(cpu_sum) / blocks};
}

// --- cases 6 and 8: a forked child that dies holding something ----------------------------------

enum class ChildDeath { kHolding10k, kHoldingStoreLock };

/// Forks a child that opens `name`, does `what`, reports ready and waits to be SIGKILLed.
void kill_child_after(const std::string& name, ChildDeath what, std::size_t refs) {
  Pipe ready;
  const std::uint64_t hash_base = g_next_hash;
  g_next_hash += refs;
  const pid_t pid = ::fork();
  if (pid < 0) {
    die(fmt::format("fork: {}", std::strerror(errno)));
  }
  if (pid == 0) {
    become_child();
    ready.close_read();
    auto m = BlockManager::open(name);
    if (!m) {
      die(fmt::format("open {}: {}", name, m.error()));
    }
    std::vector<kvbm::ImmutableBlock> held;
    if (what == ChildDeath::kHolding10k) {
      g_next_hash = hash_base;
      auto h = fresh_hashes(refs);
      held = register_fresh(**m, h);
      if (held.size() != refs) {
        die("child could not register its blocks");
      }
    } else {
      kvbm::testing::Peer::lock_store_and_hold(**m);
    }
    write_all(ready.fd[1], "r", 1);
    for (;;) {
      ::pause();
    }
  }
  ready.close_write();
  char c = 0;
  if (!read_all(ready.fd[0], &c, 1)) {
    die("child died before it was ready");
  }
  ::kill(pid, SIGKILL);
  wait_child(pid, true);
}

// --- output -------------------------------------------------------------------------------------

std::string fmt_value(double v, Unit u) {
  switch (u) {
    case Unit::kNsPerBlock:
      return fmt::format("{:.1f} ns", v);
    case Unit::kMs:
      return fmt::format("{:.2f} ms", v);
    case Unit::kUs:
      return fmt::format("{:.1f} us", v);
    case Unit::kRatio:
      return fmt::format("{:.2f}x", v);
    case Unit::kBytesPerBlock:
      return fmt::format("{:.1f} B", v);
  }
  return {};
}

std::string fmt_stats(const std::optional<Stats>& s, Unit u, bool spread) {
  if (!s) {
    return "-";
  }
  if (!spread || s->n < 3) {
    return fmt_value(s->median, u);
  }
  const bool small = u == Unit::kNsPerBlock || u == Unit::kUs || u == Unit::kRatio;
  return fmt::format("{} ({}-{})", fmt_value(s->median, u),
                     small ? fmt::format("{:.{}f}", s->p10, u == Unit::kRatio ? 2 : 1)
                           : fmt::format("{:.2f}", s->p10),
                     small ? fmt::format("{:.{}f}", s->p90, u == Unit::kRatio ? 2 : 1)
                           : fmt::format("{:.2f}", s->p90));
}

std::string ratio_text(const Row& r) {
  if (!r.show_ratio || !r.kvbm || !r.base || r.base->median <= 0) {
    return "-";
  }
  return fmt::format("{:.2f}x", r.kvbm->median / r.base->median);
}

std::string met_text(const Row& r) {
  if (!r.met) {
    return "-";
  }
  return *r.met ? "yes" : "NO";
}

void print_table(const std::vector<Row>& rows) {
  fmt::print("\n{:<4} {:<52} {:>26} {:>26} {:>8} {:>18} {:>4}\n", "case", "what",
             "kvbm median (p10-p90)", "baseline median (p10-p90)", "ratio", "target", "met");
  fmt::print("{}\n", std::string(4 + 52 + 26 + 26 + 8 + 18 + 4 + 6, '-'));
  for (const Row& r : rows) {
    fmt::print("{:<4} {:<52} {:>26} {:>26} {:>8} {:>18} {:>4}\n", r.id, r.name,
               fmt_stats(r.kvbm, r.unit, true), fmt_stats(r.base, r.unit, true), ratio_text(r),
               r.target, met_text(r));
  }
  fmt::print("\n");
}

void write_markdown(const std::vector<Row>& rows, const std::string& path, int reps) {
  std::ofstream out(path);
  if (!out) {
    die(fmt::format("cannot write {}", path));
  }
  out << fmt::format(
      "Medians of {} repetitions (p10-p90 in parentheses) unless the case says otherwise; "
      "ratio = kvbm median / baseline median.\n\n",
      reps);
  out << "| case | what | kvbm | baseline | kvbm/baseline | target | met? |\n";
  out << "|---|---|---|---|---|---|---|\n";
  for (const Row& r : rows) {
    std::string base = fmt_stats(r.base, r.unit, true);
    if (!r.base_label.empty() && r.base) {
      base += " (" + r.base_label + ")";
    }
    std::string target = r.target;
    for (std::size_t p = target.find("<="); p != std::string::npos; p = target.find("<=")) {
      target.replace(p, 2, "≤");
    }
    for (std::size_t p = target.find(">="); p != std::string::npos; p = target.find(">=")) {
      target.replace(p, 2, "≥");
    }
    out << fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", r.id, r.name,
                       fmt_stats(r.kvbm, r.unit, true), base, ratio_text(r), target,
                       r.met ? (*r.met ? "yes" : "**no**") : "-");
  }
  std::vector<const Row*> missed;
  for (const Row& r : rows) {
    if (r.met && !*r.met) {
      missed.push_back(&r);
    }
  }
  out << "\n";
  if (missed.empty()) {
    out << "**Every target was met in this run.**\n";
  } else {
    out << "**Targets missed in this run:**\n\n";
    for (const Row* r : missed) {
      out << fmt::format("- case {} ({}): {}\n", r->id, r->name, r->miss_reason);
    }
  }
}

// --- the cases ----------------------------------------------------------------------------------

struct Options {
  int reps = 15;
  bool quick = false;
  std::string only;  // e.g. "1,4": run only these cases (6-8 then build what they need)
  std::string markdown;
  std::string csv;           // "id,kvbm_median,baseline_median" per row, for scripts
  std::string evict_policy;  // --evict-instructions: "lru", "lineage" or "baseline"
  std::uint32_t evict_blocks = 0;
};

void check(bool ok, const char* what) {
  if (!ok) {
    die(fmt::format("sanity check failed: {}", what));
  }
}

void say(const std::string& s) {
  fmt::print(stderr, "[kvbm-bench] {}\n", s);
  std::fflush(stderr);
}

void target_max(Row& r, double limit, const std::string& what) {
  r.met = r.kvbm->median <= limit;
  if (!*r.met) {
    r.miss_reason =
        fmt::format("kvbm median {} > target {}", fmt_value(r.kvbm->median, r.unit), what);
  }
}

/// What the cases share: options, results, and the full segments of case 4 reused by 6-8.
struct Context {
  Options opt;
  std::size_t scale = 1;  // --quick divides the work by this
  std::vector<Row> rows;
  std::shared_ptr<BlockManager> seg10k;
  std::shared_ptr<BlockManager> seg1m;
  std::shared_ptr<baseline::Pool> pool1m;

  bool wanted(char c) const { return opt.only.empty() || opt.only.find(c) != std::string::npos; }
  std::uint32_t big_n() const { return opt.quick ? 100000 : 1000000; }
  std::string label(std::size_t n) const {
    return n >= 1000000 && n % 1000000 == 0 ? fmt::format("{}M", n / 1000000)
                                            : fmt::format("{}", n);
  }

  /// The full (inactive) 10k and big segments and the big baseline pool, when case 4 did not
  /// leave them.
  void ensure_full_segments() {
    if (!seg10k) {
      say("filling a 10000-block segment");
      seg10k = create_segment("evict10000", 10000);
      fill_inactive(*seg10k, 10000);
    }
    if (!seg1m) {
      say(fmt::format("filling a {}-block segment and baseline pool", big_n()));
      seg1m = create_segment(fmt::format("evict{}", big_n()), big_n());
      fill_inactive(*seg1m, big_n());
      pool1m = baseline::Pool::create(big_n());
      fill_inactive(*pool1m, big_n());
    }
  }
};

// Case 1. Repetitions are short (64 cycles = 2048 blocks) so that most of them run without being
// preempted on a loaded machine; the median then measures the unpreempted cost.
void case_cycle(Context& cx) {
  say("case 1: allocate -> stage -> register -> drop");
  const std::size_t iters = 64;
  auto m = create_segment("cycle", 1u << 14);
  auto pool = baseline::Pool::create(1u << 14);
  auto [k, b] = paired(
      cx.opt.reps, [&] { return rep_cycle(*m, iters); }, [&] { return rep_cycle(*pool, iters); });
  Row r = make_row("1", "alloc(32) -> stage -> register(32) -> drop", Unit::kNsPerBlock, k, b);
  r.target = "<= 60 ns, <= 1.0x";
  const double ratio = k.median / b.median;
  r.met = k.median <= 60 && ratio <= 1.0;
  if (!*r.met) {
    r.miss_reason = fmt::format(
        "kvbm median {:.1f} ns per block (target <= 60 ns), {:.2f}x the baseline (target <= "
        "1.0x)",
        k.median, ratio);
  }
  cx.rows.push_back(r);
  const auto c = m->counts();
  check(c.mutable_ == 0 && c.staged == 0 && c.primary == 0, "case 1 left blocks in use");
  destroy_segment(m);
}

// Cases 2 and 3: 32 held hashes and 32 inactive ones in one segment.
void case_match(Context& cx) {
  say("cases 2-3: match_blocks of active and inactive hashes");
  const std::size_t iters = 64;
  auto m = create_segment("match", 4096);
  auto pool = baseline::Pool::create(4096);
  const auto active = fresh_hashes(kBatch);
  const auto inactive = fresh_hashes(kBatch);
  auto held_k = register_fresh(*m, active);
  auto held_b = register_fresh(*pool, active);
  (void)register_fresh(*m, inactive);  // dropped at once: inactive
  (void)register_fresh(*pool, inactive);
  check(m->counts().inactive == kBatch && m->counts().primary == kBatch, "case 2 setup");

  if (cx.wanted('2')) {
    auto [k, b] = paired(
        cx.opt.reps, [&] { return rep_match(*m, active, iters); },
        [&] { return rep_match(*pool, active, iters); });
    Row r = make_row("2", "match_blocks(32 active, held) + drop", Unit::kNsPerBlock, k, b);
    r.target = "<= 20 ns";
    target_max(r, 20, "20 ns");
    cx.rows.push_back(r);
  }
  if (cx.wanted('3')) {
    auto [k, b] = paired(
        cx.opt.reps, [&] { return rep_match(*m, inactive, iters); },
        [&] { return rep_match(*pool, inactive, iters); });
    Row r = make_row("3", "match_blocks(32 inactive) + drop (resurrect)", Unit::kNsPerBlock, k, b);
    r.target = "<= 40 ns";
    target_max(r, 40, "40 ns");
    cx.rows.push_back(r);
  }
  check(m->counts().inactive == kBatch && m->counts().primary == kBatch, "case 3 end state");
  held_k.clear();
  held_b.clear();
  destroy_segment(m);
}

/// Row `id`: kvbm median at the largest pool / median at 10k, "flat" read as <= 1.5x.
Row flatness_row(const std::string& id, const std::string& what, double first, double last) {
  Row flat = make_row(id, what, Unit::kRatio);
  flat.kvbm = Stats{last / first, last / first, last / first, 1};
  flat.target = "flat (<= 1.5x)";
  flat.show_ratio = false;
  flat.met = last / first <= 1.5;
  if (!*flat.met) {
    flat.miss_reason =
        fmt::format("the largest pool costs {:.2f}x the 10k pool per eviction", last / first);
  }
  return flat;
}

// Case 4, at 10k, 100k and 1M blocks: rows 4a-4d with the LRU backend, 4e-4h with the lineage
// backend (the library's default), both paired with the same LRU baseline pool of each size. The
// 10k and 1M LRU segments stay for cases 6-8.
void case_evict(Context& cx) {
  const std::vector<std::uint32_t> sizes{10000, 100000, cx.big_n()};
  const std::size_t iters = 64;  // 2048 evictions per repetition
  const char* lru_ids[] = {"4a", "4b", "4c"};
  const char* lineage_ids[] = {"4e", "4f", "4g"};
  std::vector<Row> lru_rows;
  std::vector<Row> lineage_rows;
  double lru_first = 0;
  double lru_last = 0;
  double lineage_first = 0;
  double lineage_last = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::uint32_t n = sizes[i];
    if (i > 0 && n == sizes[i - 1]) {
      continue;
    }
    say(fmt::format("case 4: eviction under pressure, {} blocks, lru (filling)", n));
    auto m = create_segment(fmt::format("evict{}", n), n);
    auto pool = baseline::Pool::create(n);
    fill_inactive(*m, n);
    fill_inactive(*pool, n);
    check(m->counts().inactive == n && m->counts().reset == 0, "case 4 fill (kvbm)");
    check(pool->inactive_count() == n && pool->free_count() == 0, "case 4 fill (baseline)");
    say(fmt::format("case 4: eviction under pressure, {} blocks, lru (timing)", n));
    auto [k, b] = paired(
        cx.opt.reps, [&] { return rep_evict(*m, iters); }, [&] { return rep_evict(*pool, iters); });
    Row r = make_row(lru_ids[i], fmt::format("evict: alloc(32) + drop, pool of {}", cx.label(n)),
                     Unit::kNsPerBlock, k, b);
    r.target = "<= 60 ns";
    target_max(r, 60, "60 ns");
    lru_rows.push_back(r);
    check(m->counts().inactive == n, "case 4 end state");
    if (i == 0) {
      lru_first = k.median;
    }
    lru_last = k.median;

    // The same with the lineage backend. Fill and refill register whole chains of 32 blocks, so
    // the tree is a forest of about n / 32 independent chains with one leaf each, and evictions
    // take the oldest chain from its tip to its root.
    say(fmt::format("case 4: eviction under pressure, {} blocks, lineage (filling)", n));
    auto lm = create_segment(fmt::format("evict-lineage{}", n), n, kvbm::EvictionPolicy::kLineage);
    fill_inactive(*lm, n, Shape::kChain);
    check(lm->counts().inactive == n && lm->counts().reset == 0, "case 4 fill (lineage)");
    say(fmt::format("case 4: eviction under pressure, {} blocks, lineage (timing)", n));
    auto [lk, lb] = paired(
        cx.opt.reps, [&] { return rep_evict(*lm, iters, Shape::kChain); },
        [&] { return rep_evict(*pool, iters); });
    Row lr = make_row(lineage_ids[i],
                      fmt::format("evict, lineage: alloc(32) + drop, pool of {}", cx.label(n)),
                      Unit::kNsPerBlock, lk, lb);
    lr.base_label = "LRU baseline";
    lr.target = "<= 60 ns";
    target_max(lr, 60, "60 ns");
    lineage_rows.push_back(lr);
    check(lm->counts().inactive == n, "case 4 end state (lineage)");
    destroy_segment(lm);
    if (i == 0) {
      lineage_first = lk.median;
    }
    lineage_last = lk.median;

    if (n == 10000) {
      cx.seg10k = m;
    } else if (n == cx.big_n()) {
      cx.seg1m = m;
      cx.pool1m = pool;
    } else {
      destroy_segment(m);
    }
  }
  const std::string big = cx.label(cx.big_n());
  cx.rows.insert(cx.rows.end(), lru_rows.begin(), lru_rows.end());
  cx.rows.push_back(flatness_row("4d", fmt::format("flatness: {} / 10k (kvbm medians)", big),
                                 lru_first, lru_last));
  cx.rows.insert(cx.rows.end(), lineage_rows.begin(), lineage_rows.end());
  cx.rows.push_back(flatness_row("4h",
                                 fmt::format("flatness, lineage: {} / 10k (kvbm medians)", big),
                                 lineage_first, lineage_last));
}

// Case 5: 1 process, then 2 processes at once, each running case 1's cycle `iters` times from a
// common start; the baseline does the same with threads on one pool. The inactive pool is
// drained between runs (untimed), so no run evicts.
void case_processes(Context& cx) {
  say("case 5: 1 vs 2 processes on one segment");
  const std::size_t iters = 1024 / cx.scale;  // 32768 blocks per process
  auto m = create_segment("mp", 1u << 17);
  auto pool = baseline::Pool::create(1u << 17);
  std::vector<double> k1, k2, ks, kc, b1, b2, bs, bc;
  const int reps = std::max(3, cx.opt.reps);
  for (int r = -1; r < reps; ++r) {  // r == -1: warm-up
    const RunResult one = run_processes(*m, 1, iters);
    const RunResult two = run_processes(*m, 2, iters);
    drain(*pool);
    const RunResult tone = run_threads(*pool, 1, iters);
    drain(*pool);
    const RunResult ttwo = run_threads(*pool, 2, iters);
    if (r >= 0) {
      k1.push_back(one.wall_per_block);
      k2.push_back(two.wall_per_block);
      ks.push_back(one.wall_per_block / two.wall_per_block);  // throughput(2) / throughput(1)
      kc.push_back(two.cpu_per_block / one.cpu_per_block);
      b1.push_back(tone.wall_per_block);
      b2.push_back(ttwo.wall_per_block);
      bs.push_back(tone.wall_per_block / ttwo.wall_per_block);
      bc.push_back(ttwo.cpu_per_block / tone.cpu_per_block);
    }
  }
  check(m->reap_dead_processes() == 0, "case 5 children detached cleanly");
  Row a = make_row("5a", "1 process: case 1 cycle, wall per block", Unit::kNsPerBlock, stats_of(k1),
                   stats_of(b1));
  a.base_label = "1 thread";
  a.target = "-";
  Row b = make_row("5b", "2 processes at once: aggregate wall per block", Unit::kNsPerBlock,
                   stats_of(k2), stats_of(b2));
  b.base_label = "2 threads";
  b.target = "-";
  Row s = make_row("5c", "2-process aggregate throughput / 1-process", Unit::kRatio, stats_of(ks),
                   stats_of(bs));
  s.base_label = "2 threads / 1 thread";
  s.show_ratio = false;
  s.target = ">= 0.8x";
  s.met = s.kvbm->median >= 0.8;
  if (!*s.met) {
    s.miss_reason =
        fmt::format("two processes together reach {:.2f}x the throughput of one (target >= 0.8x)",
                    s.kvbm->median);
  }
  Row c = make_row("5d", "CPU time per block, 2 processes / 1 process", Unit::kRatio, stats_of(kc),
                   stats_of(bc));
  c.base_label = "2 threads / 1 thread";
  c.show_ratio = false;
  c.target = "-";
  cx.rows.push_back(a);
  cx.rows.push_back(b);
  cx.rows.push_back(s);
  cx.rows.push_back(c);
  destroy_segment(m);
}

// Case 6: a forked child registers and holds 10k blocks in the big segment and is SIGKILLed;
// time of the parent's reap_dead_processes().
void case_reap(Context& cx) {
  cx.ensure_full_segments();
  BlockManager& big = *cx.seg1m;
  const std::size_t n = big.total_blocks();
  say(fmt::format("case 6: reap of a dead process holding 10k refs ({} blocks)", n));
  const std::size_t refs = 10000;
  const int reps = std::max(3, cx.opt.reps / 2);
  std::vector<double> kv;
  std::vector<double> bl;
  for (int r = -1; r < reps; ++r) {
    kill_child_after(big.config().name, ChildDeath::kHolding10k, refs);
    const std::int64_t t0 = now_ns();
    const std::size_t reaped = big.reap_dead_processes();
    const std::int64_t t1 = now_ns();
    check(reaped == 1, "case 6 reaped the dead child");
    const auto c = big.counts();
    check(c.primary == 0 && c.mutable_ == 0 && c.inactive == n, "case 6 after reap");
    auto h = fresh_hashes(refs);
    auto held = register_fresh(*cx.pool1m, h);
    const std::int64_t b0 = now_ns();
    held.clear();
    const std::int64_t b1 = now_ns();
    if (r >= 0) {
      kv.push_back(static_cast<double>(t1 - t0) / 1e6);
      bl.push_back(static_cast<double>(b1 - b0) / 1e6);
    }
  }
  Row r = make_row("6", fmt::format("reap dead process holding 10k refs, {} blocks", cx.label(n)),
                   Unit::kMs, stats_of(kv), stats_of(bl));
  r.base_label = "in-process drop of 10k last refs";
  r.show_ratio = false;  // not the same mechanism: a reference point only
  r.target = "<= 20 ms";
  target_max(r, 20, "20 ms");
  cx.rows.push_back(r);
}

// Case 7: verify() of the big segment (every block registered and inactive), and its size.
void case_verify(Context& cx) {
  cx.ensure_full_segments();
  BlockManager& big = *cx.seg1m;
  const std::size_t n = big.total_blocks();
  say(fmt::format("case 7: verify() of {} blocks", n));
  const int reps = std::max(3, cx.opt.reps / 3);
  std::vector<double> kv;
  std::vector<double> bl;
  for (int r = -1; r < reps; ++r) {
    const std::int64_t t0 = now_ns();
    const auto problems = big.verify();
    const std::int64_t t1 = now_ns();
    if (!problems.empty()) {
      die(fmt::format("verify found {} problems, first: {}", problems.size(), problems.front()));
    }
    const std::int64_t b0 = now_ns();
    check(cx.pool1m->verify() == 0, "baseline verify");
    const std::int64_t b1 = now_ns();
    if (r >= 0) {
      kv.push_back(static_cast<double>(t1 - t0) / 1e6);
      bl.push_back(static_cast<double>(b1 - b0) / 1e6);
    }
  }
  Row r = make_row("7a", fmt::format("verify(), {} blocks, all inactive", cx.label(n)), Unit::kMs,
                   stats_of(kv), stats_of(bl));
  r.base_label = "walk lists + map";
  r.target = "<= 1 s";
  target_max(r, 1000, "1 s");
  cx.rows.push_back(r);

  struct stat st {};
  const std::string path = "/dev/shm/" + big.config().name;
  if (::stat(path.c_str(), &st) != 0) {
    die(fmt::format("stat {}: {}", path, std::strerror(errno)));
  }
  const double per_block = static_cast<double>(st.st_size) / static_cast<double>(n);
  Row b = make_row("7b", fmt::format("segment bytes per block ({} B / {})", st.st_size, n),
                   Unit::kBytesPerBlock, Stats{per_block, per_block, per_block, 1});
  b.target = "<= 96 B";
  b.show_ratio = false;
  target_max(b, 96, "96 B");
  cx.rows.push_back(b);
}

// Cases 7c-7f: what a worker process pays while verify() walks the big segment. A forked worker
// opens it and runs allocate_blocks(1) -> drop without pause, timing each of the two calls; while
// the parent runs one verify (kPaced, the default, or kExclusive) it records every call that
// overlaps it. On a machine shared with other jobs a call is also slow when the worker is
// preempted, which verify has no part in: 7f is the same worker alone, the noise floor.
struct LatencyHistogram {
  static constexpr std::int64_t kBucketNs = 100;
  static constexpr std::size_t kBuckets = 1'000'000;  // up to 100 ms; longer in the last bucket
  std::vector<std::uint32_t> counts = std::vector<std::uint32_t>(kBuckets, 0);
  std::uint64_t calls = 0;
  std::int64_t max_ns = 0;

  void record(std::int64_t ns) {
    counts[std::min<std::size_t>(static_cast<std::size_t>(ns / kBucketNs), kBuckets - 1)] += 1;
    max_ns = std::max(max_ns, ns);
    ++calls;
  }
  /// The upper edge of the bucket holding the 99th percentile (at most the maximum).
  std::int64_t p99_ns() const {
    std::uint64_t below = 0;
    for (std::size_t b = 0; b < kBuckets; ++b) {
      below += counts[b];
      if (static_cast<double>(below) >= 0.99 * static_cast<double>(calls)) {
        return std::min(static_cast<std::int64_t>(b + 1) * kBucketNs, max_ns);
      }
    }
    return max_ns;
  }
};

struct WorkerLatency {
  std::atomic<int> phase;  // 0 warming up, 1 recording (verify runs), 2 stop
  std::uint64_t calls;     // recorded calls
  std::uint64_t slow;      // of which slower than 1 ms
  std::int64_t max_ns;
  std::int64_t p99_ns;
};

[[noreturn]] void latency_worker(const std::string& name, WorkerLatency& shared, int ready_fd) {
  auto m = BlockManager::open(name);
  if (!m) {
    die(fmt::format("open {}: {}", name, m.error()));
  }
  LatencyHistogram all;
  std::uint64_t slow = 0;
  auto record = [&](std::int64_t ns) {
    all.record(ns);
    slow += ns > 1'000'000 ? 1 : 0;
  };
  for (std::uint64_t i = 0;; ++i) {
    const int at_start = shared.phase.load(std::memory_order_acquire);
    if (at_start == 2) {
      break;
    }
    const std::int64_t t0 = now_ns();
    auto blocks = (*m)->allocate_blocks(1);
    const std::int64_t t1 = now_ns();
    if (!blocks) {
      die("worker: allocate_blocks(1) failed");
    }
    blocks->clear();  // the drop: Mutable -> Reset under the store mutex
    const std::int64_t t2 = now_ns();
    // A call that overlapped the verify at either end counts (one kept waiting by it does).
    if (at_start == 1 || shared.phase.load(std::memory_order_acquire) == 1) {
      record(t1 - t0);
      record(t2 - t1);
    }
    if (i == 10000) {
      write_all(ready_fd, "r", 1);  // warmed up
    }
  }
  shared.calls = all.calls;
  shared.slow = slow;
  shared.max_ns = all.max_ns;
  shared.p99_ns = all.p99_ns();
  m->reset();  // detach: no dead entry left for the next worker's attach to reap
  ::_exit(0);
}

void case_verify_latency(Context& cx) {
  cx.ensure_full_segments();
  BlockManager& big = *cx.seg1m;
  const std::size_t n = big.total_blocks();
  say(fmt::format("case 7c-7f: a worker's allocate/drop while verify() walks {} blocks", n));
  auto* shared = static_cast<WorkerLatency*>(::mmap(
      nullptr, sizeof(WorkerLatency), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (shared == MAP_FAILED) {
    die(fmt::format("mmap: {}", std::strerror(errno)));
  }
  const std::string name = big.config().name;  // an inherited BlockManager refuses a fork child
  struct Run {
    double max_us = 0, p99_us = 0, wall_ms = 0;
    std::uint64_t calls = 0, slow = 0;
    kvbm::VerifyReport report;
  };
  // `mode`, or with `idle_ms` set no verify at all: the worker alone for that long, the noise
  // floor of the machine.
  auto one = [&](kvbm::VerifyMode mode, double idle_ms = 0) {
    new (shared) WorkerLatency{};
    Pipe ready;
    const pid_t pid = ::fork();
    if (pid < 0) {
      die(fmt::format("fork: {}", std::strerror(errno)));
    }
    if (pid == 0) {
      become_child();
      ready.close_read();
      latency_worker(name, *shared, ready.fd[1]);
    }
    ready.close_write();
    char c = 0;
    if (!read_all(ready.fd[0], &c, 1)) {
      die("the latency worker died before it was ready");
    }
    Run run;
    shared->phase.store(1, std::memory_order_release);
    const std::int64_t t0 = now_ns();
    if (idle_ms > 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(static_cast<long>(idle_ms * 1e3)));
    } else {
      run.report = big.verify(mode);
    }
    const std::int64_t t1 = now_ns();
    shared->phase.store(2, std::memory_order_release);
    wait_child(pid, false);
    if (!run.report.problems.empty()) {
      die(fmt::format("verify found {} problems, first: {}", run.report.problems.size(),
                      run.report.problems.front()));
    }
    run.max_us = static_cast<double>(shared->max_ns) / 1e3;
    run.p99_us = static_cast<double>(shared->p99_ns) / 1e3;
    run.wall_ms = static_cast<double>(t1 - t0) / 1e6;
    run.calls = shared->calls;
    run.slow = shared->slow;
    return run;
  };
  const int reps = std::max(3, cx.opt.reps / 5);
  std::vector<double> max_p, max_x, max_idle, p99_p, p99_x, wall_p, wall_x;
  std::uint64_t complete = 0, yields = 0, restarts = 0;
  std::uint64_t calls_p = 0, slow_p = 0, calls_x = 0, slow_x = 0, calls_idle = 0, slow_idle = 0;
  for (int r = 0; r < reps; ++r) {
    // Alternated, so that load on the machine hits both.
    const Run x = one(kvbm::VerifyMode::kExclusive);
    const Run p = one(kvbm::VerifyMode::kPaced);
    const Run idle = one(kvbm::VerifyMode::kPaced, p.wall_ms);
    max_x.push_back(x.max_us);
    p99_x.push_back(x.p99_us);
    wall_x.push_back(x.wall_ms);
    max_p.push_back(p.max_us);
    p99_p.push_back(p.p99_us);
    wall_p.push_back(p.wall_ms);
    max_idle.push_back(idle.max_us);
    complete += p.report.complete ? 1 : 0;
    yields += p.report.yields;
    restarts += p.report.restarts;
    calls_p += p.calls;
    slow_p += p.slow;
    calls_x += x.calls;
    slow_x += x.slow;
    calls_idle += idle.calls;
    slow_idle += idle.slow;
  }
  ::munmap(shared, sizeof(WorkerLatency));
  // The first allocation of the first worker evicted a block: put the segment back as it was
  // (every block registered and inactive) for case 8.
  const std::size_t reset = big.counts().reset;
  if (reset > 0) {
    auto h = fresh_hashes(reset);
    (void)register_fresh(big, h);
  }
  check(big.counts().inactive == n, "case 7c-7f leaves every block inactive");
  say(fmt::format("  paced verify: {} of {} walks complete, {} yields, {} restarts", complete, reps,
                  yields, restarts));
  say(
      fmt::format("  worker calls over 1 ms: {} of {} beside paced verify, {} of {} beside "
                  "exclusive verify, {} of {} alone",
                  slow_p, calls_p, slow_x, calls_x, slow_idle, calls_idle));
  const std::string seg = fmt::format("{} blocks", cx.label(n));
  auto add = [&](const char* id, std::string what, Unit unit, const std::vector<double>& paced,
                 const std::vector<double>& exclusive) {
    Row r = make_row(id, std::move(what), unit, stats_of(paced), stats_of(exclusive));
    r.base_label = "verify(kExclusive)";
    r.target = "-";
    return r;
  };
  Row c = add("7c", fmt::format("worker's slowest call during verify(), {}", seg), Unit::kUs, max_p,
              max_x);
  c.target = "<= 1000 us";
  target_max(c, 1000, "1 ms");
  cx.rows.push_back(c);
  cx.rows.push_back(add("7d", fmt::format("worker's p99 call during verify(), {}", seg), Unit::kUs,
                        p99_p, p99_x));
  cx.rows.push_back(add("7e", fmt::format("verify() wall time beside the worker, {}", seg),
                        Unit::kMs, wall_p, wall_x));
  Row f = make_row("7f", "worker's slowest call, no verify (as long as 7e kvbm)", Unit::kUs,
                   stats_of(max_idle));
  f.target = "-";
  cx.rows.push_back(f);
}

// Case 8: a forked child opens the segment, takes the store mutex and is SIGKILLed; time of the
// parent's next call (counts()), which recovers. Segments full of inactive blocks.
void case_recovery(Context& cx) {
  cx.ensure_full_segments();
  const std::vector<BlockManager*> segs{cx.seg10k.get(), cx.seg1m.get()};
  const char* ids[] = {"8a", "8b"};
  for (std::size_t i = 0; i < segs.size(); ++i) {
    BlockManager& m = *segs[i];
    const std::size_t n = m.total_blocks();
    say(fmt::format("case 8: recovery after EOWNERDEAD, {} blocks", n));
    const int reps = std::max(3, cx.opt.reps / 3);
    std::vector<double> kv;
    for (int r = -1; r < reps; ++r) {
      const auto before = m.metrics().recoveries_total;
      kill_child_after(m.config().name, ChildDeath::kHoldingStoreLock, 0);
      const std::int64_t t0 = now_ns();
      const auto c = m.counts();
      const std::int64_t t1 = now_ns();
      check(c.inactive == n, "case 8 counts after recovery");
      check(m.metrics().recoveries_total == before + 1, "case 8 ran one recovery");
      check(m.reap_dead_processes() == 1, "case 8 reaped the dead child");
      if (r >= 0) {
        kv.push_back(static_cast<double>(t1 - t0) / 1e6);
      }
    }
    Row r = make_row(ids[i],
                     fmt::format("recovery: next call after EOWNERDEAD, {} blocks", cx.label(n)),
                     Unit::kMs, stats_of(kv));
    r.target = "-";
    cx.rows.push_back(r);
  }
}

// --- main ---------------------------------------------------------------------------------------

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: kvbm-bench [--reps N] [--quick] [--only CASES e.g. 1,4] "
               "[--markdown FILE] [--csv FILE]\n"
               "       kvbm-bench --evict-instructions lru|lineage|baseline BLOCKS\n");
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      o.reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--only" && i + 1 < argc) {
      o.only = argv[++i];
    } else if (a == "--markdown" && i + 1 < argc) {
      o.markdown = argv[++i];
    } else if (a == "--csv" && i + 1 < argc) {
      o.csv = argv[++i];
    } else if (a == "--evict-instructions" && i + 2 < argc) {
      o.evict_policy = argv[++i];
      o.evict_blocks = static_cast<std::uint32_t>(std::strtoul(argv[++i], nullptr, 10));
      if ((o.evict_policy != "lru" && o.evict_policy != "lineage" &&
           o.evict_policy != "baseline") ||
          o.evict_blocks < kBatch) {
        usage();
      }
    } else {
      usage();
    }
  }
  if (o.quick) {
    o.reps = std::min(o.reps, 3);
  }
  return o;
}

/// --evict-instructions: a pool of `blocks` blocks with `policy` filled as in case 4, then
/// kEvictRounds calls of evict_round, each followed by case 4's refill. Meant to run under
/// `valgrind --tool=callgrind --toggle-collect='*evict_round*'` (scripts/bench.sh): the count
/// of instructions does not depend on the load of the machine, unlike case 4's times.
int run_evict_instructions(const std::string& policy, std::uint32_t blocks) {
  constexpr std::size_t kWarmRounds = 8;  // not counted: first calls, lazy PLT binding
  constexpr std::size_t kEvictRounds = 64;
  auto rounds = [&](auto& m, Shape shape) {
    const auto h = new_hashes((kWarmRounds + kEvictRounds) * kBatch, shape);
    for (std::size_t r = 0; r < kWarmRounds + kEvictRounds; ++r) {
      if (r < kWarmRounds) {
        evict_batch(m);
      } else {
        evict_round(m);
      }
      cycle(m, h.data() + r * kBatch, 1);
    }
  };
  if (policy == "baseline") {
    auto pool = baseline::Pool::create(blocks);
    fill_inactive(*pool, blocks);
    rounds(*pool, Shape::kSingle);
    check(pool->inactive_count() == blocks && pool->free_count() == 0, "baseline end state");
  } else {
    const bool lineage = policy == "lineage";
    const Shape shape = lineage ? Shape::kChain : Shape::kSingle;
    auto m = create_segment("instructions", blocks,
                            lineage ? kvbm::EvictionPolicy::kLineage : kvbm::EvictionPolicy::kLru);
    fill_inactive(*m, blocks, shape);
    rounds(*m, shape);
    const auto c = m->counts();
    check(c.inactive == blocks && c.reset == 0, "end state");
    check(m->metrics().evictions_total ==
              static_cast<std::int64_t>((kWarmRounds + kEvictRounds) * kBatch),
          "every allocation evicted");
    destroy_segment(m);
  }
  // One line for scripts/bench.sh: it divides the collected instructions by `evicted`.
  fmt::print("evict-instructions policy={} blocks={} calls={} evicted={}\n", policy, blocks,
             kEvictRounds, kEvictRounds * kBatch);
  return 0;
}

int run(const Options& opt) {
  if (!opt.evict_policy.empty()) {
    return run_evict_instructions(opt.evict_policy, opt.evict_blocks);
  }
  Context cx;
  cx.opt = opt;
  cx.scale = opt.quick ? 8 : 1;
  if (cx.wanted('1')) {
    case_cycle(cx);
  }
  if (cx.wanted('2') || cx.wanted('3')) {
    case_match(cx);
  }
  if (cx.wanted('4')) {
    case_evict(cx);
  }
  if (cx.wanted('5')) {
    case_processes(cx);
  }
  if (cx.wanted('6')) {
    case_reap(cx);
  }
  if (cx.wanted('7')) {
    case_verify(cx);
    case_verify_latency(cx);
  }
  if (cx.wanted('8')) {
    case_recovery(cx);
  }
  cx.seg10k.reset();
  cx.seg1m.reset();
  cx.pool1m.reset();
  cleanup_segments();

  print_table(cx.rows);
  if (!opt.markdown.empty()) {
    write_markdown(cx.rows, opt.markdown, opt.reps);
  }
  if (!opt.csv.empty()) {
    if (std::FILE* f = std::fopen(opt.csv.c_str(), "w")) {
      for (const Row& r : cx.rows) {
        std::fprintf(f, "%s,%.2f,%.2f\n", r.id.c_str(), r.kvbm ? r.kvbm->median : 0.0,
                     r.base ? r.base->median : 0.0);
      }
      std::fclose(f);
    }
  }
  return 0;
}

}  // namespace
}  // namespace kvbm_bench

int main(int argc, char** argv) {
  using namespace kvbm_bench;
  const Options opt = parse(argc, argv);
  std::atexit(cleanup_segments);
  remove_stale_segments();
  IdleThread idle;  // the second thread of a real server, alive for the whole run
  try {
    return run(opt);
  } catch (const std::exception& e) {
    die(fmt::format("exception: {}", e.what()));
  }
}
