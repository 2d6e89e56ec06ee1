# SPDX-License-Identifier: Apache-2.0
"""The Python side of block keys and side-effect-free lookups: SegmentConfig key_bytes and
layout_tag, MutableBlock.set_key / .key on every handle, BlockManager.peek_blocks and
lookup_prefix."""

from __future__ import annotations

import pytest

import kvbm


def hs(n: int) -> list:
    return kvbm.hash_token_blocks(list(range(4 * n)), 4)


@pytest.fixture
def keyed(name):
    cfg = kvbm.SegmentConfig(name=name, block_count=4, block_size=4, eviction="lru", key_bytes=16,
                             layout_tag=7)
    with kvbm.BlockManager.create(cfg) as m:
        yield m


def test_config_fields_read_back(keyed):
    c = keyed.config()
    assert (c.key_bytes, c.layout_tag) == (16, 7)
    assert c.to_dict()["key_bytes"] == 16 and c.to_dict()["layout_tag"] == 7
    with pytest.raises(kvbm.InvalidConfigError, match="key_bytes"):
        kvbm.SegmentConfig(name="x", block_count=1, key_bytes=65)


def test_keys_travel_with_the_block(keyed):
    (b,) = keyed.allocate_blocks(1)
    b.set_key(b"0123456789")
    assert b.key == b"0123456789"
    b.set_key(bytearray(b"abc"))
    cb = b.stage(hs(1)[0], 4)
    assert cb.key == b"abc"
    (imm,) = keyed.register_blocks([cb])
    assert imm.key == b"abc"
    imm.release()
    (again,) = keyed.match_blocks(hs(1))
    assert again.key == b"abc"


def test_bad_keys_are_refused(keyed):
    (b,) = keyed.allocate_blocks(1)
    with pytest.raises(ValueError):
        b.set_key(b"x" * 17)
    with pytest.raises(TypeError):
        b.set_key("text")


def test_peek_and_lookup_prefix_change_nothing(keyed):
    h = hs(3)
    blocks = keyed.allocate_blocks(2)
    held = keyed.register_blocks([b.stage(x, 4) for b, x in zip(blocks, h[:2])])
    held[1].set_reset_on_release(True)
    before = keyed.metrics()
    assert keyed.peek_blocks(h) == ["cached", "reset_on_release", "absent"]
    assert keyed.lookup_prefix(h) == 1
    assert keyed.metrics() == before
    held[0].release()
    assert keyed.peek_blocks(h[:1]) == ["cached"]
    assert keyed.counts()["inactive"] == 1
