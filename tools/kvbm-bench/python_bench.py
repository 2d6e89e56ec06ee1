#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Cost per block of the kvbm Python binding, next to the same workloads run from C++.

    PYTHONPATH=build/python python_bench.py --cpp build/tools/kvbm-bench-pycompare \\
        [--rounds 5] [--reps 5] [--markdown FILE]

Workloads (identical in tools/kvbm-bench/python_compare.cpp):
  cycle      64 x (allocate_blocks(32) -> stage each -> register_blocks(32) -> drop the 32)
  match1000  16 x (match_blocks of 1000 held hashes -> drop the 1000 handles)
  hash1000   16 x hash_token_blocks of 16000 tokens (1000 blocks of 16) from a numpy uint32 array
Hashes are made before the timed part in both. Both processes keep one idle thread alive.
Rounds alternate one C++ run (R repetitions) and R Python repetitions so that load on the
machine hits both; each column is the median over all repetitions (p10-p90 in parentheses).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List

import numpy

import kvbm

WORKLOADS = {
    "cycle": "allocate_blocks(32) -> stage -> register_blocks(32) -> drop",
    "match1000": "match_blocks(1000 held hashes) -> drop",
    "hash1000": "hash_token_blocks(16000 tokens, numpy uint32), per block",
}


def create(name: str, blocks: int) -> kvbm.BlockManager:
    try:
        kvbm.destroy(name)
    except kvbm.NotFoundError:
        pass
    return kvbm.BlockManager.create(
        kvbm.SegmentConfig(name=name, block_count=blocks, block_size=16, eviction="lru"))


def rep_cycle(m: kvbm.BlockManager, counter: List[int]) -> float:
    iters, batch = 64, 32
    make = kvbm.SequenceHash.make
    hashes = [make(counter[0] + i, None, 0) for i in range(iters * batch)]
    counter[0] += iters * batch
    m.reset_inactive_pool()
    t0 = time.perf_counter_ns()
    for it in range(iters):
        blocks = m.allocate_blocks(batch)
        hs = hashes[it * batch:(it + 1) * batch]
        held = m.register_blocks([b.stage(h, 16) for b, h in zip(blocks, hs)])
        del blocks, held
    return (time.perf_counter_ns() - t0) / (iters * batch)


def rep_match(m: kvbm.BlockManager, hashes: List[kvbm.SequenceHash]) -> float:
    iters = 16
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        got = m.match_blocks(hashes)
        assert len(got) == len(hashes)
        del got
    return (time.perf_counter_ns() - t0) / (iters * len(hashes))


def rep_hash(tokens: numpy.ndarray) -> float:
    iters = 16
    n = 0
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        n += len(kvbm.hash_token_blocks(tokens, 16))
    return (time.perf_counter_ns() - t0) / n


def stats(values: List[float]) -> str:
    v = sorted(values)
    p = lambda q: v[min(len(v) - 1, max(0, int(q * len(v) + 0.999999) - 1))]  # noqa: E731
    return f"{statistics.median(v):.1f} ns ({p(0.1):.1f}-{p(0.9):.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpp", required=True, help="path of kvbm-bench-pycompare")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--markdown", help="also write the table (Markdown) to this file")
    args = ap.parse_args()

    stop = threading.Event()
    idle = threading.Thread(target=stop.wait, daemon=True)  # as in a server, and as in C++
    idle.start()

    base = f"kvbm-pybench-{os.getpid()}"
    cycle = create(base + "-cycle", 1 << 14)
    match = create(base + "-match", 2048)
    try:
        hashes = [kvbm.SequenceHash.make(1_000_000 + i, None, 0) for i in range(1000)]
        blocks = match.allocate_blocks(1000)
        held = match.register_blocks([b.stage(h, 16) for b, h in zip(blocks, hashes)])
        tokens = (numpy.arange(16000, dtype=numpy.uint64) * 2654435761 % 2**32).astype(
            numpy.uint32)
        counter = [1]
        rep_cycle(cycle, counter)  # warm-up
        rep_match(match, hashes)

        py: Dict[str, List[float]] = {w: [] for w in WORKLOADS}
        cpp: Dict[str, List[float]] = {w: [] for w in WORKLOADS}
        for _ in range(args.rounds):
            out = subprocess.run([args.cpp, "--reps", str(args.reps)], check=True,
                                 capture_output=True, text=True, timeout=600).stdout
            for line in out.splitlines():
                w, ns = line.split(",")
                cpp[w].append(float(ns))
            for _ in range(args.reps):
                py["cycle"].append(rep_cycle(cycle, counter))
                py["match1000"].append(rep_match(match, hashes))
                py["hash1000"].append(rep_hash(tokens))
        del held
    finally:
        cycle.close()
        match.close()
        kvbm.destroy(base + "-cycle")
        kvbm.destroy(base + "-match")
        stop.set()

    lines = [
        "| workload | C++ ns/block | Python ns/block | Python / C++ | goal |",
        "|---|---|---|---|---|",
    ]
    for w, what in WORKLOADS.items():
        ratio = statistics.median(py[w]) / statistics.median(cpp[w])
        goal = "<= 3x" if w != "hash1000" else "no per-token overhead"
        lines.append(f"| {what} | {stats(cpp[w])} | {stats(py[w])} | {ratio:.2f}x | {goal} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
