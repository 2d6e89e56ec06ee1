# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures of the kvbm Python tests: unique segment names (destroyed afterwards) and a
fork helper that reports the child's failures through a pipe."""

from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator, List

import pytest

import kvbm


@pytest.fixture
def names() -> Iterator[Callable[[], str]]:
    """Returns a factory of unique segment names; every segment named is destroyed at the end."""
    made: List[str] = []

    def make() -> str:
        name = f"kvbm-pytest-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            kvbm.destroy(name)
        except kvbm.NotFoundError:
            pass


@pytest.fixture
def name(names: Callable[[], str]) -> str:
    return names()


@pytest.fixture
def mgr(name: str) -> Iterator[kvbm.BlockManager]:
    m = kvbm.BlockManager.create(kvbm.SegmentConfig(name=name, block_count=64, block_size=4))
    yield m
    m.close()


@pytest.fixture
def pmgr(name: str) -> Iterator[kvbm.BlockManager]:
    """A manager of a segment with a payload region of 64 bytes per block."""
    m = kvbm.BlockManager.create(
        kvbm.SegmentConfig(name=name, block_count=16, block_size=4, bytes_per_block=64)
    )
    yield m
    m.close()
