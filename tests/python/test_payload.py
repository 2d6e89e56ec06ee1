# SPDX-License-Identifier: Apache-2.0
"""Payload views: zero copy, writable vs read-only, lifetimes, close() and BufferError."""

from __future__ import annotations

import gc

import pytest

import kvbm
from helpers import hashes

numpy = pytest.importorskip("numpy")


def test_views_are_zero_copy_over_the_payload_region(pmgr) -> None:
    mut = pmgr.allocate_blocks(2)[1]
    view = mut.data
    assert isinstance(view, memoryview)
    assert (view.ndim, view.format, view.itemsize, view.nbytes, view.readonly) == (
        1, "B", 1, 64, False)
    view[:5] = b"hello"
    region = pmgr.payload()
    assert region.nbytes == 16 * 64 and not region.readonly and region.format == "B"
    off = pmgr.block_offset(mut.block_id)
    assert off == 64 * mut.block_id
    assert bytes(region[off:off + 5]) == b"hello"
    region[off + 5:off + 6] = b"!"
    assert bytes(view[:6]) == b"hello!"  # same bytes, no copy either way
    arr = numpy.frombuffer(view, dtype=numpy.uint8)
    arr[6] = 7
    assert region[off + 6] == 7
    del view, region, arr
    imm = pmgr.register_block(mut.stage(hashes(1)[0], 4))
    ro = imm.data
    assert ro.readonly and bytes(ro[:6]) == b"hello!"
    with pytest.raises(TypeError):
        ro[0] = 1
    with pytest.raises(ValueError):
        numpy.frombuffer(ro, dtype=numpy.uint8).setflags(write=True)
    with pytest.raises(ValueError):
        pmgr.block_offset(16)


def test_a_live_view_keeps_its_block(pmgr) -> None:
    imm = pmgr.register_block(pmgr.allocate_blocks(1)[0].stage(hashes(1)[0], 4))
    bid = imm.block_id
    view = imm.data
    imm.release()
    with pytest.raises(ValueError):
        imm.data
    assert pmgr.inspect_block(bid).state == "primary"  # still held through the view
    sub = view[8:16]
    del view
    assert pmgr.inspect_block(bid).state == "primary"  # a slice keeps it too
    sub.release()
    del sub
    assert pmgr.inspect_block(bid).state == "inactive"

    mut = pmgr.allocate_blocks(1)[0]
    view = mut.data
    mut.release()
    assert pmgr.counts()["mutable"] == 1
    del view
    assert pmgr.counts()["mutable"] == 0


def test_stage_refuses_while_a_view_is_alive(pmgr) -> None:
    mut = pmgr.allocate_blocks(1)[0]
    view = mut.data
    with pytest.raises(BufferError):
        mut.stage(hashes(1)[0], 4)
    assert mut.block_id == 0  # not consumed
    view.release()
    with mut.data as v:
        v[0] = 1
    cb = mut.stage(hashes(1)[0], 4)
    assert cb.block_id == 0


def test_close_raises_buffer_error_while_views_are_alive(name) -> None:
    m = kvbm.BlockManager.create(
        kvbm.SegmentConfig(name=name, block_count=4, block_size=4, bytes_per_block=32))
    region = m.payload()
    with pytest.raises(BufferError):
        m.close()
    assert not m.closed
    region.release()
    mut = m.allocate_blocks(1)[0]
    view = mut.data
    with pytest.raises(BufferError):
        m.close()
    del view
    gc.collect()
    m.close()
    with pytest.raises(ValueError):
        mut.data
    with pytest.raises(ValueError):
        m.payload()


def test_no_payload_region(mgr) -> None:
    with pytest.raises(ValueError):
        mgr.payload()
    with pytest.raises(ValueError):
        mgr.allocate_blocks(1)[0].data
    assert mgr.block_offset(3) == 0
