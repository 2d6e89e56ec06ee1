# SPDX-License-Identifier: Apache-2.0
"""vLLM's offloading types, or a local mirror of them when vLLM is not installed.

The mirror has the same names and fields as ``vllm/v1/kv_offload/abstract.py`` (``LoadStoreSpec``,
``PrepareStoreOutput``, ``OffloadingEvent``, ``OffloadingManager``) so that code written against
vLLM's contract runs unchanged against ``kvbm.vllm`` either way. Only what the manager and the spec
need is mirrored; ``HAVE_VLLM`` says which one is in use.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Iterable

try:  # pragma: no cover - depends on the environment
    from vllm.v1.kv_offload.abstract import (  # type: ignore[import-not-found]
        LoadStoreSpec,
        OffloadingEvent,
        OffloadingManager,
        PrepareStoreOutput,
    )

    HAVE_VLLM = True
except ImportError:
    HAVE_VLLM = False

    class LoadStoreSpec(abc.ABC):
        """Where a worker finds (or puts) the KV data of some blocks."""

        @staticmethod
        @abc.abstractmethod
        def medium() -> str:
            """The medium the spec targets, e.g. ``"CPU"``."""

    @dataclasses.dataclass
    class PrepareStoreOutput:
        block_hashes_to_store: list
        store_spec: LoadStoreSpec
        block_hashes_evicted: list

    @dataclasses.dataclass
    class OffloadingEvent:
        block_hashes: list
        block_size: int
        medium: str
        removed: bool  # True: blocks removed; False: blocks stored

    class OffloadingManager(abc.ABC):
        """vLLM's scheduler-side contract of an offloading tier (abstract methods as in vLLM)."""

        @abc.abstractmethod
        def lookup(self, block_hashes: Iterable[bytes]) -> int: ...

        @abc.abstractmethod
        def prepare_load(self, block_hashes: Iterable[bytes]) -> LoadStoreSpec: ...

        def touch(self, block_hashes: Iterable[bytes]) -> None:
            return None

        def complete_load(self, block_hashes: Iterable[bytes]) -> None:
            return None

        @abc.abstractmethod
        def prepare_store(self, block_hashes: Iterable[bytes]) -> PrepareStoreOutput | None: ...

        def complete_store(self, block_hashes: Iterable[bytes], success: bool = True) -> None:
            return None

        def take_events(self) -> Iterable[OffloadingEvent]:
            return ()


__all__ = [
    "HAVE_VLLM",
    "LoadStoreSpec",
    "OffloadingEvent",
    "OffloadingManager",
    "PrepareStoreOutput",
]
