# SPDX-License-Identifier: Apache-2.0
"""kvbm.vllm: a CPU KV tier shared by every vLLM engine on a host.

``KvbmOffloadingManager`` implements vLLM's ``OffloadingManager`` contract
(``vllm/v1/kv_offload/abstract.py``) over one kvbm segment that every engine attaches to;
``KvbmOffloadingSpec`` is what vLLM's OffloadingConnector loads with
``kv_connector_extra_config={"spec_name": "KvbmOffloadingSpec", "spec_module_path": "kvbm.vllm"}``.
``PrepareStoreOutput``, ``OffloadingEvent`` and ``LoadStoreSpec`` are vLLM's classes when vLLM is
installed (``HAVE_VLLM``), else local ones with the same fields.
"""

from ._types import (
    HAVE_VLLM,
    LoadStoreSpec,
    OffloadingEvent,
    OffloadingManager,
    PrepareStoreOutput,
)
from .manager import (
    KEY_BYTES,
    MIN_KEY_BYTES,
    KvbmLoadStoreSpec,
    KvbmOffloadingManager,
    TierConfigMismatch,
    sequence_hash_of,
    tier_config,
)
from .spec import KvbmOffloadingSpec

__all__ = [
    "HAVE_VLLM",
    "KEY_BYTES",
    "MIN_KEY_BYTES",
    "KvbmLoadStoreSpec",
    "KvbmOffloadingManager",
    "KvbmOffloadingSpec",
    "LoadStoreSpec",
    "OffloadingEvent",
    "OffloadingManager",
    "PrepareStoreOutput",
    "TierConfigMismatch",
    "sequence_hash_of",
    "tier_config",
]
