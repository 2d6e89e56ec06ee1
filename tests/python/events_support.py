# SPDX-License-Identifier: Apache-2.0
"""Support of the KV-event tests: the kvbm-ctl events publisher as a real process on loopback
sockets, and two subscribers that decode the stream by the rules of the consumers it is made for.

`RouterIndex` decodes like Dynamo's KV router: exactly 3 frames, an 8-byte big-endian sequence,
a 3-element msgpack envelope [ts float64, events, dp_rank], events as tagged maps or arrays,
unknown event types rejected, block hashes unsigned integers only, and token counts checked
against block_size. `IndexerIndex` decodes like llm-d's KV-cache indexer: a topic
kv@<pod>@<model>, and a BlockStored whose parent is not a hash it stored before is dropped.
Both rebuild the set of cached block hashes, which the tests compare with the segment's."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import msgpack
import pytest
import zmq

import kvbm

RECV_TIMEOUT_MS = 5000


def find_ctl() -> str:
    cand = os.environ.get("KVBM_CTL")
    if not cand:
        build = pathlib.Path(kvbm.__file__).resolve().parents[2]
        path = build / "tools" / "kvbm-ctl"
        cand = str(path) if path.exists() else shutil.which("kvbm-ctl")
    if not cand:
        pytest.skip("kvbm-ctl not found (set KVBM_CTL)")
    return cand


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Publisher:
    """`kvbm-ctl events NAME ARGS...`, stopped (SIGTERM, then SIGKILL) by stop()."""

    def __init__(self, name: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [find_ctl(), "events", name, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        return int(self.proc.returncode)


def sub_socket(ctx: zmq.Context, topic: bytes = b"") -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, topic)
    return s


class ProtocolError(AssertionError):
    pass


def decode_batch(frames: Sequence[bytes]) -> Tuple[bytes, int, float, List[Any], Optional[int]]:
    """(topic, seq, ts, events, dp_rank) of one message, checked as Dynamo's router checks it."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    topic, seq_bytes, payload = frames
    if len(seq_bytes) != 8:
        raise ProtocolError(f"sequence frame of {len(seq_bytes)} bytes")
    (seq,) = struct.unpack(">Q", seq_bytes)
    if payload[:2] != b"\x93\xcb":
        raise ProtocolError("envelope is not [float64, ...] of 3 elements")
    env = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if not isinstance(env, list) or len(env) != 3:
        raise ProtocolError(f"envelope {env!r}")
    ts, events, dp_rank = env
    if not isinstance(ts, float) or not isinstance(events, list):
        raise ProtocolError(f"envelope {env!r}")
    if dp_rank is not None and not isinstance(dp_rank, int):
        raise ProtocolError(f"dp_rank {dp_rank!r}")
    if not events:
        raise ProtocolError("empty batch")
    return topic, seq, ts, [normalise(e) for e in events], dp_rank


def _hashes(v: Any) -> List[int]:
    if not isinstance(v, list) or not all(isinstance(h, int) and h >= 0 for h in v):
        raise ProtocolError(f"block hashes must be unsigned integers: {v!r}")
    if not v:
        raise ProtocolError("no block hashes")
    return v


def normalise(e: Any) -> Dict[str, Any]:
    """A tagged map or an array event as a dict; unknown types are protocol errors."""
    if isinstance(e, dict):
        keys = list(e.keys())
        if not keys or keys[0] != "type":
            raise ProtocolError(f"map event without 'type' first: {e!r}")
        kind = e["type"]
        fields = dict(e)
    elif isinstance(e, list) and e and isinstance(e[0], str):
        kind = e[0]
        names = {
            "BlockStored": [
                "block_hashes",
                "parent_block_hash",
                "token_ids",
                "block_size",
                "lora_id",
                "medium",
                "lora_name",
            ],
            "BlockRemoved": ["block_hashes", "medium"],
            "AllBlocksCleared": [],
        }.get(kind)
        if names is None or len(e) != len(names) + 1:
            raise ProtocolError(f"array event {e!r}")
        fields = dict(zip(names, e[1:]))
        fields["type"] = kind
    else:
        raise ProtocolError(f"event {e!r}")
    if kind == "BlockStored":
        for k in ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                  "medium", "lora_name"):
            if k not in fields:
                raise ProtocolError(f"BlockStored without {k}")
        _hashes(fields["block_hashes"])
        parent = fields["parent_block_hash"]
        if parent is not None and not (isinstance(parent, int) and parent >= 0):
            raise ProtocolError(f"parent {parent!r}")
        bs = fields["block_size"]
        if not isinstance(bs, int) or bs <= 0:
            raise ProtocolError(f"block_size {bs!r}")
        toks = fields["token_ids"]
        if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
            raise ProtocolError("token_ids")
    elif kind == "BlockRemoved":
        _hashes(fields["block_hashes"])
    elif kind != "AllBlocksCleared":
        raise ProtocolError(f"unknown event type {kind!r}")
    return fields


class RouterIndex:
    """The block set of one worker as Dynamo's KV router keeps it."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.blocks: Set[int] = set()
        self.last_seq: Optional[int] = None

    def apply(self, frames: Sequence[bytes]) -> int:
        _, seq, _, events, _ = decode_batch(frames)
        if self.last_seq is not None and seq != self.last_seq + 1:
            raise ProtocolError(f"batch {seq} after {self.last_seq}")
        self.last_seq = seq
        for e in events:
            if e["type"] == "AllBlocksCleared":
                self.blocks.clear()
            elif e["type"] == "BlockStored":
                if e["block_size"] != self.block_size:
                    raise ProtocolError(f"block_size {e['block_size']}")
                if len(e["token_ids"]) != self.block_size * len(e["block_hashes"]):
                    raise ProtocolError("token count does not match the blocks")
                self.blocks.update(e["block_hashes"])
            else:
                self.blocks.difference_update(e["block_hashes"])
        return seq


class IndexerIndex:
    """The block set of one pod as llm-d's indexer keeps it: topic kv@<pod>@<model>; a stored
    run whose parent it does not know is dropped."""

    def __init__(self, pod: str, model: str) -> None:
        self.pod, self.model = pod, model
        self.blocks: Set[int] = set()

    def apply(self, frames: Sequence[bytes]) -> None:
        topic, _, _, events, _ = decode_batch(frames)
        parts = topic.decode().split("@")
        if len(parts) != 3 or parts[0] != "kv" or parts[1:] != [self.pod, self.model]:
            raise ProtocolError(f"topic {topic!r}")
        for e in events:
            if e["type"] == "AllBlocksCleared":
                self.blocks.clear()
            elif e["type"] == "BlockStored":
                parent = e["parent_block_hash"]
                if parent is not None and parent not in self.blocks:
                    continue
                self.blocks.update(e["block_hashes"])
            else:
                self.blocks.difference_update(e["block_hashes"])


def cached_fragments(m: kvbm.BlockManager) -> Set[int]:
    """The published hashes of the blocks the segment caches (Primary or Inactive)."""
    out = set()
    for i in range(m.total_blocks()):
        info = m.inspect_block(i)
        if info.state in ("primary", "inactive"):
            out.add(info.hash.current_fragment)
    return out


def tokens_for(seed: int, n_blocks: int, block_size: int) -> List[int]:
    return [seed * 1_000_000 + i for i in range(n_blocks * block_size)]


def store_chain(
    m: kvbm.BlockManager, seed: int, n_blocks: int, keep: bool = False
) -> List[kvbm.ImmutableBlock]:
    """Registers a chain of n_blocks blocks with their token ids (dropped unless keep)."""
    bs = m.block_size()
    toks = tokens_for(seed, n_blocks, bs)
    hs = kvbm.hash_token_blocks(toks, bs)
    blocks = m.allocate_blocks(n_blocks)
    assert blocks is not None
    staged = [b.stage(h, bs, toks[i * bs : (i + 1) * bs]) for i, (b, h) in enumerate(zip(blocks, hs))]
    held = m.register_blocks(staged)
    return held if keep else []
