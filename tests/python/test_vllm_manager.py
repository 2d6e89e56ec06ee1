# SPDX-License-Identifier: Apache-2.0
"""kvbm.vllm.KvbmOffloadingManager against vLLM's OffloadingManager contract
(vllm/v1/kv_offload/abstract.py) and DESIGN.md section 9: lookup, prepare_load / touch /
complete_load, prepare_store / complete_store, take_events, keys, sharing between engines (two
managers are two engines: each is its own process-table entry) and configuration checks."""

from __future__ import annotations

import hashlib

import pytest

import kvbm
from kvbm.vllm import (
    KvbmLoadStoreSpec,
    KvbmOffloadingManager,
    OffloadingEvent,
    PrepareStoreOutput,
    TierConfigMismatch,
)


BS = 16  # tokens per block
B = 64  # payload bytes per block


def keys(n: int, tag: str = "k", size: int = 32) -> list[bytes]:
    """n distinct vLLM-like block hashes of `size` bytes."""
    return [hashlib.sha256(f"{tag}{i}".encode()).digest()[:size] for i in range(n)]


def tier(name: str, blocks: int, **kw) -> KvbmOffloadingManager:
    return KvbmOffloadingManager(name, block_count=blocks, block_size=BS, bytes_per_block=B, **kw)


def store(m: KvbmOffloadingManager, ks: list[bytes]) -> PrepareStoreOutput:
    """prepare_store, write each block's bytes (its key repeated), complete_store."""
    out = m.prepare_store(ks)
    assert out is not None
    with m.payload() as pv:
        for k, bid in zip(out.block_hashes_to_store, out.store_spec.block_ids):
            off = m.block_offset(bid)
            pv[off : off + B] = (k * (B // len(k) + 1))[:B]
    m.complete_store(out.block_hashes_to_store)
    return out


def read(m: KvbmOffloadingManager, bid: int) -> bytes:
    with m.payload() as pv:
        off = m.block_offset(bid)
        return bytes(pv[off : off + B])


def counts(m: KvbmOffloadingManager) -> dict:
    return m.block_manager.counts()


@pytest.fixture
def t3(name):
    with tier(name, 3) as m:
        yield m


# --- lookup ---------------------------------------------------------------------------------------


def test_lookup_counts_the_stored_prefix_only(name):
    with tier(name, 8) as m:
        a = keys(4)
        assert m.lookup(a) == 0
        store(m, a[:2])
        assert m.lookup(a) == 2
        assert m.lookup(a[:1]) == 1
        assert m.lookup([a[2]] + a[:2]) == 0  # stops at the first hash not stored
        assert m.lookup([]) == 0


def test_lookup_changes_nothing_neither_recency_nor_counts(t3):
    a, b, c, d = keys(4)
    store(t3, [a, b, c])  # LRU order a, b, c
    before = (counts(t3), t3.block_manager.metrics())
    for _ in range(5):
        assert t3.lookup([a]) == 1
    assert (counts(t3), t3.block_manager.metrics()) == before
    out = t3.prepare_store([d])
    assert out.block_hashes_evicted == [a]  # still the least recently used


def test_a_block_being_stored_is_not_looked_up_nor_loaded(name):
    with tier(name, 8) as e1, tier(name, 8) as e2:
        a, b = keys(2)
        out = e1.prepare_store([a, b])
        assert out.block_hashes_to_store == [a, b]
        assert e1.lookup([a]) == 0 and e2.lookup([a]) == 0
        with pytest.raises(KeyError):
            e2.prepare_load([a])
        e1.complete_store([a])
        assert e2.lookup([a, b]) == 1
        e1.complete_store([b])
        assert e2.lookup([a, b]) == 2


# --- loads ----------------------------------------------------------------------------------------


def test_prepare_load_returns_the_blocks_of_another_engine_with_their_bytes(name):
    with tier(name, 8) as e1, tier(name, 8) as e2:
        a = keys(3)
        out = store(e1, a)
        spec = e2.prepare_load(a)
        assert isinstance(spec, KvbmLoadStoreSpec)
        assert KvbmLoadStoreSpec.medium() == "CPU" and spec.medium() == "CPU"
        assert spec.block_ids == out.store_spec.block_ids
        assert all(type(i) is int for i in spec.block_ids)
        for k, bid in zip(a, spec.block_ids):
            assert read(e2, bid) == (k * 2)[:B]
        e2.complete_load(a)


def test_pinned_blocks_are_never_evicted(t3):
    a, b, c, d, e = keys(5)
    store(t3, [a, b, c])
    t3.prepare_load([a])  # a pinned; it was the least recently used
    out = t3.prepare_store([d])
    assert out.block_hashes_evicted == [b]
    assert t3.prepare_store([e, keys(1, "x")[0], keys(1, "y")[0]]) is None  # only c and d free
    t3.complete_load([a])
    assert t3.lookup([a]) == 1


def test_pins_are_counted_per_call(t3):
    a, b, c = keys(3)
    store(t3, [a])
    t3.prepare_load([a])
    t3.prepare_load([a])
    t3.complete_load([a])
    assert t3.pinned() == 1
    out = t3.prepare_store([b, c, keys(1, "z")[0]])
    assert out is None  # a is still pinned: no room for three
    t3.complete_load([a])
    assert t3.pinned() == 0
    out = t3.prepare_store([b, c, keys(1, "z")[0]])
    assert out is not None and out.block_hashes_evicted == [a]


def test_complete_load_without_a_pin_raises_and_changes_nothing(t3):
    a, b = keys(2)
    store(t3, [a, b])
    t3.prepare_load([a])
    with pytest.raises(KeyError):
        t3.complete_load([a, b])
    assert t3.pinned() == 1
    t3.complete_load([a])


def test_prepare_load_of_a_missing_hash_raises_and_leaves_no_pin(t3):
    a, b, c = keys(3)
    store(t3, [a, b])
    with pytest.raises(KeyError) as err:
        t3.prepare_load([a, c, b])
    assert err.value.args[0] == c
    assert t3.pinned() == 0
    assert counts(t3)["primary"] == 0


def test_prepare_load_and_touch_refresh_recency(t3):
    a, b, c, d, e = keys(5)
    store(t3, [a, b, c])  # order a, b, c
    t3.prepare_load([a])
    t3.complete_load([a])  # order b, c, a
    assert store(t3, [d]).block_hashes_evicted == [b]  # order c, a, d
    t3.touch([c, a])  # vLLM's order: the first hash is the most recent: d, a, c
    assert t3.prepare_store([e]).block_hashes_evicted == [d]


def test_touch_ignores_hashes_not_stored(t3):
    a, b = keys(2)
    store(t3, [a])
    t3.touch([b, a])
    assert counts(t3)["inactive"] == 1 and counts(t3)["primary"] == 0


# --- stores ---------------------------------------------------------------------------------------


def test_prepare_store_leaves_out_stored_hashes_and_keeps_order(name):
    with tier(name, 8) as m:
        a = keys(5)
        store(m, [a[1], a[3]])
        out = m.prepare_store(a + [a[0]])
        assert out.block_hashes_to_store == [a[0], a[2], a[4]]
        assert len(out.store_spec.block_ids) == 3
        assert len(set(out.store_spec.block_ids)) == 3
        assert out.block_hashes_evicted == []
        m.complete_store(out.block_hashes_to_store)
        assert m.lookup(a) == 5


def test_prepare_store_of_nothing_new_is_an_empty_output_not_none(t3):
    a = keys(2)
    store(t3, a)
    out = t3.prepare_store(a)
    assert out is not None
    assert out.block_hashes_to_store == [] and out.block_hashes_evicted == []
    assert out.store_spec.block_ids == []
    assert t3.prepare_store([]).block_hashes_to_store == []


def test_prepare_store_is_all_or_nothing(t3):
    a, b, c, d = keys(4)
    store(t3, [a])
    t3.prepare_load([a])
    before = counts(t3)
    assert t3.prepare_store([b, c, d]) is None
    assert counts(t3) == before
    assert [e.removed for e in t3.take_events()] == [False]  # a's store; no eviction
    out = t3.prepare_store([b, c])
    assert out.block_hashes_to_store == [b, c]


def test_prepare_store_evicts_exactly_the_shortfall_with_the_original_bytes(name):
    with tier(name, 4) as m:
        short = keys(4, "short", size=8)
        store(m, short[:3])  # one block still free
        m.take_events()
        new = keys(3, "new")
        out = m.prepare_store(new)
        assert out.block_hashes_evicted == short[:2]  # 3 needed, 1 free: evict 2, oldest first
        assert all(isinstance(h, bytes) and len(h) == 8 for h in out.block_hashes_evicted)
        assert m.lookup(short[2:3]) == 1


def test_a_hash_being_stored_by_another_engine_is_left_out(name):
    with tier(name, 8) as e1, tier(name, 8) as e2:
        a, b = keys(2)
        out1 = e1.prepare_store([a])
        out2 = e2.prepare_store([a, b])
        assert out2.block_hashes_to_store == [b]
        e1.complete_store(out1.block_hashes_to_store)
        e2.complete_store(out2.block_hashes_to_store)
        assert e1.lookup([a, b]) == 2


def test_complete_store_false_frees_only_this_engines_unfinished_store(name):
    with tier(name, 8) as e1, tier(name, 8) as e2:
        a, b, c = keys(3)
        store(e2, [c])
        out = e1.prepare_store([a, b])
        e1.complete_store([a, c], success=False)  # c is not e1's: ignored
        assert e1.lookup([c]) == 1
        assert e2.prepare_store([a]).block_hashes_to_store == [a]  # a is free to store again
        e1.complete_store([b])
        assert e2.lookup([b]) == 1
        assert counts(e1)["reset"] + counts(e1)["inactive"] + counts(e1)["primary"] == 8
        del out


def test_complete_store_twice_or_of_unknown_hashes_is_harmless(t3):
    a, b = keys(2)
    store(t3, [a])
    t3.complete_store([a])
    t3.complete_store([b])
    t3.complete_store([b], success=False)
    assert t3.lookup([a]) == 1 and t3.lookup([b]) == 0


# --- events ---------------------------------------------------------------------------------------


def test_events_are_this_engines_stores_and_the_evictions_they_caused(name):
    with tier(name, 2) as e1, tier(name, 2) as e2:
        a, b, c = keys(3)
        store(e1, [a, b])
        assert e1.take_events() == [
            OffloadingEvent(block_hashes=[a, b], block_size=BS, medium="CPU", removed=False)
        ]
        assert e1.take_events() == []
        store(e2, [c])
        assert e2.take_events() == [
            OffloadingEvent(block_hashes=[a], block_size=BS, medium="CPU", removed=True),
            OffloadingEvent(block_hashes=[c], block_size=BS, medium="CPU", removed=False),
        ]
        assert e1.take_events() == []  # e2's events are e2's
        out = e1.prepare_store([a])
        e1.complete_store([a], success=False)
        assert [ev.removed for ev in e1.take_events()] == [True]  # evicted b; a never stored
        del out


def test_events_can_be_turned_off(name):
    with tier(name, 4, enable_events=False) as m:
        store(m, keys(2))
        assert list(m.take_events()) == []


# --- keys and configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"", b"1234567", b"x" * 33, "a string", 12345])
def test_block_hashes_must_be_8_to_32_bytes(t3, bad):
    with pytest.raises(ValueError):
        t3.lookup([bad])
    with pytest.raises(ValueError):
        t3.prepare_store([bad])


def test_short_and_long_hashes_are_kept_whole(t3):
    k8, k32 = keys(1, "a", 8)[0], keys(1, "b", 32)[0]
    store(t3, [k8, k32])
    assert t3.lookup([k8, k32]) == 2
    assert t3.lookup([k8 + b"\0"]) == 0  # a longer key is another key
    store(t3, keys(3, "c"))
    assert [e.block_hashes for e in t3.take_events() if e.removed] == [[k8, k32]]


def test_the_tier_is_a_kvbm_segment_with_the_tier_configuration(name):
    with tier(name, 8) as m:
        cfg = kvbm.BlockManager.open(name)
        try:
            c = cfg.config()
            assert (c.eviction, c.duplication, c.default_reset_on_release) == ("lru", "reject", True)
            assert (c.block_count, c.block_size, c.bytes_per_block) == (8, BS, B)
            assert c.key_bytes == 32
        finally:
            cfg.close()
        assert m.block_count == 8 and m.bytes_per_block == B and m.block_size == BS


def test_an_engine_with_another_layout_is_refused(name):
    with tier(name, 8, layout_tag=1):
        with pytest.raises(TierConfigMismatch, match="bytes_per_block"):
            KvbmOffloadingManager(name, block_count=8, block_size=BS, bytes_per_block=2 * B,
                                  layout_tag=1)
        with pytest.raises(TierConfigMismatch, match="block_size"):
            KvbmOffloadingManager(name, block_count=8, block_size=2 * BS, bytes_per_block=B,
                                  layout_tag=1)
        with pytest.raises(TierConfigMismatch, match="layout_tag"):
            KvbmOffloadingManager(name, block_count=8, block_size=BS, bytes_per_block=B,
                                  layout_tag=2)
        with KvbmOffloadingManager(name, create=False) as opened:  # no sizes needed
            assert opened.block_count == 8 and opened.layout_tag == 1


def test_opening_something_else_is_refused(names):
    plain = names()
    kvbm.BlockManager.create(kvbm.SegmentConfig(name=plain, block_count=4)).close()
    with pytest.raises(TierConfigMismatch, match="not a kvbm.vllm tier"):
        KvbmOffloadingManager(plain, create=False)
    with pytest.raises(kvbm.NotFoundError):
        KvbmOffloadingManager(names(), create=False)
    with pytest.raises(ValueError):
        KvbmOffloadingManager(names())  # create=True needs block_count


# --- lifetime -------------------------------------------------------------------------------------


def test_close_releases_pins_and_unfinished_stores(name):
    with tier(name, 4) as other:
        a, b = keys(2)
        store(other, [a])
        m = tier(name, 4)
        m.prepare_load([a])
        m.prepare_store([b])
        assert counts(other)["primary"] == 2
        m.close()
        m.close()  # idempotent
        assert counts(other)["primary"] == 0
        assert other.lookup([a]) == 1 and other.lookup([b]) == 0
        with pytest.raises(ValueError):
            m.lookup([a])


def test_payload_and_offsets(t3):
    with t3.payload() as pv:
        assert len(pv) == 3 * B
    assert [t3.block_offset(i) for i in range(3)] == [0, B, 2 * B]
