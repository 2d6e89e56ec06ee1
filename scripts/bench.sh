#!/usr/bin/env bash
# Builds kvbm-bench in Release into build-bench/ (or $KVBM_BENCH_BUILD_DIR), runs it, prints its
# table and writes docs/benchmarks.md (machine, date, build type, results, method).
# Extra arguments go to kvbm-bench (e.g. --reps 31, --quick for a smoke run, --only 4 for some
# cases); a --quick or --only run prints its results but does not overwrite docs/benchmarks.md,
# which always holds one whole run. When case 4 runs, its evictions are also counted in
# instructions under callgrind (valgrind). About 2-4 minutes including the build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVBM_BENCH_BUILD_DIR:-$root/build-bench}"
out="$root/docs/benchmarks.md"
build_type=Release

"$root/scripts/setup.sh"
# Only the instruction counts need valgrind: without it they are left out, the rest still runs.
have_valgrind=1
"$root/scripts/setup.sh" valgrind || have_valgrind=0
mkdir -p "$build"
log="$build/build.log"
if ! cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE="$build_type" -DKVBM_BUILD_TOOLS=ON \
  -DKVBM_BUILD_TESTS=OFF -DKVBM_BUILD_EXAMPLES=OFF -DKVBM_BENCH_INTENT_OVERHEAD=ON >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
echo "building kvbm-bench ($build_type) in $build ..."
if ! cmake --build "$build" -j"$(nproc)" --target kvbm-bench kvbm-bench-nointent >>"$log" 2>&1; then
  grep -E "error|Error" -A5 "$log" | head -60 >&2
  echo "build failed; full log: $log" >&2
  exit 1
fi

# The Python binding's comparison (tools/kvbm-bench/python_bench.py) needs the package and the
# same workloads built from C++; without pybind11 it is left out.
have_python=1
if ! cmake --build "$build" -j"$(nproc)" --target kvbm_python kvbm-bench-pycompare >>"$log" 2>&1; then
  echo "Python package not built: Python binding costs not measured (see $log)" >&2
  have_python=0
fi

quick=0
only=""
prev=""
for a in "$@"; do
  [ "$a" = "--quick" ] && quick=1
  [ "$prev" = "--only" ] && only="$a"
  prev="$a"
done

fragment="$(mktemp)"
trap 'rm -f "$fragment" "$fragment".{a,b,cg,out,err,py}' EXIT
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
start="$(date -u '+%Y-%m-%d %H:%M UTC')"
"$build/tools/kvbm-bench" --markdown "$fragment" "$@"
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# Case 4's evictions counted in instructions, which unlike its times depend neither on the load
# of the machine nor on cache and TLB misses: kvbm-bench --evict-instructions fills a pool and
# calls evict_round (allocate_blocks(32) + drop) 64 times; callgrind collects only inside it.
big=1000000
[ "$quick" = 1 ] && big=100000
label() { if [ "$1" -ge 1000000 ]; then echo "$(($1 / 1000000))M"; else echo "$(($1 / 1000))k"; fi; }
instr_table=""
if [ -n "$only" ] && [[ "$only" != *4* ]]; then
  :
elif [ "$have_valgrind" = 0 ]; then
  echo "valgrind missing: instructions per evicted block not measured" >&2
else
  echo "counting instructions per evicted block under callgrind (about a minute) ..."
  instr_table="| eviction order | $(label 10000) blocks | $(label "$big") blocks | $(label "$big") / $(label 10000) |
|---|---|---|---|"
  for policy in lru lineage baseline; do
    per=()
    for n in 10000 "$big"; do
      if ! valgrind --tool=callgrind --callgrind-out-file="$fragment.cg" \
        --toggle-collect='*evict_round*' "$build/tools/kvbm-bench" --evict-instructions \
        "$policy" "$n" >"$fragment.out" 2>"$fragment.err"; then
        tail -20 "$fragment.err" >&2
        echo "callgrind run of --evict-instructions $policy $n failed" >&2
        exit 1
      fi
      evicted="$(sed -n 's/.* evicted=\([0-9][0-9]*\).*/\1/p' "$fragment.out")"
      ir="$(sed -n 's/^summary: *\([0-9][0-9]*\).*/\1/p' "$fragment.cg")"
      if [ -z "$evicted" ] || [ -z "$ir" ] || [ "$ir" = 0 ]; then
        echo "no instruction count for $policy $n (evicted='$evicted', summary='$ir')" >&2
        exit 1
      fi
      per+=("$(awk -v i="$ir" -v e="$evicted" 'BEGIN { printf "%.0f", i / e }')")
    done
    case "$policy" in
      lru) what="kvbm \`lru\`" ;;
      lineage) what="kvbm \`lineage\` (tick), chains of 32" ;;
      baseline) what="baseline (LRU list + \`std::unordered_map\`)" ;;
    esac
    ratio="$(awk -v a="${per[0]}" -v b="${per[1]}" 'BEGIN { printf "%.2f", b / a }')"
    instr_table+="
| $what | ${per[0]} | ${per[1]} | ${ratio}x |"
  done
  echo
  echo "instructions per evicted block (allocate_blocks(32) + drop, callgrind):"
  echo "$instr_table"
  echo
fi

# Python binding: ns per block of the batch calls from Python next to the same workloads from C++.
py_table=""
if [ "$have_python" = 1 ] && [ -z "$only" ]; then
  echo "measuring the Python binding against the same workloads from C++ ..."
  py_rounds=5
  [ "$quick" = 1 ] && py_rounds=1
  PYTHONPATH="$build/python" /usr/bin/python3 "$root/tools/kvbm-bench/python_bench.py" \
    --cpp "$build/tools/kvbm-bench-pycompare" --rounds "$py_rounds" --reps 5 \
    --markdown "$fragment.py"
  py_table="$(cat "$fragment.py")"
fi

if [ "$quick" = 1 ] || [ -n "$only" ]; then
  echo "(--quick / --only: $out not rewritten)"
  exit 0
fi

# The intent record's cost on case 1: the same benchmark against a library built without it,
# alternated nine times so that load hits both; median of the nine medians.
echo "measuring the intent record's cost on case 1 ..."
with=(); without=()
for i in 1 2 3 4 5 6 7 8 9; do
  "$build/tools/kvbm-bench" --only 1 --reps 9 --csv "$fragment.a" >/dev/null
  "$build/tools/kvbm-bench-nointent" --only 1 --reps 9 --csv "$fragment.b" >/dev/null
  with+=("$(grep '^1,' "$fragment.a" | cut -d, -f2)")
  without+=("$(grep '^1,' "$fragment.b" | cut -d, -f2)")
done
median() { printf '%s\n' "$@" | sort -g | sed -n 5p; }
intent_with="$(median "${with[@]}")"
intent_without="$(median "${without[@]}")"
intent_pct="$(awk -v a="$intent_with" -v b="$intent_without" 'BEGIN { printf "%+.1f", 100 * (a - b) / b }')"
echo "case 1: ${intent_with} ns/block with the intent record, ${intent_without} without (${intent_pct} %)"

cpu="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
compiler="$(c++ --version | head -1)"
{
  cat <<EOF
# kvbm benchmarks

Generated by \`scripts/bench.sh\` (\`tools/kvbm-bench\`); rerun the script instead of editing this
file. Targets are the project's performance goals, not assertions.

## Machine and build

| | |
|---|---|
| date | $start |
| CPU | $cpu, \`nproc\` = $(nproc) |
| kernel | $(uname -sr) |
| compiler | $compiler |
| build type | $build_type (\`-O3 -DNDEBUG\`), \`kvbm\` static library |
| load average (1/5/15 min) | before: $load_before; after: $load_after |

The machine is shared with other jobs and has 2 cores: absolute numbers move by 2x or more from
run to run; read medians and kvbm/baseline ratios, never single repetitions.

## Results

EOF
  cat "$fragment"
  cat <<EOF

### Cost of the intent record (crash consistency) on the hot path

Case 1 run alternately against the library and against the same library built with
\`KVBM_BENCH_NO_INTENT\` (the intent record compiled out; never crash-safe, benchmark only),
nine runs of 9 repetitions each, median of the nine medians (a negative cost means the difference
is below this machine's noise):

| | ns/block |
|---|---|
| with the intent record | ${intent_with} |
| without | ${intent_without} |
| cost | ${intent_pct} % (target: < 10 %) |
EOF
  if [ -n "$instr_table" ]; then
    cat <<EOF

### Instructions per evicted block (callgrind)

Case 4's eviction counted in instructions, which depend neither on the load of the machine nor
on cache and TLB misses: what the eviction code does, not how long its memory accesses take.
\`kvbm-bench --evict-instructions POLICY N\` fills a pool of N blocks as case 4 does (\`lineage\`:
chains of 32), runs 8 uncounted warm-up rounds, then 64 calls of \`evict_round\` (a function never
inlined: \`allocate_blocks(32)\`, 32 evictions, then the drop of the 32 mutable blocks), each
followed by case 4's refill. It runs under
\`valgrind --tool=callgrind --toggle-collect='*evict_round*'\`, so only the instructions executed
inside \`evict_round\` (and what it calls) are counted; the value is callgrind's \`summary:\`
total divided by the 2048 evicted blocks. O(1) shows as 1.00x, O(log n) as a growth that follows
log(n) (the lineage leaf heap holds about N / 32 leaves: log2 is 8.3 at 10k, 14.9 at 1M).

${instr_table}
EOF
  fi
  if [ -n "$py_table" ]; then
    cat <<EOF

### Python binding (\`kvbm\` package) next to the same calls from C++

\`tools/kvbm-bench/python_bench.py\` runs these workloads from Python and
\`kvbm-bench-pycompare\` (tools/kvbm-bench/python_compare.cpp) runs them from C++, in
alternating rounds (5 rounds of 5 repetitions each; median, p10-p90 in parentheses), both with one
idle extra thread. Hashes are made before the timed part in both languages. Python counts
everything a user pays: the call, argument conversion, one handle object per block, and
dropping the handles. Goal: Python batch calls within 3x the C++ cost per block. Each
block of the cycle costs Python three handle objects (MutableBlock, CompleteBlock,
ImmutableBlock, each a small plain CPython object with its cell) and one \`stage()\` call
through the interpreter, which releases and retakes the GIL; \`match_blocks\` costs one
ImmutableBlock object per block. Hashing allocates one SequenceHash object per block and
nothing per token.

${py_table}
EOF
  fi
  if [ -f "$root/tools/kvbm-bench/profile-notes.md" ]; then
    echo
    cat "$root/tools/kvbm-bench/profile-notes.md"
  fi
  cat <<'EOF'

## How each case is measured

**Common rules.** Every segment is created with `EvictionPolicy::kLru` (the lineage rows of case
4 excepted), block size 16, no payload and `DuplicationPolicy::kAllow`, under the name `kvbm-bench-<pid>-<case>`, and destroyed at the
end (segments of earlier runs whose process is gone are removed at start). Unless a case says
otherwise, each case runs one warm-up and then R = 15 repetitions of kvbm and of the baseline,
interleaved (ABBA order) so that load on the machine hits both; the value reported is the median
over repetitions of the timed loop's ns per block (p10-p90 in parentheses), timed with
`std::chrono::steady_clock`. Repetitions are short (64 batches of 32 blocks, about 0.2-1 ms) so
that most of them run without being preempted. The benchmark process keeps a second thread
blocked on a condition variable for the whole run, as real servers do; kvbm and the baseline
therefore both run in a multi-threaded process (atomic `shared_ptr` counts, real mutex calls).

**Baseline.** `tools/kvbm-bench/baseline.hpp`: the same operations in one process, in the design
of kvbm-logical / vLLM's block pool: one `std::mutex`, a `std::unordered_map<SequenceHash,
Block*>` of registered blocks, intrusive doubly-linked lists for the FIFO free list and the LRU
inactive list, and a per-block atomic reference count. It takes one lock per batch call
(allocate, register, match), one per `stage`, one per drop of a mutable/staged block and one per
*last* release of a registered block (what the RAII API implies); other releases only decrement
the count. Its handles hold a `shared_ptr` to the pool, as kvbm's hold one to their attachment.

1. **Cycle.** A 16384-block segment/pool. A repetition is 64 times: `allocate_blocks(32)` →
   `stage` each block → `register_blocks` with 32 fresh hashes (`SequenceHash::make(counter,
   nullopt, 0)`) → drop the 32 `ImmutableBlock`s (each drop is the last reference: one locked
   release to the inactive pool). The inactive pool is drained with `reset_inactive_pool()`
   before each repetition, outside the timed part, so no eviction happens while timing.
2. **Match, active.** 32 blocks registered and held by the benchmark. A repetition is 64 times
   `match_blocks` of those 32 hashes; the returned handles are dropped inside the timed loop
   (each drop only decrements this process's local count because the original handle is still
   held, so it takes no lock).
3. **Match, inactive.** 32 registered hashes whose blocks sit in the inactive pool. A repetition
   is 64 times `match_blocks` (32 resurrections under one lock) then dropping the 32 handles
   (32 last releases, one lock each, back to the inactive pool).
4. **Eviction under pressure.** A pool of N = 10k, 100k or 1M blocks filled with registered,
   inactive blocks (free list empty, inactive pool full). Timed: `allocate_blocks(32)` (32 LRU
   evictions under one lock) and dropping the 32 mutable blocks (32 locks, to the reset pool).
   Untimed refill: those 32 blocks are allocated again, staged, registered under fresh hashes
   and dropped back into the inactive pool. 64 iterations per repetition; only the timed parts
   are summed (two clock reads per 32 blocks, about 1 ns per block). Row 4d is the kvbm median
   at 1M divided by the median at 10k; "flat" is read here as at most 1.5x (this harness's
   threshold, not a project goal). Rows 4e-4h do the same with a segment created with
   `EvictionPolicy::kLineage` (`LineageOrder::kTick`, the library's default policy). Its fill
   and refill register whole chains of 32 blocks (`SequenceHash::make(counter, parent's counter,
   position)`, positions 0-31, like the prompt of one request), so the prefix tree is a forest of
   about N / 32 independent chains with one leaf each (the tip), and the oldest chain is evicted
   from its tip to its root: each eviction removes the leaf from the leaf heap and puts its
   parent there, O(log N) in the heap. At 10k the fill ends with a chain of 16, so from then on
   a batch of 32 evictions spans two chains. The baseline column of 4e-4g is the same LRU
   baseline pool as in 4a-4c, measured again interleaved with the lineage repetitions (there is
   no in-process lineage baseline); 4h is the lineage counterpart of 4d.
5. **Two processes.** A 131072-block segment. Per repetition (R of them): one forked process,
   then two at once; each opens the segment (its own process entry), warms up with one pass of
   cycles over the whole segment (so this fresh process's first-touch page faults on the mapping
   are not timed), reports ready, and waits on a pipe that the parent closes once all children
   are ready and it has drained the inactive pool. Each then runs 1024 case-1 cycles (32768
   blocks). Wall time = last child's end − first child's start (CLOCK_MONOTONIC, reported
   through a pipe); ns/block = wall / all blocks of all processes. 5c is the median over
   repetitions of throughput(2 processes) / throughput(1 process). 5d divides the CPU time per
   block of the timed parts (each worker's `CLOCK_THREAD_CPUTIME_ID`, summed) with two processes
   by that with one: above 1 is the cost of sharing (cache-line transfers of the store mutex,
   counters and slots; futex waits are rare: `strace -c` counted a few hundred futex calls in a
   whole case-5 run). It does not depend on how much CPU the other jobs leave, unlike 5c. The
   baseline column does the same with 1 and 2 threads on one pool. This is a KVM guest: whether
   its 2 vCPUs are separate physical cores on the host is unknown.
6. **Reap.** The 1M-block segment of case 4 (every block inactive). A forked child opens it,
   allocates 10000 blocks (evicting), stages and registers them and holds the 10000
   `ImmutableBlock`s, tells the parent through a pipe and is SIGKILLed; after `waitpid` the
   parent times `reap_dead_processes()` (which returns 1; afterwards no block is held). 7
   repetitions. The baseline column is only a reference point: the same 10k registered blocks
   dropped in-process in the 1M baseline pool (what the dead process would have done had it
   lived), not an equivalent mechanism.
7. **verify and size.** `verify()` on the same 1M segment (all blocks inactive; it reports no
   problem), 5 repetitions; the baseline column is an O(n) check of the baseline pool (walk both
   lists, every block and the hash map). Bytes per block = size of `/dev/shm/<name>` / block
   count: header, control block, process table, slots and hash index (no payload region).
   Rows 7c-7f: a worker beside verify. A forked worker opens the same 1M segment and runs
   `allocate_blocks(1)` then the drop of the block without pause (after 10000 warm-up rounds),
   timing each of the two calls; while the parent runs one `verify()` it records every call
   that overlaps it in a histogram of 100 ns buckets (p99 = upper edge of the bucket; the
   maximum exact). One worker per verify; 3 repetitions of each mode, alternated. The kvbm
   column is `VerifyMode::kPaced` (the default: it gives the lock up for a moment every ~3 us
   and, the segment being never quiet, ends with its local pass), the baseline column
   `VerifyMode::kExclusive` (one hold of the lock for the whole walk). 7c is the slowest call
   (target: at most 1 ms), 7d the p99 call, 7e the verify's wall time. 7f is the noise floor:
   the same worker alone for as long as a paced verify took (a preempted call is slow too; on
   this machine a preempted or late-woken process waits for the next scheduler tick, 4 ms).
8. **Recovery.** Segments of 10k and 1M blocks, full of inactive blocks. A forked child opens
   the segment, takes the store mutex with `kvbm::testing::Peer::lock_store_and_hold` and is
   SIGKILLed; the parent times its next call, `counts()`, which gets `EOWNERDEAD` and recovers
   (rolls back the intent, rebuilds the free list, LRU list, hash index and counts from the
   slots, runs verify). The dead entry is reaped afterwards, untimed. 5 repetitions; no target
   and no baseline.

## Profile notes

Written by hand from `perf record` of kvbm-only loops equivalent to cases 1 and 4 (they explain
the shape of the numbers above; profile again if the library changes):

- Case 1: the profile is flat. About 13% is the intent record (`BlockStore::begin`
  snapshots 16 counters, `log` copies a slot image, `commit`), about 10% the glibc robust-mutex
  calls (`pthread_mutex_trylock` / `__pthread_mutex_unlock_full`: ~22 ns per uncontended
  lock/unlock pair against ~11 ns for `std::mutex`), about 9% the lock wrappers with their fork
  and fencing checks, the rest state transitions and handle construction. Measured alone, each
  per-block locked call (`stage`, the last drop of an `ImmutableBlock`, the drop of a
  `MutableBlock`) costs ~80-100 ns; a cycle makes two of them per block, and case 3 one (its
  drops) on top of the match.
- Case 4 at 1M blocks: ~70% of `BlockStore::allocate` is the cache/TLB miss on the victim's
  bucket when it is erased from the hash index (16 MB of buckets accessed at random) and ~11%
  re-reading a neighbour slot's hash for the backward shift. The baseline's
  `unordered_map::erase` pays the same kind of miss, which is why both grow with the pool.
EOF
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
