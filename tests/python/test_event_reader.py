# SPDX-License-Identifier: Apache-2.0
"""kvbm.EventReader (DESIGN.md section 10): the segment's KV event ring read from Python without
attaching, stage() with token ids, SegmentConfig's event fields and EventsLostError."""

from __future__ import annotations

from typing import List

import pytest

import kvbm

BS = 4


def tokens(i: int) -> List[int]:
    return [i * 100 + j for j in range(BS)]


def chain(n: int, seed: int = 1):
    toks = [t for i in range(n) for t in tokens(seed * 1000 + i)]
    return kvbm.hash_token_blocks(toks, BS), toks


def make(name: str, **kw) -> kvbm.BlockManager:
    args = dict(name=name, block_count=8, block_size=BS, eviction="lru")
    args.update(kw)
    return kvbm.BlockManager.create(kvbm.SegmentConfig(**args))


def test_config_fields_round_trip(name: str) -> None:
    cfg = kvbm.SegmentConfig(name=name, block_count=8, event_capacity=1024, store_token_ids=True)
    assert cfg.event_capacity == 1024
    assert cfg.store_token_ids is True
    assert kvbm.SegmentConfig(name=name, block_count=8).event_capacity == 65536
    for bad in (100, 128, 2**25):
        with pytest.raises(kvbm.InvalidConfigError, match="event_capacity"):
            kvbm.BlockManager.create(
                kvbm.SegmentConfig(name=name, block_count=8, event_capacity=bad)
            )


def test_stored_removed_cleared_with_token_ids(name: str) -> None:
    with make(name, store_token_ids=True) as m:
        r = kvbm.EventReader.open(name)
        assert (r.oldest_seq(), r.next_seq()) == (0, 1)
        hs, toks = chain(3)
        blocks = m.allocate_blocks(3)
        staged = [b.stage(h, BS, toks[i * BS : (i + 1) * BS]) for i, (b, h) in enumerate(zip(blocks, hs))]
        held = m.register_blocks(staged)
        dup = m.register_blocks([m.allocate_blocks(1)[0].stage(hs[0], BS)])  # duplicate: nothing
        ev = r.read(0, 100)
        assert [e.seq for e in ev] == [0, 1, 2, 3]
        assert [e.kind for e in ev] == ["cleared", "stored", "stored", "stored"]
        assert ev[0].hash is None
        assert [e.hash for e in ev[1:]] == hs
        assert [e.token_ids for e in ev[1:]] == [toks[i * BS : (i + 1) * BS] for i in range(3)]
        assert all(e.block_size == BS for e in ev)
        held[2].set_reset_on_release(True)
        for h in held + dup:
            h.release()
        ev = r.read(4, 100)
        assert [(e.kind, e.hash) for e in ev] == [("removed", hs[2])]
        assert m.metrics()["kvbm_events_total"] == 5
        assert r.read(5, 10) == []


def test_stage_with_wrong_token_count_hands_block_back(name: str) -> None:
    with make(name, store_token_ids=True) as m:
        b = m.allocate_blocks(1)[0]
        bid = b.block_id
        hs, _ = chain(1)
        with pytest.raises(kvbm.BlockSizeMismatchError) as info:
            b.stage(hs[0], BS, [1, 2, 3])
        assert (info.value.expected, info.value.actual) == (BS, 3)
        assert info.value.block.block_id == bid
        c = info.value.block.stage(hs[0], BS, token_ids=[9, 9, 9, 9])
        m.register_block(c)
        assert kvbm.EventReader.open(name).read(1, 1)[0].token_ids == [9, 9, 9, 9]


def test_lost_events_raise(name: str) -> None:
    with make(name, block_count=2, event_capacity=256) as m:
        for i in range(200):  # each stores one and (from the third on) evicts one
            hs, _ = chain(1, seed=i + 1)
            m.register_blocks([m.allocate_blocks(1)[0].stage(hs[0], BS)]).clear()
        r = kvbm.EventReader.open(name)
        assert r.next_seq() == 1 + 200 + 198
        assert r.oldest_seq() == r.next_seq() - 256
        with pytest.raises(kvbm.EventsLostError) as info:
            r.read(0, 10)
        assert info.value.code == "events_lost"
        ev = r.read(r.oldest_seq(), 1000)
        assert len(ev) == 256
        assert [e.seq for e in ev] == list(range(r.oldest_seq(), r.next_seq()))


def test_reader_errors(name: str) -> None:
    with pytest.raises(kvbm.NotFoundError):
        kvbm.EventReader.open(name)
    with make(name, event_capacity=0):
        with pytest.raises(kvbm.InvalidConfigError):
            kvbm.EventReader.open(name)


def test_reader_takes_no_process_entry(name: str) -> None:
    with make(name) as m:
        r = kvbm.EventReader.open(name)
        r.read(0, 10)
        assert m.metrics()["kvbm_attached_processes"] == 1
