# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the kvbm.vllm tests: unique tier names, destroyed afterwards."""

from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator, List

import pytest

import kvbm


@pytest.fixture
def names() -> Iterator[Callable[[], str]]:
    """A factory of unique segment names; every segment named is destroyed at the end."""
    made: List[str] = []

    def make() -> str:
        made.append(f"kvbm-vllm-test-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    for n in made:
        try:
            kvbm.destroy(n)
        except kvbm.NotFoundError:
            pass


@pytest.fixture
def name(names: Callable[[], str]) -> str:
    return names()
