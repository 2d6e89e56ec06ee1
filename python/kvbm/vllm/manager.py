# SPDX-License-Identifier: Apache-2.0
"""KvbmOffloadingManager: vLLM's OffloadingManager over a kvbm segment shared by every engine.

How vLLM's contract maps onto kvbm blocks (docs/architecture.md, "vLLM CPU tier"):

* A vLLM ``BlockHash`` (8-32 bytes) is kept whole as the block's key in the segment
  (``SegmentConfig.key_bytes``); the kvbm sequence hash is derived from it (BLAKE2b-128).
* The tier is created with LRU eviction, ``duplication="reject"`` and
  ``default_reset_on_release=True``. A store registers its blocks at once, still marked
  reset-on-release and held by the storing engine: other engines see the hash as *being stored*
  (``peek_blocks`` -> ``"reset_on_release"``), never load it, and leave it out of their own stores.
  ``complete_store`` clears the mark and releases the block: it becomes Inactive (cached, most
  recently used) for every engine. A failed store, or the death of the storing engine, releases it
  still marked, so it goes back to the free pool.
* A load pin is one ImmutableBlock handle per ``prepare_load`` call and hash; pinned blocks are
  held, and held blocks are never evicted. When an engine dies, reaping releases everything it
  held, so its pins and unfinished stores vanish.
* ``lookup`` is ``BlockManager.lookup_prefix``: it acquires nothing and leaves the LRU order alone.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Iterable

import kvbm

from ._types import (
    LoadStoreSpec,
    OffloadingEvent,
    OffloadingManager,
    PrepareStoreOutput,
)

MIN_KEY_BYTES = 8
KEY_BYTES = 32  # every tier keeps up to 32 bytes per block: vLLM's sha256 block hashes fit whole
_PERSON = b"kvbm.vllm.key"
_FRAGMENT_BITS = (1 << 54) - 1  # below the 2 mode bits and 8 position bits of a position-0 hash


class TierConfigMismatch(ValueError):
    """The tier exists with a configuration this engine cannot share (another model, KV layout
    or size), or the segment is not a kvbm.vllm tier at all."""


class KvbmLoadStoreSpec(LoadStoreSpec):
    """Blocks of the shared CPU tier: ids into its payload region (``KvbmOffloadingManager.payload``)."""

    def __init__(self, block_ids: Iterable[int]):
        self.block_ids: list[int] = [int(b) for b in block_ids]

    @staticmethod
    def medium() -> str:
        return "CPU"

    def __repr__(self) -> str:
        return f"KvbmLoadStoreSpec({self.block_ids!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KvbmLoadStoreSpec) and other.block_ids == self.block_ids


def _check_key(key: object) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise ValueError(
            f"kvbm.vllm: a block hash must be bytes (vLLM's BlockHash), not {type(key).__name__}"
        )
    key = bytes(key)
    if not MIN_KEY_BYTES <= len(key) <= KEY_BYTES:
        raise ValueError(
            f"kvbm.vllm: a block hash must be {MIN_KEY_BYTES} to {KEY_BYTES} bytes long, "
            f"got {len(key)}"
        )
    return key


def sequence_hash_of(key: bytes) -> "kvbm.SequenceHash":
    """The kvbm sequence hash under which a vLLM block hash is registered: 118 bits of
    BLAKE2b-128 of the key at position 0 (mode and position bits zero; vLLM's hashes already
    chain their parents, so the position carries nothing)."""
    digest = hashlib.blake2b(key, digest_size=16, person=_PERSON).digest()
    hi = int.from_bytes(digest[:8], "little") & _FRAGMENT_BITS
    return kvbm.SequenceHash.from_parts(hi, int.from_bytes(digest[8:], "little"))


def tier_config(
    name: str,
    block_count: int,
    block_size: int,
    bytes_per_block: int,
    *,
    layout_tag: int = 0,
    max_processes: int = 64,
    permissions: int = 0o600,
) -> "kvbm.SegmentConfig":
    """The segment configuration of a kvbm.vllm tier (what ``kvbm-ctl info`` shows for it)."""
    return kvbm.SegmentConfig(
        name=name,
        block_count=block_count,
        block_size=block_size,
        bytes_per_block=bytes_per_block,
        eviction="lru",
        duplication="reject",
        default_reset_on_release=True,
        key_bytes=KEY_BYTES,
        layout_tag=layout_tag,
        max_processes=max_processes,
        permissions=permissions,
    )


def _check_tier(name: str, cfg: "kvbm.SegmentConfig") -> None:
    wrong = []
    if cfg.eviction != "lru":
        wrong.append(f"eviction {cfg.eviction} (needs lru)")
    if cfg.duplication != "reject":
        wrong.append(f"duplication {cfg.duplication} (needs reject)")
    if not cfg.default_reset_on_release:
        wrong.append("default_reset_on_release false (needs true)")
    if cfg.key_bytes != KEY_BYTES:
        wrong.append(f"key_bytes {cfg.key_bytes} (needs {KEY_BYTES})")
    if wrong:
        raise TierConfigMismatch(
            f"kvbm.vllm: segment '{name}' is not a kvbm.vllm tier: " + ", ".join(wrong)
        )


class KvbmOffloadingManager(OffloadingManager):
    """vLLM's OffloadingManager over the kvbm segment ``name``, shared by every engine on the host.

    ``create=True`` opens the tier or creates it with ``block_count`` blocks of ``block_size``
    tokens and ``bytes_per_block`` payload bytes (an existing tier must have exactly that
    configuration and ``layout_tag``, else ``TierConfigMismatch``); ``create=False`` opens an
    existing tier and needs no sizes. Thread-safe. ``close()`` (or leaving a ``with`` block)
    releases this engine's pins and unfinished stores and detaches; the tier itself outlives every
    engine until ``kvbm.destroy(name)`` / ``kvbm-ctl destroy``.
    """

    def __init__(
        self,
        name: str,
        block_count: int | None = None,
        block_size: int = 16,
        bytes_per_block: int = 0,
        medium: str = "CPU",
        create: bool = True,
        *,
        layout_tag: int = 0,
        max_processes: int = 64,
        permissions: int = 0o600,
        enable_events: bool = True,
    ):
        if create:
            if block_count is None:
                raise ValueError("kvbm.vllm: creating a tier needs block_count")
            cfg = tier_config(
                name,
                block_count,
                block_size,
                bytes_per_block,
                layout_tag=layout_tag,
                max_processes=max_processes,
                permissions=permissions,
            )
            try:
                mgr = kvbm.BlockManager.open_or_create(cfg)
            except kvbm.InvalidConfigError as e:
                if "exists with a different" not in str(e):
                    raise
                raise TierConfigMismatch(
                    f"kvbm.vllm: tier '{name}' is in use with another configuration ({e}); "
                    "engines share a tier only with the same model, KV layout (block_size, "
                    "bytes_per_block, layout_tag) and size: pick another tier name, or destroy "
                    f"this one when no engine uses it (kvbm-ctl destroy {name})"
                ) from e
        else:
            mgr = kvbm.BlockManager.open(name)
        cfg = mgr.config()
        try:
            _check_tier(name, cfg)
        except BaseException:
            mgr.close()
            raise
        self._mgr = mgr
        self.name = name
        self.medium_name = medium
        self.block_size = cfg.block_size
        self.bytes_per_block = cfg.bytes_per_block
        self.block_count = cfg.block_count
        self.layout_tag = cfg.layout_tag
        self._lock = threading.RLock()
        self._loads: dict[bytes, list] = {}  # key -> one ImmutableBlock per prepare_load call
        self._stores: dict[bytes, object] = {}  # key -> this engine's unfinished store
        self._events: list[OffloadingEvent] | None = [] if enable_events else None

    def _m(self) -> "kvbm.BlockManager":
        if self._mgr is None:
            raise ValueError(f"kvbm.vllm: the manager of tier '{self.name}' is closed")
        return self._mgr

    # --- vLLM's OffloadingManager ---------------------------------------------------------------

    def lookup(self, block_hashes: Iterable[bytes]) -> int:
        """The number of leading hashes stored (by any engine) and loadable. No side effects."""
        keys = [_check_key(k) for k in block_hashes]
        with self._lock:
            return self._m().lookup_prefix([sequence_hash_of(k) for k in keys])

    def prepare_load(self, block_hashes: Iterable[bytes]) -> KvbmLoadStoreSpec:
        """Pins the blocks (one pin per call and hash, until complete_load) and returns where they
        are. KeyError, leaving no pin, if one is not stored or is still being stored."""
        keys = [_check_key(k) for k in block_hashes]
        hashes = [sequence_hash_of(k) for k in keys]
        with self._lock:
            blocks = self._m().match_blocks(hashes)
            missing = None
            if len(blocks) < len(keys):
                missing = keys[len(blocks)]
            else:
                # The match holds them now; one that is still being stored (marked
                # reset-on-release) or carries another key is not loadable.
                ready = self._m().lookup_prefix(hashes)
                if ready < len(keys):
                    missing = keys[ready]
                else:
                    for k, b in zip(keys, blocks):
                        if b.key != k:
                            missing = k
                            break
            if missing is not None:
                for b in blocks:
                    b.release()
                raise KeyError(missing)
            for k, b in zip(keys, blocks):
                self._loads.setdefault(k, []).append(b)
            return KvbmLoadStoreSpec(b.block_id for b in blocks)

    def touch(self, block_hashes: Iterable[bytes]) -> None:
        """Marks the stored blocks among these as most recently used, the first hash the most."""
        keys = [_check_key(k) for k in block_hashes]
        with self._lock:
            found = self._m().match_blocks_scattered([sequence_hash_of(k) for k in keys])
            # A released block enters the LRU order at its most recent end: release the last
            # hash first so that the first one ends up the most recent (vLLM's order).
            for b in reversed(found):
                if b is not None:
                    b.release()

    def complete_load(self, block_hashes: Iterable[bytes]) -> None:
        """Drops one pin per hash (taken by prepare_load). KeyError, changing nothing, for a hash
        this engine has no pin on."""
        keys = [_check_key(k) for k in block_hashes]
        with self._lock:
            need: dict[bytes, int] = {}
            for k in keys:
                need[k] = need.get(k, 0) + 1
            for k, n in need.items():
                if len(self._loads.get(k, ())) < n:
                    raise KeyError(k)
            for k in keys:
                pins = self._loads[k]
                pins.pop().release()
                if not pins:
                    del self._loads[k]

    def prepare_store(self, block_hashes: Iterable[bytes]) -> PrepareStoreOutput | None:
        """Allocates blocks for the hashes not yet stored nor being stored (by any engine), all or
        nothing, evicting least-recently-used unpinned blocks for exactly the shortfall. None when
        there is no room for all of them even after reaping dead engines."""
        keys = list(dict.fromkeys(_check_key(k) for k in block_hashes))
        hashes = [sequence_hash_of(k) for k in keys]
        with self._lock:
            presence = self._m().peek_blocks(hashes)
            if "reset_on_release" in presence and any(
                p == "reset_on_release" and k not in self._stores for k, p in zip(keys, presence)
            ):
                # Another engine is storing some of these; if it died doing so, reaping returns
                # its blocks now instead of when the tier next runs short.
                if self._m().reap_dead_processes() > 0:
                    presence = self._m().peek_blocks(hashes)
            todo = [(k, h) for k, h, p in zip(keys, hashes, presence) if p == "absent"]
            if not todo:
                return PrepareStoreOutput(
                    block_hashes_to_store=[], store_spec=KvbmLoadStoreSpec([]), block_hashes_evicted=[]
                )
            got = self._m().allocate_blocks_with_evictions(len(todo))
            if got is None:
                return None
            blocks, evicted_hashes = got
            # The evicted blocks come last, in the order of their hashes, still carrying the keys
            # they were stored under.
            evicted = [blocks[i].key for i in range(len(blocks) - len(evicted_hashes), len(blocks))]
            ids = [b.block_id for b in blocks]
            staged = []
            for (k, h), b in zip(todo, blocks):
                b.set_key(k)
                staged.append(b.stage(h, self.block_size))
            registered = self._m().register_blocks(staged)
            to_store: list[bytes] = []
            store_ids: list[int] = []
            for (k, _), own_id, imm in zip(todo, ids, registered):
                if imm.block_id != own_id:
                    # Another engine registered this hash since the peek: its store wins, ours
                    # went back to the free pool.
                    imm.release()
                    continue
                self._stores[k] = imm
                to_store.append(k)
                store_ids.append(own_id)
            if evicted and self._events is not None:
                self._events.append(
                    OffloadingEvent(
                        block_hashes=evicted,
                        block_size=self.block_size,
                        medium=self.medium_name,
                        removed=True,
                    )
                )
            return PrepareStoreOutput(
                block_hashes_to_store=to_store,
                store_spec=KvbmLoadStoreSpec(store_ids),
                block_hashes_evicted=evicted,
            )

    def complete_store(self, block_hashes: Iterable[bytes], success: bool = True) -> None:
        """Publishes this engine's unfinished stores of these hashes to every engine, or with
        ``success=False`` returns their blocks to the free pool. Other hashes are ignored."""
        keys = [_check_key(k) for k in block_hashes]
        with self._lock:
            stored: list[bytes] = []
            for k in keys:
                imm = self._stores.pop(k, None)
                if imm is None:
                    continue
                if success:
                    imm.set_reset_on_release(False)
                    stored.append(k)
                imm.release()  # success: Inactive, most recent; failure: back to the free pool
            if stored and self._events is not None:
                self._events.append(
                    OffloadingEvent(
                        block_hashes=stored,
                        block_size=self.block_size,
                        medium=self.medium_name,
                        removed=False,
                    )
                )

    def take_events(self) -> list[OffloadingEvent]:
        """This engine's events since the last call: its stores, and the evictions they caused."""
        with self._lock:
            if not self._events:
                return []
            events, self._events = self._events, []
            return events

    # --- the payload, for the worker-side copies --------------------------------------------------

    def payload(self) -> memoryview:
        """The tier's whole payload region (block_count * bytes_per_block bytes), writable."""
        return self._m().payload()

    def block_offset(self, block_id: int) -> int:
        """Byte offset of a block in payload()."""
        return self._m().block_offset(block_id)

    # --- lifetime -----------------------------------------------------------------------------------

    @property
    def block_manager(self) -> "kvbm.BlockManager":
        """The underlying kvbm attachment (for inspection: counts(), metrics(), verify())."""
        return self._m()

    def pinned(self) -> int:
        """Load pins this engine holds."""
        with self._lock:
            return sum(len(p) for p in self._loads.values())

    def storing(self) -> int:
        """Unfinished stores of this engine."""
        with self._lock:
            return len(self._stores)

    def close(self) -> None:
        """Releases this engine's pins and unfinished stores, then detaches. Idempotent. Payload
        views obtained from payload() must be released first (else BufferError)."""
        with self._lock:
            if self._mgr is None:
                return
            for pins in self._loads.values():
                for b in pins:
                    b.release()
            self._loads.clear()
            for imm in self._stores.values():
                imm.release()
            self._stores.clear()
            self._mgr.close()
            self._mgr = None

    def __enter__(self) -> "KvbmOffloadingManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
