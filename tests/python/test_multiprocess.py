# SPDX-License-Identifier: Apache-2.0
"""Across real processes: forked children and a fresh interpreter, pipes for every handshake."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import kvbm
from helpers import Child, hashes, register


def config(name: str, **kw) -> kvbm.SegmentConfig:
    args = dict(name=name, block_count=64, block_size=4, bytes_per_block=64)
    args.update(kw)
    return kvbm.SegmentConfig(**args)


def test_child_registers_parent_matches(name) -> None:
    hs = hashes(5)
    parent = kvbm.BlockManager.create(config(name))

    def body(chan) -> None:
        with kvbm.BlockManager.open(name) as m:
            held = register(m, hs)
            chan.send([b.block_id for b in held])
            assert chan.recv() == "done"

    child = Child(body)
    ids = child.recv()
    got = parent.match_blocks(hs)
    assert [b.block_id for b in got] == ids
    assert parent.inspect_block(ids[0]).holder_processes == 2
    child.send("done")
    assert child.join() == 0
    assert parent.inspect_block(ids[0]).holder_processes == 1
    del got
    assert parent.counts()["inactive"] == 5
    assert parent.verify() == []
    parent.close()


def test_fresh_interpreter_registers_parent_matches(name) -> None:
    hs = hashes(3)
    parent = kvbm.BlockManager.create(config(name))
    script = textwrap.dedent(f"""
        import kvbm
        hs = kvbm.hash_token_blocks([1_000_003 + i for i in range(12)], 4)
        with kvbm.BlockManager.open({name!r}) as m:
            blocks = m.allocate_blocks(3)
            for i, b in enumerate(blocks):
                b.data[:2] = bytes([i, 42])
            m.register_blocks([b.stage(h, 4) for b, h in zip(blocks, hs)])
        print("registered")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "registered"
    got = parent.match_blocks(hs)  # the child is gone: resurrected from the inactive pool
    assert [bytes(b.data[:2]) for b in got] == [bytes([0, 42]), bytes([1, 42]), bytes([2, 42])]
    del got
    parent.close()


def test_sigkilled_child_holding_blocks_is_reaped(name) -> None:
    parent = kvbm.BlockManager.create(config(name))
    hs = hashes(4)

    def body(chan) -> None:
        m = kvbm.BlockManager.open(name)
        held = register(m, hs)
        mutable = m.allocate_blocks(3)
        staged = m.allocate_blocks(1)[0].stage(hashes(1, seed=5)[0], 4)
        chan.send("holding")
        chan.recv()  # blocks until killed
        del held, mutable, staged

    child = Child(body)
    assert child.recv() == "holding"
    assert parent.counts() == dict(reset=56, mutable=3, staged=1, primary=4, duplicate=0,
                                   inactive=0)
    child.kill()
    assert parent.reap_dead_processes() == 1
    assert parent.counts() == dict(reset=60, mutable=0, staged=0, primary=0, duplicate=0,
                                   inactive=4)
    assert parent.metrics()["kvbm_reaped_processes_total"] == 1
    assert parent.verify() == []
    assert parent.reap_dead_processes() == 0
    parent.close()


def test_payload_crosses_processes(name) -> None:
    parent = kvbm.BlockManager.create(config(name))
    h = hashes(1)[0]
    blk = parent.allocate_blocks(1)[0]
    blk.data[:] = bytes(range(64))
    imm = parent.register_block(blk.stage(h, 4))

    def body(chan) -> None:
        with kvbm.BlockManager.open(name) as m:
            got = m.match_blocks([h])[0]
            chan.send(bytes(got.data))
            assert got.data.readonly
            mine = m.allocate_blocks(1)[0]
            mine.data[:4] = b"kvbm"
            region = m.payload()
            region[m.block_offset(mine.block_id) + 4:m.block_offset(mine.block_id) + 6] = b"!!"
            del region
            theirs = m.register_block(mine.stage(hashes(1, seed=2)[0], 4))
            chan.send(theirs.block_id)
            assert chan.recv() == "read"
            del got, theirs

    child = Child(body)
    assert child.recv() == bytes(range(64))
    bid = child.recv()
    with parent.payload() as region:
        off = parent.block_offset(bid)
        assert bytes(region[off:off + 6]) == b"kvbm!!"
    child.send("read")
    assert child.join() == 0
    del imm
    parent.close()


def test_inherited_manager_raises_runtime_error_in_a_fork_child(name) -> None:
    parent = kvbm.BlockManager.create(config(name))
    held = register(parent, hashes(2))
    mut = parent.allocate_blocks(1)[0]

    def body(chan) -> None:
        calls = {
            "allocate_blocks": lambda: parent.allocate_blocks(1),
            "match_blocks": lambda: parent.match_blocks(hashes(2)),
            "counts": parent.counts,
            "metrics": parent.metrics,
            "verify": parent.verify,
            "reap_dead_processes": parent.reap_dead_processes,
            "payload": parent.payload,
            "close": parent.close,
            "stage": lambda: mut.stage(hashes(1, seed=7)[0], 4),
            "data": lambda: held[0].data,
            "set_reset_on_release": lambda: held[0].set_reset_on_release(True),
        }
        results = {}
        for label, call in calls.items():
            try:
                call()
                results[label] = "no error"
            except RuntimeError as e:
                results[label] = "RuntimeError" if "parent" in str(e) else f"RuntimeError {e}"
            except Exception as e:  # noqa: BLE001 - reported to the parent
                results[label] = f"{type(e).__name__}: {e}"
        # Inherited handles do nothing in the child: neither release() nor garbage collection
        # touches the parent's blocks.
        held[0].release()
        held.clear()
        mut.release()
        chan.send(results)
        chan.send("inherited" in repr(parent))
        # The child opens the segment itself and works normally.
        with kvbm.BlockManager.open(name) as own:
            chan.send(len(own.match_blocks(hashes(2))))

    child = Child(body)
    results = child.recv()
    assert results == {label: "RuntimeError" for label in results}, results
    assert child.recv() is True
    assert child.recv() == 2
    assert child.join() == 0
    assert parent.counts()["primary"] == 2 and parent.counts()["mutable"] == 1
    assert all(parent.inspect_block(b.block_id).holder_processes == 1 for b in held)
    assert mut.block_id >= 0  # still live in the parent
    assert parent.verify() == []
    parent.close()


def test_handles_released_by_a_child_are_untouched_in_the_parent(name) -> None:
    """A child that exits normally (running finalizers) leaves the parent's blocks held."""
    parent = kvbm.BlockManager.create(config(name))
    held = register(parent, hashes(3))
    script_child = Child(lambda chan: chan.send(len(held)))
    assert script_child.recv() == 3
    assert script_child.join() == 0
    assert parent.counts()["primary"] == 3
    assert held[0].use_count() == 1
    parent.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool_workers_share_the_cache(name, method) -> None:
    import multiprocessing

    parent = kvbm.BlockManager.create(config(name))
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        counts = pool.map(_worker_register, [(name, seed) for seed in (11, 12, 13, 14)])
    assert counts == [4, 4, 4, 4]
    for seed in (11, 12, 13, 14):
        assert len(parent.match_blocks(hashes(4, seed=seed))) == 4
    parent.close()


def _worker_register(args) -> int:
    name, seed = args
    with kvbm.BlockManager.open(name) as m:
        held = register(m, hashes(4, seed=seed))
        return len(m.match_blocks([b.sequence_hash for b in held]))
