# SPDX-License-Identifier: Apache-2.0
"""Block handles: properties, consumption, release, context managers, repr, GC, weak blocks."""

from __future__ import annotations

import gc

import pytest

import kvbm
from helpers import hashes, register


def test_properties_on_every_handle_kind(mgr) -> None:
    h = hashes(1)[0]
    mut = mgr.allocate_blocks(1)[0]
    assert (mut.block_id, mut.block_size, mut.sequence_hash) == (0, 4, None)
    cb = mut.stage(h, 4)
    assert (cb.block_id, cb.block_size, cb.sequence_hash) == (0, 4, h)
    imm = mgr.register_block(cb)
    assert (imm.block_id, imm.block_size, imm.sequence_hash) == (0, 4, h)
    weak = imm.downgrade()
    assert (weak.block_id, weak.block_size, weak.sequence_hash) == (0, 4, h)
    for handle in (mgr.allocate_blocks(1)[0], imm, weak):
        for attr in ("block_id", "block_size", "sequence_hash"):
            with pytest.raises(AttributeError):
                setattr(handle, attr, 1)
    assert imm.use_count() == 1


def test_use_after_stage_reset_release_raises_value_error(mgr) -> None:
    mut = mgr.allocate_blocks(1)[0]
    cb = mut.stage(hashes(1)[0], 4)
    with pytest.raises(ValueError):
        mut.block_id
    with pytest.raises(ValueError):
        mut.stage(hashes(1)[0], 4)
    again = cb.reset()
    assert isinstance(again, kvbm.MutableBlock) and again.block_id == 0
    assert mgr.counts()["mutable"] == 1
    with pytest.raises(ValueError):
        cb.sequence_hash
    with pytest.raises(ValueError):
        mgr.register_block(cb)
    again.release()
    again.release()  # a second release is a no-op
    with pytest.raises(ValueError):
        again.block_id
    assert mgr.counts()["reset"] == 64
    imm = register(mgr, hashes(1))[0]
    imm.release()
    with pytest.raises(ValueError):
        imm.use_count()
    with pytest.raises(ValueError):
        imm.downgrade()
    assert "released" in repr(imm)


def test_stage_size_mismatch_hands_the_block_back(mgr) -> None:
    mut = mgr.allocate_blocks(1)[0]
    with pytest.raises(kvbm.BlockSizeMismatchError) as info:
        mut.stage(hashes(1)[0], 8)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, kvbm.Error)
    assert (err.code, err.expected, err.actual) == ("block_size_mismatch", 4, 8)
    assert isinstance(err.block, kvbm.MutableBlock) and err.block.block_id == 0
    with pytest.raises(ValueError):
        mut.block_id  # consumed even on a mismatch
    assert mgr.counts()["mutable"] == 1
    cb = err.block.stage(hashes(1)[0], 4)
    assert cb.block_id == 0


def test_context_managers_return_self_and_release(mgr) -> None:
    with mgr.allocate_blocks(1)[0] as mut:
        assert isinstance(mut, kvbm.MutableBlock)
        assert mgr.counts()["mutable"] == 1
    assert mgr.counts()["mutable"] == 0
    with mgr.allocate_blocks(1)[0].stage(hashes(1)[0], 4) as cb:
        assert isinstance(cb, kvbm.CompleteBlock)
    assert mgr.counts()["staged"] == 0
    imm = register(mgr, hashes(1))[0]
    with imm as same:
        assert same is imm
    assert mgr.counts()["inactive"] == 1
    with mgr.allocate_blocks(1)[0] as mut:
        cb = mut.stage(hashes(1, seed=3)[0], 4)  # consumed inside: exit does nothing
    assert mgr.counts()["staged"] == 1
    del cb


def test_repr_shows_id_state_hash(mgr) -> None:
    h = hashes(1)[0]
    mut = mgr.allocate_blocks(1)[0]
    assert repr(mut) == "<kvbm.MutableBlock live block_id=0>"
    imm = mgr.register_block(mut.stage(h, 4))
    assert repr(imm) == f"<kvbm.ImmutableBlock live block_id=0 hash={h}>"
    assert repr(mut) == "<kvbm.MutableBlock consumed>"
    assert f"hash={h}" in repr(imm.downgrade())


def test_garbage_collection_releases_blocks(mgr) -> None:
    class Cycle:
        pass

    blocks = mgr.allocate_blocks(3)
    assert mgr.counts()["mutable"] == 3
    del blocks
    assert mgr.counts()["mutable"] == 0
    holder = Cycle()
    holder.self = holder  # only the cycle collector frees this one
    holder.blocks = register(mgr, hashes(2))
    del holder
    assert mgr.counts()["primary"] == 2
    gc.collect()
    assert mgr.counts()["primary"] == 0 and mgr.counts()["inactive"] == 2


def test_weak_block_upgrade(mgr) -> None:
    hs = hashes(1)
    imm = register(mgr, hs)[0]
    weak = imm.downgrade()
    up = weak.upgrade()
    assert up.block_id == imm.block_id and imm.use_count() == 2
    del up, imm
    assert mgr.counts()["inactive"] == 1
    up = weak.upgrade()  # resurrected from the inactive pool
    assert up is not None and up.sequence_hash == hs[0]
    del up
    mgr.reset_inactive_pool()
    assert weak.upgrade() is None
    with weak as same:
        assert same is weak
    with pytest.raises(ValueError):
        weak.upgrade()


def test_set_reset_on_release(mgr) -> None:
    imm = register(mgr, hashes(1))[0]
    imm.set_reset_on_release(True)
    assert mgr.inspect_block(imm.block_id).reset_on_release is True
    imm.release()
    assert mgr.counts()["reset"] == 64 and mgr.counts()["inactive"] == 0


def test_reserved_hash_is_refused_without_consuming(mgr) -> None:
    mut = mgr.allocate_blocks(1)[0]
    with pytest.raises(ValueError):
        mut.stage(kvbm.SequenceHash.from_parts(2**64 - 1, 2**64 - 1), 4)
    assert mut.block_id == 0
