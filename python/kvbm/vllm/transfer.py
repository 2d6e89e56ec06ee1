# SPDX-License-Identifier: Apache-2.0
"""Worker-side copies between vLLM's GPU KV blocks and the tier's payload region (needs torch).

The payload is viewed as a ``(block_count, bytes_per_block)`` uint8 tensor over the shared mapping
(``torch.frombuffer``, no copy) and registered with CUDA once per worker, so copies are DMA on a
side stream. Within a tier block, rank ``r`` owns ``[r * bytes_per_rank, (r + 1) * bytes_per_rank)``;
inside that, each KV tensor in turn holds ``factor`` consecutive GPU pages.
"""

from __future__ import annotations

from typing import Any

import torch

try:  # pragma: no cover - depends on the vLLM version
    from vllm.v1.kv_offload.worker.worker import OffloadingHandler  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    OffloadingHandler = object  # type: ignore[assignment,misc]

try:  # pragma: no cover - newer vLLM reports TransferResult objects, older (job_id, success)
    from vllm.v1.kv_offload.worker.worker import TransferResult  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    TransferResult = None


def tp_rank() -> int:
    """This worker's rank (0 without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _as_pages(t: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """A (num_blocks, page_bytes) uint8 view of a block-major tensor."""
    if t.shape[0] != num_blocks:
        raise ValueError(f"KV tensor of shape {tuple(t.shape)} is not block-major")
    return t.contiguous().view(torch.uint8).reshape(num_blocks, -1)


def block_major_tensors(kv_caches: Any, kv_cache_config: Any) -> list[torch.Tensor]:
    """vLLM's GPU KV caches as (num_blocks, page_bytes) uint8 views, in a fixed order.

    Accepts vLLM's CanonicalKVCaches (``.tensors``) or the older dict of per-layer tensors, whose
    FlashAttention layout ``(2, num_blocks, ...)`` is split into its K and V halves."""
    if hasattr(kv_caches, "tensors"):
        out = []
        for c in kv_caches.tensors:
            t = c.tensor
            out.append(_as_pages(t, t.shape[0]))
        return out
    num_blocks = kv_cache_config.num_blocks
    out = []
    for name in sorted(kv_caches):
        t = kv_caches[name]
        if t.shape[0] == num_blocks:
            out.append(_as_pages(t, num_blocks))
        elif t.shape[0] == 2 and t.shape[1] == num_blocks:
            out.extend(_as_pages(t[i], num_blocks) for i in range(2))
        else:
            raise ValueError(f"KV tensor {name} of shape {tuple(t.shape)} has no block dimension")
    return out


class KvbmCopyHandler(OffloadingHandler):
    """One direction (GPU -> tier or tier -> GPU) of vLLM's asynchronous transfers."""

    _registered: set[int] = set()  # payload addresses registered with CUDA in this process

    def __init__(
        self, tier: Any, gpu: list[torch.Tensor], factor: int, rank_offset: int, to_tier: bool
    ):
        payload = tier.payload()
        self._cpu = torch.frombuffer(payload, dtype=torch.uint8).view(
            tier.block_count, tier.bytes_per_block
        )
        needed = rank_offset + factor * sum(t.shape[1] for t in gpu)
        if needed > tier.bytes_per_block:
            raise ValueError(
                f"kvbm.vllm: tier '{tier.name}' has {tier.bytes_per_block} bytes per block, this "
                f"worker needs {needed}: the tier was made for another KV layout"
            )
        ptr = self._cpu.data_ptr()
        if ptr not in KvbmCopyHandler._registered:
            rc = torch.cuda.cudart().cudaHostRegister(ptr, self._cpu.numel(), 0)
            if int(rc) == 0:
                KvbmCopyHandler._registered.add(ptr)
        self._gpu = gpu
        self._factor = factor
        self._base = rank_offset
        self._to_tier = to_tier
        self._stream = torch.cuda.Stream()
        self._jobs: list[tuple[int, Any, int]] = []

    def transfer_async(self, job_id: int, spec: Any) -> bool:
        src, dst = spec
        gpu_spec, tier_spec = (src, dst) if self._to_tier else (dst, src)
        gpu_ids = [int(b) for b in gpu_spec.block_ids]
        tier_ids = [int(b) for b in tier_spec.block_ids]
        f = self._factor
        skip = len(tier_ids) * f - len(gpu_ids)  # a load may start inside its first tier block
        if skip < 0 or skip >= max(f, 1) and gpu_ids:
            return False
        nbytes = 0
        if self._to_tier:
            self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            for j, g in enumerate(gpu_ids):
                c, sub = divmod(j + skip, f)
                row = self._cpu[tier_ids[c]]
                off = self._base
                for t in self._gpu:
                    page = t.shape[1]
                    part = row[off + sub * page : off + (sub + 1) * page]
                    if self._to_tier:
                        part.copy_(t[g], non_blocking=True)
                    else:
                        t[g].copy_(part, non_blocking=True)
                    off += f * page
                    nbytes += page
            event = torch.cuda.Event()
            event.record(self._stream)
        self._jobs.append((job_id, event, nbytes))
        return True

    def _result(self, job_id: int, nbytes: int) -> Any:
        if TransferResult is None:
            return (job_id, True)
        return TransferResult(job_id=job_id, success=True, transfer_size=nbytes)

    def get_finished(self) -> list:
        done, pending = [], []
        for job in self._jobs:
            (done if job[1].query() else pending).append(job)
        self._jobs = pending
        return [self._result(j, n) for j, _, n in done]

    def wait(self, job_ids: set[int]) -> None:
        for job_id, event, _ in self._jobs:
            if job_id in job_ids:
                event.synchronize()
