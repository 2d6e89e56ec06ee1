#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Several vLLM-like engines on one host sharing one CPU KV tier (kvbm.vllm), against the same
engines each with a private tier of 1/N the size.

Each engine is a real process that drives KvbmOffloadingManager the way vLLM's offloading
scheduler does, request by request:

    hit = lookup(hashes)                          how much of the prompt the tier holds
    prepare_load(hashes[:hit]) ... complete_load  read those blocks' KV bytes (verified)
    prepare_store(hashes[hit:]) ... complete_store write the blocks it computed

on a synthetic workload: every request starts with one of a few long system prompts shared by
all engines (popular ones more often) and ends with a short prompt of its own. Block hashes are
vLLM-style chained SHA-256 (32 bytes); a block's KV bytes are derived from its hash, so every
loaded byte is checked. It prints the hit rate and the tokens not recomputed for both setups.

Then it kills engines on the shared tier with SIGKILL, one holding load pins and one in the middle
of a store, while the others keep serving; it checks that reaping releases what the dead engines
held, that `kvbm-ctl verify` is clean and that nothing leaks.

Usage: vllm_shared_tier.py [--engines 4] [--requests 300] [--quick] [--ctl PATH]
Exit code 0 when every check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import kvbm
from kvbm.vllm import KvbmOffloadingManager

ROOT = hashlib.sha256(b"kvbm shared tier simulation").digest()


# --- the workload ---------------------------------------------------------------------------------


def chain(parent: bytes, tokens: tuple) -> bytes:
    """vLLM-style block hash: SHA-256 over the parent's hash and the block's tokens."""
    return hashlib.sha256(parent + repr(tokens).encode()).digest()


def prompt_hashes(system: int, system_blocks: int, own: tuple, own_blocks: int) -> list[bytes]:
    hashes, h = [], ROOT
    for i in range(system_blocks):
        h = chain(h, ("system", system, i))
        hashes.append(h)
    for i in range(own_blocks):
        h = chain(h, ("user",) + own + (i,))
        hashes.append(h)
    return hashes


def kv_bytes(key: bytes, size: int) -> bytes:
    """The KV bytes of a block: its hash repeated (any block loaded in place of another shows)."""
    return (key * (size // len(key) + 1))[:size]


def requests(args, engine: int) -> list[list[bytes]]:
    rng = random.Random(args.seed * 1000 + engine)
    weights = [1.0 / (p + 1) for p in range(args.prompts)]  # Zipf-like popularity
    out = []
    for r in range(args.requests):
        system = rng.choices(range(args.prompts), weights)[0]
        own = rng.randint(args.user_blocks[0], args.user_blocks[1])
        out.append(prompt_hashes(system, args.system_blocks, (engine, r), own))
    return out


# --- one engine (a child process) ----------------------------------------------------------------


def run_engine(args) -> int:
    tier = KvbmOffloadingManager(args.tier, create=False)
    size = tier.bytes_per_block
    stats = dict(blocks=0, hit=0, verified=0, mismatched=0, races=0, stored=0, no_room=0)
    victim = args.victim
    with tier:
        payload = tier.payload()
        for n, hashes in enumerate(requests(args, args.engine)):
            stats["blocks"] += len(hashes)
            hit = tier.lookup(hashes)
            if hit:
                try:
                    spec = tier.prepare_load(hashes[:hit])
                except KeyError:
                    # Evicted by another engine between lookup and prepare_load: recompute.
                    stats["races"] += 1
                    hit = 0
                else:
                    if victim == "load" and n >= args.victim_after:
                        print(json.dumps({"pinned": hit}), flush=True)
                        signal.pause()  # SIGKILLed here, holding the pins
                    for key, bid in zip(hashes[:hit], spec.block_ids):
                        off = tier.block_offset(bid)
                        if payload[off : off + size] == kv_bytes(key, size):
                            stats["verified"] += 1
                        else:
                            stats["mismatched"] += 1
                    tier.complete_load(hashes[:hit])
            stats["hit"] += hit
            out = tier.prepare_store(hashes[hit:])
            if out is None:
                stats["no_room"] += 1
                continue
            for key, bid in zip(out.block_hashes_to_store, out.store_spec.block_ids):
                off = tier.block_offset(bid)
                payload[off : off + size] = kv_bytes(key, size)
            if victim == "store" and n >= args.victim_after and out.block_hashes_to_store:
                print(json.dumps({"storing": len(out.block_hashes_to_store)}), flush=True)
                signal.pause()  # SIGKILLed here, before complete_store
            tier.complete_store(out.block_hashes_to_store)
            stats["stored"] += len(out.block_hashes_to_store)
        payload.release()
    print(json.dumps(stats), flush=True)
    return 0


# --- the driver ------------------------------------------------------------------------------------


def spawn(args, tier: str, engine: int, victim: str = "") -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--engine", str(engine), "--tier", tier]
    cmd += ["--requests", str(args.requests), "--prompts", str(args.prompts)]
    cmd += ["--system-blocks", str(args.system_blocks), "--seed", str(args.seed)]
    cmd += ["--user-blocks", str(args.user_blocks[0]), str(args.user_blocks[1])]
    if victim:
        cmd += ["--victim", victim, "--victim-after", str(args.requests // 3)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"engine exited with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def total(results: list[dict]) -> dict:
    return {k: sum(r[k] for r in results) for k in results[0]}


def run_setup(args, tiers: list[str], blocks_each: int) -> dict:
    for t in tiers:
        KvbmOffloadingManager(
            t, block_count=blocks_each, block_size=args.block_size, bytes_per_block=args.bytes
        ).close()
    procs = [spawn(args, tiers[e % len(tiers)], e) for e in range(args.engines)]
    return total([finish(p) for p in procs])


def report(label: str, s: dict, block_size: int) -> str:
    rate = s["hit"] / s["blocks"]
    return (
        f"  {label}: hit rate {100 * rate:5.1f}%, tokens not recomputed "
        f"{s['hit'] * block_size:,} of {s['blocks'] * block_size:,} "
        f"(verified {s['verified']:,} loaded blocks, {s['mismatched']} wrong; "
        f"{s['races']} lookup/load races)"
    )


def kvbm_ctl(args) -> str | None:
    if args.ctl:
        return args.ctl
    here = os.path.dirname(os.path.abspath(__file__))
    build = os.environ.get("KVBM_BUILD_DIR", os.path.join(here, "..", "..", "build"))
    candidate = os.path.join(build, "tools", "kvbm-ctl")
    return candidate if os.path.exists(candidate) else shutil.which("kvbm-ctl")


def crash_phase(args, tier: str, problems: list[str]) -> str:
    """Engines serve on the shared tier while one is killed holding load pins and one is killed
    mid-store; returns the summary line."""
    normal = [spawn(args, tier, e) for e in range(args.engines - 2)]
    loader = spawn(args, tier, args.engines - 2, victim="load")
    storer = spawn(args, tier, args.engines - 1, victim="store")
    pinned = json.loads(loader.stdout.readline())["pinned"]
    storing = json.loads(storer.stdout.readline())["storing"]
    for p in (loader, storer):
        p.send_signal(signal.SIGKILL)
        p.wait()
    survivors = total([finish(p) for p in normal])
    if survivors["mismatched"]:
        problems.append(f"{survivors['mismatched']} wrong blocks loaded after the kills")
    with kvbm.BlockManager.open(tier) as mgr:
        reaped = mgr.reap_dead_processes()  # both, unless an engine's allocation did it already
        counts = mgr.counts()
        dead = mgr.metrics()["kvbm_reaped_processes_total"]
    if dead < 2:
        problems.append(f"only {dead} dead engines were reaped")
    held = counts["primary"] + counts["mutable"] + counts["staged"] + counts["duplicate"]
    if held:
        problems.append(f"{held} blocks still held after every engine is gone: {counts}")
    verdict = "not run (kvbm-ctl not found)"
    ctl = kvbm_ctl(args)
    if ctl:
        res = subprocess.run([ctl, "verify", tier], capture_output=True, text=True, timeout=60)
        verdict = "clean" if res.returncode == 0 else f"FAILED ({res.stdout.strip()})"
        if res.returncode != 0:
            problems.append(f"kvbm-ctl verify: {res.stdout.strip()} {res.stderr.strip()}")
    return (
        f"  crash: one engine SIGKILLed holding {pinned} load pins, one mid-store of {storing} "
        f"blocks; {args.engines - 2} others finished (verified {survivors['verified']:,} loaded "
        f"blocks); dead engines reaped ({dead}, {reaped} by this check); no block left held; "
        f"kvbm-ctl verify {verdict}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", type=int, default=4, help="engine processes (>= 3)")
    p.add_argument("--requests", type=int, default=300, help="requests per engine")
    p.add_argument("--prompts", type=int, default=12, help="shared system prompts")
    p.add_argument("--system-blocks", type=int, default=24, help="blocks per system prompt")
    p.add_argument("--user-blocks", type=int, nargs=2, default=(2, 8), help="own blocks: min max")
    p.add_argument("--tier-blocks", type=int, default=512, help="total tier size in blocks")
    p.add_argument("--block-size", type=int, default=16, help="tokens per block")
    p.add_argument("--bytes", type=int, default=4096, help="KV bytes per block")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a short run (about a second per phase)")
    p.add_argument("--ctl", help="path of kvbm-ctl (default: the build's, else PATH)")
    p.add_argument("--engine", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tier", help=argparse.SUPPRESS)
    p.add_argument("--victim", default="", help=argparse.SUPPRESS)
    p.add_argument("--victim-after", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.engine is not None:
        return run_engine(args)
    if args.engines < 3:
        p.error("--engines must be at least 3 (two are killed in the crash phase)")
    if args.quick:
        args.requests = min(args.requests, 120)
    name = f"kvbm-sim-{os.getpid()}"
    shared, private = [f"{name}-shared"], [f"{name}-p{e}" for e in range(args.engines)]
    problems: list[str] = []
    start = time.monotonic()
    try:
        print(
            f"kvbm.vllm simulation: {args.engines} engines x {args.requests} requests, "
            f"{args.prompts} shared system prompts of {args.system_blocks} blocks, "
            f"{args.block_size} tokens and {args.bytes} B per block"
        )
        s = run_setup(args, shared, args.tier_blocks)
        per = args.tier_blocks // args.engines
        q = run_setup(args, private, per)
        print(report(f"one shared tier ({args.tier_blocks} blocks)", s, args.block_size))
        print(report(f"{args.engines} private tiers ({per} blocks each)", q, args.block_size))
        gain = s["hit"] / max(q["hit"], 1)
        print(f"  shared tier: {gain:.2f}x the tokens not recomputed of private tiers")
        for label, r in (("shared", s), ("private", q)):
            if r["mismatched"]:
                problems.append(f"{r['mismatched']} wrong blocks loaded ({label})")
        print(crash_phase(args, shared[0], problems))
    finally:
        for t in shared + private:
            try:
                kvbm.destroy(t)
            except kvbm.NotFoundError:
                pass
    for msg in problems:
        print(f"PROBLEM: {msg}")
    print(f"  {'all checks passed' if not problems else 'FAILED'} in {time.monotonic() - start:.1f} s")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
