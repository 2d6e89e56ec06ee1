# SPDX-License-Identifier: Apache-2.0
"""kvbm.vllm with real engine processes: two engines share a tier (one stores, the other loads the
bytes); an engine SIGKILLed while holding load pins or in the middle of a store is reaped, the
others carry on, and `kvbm-ctl verify` is clean afterwards."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

import kvbm
from kvbm.vllm import KvbmOffloadingManager


BS, B = 16, 64

# An engine process: opens the tier, runs the steps named on its command line, reports each one
# on stdout (one JSON line) and waits for a line on stdin before the next ("go") or exits.
ENGINE = r"""
import hashlib, json, sys
from kvbm.vllm import KvbmOffloadingManager

def key(tag, i):
    return hashlib.sha256(f"{tag}{i}".encode()).digest()

name, steps = sys.argv[1], sys.argv[2:]
m = KvbmOffloadingManager(name, create=False)
pv = m.payload()
B = m.bytes_per_block
for step in steps:
    op, tag, n = step.split(":")
    ks = [key(tag, i) for i in range(int(n))]
    if op == "store":
        out = m.prepare_store(ks)
        for k, bid in zip(out.block_hashes_to_store, out.store_spec.block_ids):
            off = m.block_offset(bid)
            pv[off:off + B] = (k * 3)[:B]
        msg = {"to_store": len(out.block_hashes_to_store)}
    elif op == "complete":
        m.complete_store(ks)
        msg = {"completed": len(ks)}
    elif op == "load":
        spec = m.prepare_load(ks)
        ok = all(bytes(pv[m.block_offset(b):m.block_offset(b) + B]) == (k * 3)[:B]
                 for k, b in zip(ks, spec.block_ids))
        msg = {"loaded": len(spec.block_ids), "bytes_ok": ok}
    elif op == "unload":
        m.complete_load(ks)
        msg = {"unloaded": len(ks)}
    print(json.dumps(msg), flush=True)
    if sys.stdin.readline().strip() != "go":
        break
pv.release()
m.close()
"""


def key(tag: str, i: int) -> bytes:
    return hashlib.sha256(f"{tag}{i}".encode()).digest()


class Engine:
    """An engine process running ENGINE's steps one at a time (no sleeps: a pipe per step)."""

    def __init__(self, name: str, *steps: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ENGINE, name, *steps],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def result(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"engine exited with {self.proc.wait(timeout=30)}"
        return json.loads(line)

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        self.proc.stdin.close()
        self.proc.stdout.close()


def ctl() -> str:
    cand = os.environ.get("KVBM_CTL")
    if not cand:
        build = pathlib.Path(kvbm.__file__).resolve().parents[2]
        path = build / "tools" / "kvbm-ctl"
        cand = str(path) if path.exists() else shutil.which("kvbm-ctl")
    if not cand:
        pytest.skip("kvbm-ctl not found (set KVBM_CTL)")
    return cand


def verify(name: str) -> subprocess.CompletedProcess:
    return subprocess.run([ctl(), "verify", name], capture_output=True, text=True, timeout=60)


@pytest.fixture
def tier(name):
    with KvbmOffloadingManager(name, block_count=8, block_size=BS, bytes_per_block=B) as m:
        yield m


def test_two_engine_processes_share_the_tier(name, tier):
    ks = [key("p", i) for i in range(4)]
    writer = Engine(name, "store:p:4", "complete:p:4")
    assert writer.result() == {"to_store": 4}
    # Stored but not completed: no engine may load it yet.
    assert tier.lookup(ks) == 0
    with pytest.raises(KeyError):
        tier.prepare_load(ks)
    writer.go()
    assert writer.result() == {"completed": 4}
    assert writer.finish() == 0
    reader = Engine(name, "load:p:4", "unload:p:4")
    assert reader.result() == {"loaded": 4, "bytes_ok": True}
    reader.go()
    assert reader.result() == {"unloaded": 4}
    assert reader.finish() == 0
    assert tier.lookup(ks) == 4
    assert verify(name).returncode == 0


def test_an_engine_killed_holding_load_pins_is_reaped(name, tier):
    ks = [key("q", i) for i in range(4)]
    out = tier.prepare_store(ks)
    with tier.payload() as pv:
        for k, bid in zip(out.block_hashes_to_store, out.store_spec.block_ids):
            pv[tier.block_offset(bid) : tier.block_offset(bid) + B] = (k * 3)[:B]
    tier.complete_store(out.block_hashes_to_store)
    victim = Engine(name, "load:q:4")
    assert victim.result() == {"loaded": 4, "bytes_ok": True}
    victim.kill()
    res = verify(name)
    assert res.returncode == 1 and "dead" in (res.stdout + res.stderr).lower()
    # The dead engine's pins hold 4 of the 8 blocks until it is reaped; a store of 8 new blocks
    # comes up short, reaps it and retries, and may then evict what it had pinned.
    new = [key("r", i) for i in range(8)]
    out = tier.prepare_store(new)
    assert out is not None and out.block_hashes_to_store == new
    assert sorted(out.block_hashes_evicted) == sorted(ks)
    tier.complete_store(new)
    assert tier.block_manager.metrics()["kvbm_reaped_processes_total"] == 1
    assert verify(name).returncode == 0


def test_an_engine_killed_mid_store_is_reaped_and_others_store_the_hashes(name, tier):
    other = Engine(name, "store:s:3")
    victim = Engine(name, "store:s:3")
    first = other.result()
    second = victim.result()
    # Whichever engine prepared first stores all three; the other leaves them out.
    assert sorted([first["to_store"], second["to_store"]]) == [0, 3]
    storer, idle = (victim, other) if second["to_store"] == 3 else (other, victim)
    storer.kill()
    idle.go()
    assert idle.finish() == 0
    ks = [key("s", i) for i in range(3)]
    assert tier.lookup(ks) == 0  # never completed: not loadable
    # The unfinished store is left out until the dead engine is reaped; prepare_store reaps it.
    out = tier.prepare_store(ks)
    assert out.block_hashes_to_store == ks
    tier.complete_store(ks)
    assert tier.lookup(ks) == 3
    counts = tier.block_manager.counts()
    assert counts["primary"] == counts["mutable"] == counts["staged"] == 0
    assert verify(name).returncode == 0
