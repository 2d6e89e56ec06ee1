# SPDX-License-Identifier: Apache-2.0
"""kvbm.SegmentConfig: keywords, defaults, read-back, validation on construction."""

from __future__ import annotations

import pickle

import pytest

import kvbm


def test_defaults_read_back_as_attributes() -> None:
    c = kvbm.SegmentConfig(name="cfg-defaults", block_count=8)
    assert c.name == "cfg-defaults"
    assert c.block_count == 8
    assert c.block_size == 16
    assert c.max_processes == 64
    assert c.eviction == "lineage"
    assert c.lineage_order == "tick"
    assert c.duplication == "allow"
    assert c.default_reset_on_release is False
    assert c.multi_lru_thresholds == (3, 8, 15)
    assert isinstance(c.multi_lru_thresholds, tuple)
    assert c.frequency_capacity == 1 << 21
    assert c.bytes_per_block == 0
    assert c.permissions == 0o600
    assert c.event_capacity == 65536
    assert c.store_token_ids is False


def test_every_field_is_a_keyword() -> None:
    c = kvbm.SegmentConfig(
        name="cfg-all", block_count=1024, block_size=32, max_processes=8, eviction="multi_lru",
        lineage_order="fifo", duplication="reject", default_reset_on_release=True,
        multi_lru_thresholds=[2, 5, 9], frequency_capacity=1 << 12, bytes_per_block=4096,
        permissions=0o660, event_capacity=0, store_token_ids=False)
    assert (c.block_size, c.max_processes, c.eviction, c.lineage_order, c.duplication) == (
        32, 8, "multi_lru", "fifo", "reject")
    assert c.default_reset_on_release is True
    assert c.multi_lru_thresholds == (2, 5, 9)
    assert (c.frequency_capacity, c.bytes_per_block, c.permissions, c.event_capacity) == (
        1 << 12, 4096, 0o660, 0)
    assert c.to_dict()["eviction"] == "multi_lru"
    with pytest.raises(TypeError):
        kvbm.SegmentConfig("positional", 8)  # keyword arguments only


@pytest.mark.parametrize("policy", ["lineage", "lru", "multi_lru", "fifo"])
def test_eviction_names_round_trip(policy: str) -> None:
    assert kvbm.SegmentConfig(name="cfg-e", block_count=4, eviction=policy).eviction == policy


def test_attributes_are_read_only() -> None:
    c = kvbm.SegmentConfig(name="cfg-ro", block_count=8)
    with pytest.raises(AttributeError):
        c.block_count = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eviction": "random"},
        {"eviction": "LRU"},
        {"lineage_order": "lifo"},
        {"duplication": "maybe"},
        {"block_count": 0},
        {"block_count": -1},
        {"block_count": 2**32},
        {"block_count": "8"},
        {"block_size": 3},
        {"block_size": 2048},
        {"max_processes": 0},
        {"max_processes": 65},
        {"multi_lru_thresholds": (3, 3, 15)},
        {"multi_lru_thresholds": (3, 8)},
        {"multi_lru_thresholds": (0, 8, 15)},
        {"frequency_capacity": 1000},
        {"name": ""},
        {"name": "/leading-slash"},
        {"name": "has space"},
        {"name": "x" * 201},
        {"default_reset_on_release": 1},
        {"event_capacity": 1000},
    ],
)
def test_bad_values_raise_invalid_config_from_the_constructor(kwargs: dict) -> None:
    args = {"name": "cfg-bad", "block_count": 8}
    args.update(kwargs)
    with pytest.raises(kvbm.InvalidConfigError) as info:
        kvbm.SegmentConfig(**args)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, kvbm.Error)
    assert err.code == "invalid_config"
    assert err.errno == 0
    assert str(err)


def test_equality_repr_and_pickle() -> None:
    a = kvbm.SegmentConfig(name="cfg-eq", block_count=8, eviction="fifo")
    b = kvbm.SegmentConfig(name="cfg-eq", block_count=8, eviction="fifo")
    assert a == b
    assert a != kvbm.SegmentConfig(name="cfg-eq", block_count=9, eviction="fifo")
    assert "eviction='fifo'" in repr(a)
    assert pickle.loads(pickle.dumps(a)) == a


def test_manager_config_reads_back_the_segment(names) -> None:
    cfg = kvbm.SegmentConfig(name=names(), block_count=32, block_size=8, eviction="lru",
                             duplication="reject", bytes_per_block=16)
    with kvbm.BlockManager.create(cfg) as m:
        got = m.config()
        for field in ("name", "block_count", "block_size", "eviction", "duplication",
                      "bytes_per_block", "multi_lru_thresholds", "max_processes"):
            assert getattr(got, field) == getattr(cfg, field), field
        assert m.duplication_policy() == "reject"
        assert m.block_size() == 8 and m.total_blocks() == 32
