# SPDX-License-Identifier: Apache-2.0
"""The exception hierarchy and which error each failure raises."""

from __future__ import annotations

import os
import pickle

import pytest

import kvbm

CODES = {
    kvbm.InvalidConfigError: "invalid_config",
    kvbm.AlreadyExistsError: "already_exists",
    kvbm.NotFoundError: "not_found",
    kvbm.LayoutMismatchError: "layout_mismatch",
    kvbm.ProcessTableFullError: "process_table_full",
    kvbm.PermissionDeniedError: "permission_denied",
    kvbm.CorruptedError: "corrupted",
    kvbm.SystemCallError: "system",
    kvbm.BlocksInUseError: "blocks_in_use",
    kvbm.BlockSizeMismatchError: "block_size_mismatch",
}


def test_hierarchy_and_codes() -> None:
    for cls, code in CODES.items():
        assert issubclass(cls, kvbm.Error) and issubclass(cls, Exception)
        assert cls.code == code
    assert issubclass(kvbm.InvalidConfigError, ValueError)
    assert issubclass(kvbm.BlockSizeMismatchError, ValueError)
    assert issubclass(kvbm.SystemCallError, OSError)
    err = kvbm.SystemCallError("mmap failed", errno=12)
    assert err.errno == 12 and str(err) == "mmap failed" and err.code == "system"
    back = pickle.loads(pickle.dumps(kvbm.NotFoundError("gone")))
    assert type(back) is kvbm.NotFoundError and back.code == "not_found" and back.errno == 0


def test_process_table_full(names) -> None:
    name = names()
    with kvbm.BlockManager.create(
            kvbm.SegmentConfig(name=name, block_count=4, block_size=4, max_processes=1)):
        with pytest.raises(kvbm.ProcessTableFullError) as info:
            kvbm.BlockManager.open(name)
        assert info.value.code == "process_table_full"


def test_foreign_object_is_a_layout_mismatch(names) -> None:
    name = names()
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(b"not a kvbm segment".ljust(1 << 16, b"\0"))
    with pytest.raises(kvbm.LayoutMismatchError) as info:
        kvbm.BlockManager.open(name)
    assert info.value.code == "layout_mismatch" and "magic" in str(info.value)


def test_truncated_segment_is_corrupted(names) -> None:
    name = names()
    kvbm.BlockManager.create(kvbm.SegmentConfig(name=name, block_count=64, block_size=4)).close()
    os.truncate(f"/dev/shm/{name}", 4096)
    with pytest.raises(kvbm.CorruptedError) as info:
        kvbm.BlockManager.open(name)
    assert info.value.code == "corrupted"


def test_bad_names_are_invalid_config() -> None:
    for bad in ("", "/x", "a b", "x" * 201):
        with pytest.raises(kvbm.InvalidConfigError):
            kvbm.BlockManager.open(bad)
        with pytest.raises(kvbm.InvalidConfigError):
            kvbm.destroy(bad)


def test_wrong_argument_types() -> None:
    with pytest.raises(TypeError):
        kvbm.BlockManager.create({"name": "x", "block_count": 4})
