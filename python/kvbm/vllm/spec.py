# SPDX-License-Identifier: Apache-2.0
"""KvbmOffloadingSpec: what vLLM's OffloadingConnector loads from

    kv_connector_extra_config={"spec_name": "KvbmOffloadingSpec", "spec_module_path": "kvbm.vllm",
                               "kvbm_tier": "kv-cpu", "cpu_bytes_to_use": 64 << 30}

The scheduler side gets a KvbmOffloadingManager on the shared tier; each worker gets two copy
handlers (GPU -> tier, tier -> GPU) over the tier's payload region, registered once with CUDA
(cudaHostRegister) so that copies run as DMA on a side stream. Each tensor-parallel rank owns a
fixed slice of every tier block, as in vLLM's own CPU offloading. Extra config keys:

* ``kvbm_tier``: segment name (default ``"kvbm-vllm"``); every engine naming it shares it.
* ``num_cpu_blocks`` or ``cpu_bytes_to_use``: tier size, needed by whichever engine creates it.
* ``kvbm_layout_tag``: overrides the identity derived from the model and its KV layout.
* ``block_size``: offloaded block size in tokens (vLLM's own key; a multiple of the GPU block).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

from .manager import KvbmLoadStoreSpec, KvbmOffloadingManager

try:  # pragma: no cover - depends on the environment
    from vllm.v1.kv_offload.spec import OffloadingSpec  # type: ignore[import-not-found]

    _BASE_FROM_VLLM = True
except ImportError:
    _BASE_FROM_VLLM = False

    class OffloadingSpec:  # type: ignore[no-redef]
        """The part of vLLM's OffloadingSpec constructor this spec relies on."""

        def __init__(self, vllm_config: Any, kv_cache_config: Any = None):
            self.vllm_config = vllm_config
            self.kv_cache_config = kv_cache_config
            self.extra_config = vllm_config.kv_transfer_config.kv_connector_extra_config
            gpu_block_size = vllm_config.cache_config.block_size
            self.gpu_block_size = (gpu_block_size,)
            self.offloaded_block_size = int(self.extra_config.get("block_size", gpu_block_size))
            if self.offloaded_block_size % gpu_block_size != 0:
                raise ValueError("block_size must be a multiple of the GPU block size")
            self.block_size_factor = self.offloaded_block_size // gpu_block_size


DEFAULT_TIER = "kvbm-vllm"


def _layout_tag(vllm_config: Any, block_size: int, bytes_per_block: int) -> int:
    """64 bits identifying what a tier block holds: model, revision, KV dtype, block geometry."""
    model = getattr(vllm_config, "model_config", None)
    cache = getattr(vllm_config, "cache_config", None)
    parallel = getattr(vllm_config, "parallel_config", None)
    ident = repr(
        (
            getattr(model, "model", None),
            getattr(model, "revision", None),
            str(getattr(model, "dtype", None)),
            str(getattr(cache, "cache_dtype", None)),
            getattr(parallel, "world_size", 1),
            block_size,
            bytes_per_block,
        )
    )
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "little")


class KvbmOffloadingSpec(OffloadingSpec):
    """vLLM OffloadingSpec of a CPU KV tier shared by every engine on the host (kvbm segment)."""

    def __init__(self, vllm_config: Any, kv_cache_config: Any = None):
        if kv_cache_config is None:
            super().__init__(vllm_config)
        else:
            super().__init__(vllm_config, kv_cache_config)
        extra = self.extra_config
        self.tier_name = str(extra.get("kvbm_tier", DEFAULT_TIER))
        factor = getattr(self, "block_size_factor", None)
        if factor is None:  # newer vLLM: one factor per KV cache group
            factors = set(getattr(self, "block_size_factors", (1,)))
            if len(factors) != 1:
                raise ValueError("kvbm.vllm supports one KV cache group block size")
            factor = factors.pop()
        self.factor = int(factor)
        self.tier_block_size = int(self.gpu_block_size[0]) * self.factor
        world = int(getattr(getattr(vllm_config, "parallel_config", None), "world_size", 1) or 1)
        self.world_size = world
        self.bytes_per_rank = self._bytes_per_rank(kv_cache_config) * self.factor
        self.bytes_per_block = self.bytes_per_rank * world
        if "num_cpu_blocks" in extra:
            self.num_blocks = int(extra["num_cpu_blocks"])
        elif "cpu_bytes_to_use" in extra and self.bytes_per_block > 0:
            self.num_blocks = int(extra["cpu_bytes_to_use"]) // self.bytes_per_block
        else:
            self.num_blocks = None  # open an existing tier only
        self.layout_tag = int(
            extra.get(
                "kvbm_layout_tag",
                _layout_tag(vllm_config, self.tier_block_size, self.bytes_per_block),
            )
        )
        events = getattr(vllm_config, "kv_events_config", None)
        self.enable_events = bool(getattr(events, "enable_kv_cache_events", False))
        self._manager: KvbmOffloadingManager | None = None
        self._worker_tier: KvbmOffloadingManager | None = None
        self._handlers: tuple | None = None

    @staticmethod
    def _bytes_per_rank(kv_cache_config: Any) -> int:
        """KV bytes of one GPU block in one worker (every layer, K and V)."""
        if kv_cache_config is None:
            return 0
        groups = kv_cache_config.kv_cache_groups
        pages = {g.kv_cache_spec.page_size_bytes for g in groups}
        if len(pages) != 1:
            raise ValueError("kvbm.vllm supports KV cache groups of one page size")
        return pages.pop() * len(kv_cache_config.kv_cache_tensors)

    def _open_tier(self) -> KvbmOffloadingManager:
        return KvbmOffloadingManager(
            self.tier_name,
            block_count=self.num_blocks,
            block_size=self.tier_block_size,
            bytes_per_block=self.bytes_per_block,
            create=self.num_blocks is not None,
            layout_tag=self.layout_tag,
            enable_events=self.enable_events,
        )

    def get_manager(self) -> KvbmOffloadingManager:
        """The scheduler-side manager (one attachment per engine)."""
        if self._manager is None:
            self._manager = self._open_tier()
        return self._manager

    def get_handlers(self, kv_caches: Any, attn_backends: Any = None) -> Iterator[tuple]:
        """(src spec type, dst spec type, handler) for GPU -> tier and tier -> GPU."""
        from vllm.v1.kv_offload.mediums import GPULoadStoreSpec  # type: ignore[import-not-found]

        from .transfer import KvbmCopyHandler, block_major_tensors, tp_rank

        if self._handlers is None:
            # Workers may come up before the scheduler: open_or_create with the same config.
            tier = self._open_tier()
            self._worker_tier = tier
            tensors = block_major_tensors(kv_caches, self.kv_cache_config)
            rank = tp_rank()
            to_tier = KvbmCopyHandler(tier, tensors, self.factor, rank * self.bytes_per_rank, True)
            from_tier = KvbmCopyHandler(
                tier, tensors, self.factor, rank * self.bytes_per_rank, False
            )
            self._handlers = (to_tier, from_tier)
        to_tier, from_tier = self._handlers
        yield GPULoadStoreSpec, KvbmLoadStoreSpec, to_tier
        yield KvbmLoadStoreSpec, GPULoadStoreSpec, from_tier
