# SPDX-License-Identifier: Apache-2.0
"""kvbm.BlockManager: lifecycle, batch calls, counts/metrics/inspect, close()."""

from __future__ import annotations

import errno
import gc

import pytest

import kvbm
from helpers import hashes, register

POOL_KEYS = {"reset", "mutable", "staged", "primary", "duplicate", "inactive"}


def test_create_open_destroy(names) -> None:
    name = names()
    cfg = kvbm.SegmentConfig(name=name, block_count=16, block_size=4)
    with kvbm.BlockManager.create(cfg) as a:
        with pytest.raises(kvbm.AlreadyExistsError) as info:
            kvbm.BlockManager.create(cfg)
        assert info.value.code == "already_exists"
        with kvbm.BlockManager.open(name) as b:
            assert b.process_index() != a.process_index()
            assert a.metrics()["kvbm_attached_processes"] == 2
        with kvbm.BlockManager.open_or_create(cfg) as c:
            assert c.total_blocks() == 16
        bigger = kvbm.SegmentConfig(name=name, block_count=32, block_size=4)
        with pytest.raises(kvbm.InvalidConfigError, match="block_count"):
            kvbm.BlockManager.open_or_create(bigger)
        assert kvbm.destroy(name) is None
        with pytest.raises(kvbm.NotFoundError) as info:
            kvbm.BlockManager.open(name)
        assert info.value.code == "not_found" and info.value.errno == errno.ENOENT
        # Still attached: the mapping keeps working after destroy.
        assert a.allocate_blocks(2) is not None
    with pytest.raises(kvbm.NotFoundError):
        kvbm.destroy(name)
    with pytest.raises(kvbm.NotFoundError):
        kvbm.BlockManager.destroy(name)


def test_open_or_create_creates(names) -> None:
    cfg = kvbm.SegmentConfig(name=names(), block_count=8, block_size=4)
    with kvbm.BlockManager.open_or_create(cfg) as m:
        assert m.total_blocks() == 8 and m.available_blocks() == 8


def test_allocate_stage_register_match_release(mgr) -> None:
    hs = hashes(4)
    blocks = mgr.allocate_blocks(4)
    assert [b.block_id for b in blocks] == [0, 1, 2, 3]  # FIFO reset pool
    assert mgr.counts() == dict(reset=60, mutable=4, staged=0, primary=0, duplicate=0, inactive=0)
    staged = [b.stage(h, 4) for b, h in zip(blocks, hs)]
    assert set(mgr.counts().keys()) == POOL_KEYS
    assert mgr.counts()["staged"] == 4
    held = mgr.register_blocks(staged)
    assert [b.sequence_hash for b in held] == hs
    assert mgr.counts()["primary"] == 4
    got = mgr.match_blocks(hs)
    assert [b.block_id for b in got] == [b.block_id for b in held]
    assert held[0].use_count() == 2
    for b in got + held:
        b.release()
    assert mgr.counts()["inactive"] == 4
    again = mgr.match_blocks(hs)  # resurrected from the inactive pool
    assert len(again) == 4 and mgr.counts()["primary"] == 4
    assert mgr.verify() == []
    assert mgr.verify(exclusive=True) == []
    with pytest.raises(TypeError):
        mgr.verify(True)  # keyword only: a bare True would not say what it means


def test_match_stops_at_first_miss_and_scattered_and_scan(mgr) -> None:
    hs = hashes(4)
    held = register(mgr, [hs[0], hs[1], hs[3]])
    assert len(mgr.match_blocks(hs)) == 2
    scattered = mgr.match_blocks_scattered(hs)
    assert [b is None for b in scattered] == [False, False, True, False]
    assert scattered[3].block_id == held[2].block_id
    found = mgr.scan_matches(hs, True)
    assert isinstance(found, dict) and set(found) == {hs[0], hs[1], hs[3]}
    assert found[hs[1]].block_id == held[1].block_id
    assert mgr.scan_matches(hs) .keys() == found.keys()
    assert mgr.match_blocks([]) == []
    m = mgr.metrics()
    assert m["kvbm_scan_hashes_requested_total"] == 4 + 4 + 4
    with pytest.raises(TypeError):
        mgr.match_blocks([hs[0], "not a hash"])


def test_allocate_all_or_nothing_and_evictions(mgr) -> None:
    assert mgr.allocate_blocks(65) is None
    assert mgr.allocate_blocks(0) == []
    hs = hashes(4)
    for b in register(mgr, hs):
        b.release()
    rest = mgr.allocate_blocks(60)  # the whole reset pool
    assert mgr.allocate_blocks_with_evictions(5) is None
    blocks, evicted = mgr.allocate_blocks_with_evictions(2)
    assert len(blocks) == 2 and len(evicted) == 2
    assert set(evicted) <= set(hs)
    assert all(isinstance(h, kvbm.SequenceHash) for h in evicted)
    del rest, blocks


def test_reset_inactive_pool(mgr) -> None:
    held = register(mgr, hashes(3))
    with pytest.raises(kvbm.BlocksInUseError) as info:
        mgr.reset_inactive_pool()
    assert info.value.code == "blocks_in_use"
    del held
    gc.collect()
    assert mgr.counts()["inactive"] == 3
    assert mgr.reset_inactive_pool() is None
    assert mgr.counts()["reset"] == 64


def test_duplicates_allow_and_reject(names) -> None:
    hs = hashes(1)
    with kvbm.BlockManager.create(
            kvbm.SegmentConfig(name=names(), block_count=8, block_size=4)) as allow:
        first = register(allow, hs)[0]
        dup = register(allow, hs)[0]
        assert dup.block_id != first.block_id
        assert allow.inspect_block(dup.block_id).state == "duplicate"
        assert allow.inspect_block(first.block_id).duplicate_refs == 1
    with kvbm.BlockManager.create(kvbm.SegmentConfig(
            name=names(), block_count=8, block_size=4, duplication="reject")) as reject:
        first = register(reject, hs)[0]
        again = register(reject, hs)[0]
        assert again.block_id == first.block_id
        assert reject.counts()["reset"] == 7


def test_inspect_block(mgr) -> None:
    info = mgr.inspect_block(5)
    assert info.state == "reset" and info.hash is None
    assert info.holder_processes == 0 and info.duplicate_refs == 0
    assert info.reset_on_release is False
    b = mgr.allocate_blocks(1)[0]
    assert mgr.inspect_block(b.block_id).hash is None
    h = hashes(1)[0]
    cb = b.stage(h, 4)
    assert mgr.inspect_block(cb.block_id).state == "staged"
    assert mgr.inspect_block(cb.block_id).hash == h
    imm = mgr.register_block(cb)
    info = mgr.inspect_block(imm.block_id)
    assert (info.state, info.hash, info.holder_processes) == ("primary", h, 1)
    assert "primary" in repr(info)
    with pytest.raises(ValueError):
        mgr.inspect_block(64)
    with pytest.raises(ValueError):
        mgr.inspect_block(-1)


def test_metrics_names(mgr) -> None:
    m = mgr.metrics()
    for key in ("kvbm_allocations_total", "kvbm_registrations_total", "kvbm_evictions_total",
                "kvbm_reset_pool_size", "kvbm_inflight_immutable", "kvbm_attached_processes"):
        assert key in m and isinstance(m[key], int)
    assert m["kvbm_reset_pool_size"] == 64
    register(mgr, hashes(2))
    assert mgr.metrics()["kvbm_registrations_total"] == 2


def test_close_empties_handles_and_detaches(name) -> None:
    cfg = kvbm.SegmentConfig(name=name, block_count=16, block_size=4)
    observer = kvbm.BlockManager.create(cfg)
    m = kvbm.BlockManager.open(name)
    assert observer.metrics()["kvbm_attached_processes"] == 2
    held = register(m, hashes(2))
    weak = held[0].downgrade()
    mut = m.allocate_blocks(1)[0]
    staged = m.allocate_blocks(1)[0].stage(hashes(1, seed=9)[0], 4)
    m.close()
    assert m.closed
    for handle in (held[0], weak, mut, staged):
        with pytest.raises(ValueError):
            handle.block_id
        assert "closed" in repr(handle)
    with pytest.raises(ValueError):
        held[1].release() or held[1].use_count()
    with pytest.raises(ValueError):
        m.counts()
    with pytest.raises(ValueError):
        m.allocate_blocks(1)
    m.close()  # a second close does nothing
    assert "closed" in repr(m)
    # Its blocks went back (registered ones to the inactive pool) and its entry is free.
    assert observer.counts() == dict(reset=14, mutable=0, staged=0, primary=0, duplicate=0,
                                     inactive=2)
    assert observer.metrics()["kvbm_attached_processes"] == 1
    assert observer.verify() == []
    observer.close()


def test_with_statement_closes(name) -> None:
    with kvbm.BlockManager.create(kvbm.SegmentConfig(name=name, block_count=4, block_size=4)) as m:
        assert isinstance(m, kvbm.BlockManager)
    assert m.closed


def test_misuse_raises_value_error(names, mgr) -> None:
    with kvbm.BlockManager.create(
            kvbm.SegmentConfig(name=names(), block_count=8, block_size=4)) as other:
        foreign = other.allocate_blocks(1)[0].stage(hashes(1)[0], 4)
        with pytest.raises(ValueError, match="another BlockManager"):
            mgr.register_blocks([foreign])
        assert foreign.block_id == 0  # not consumed
    cb = mgr.allocate_blocks(1)[0].stage(hashes(1)[0], 4)
    with pytest.raises(ValueError, match="twice"):
        mgr.register_blocks([cb, cb])
    assert mgr.register_blocks([cb])[0].sequence_hash == hashes(1)[0]
    with pytest.raises(ValueError):
        mgr.register_block(cb)  # consumed
    with pytest.raises(TypeError):
        mgr.register_blocks([mgr.allocate_blocks(1)[0]])
    with pytest.raises(ValueError):
        mgr.allocate_blocks(-1)


def test_help_reads_well() -> None:
    for cls in (kvbm.BlockManager, kvbm.MutableBlock, kvbm.CompleteBlock, kvbm.ImmutableBlock,
                kvbm.WeakBlock, kvbm.SequenceHash, kvbm.SegmentConfig, kvbm.BlockInfo):
        assert cls.__doc__ and cls.__module__ == "kvbm"
        for attr, value in vars(cls).items():
            if attr.startswith("_"):
                continue
            assert getattr(value, "__doc__", None), f"{cls.__name__}.{attr} has no docstring"
    import pydoc
    text = pydoc.render_doc(kvbm.BlockManager, renderer=pydoc.plaintext)
    assert "match_blocks" in text and "allocate_blocks" in text


def test_threads_share_one_manager(mgr) -> None:
    """Calls release the GIL while they work on the segment: several threads using one manager
    at once leave it consistent."""
    import threading

    errors = []

    def worker(seed: int) -> None:
        try:
            for round_ in range(50):
                hs = hashes(2, seed=seed * 1000 + round_)
                held = register(mgr, hs)
                assert [b.block_id for b in mgr.match_blocks(hs)] == [b.block_id for b in held]
                weak = held[0].downgrade()
                del held
                up = weak.upgrade()
                assert up is None or up.sequence_hash == hs[0]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    c = mgr.counts()
    assert c["mutable"] == c["staged"] == c["primary"] == c["duplicate"] == 0
    assert mgr.verify() == []
