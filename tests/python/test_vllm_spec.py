# SPDX-License-Identifier: Apache-2.0
"""KvbmOffloadingSpec's wiring: the tier it opens from vLLM's config (name, size, block geometry,
layout identity) and the GPU <-> tier copies (those need torch with CUDA and are skipped without)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace as NS

import pytest

from kvbm.vllm import HAVE_VLLM, KvbmOffloadingManager, KvbmOffloadingSpec, TierConfigMismatch


def vllm_config(extra: dict, model: str = "org/model-7b", block_size: int = 16) -> NS:
    """The fields of vllm.config.VllmConfig the spec reads."""
    return NS(
        kv_transfer_config=NS(kv_connector_extra_config=extra),
        cache_config=NS(block_size=block_size, cache_dtype="auto"),
        model_config=NS(model=model, revision=None, dtype="bfloat16"),
        parallel_config=NS(world_size=1),
        kv_events_config=NS(enable_kv_cache_events=True),
    )


def kv_cache_config(page_bytes: int = 128, tensors: int = 2) -> NS:
    return NS(
        kv_cache_groups=[NS(kv_cache_spec=NS(page_size_bytes=page_bytes))],
        kv_cache_tensors=[object()] * tensors,
        num_blocks=4,
    )


@pytest.mark.skipif(HAVE_VLLM, reason="with vLLM installed the spec needs a real VllmConfig")
def test_the_spec_opens_the_named_tier_sized_from_the_kv_layout(name):
    spec = KvbmOffloadingSpec(
        vllm_config({"kvbm_tier": name, "num_cpu_blocks": 8, "block_size": 32}), kv_cache_config()
    )
    m = spec.get_manager()
    assert spec.get_manager() is m
    assert (m.name, m.block_count, m.block_size) == (name, 8, 32)
    assert m.bytes_per_block == 2 * 128 * 2  # factor 2 x page x tensors
    k = hashlib.sha256(b"x").digest()
    out = m.prepare_store([k])
    m.complete_store(out.block_hashes_to_store)
    assert [e.removed for e in m.take_events()] == [False]  # events follow kv_events_config
    # A second engine of the same model shares it, sized or not.
    other = KvbmOffloadingSpec(vllm_config({"kvbm_tier": name, "block_size": 32}), kv_cache_config())
    assert other.get_manager().lookup([k]) == 1
    other.get_manager().close()
    m.close()


@pytest.mark.skipif(HAVE_VLLM, reason="with vLLM installed the spec needs a real VllmConfig")
def test_an_engine_of_another_model_is_refused(name):
    first = KvbmOffloadingSpec(vllm_config({"kvbm_tier": name, "cpu_bytes_to_use": 8 * 256}),
                               kv_cache_config())
    assert first.get_manager().block_count == 8
    second = KvbmOffloadingSpec(
        vllm_config({"kvbm_tier": name, "cpu_bytes_to_use": 8 * 256}, model="org/other-7b"),
        kv_cache_config(),
    )
    with pytest.raises(TierConfigMismatch, match="layout_tag"):
        second.get_manager()
    first.get_manager().close()


def test_copies_between_gpu_blocks_and_the_tier_round_trip(name):
    torch = pytest.importorskip("torch", reason="the GPU <-> tier copies need torch")
    if not torch.cuda.is_available():
        pytest.skip("the GPU <-> tier copies need CUDA")
    from kvbm.vllm.transfer import KvbmCopyHandler

    page, blocks = 64, 4
    gpu = [torch.randint(0, 256, (blocks, page), dtype=torch.uint8, device="cuda")]
    with KvbmOffloadingManager(name, block_count=4, block_size=16, bytes_per_block=page) as tier:
        keys = [hashlib.sha256(bytes([i])).digest() for i in range(2)]
        out = tier.prepare_store(keys)
        to_tier = KvbmCopyHandler(tier, gpu, 1, 0, True)
        src = NS(block_ids=[2, 3])
        assert to_tier.transfer_async(1, (src, out.store_spec))
        to_tier.wait({1})
        assert len(to_tier.get_finished()) == 1
        tier.complete_store(keys)
        with tier.payload() as pv:
            for g, bid in zip([2, 3], out.store_spec.block_ids):
                off = tier.block_offset(bid)
                assert bytes(pv[off : off + page]) == bytes(gpu[0][g].cpu().numpy())
        back = [torch.zeros_like(gpu[0])]
        from_tier = KvbmCopyHandler(tier, back, 1, 0, False)
        spec = tier.prepare_load(keys)
        assert from_tier.transfer_async(2, (spec, NS(block_ids=[0, 1])))
        from_tier.wait({2})
        tier.complete_load(keys)
        assert torch.equal(back[0][:2], gpu[0][2:])
        del to_tier, from_tier
