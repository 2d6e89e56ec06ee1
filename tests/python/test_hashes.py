# SPDX-License-Identifier: Apache-2.0
"""kvbm.SequenceHash and kvbm.hash_token_blocks."""

from __future__ import annotations

import array
import pickle

import pytest

import kvbm

numpy = pytest.importorskip("numpy")

CURRENT = 0xFEDCBA9876543210
PARENT = 0xF123456789ABCDEF


def test_make_packs_like_the_library() -> None:
    # The packing vector of tests/unit/sequence_hash_test.cpp (position 7: 8-bit position field).
    h = kvbm.SequenceHash.make(CURRENT, PARENT, 7)
    assert h.hi == 0x01C91A2B3C4D5E6F
    assert h.lo == 0x7EDCBA9876543210
    assert h.position == 7
    assert h.current_fragment == 0x06DCBA9876543210
    assert h.parent_fragment == 0x0123456789ABCDEF


def test_int_str_hash_eq_pickle() -> None:
    h = kvbm.SequenceHash.make(CURRENT, PARENT, 7)
    assert int(h) == (h.hi << 64) | h.lo
    assert kvbm.SequenceHash.from_int(int(h)) == h
    assert str(h) == f"7:{h.hi:016x}{h.lo:016x}"
    same = kvbm.SequenceHash.from_parts(h.hi, h.lo)
    assert same == h and not (same != h)
    assert hash(same) == hash(h)
    assert len({h, same, kvbm.SequenceHash.make(CURRENT, None, 0)}) == 2
    assert h != "7:..." and h != int(h)
    assert pickle.loads(pickle.dumps(h)) == h
    assert kvbm.SequenceHash() == kvbm.SequenceHash.from_parts(0, 0)


def test_make_position_limit() -> None:
    assert kvbm.SequenceHash.make(1, 2, 2**24 - 1).position == 2**24 - 1
    with pytest.raises(ValueError):
        kvbm.SequenceHash.make(1, 2, 2**24)
    with pytest.raises(ValueError):
        kvbm.SequenceHash.make(1, 2, 2**40)


def test_one_hash_per_complete_block() -> None:
    tokens = list(range(37))
    hs = kvbm.hash_token_blocks(tokens, 16)
    assert len(hs) == 2  # the trailing 5 tokens are no block
    assert [h.position for h in hs] == [0, 1]
    # Chained: the second block's parent fragment comes from the first block's hash, and a
    # different first block changes every later hash.
    other = kvbm.hash_token_blocks([99] + tokens[1:], 16)
    assert other[0] != hs[0] and other[1] != hs[1]
    assert kvbm.hash_token_blocks(tokens[16:32], 16)[0] != hs[1]
    assert kvbm.hash_token_blocks(tokens, 16, salt=1) != hs
    assert kvbm.hash_token_blocks(tokens[:15], 16) == []


def test_every_token_container_gives_the_same_hashes() -> None:
    tokens = [(i * 2654435761) % 2**32 for i in range(256)]
    want = kvbm.hash_token_blocks(tokens, 16)
    assert len(want) == 16
    assert kvbm.hash_token_blocks(tuple(tokens), 16) == want
    assert kvbm.hash_token_blocks(array.array("I", tokens), 16) == want
    assert kvbm.hash_token_blocks(array.array("I", tokens).tobytes(), 16) == want
    assert kvbm.hash_token_blocks(bytearray(array.array("I", tokens).tobytes()), 16) == want
    assert kvbm.hash_token_blocks(memoryview(array.array("I", tokens)), 16) == want
    assert kvbm.hash_token_blocks(numpy.array(tokens, dtype=numpy.uint32), 16) == want
    assert kvbm.hash_token_blocks(numpy.array(tokens, dtype=numpy.int64), 16) == want
    # A strided (non-contiguous) array is read element by element.
    doubled = numpy.repeat(numpy.array(tokens, dtype=numpy.uint32), 2)
    assert kvbm.hash_token_blocks(doubled[::2], 16) == want
    # A bytes buffer at an odd offset (unaligned) too.
    raw = b"x" + array.array("I", tokens).tobytes()
    assert kvbm.hash_token_blocks(memoryview(raw)[1:], 16) == want


def test_bad_tokens() -> None:
    with pytest.raises(ValueError):
        kvbm.hash_token_blocks([1, 2, 3, 4], 0)
    with pytest.raises(ValueError):
        kvbm.hash_token_blocks([1, 2**32, 3, 4], 4)
    with pytest.raises(ValueError):
        kvbm.hash_token_blocks([1, -1, 3, 4], 4)
    with pytest.raises(ValueError):
        kvbm.hash_token_blocks(b"12345", 1)  # not whole uint32 values
    with pytest.raises(TypeError):
        kvbm.hash_token_blocks([1, "2", 3, 4], 4)
    with pytest.raises(TypeError):
        kvbm.hash_token_blocks(42, 4)
