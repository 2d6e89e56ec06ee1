# SPDX-License-Identifier: Apache-2.0
"""The rebuilt index of each consumer kvbm-ctl events is made for (Dynamo's KV router: the
publisher binds, its SUB connects; llm-d's indexer: its SUB binds, the publisher connects, topic
kv@<pod>@<model>) equals the segment's cached set after stores, evictions, a drain, a SIGKILLed
worker and a publisher restart, in both encodings. Real processes, loopback sockets, receive
timeouts; the decoders reject anything the consumers would (events_support.py)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from typing import Iterator, List, Tuple, Union

import msgpack
import pytest
import zmq

import kvbm
from events_support import (
    IndexerIndex,
    ProtocolError,
    Publisher,
    RouterIndex,
    cached_fragments,
    free_port,
    normalise,
    store_chain,
    sub_socket,
)

BS = 4
Index = Union[RouterIndex, IndexerIndex]


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def until_equal(sock: zmq.Socket, index: Index, m: kvbm.BlockManager) -> None:
    want = cached_fragments(m)
    while index.blocks != want:
        index.apply(sock.recv_multipart())  # zmq.Again after 5 s fails the test


def connect(ctx: zmq.Context, layout: str, name: str, encoding: str) -> Tuple[Publisher, zmq.Socket, Index]:
    port = free_port()
    if layout == "dynamo":
        pub = Publisher(name, "--endpoint", f"tcp://*:{port}", "--encoding", encoding)
        sub = sub_socket(ctx)
        sub.connect(f"tcp://127.0.0.1:{port}")
        return pub, sub, RouterIndex(BS)
    sub = sub_socket(ctx, b"kv@")
    sub.bind(f"tcp://127.0.0.1:{port}")
    pub = Publisher(
        name, "--endpoint", f"tcp://127.0.0.1:{port}", "--encoding", encoding, "--topic",
        "kv@pod-0@demo-model",
    )
    return pub, sub, IndexerIndex("pod-0", "demo-model")


WORKER = """
import sys, kvbm
m = kvbm.BlockManager.open(sys.argv[1])
bs = m.block_size()
toks = [777_000 + i for i in range(3 * bs)]
hs = kvbm.hash_token_blocks(toks, bs)
blocks = m.allocate_blocks(3)
held = m.register_blocks([b.stage(h, bs, toks[i*bs:(i+1)*bs]) for i, (b, h) in enumerate(zip(blocks, hs))])
held[2].set_reset_on_release(True)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("layout", ["dynamo", "llmd"])
@pytest.mark.parametrize("encoding", ["map", "array"])
def test_index_follows_the_segment(name, ctx, layout, encoding) -> None:
    cfg = kvbm.SegmentConfig(
        name=name, block_count=12, block_size=BS, eviction="lru", store_token_ids=True
    )
    pubs: List[Publisher] = []
    worker = None
    try:
        with kvbm.BlockManager.create(cfg) as m:
            store_chain(m, 1, 3)  # before the publisher: reaches subscribers by snapshot
            pub, sub, index = connect(ctx, layout, name, encoding)
            pubs.append(pub)
            until_equal(sub, index, m)
            assert index.blocks  # not trivially equal

            held = store_chain(m, 2, 4, keep=True)
            until_equal(sub, index, m)
            store_chain(m, 3, 6)  # overfills the pool: chain 1's blocks are evicted
            until_equal(sub, index, m)
            assert m.metrics()["kvbm_evictions_total"] > 0

            # A worker killed while it holds blocks: reaping releases them (the one marked
            # reset-on-release leaves the cache).
            env = dict(os.environ)
            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER, name], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, env=env,
            )
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
            until_equal(sub, index, m)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            assert m.reap_dead_processes() == 1
            until_equal(sub, index, m)

            del held
            m.reset_inactive_pool()  # drain: everything leaves the cache
            until_equal(sub, index, m)
            assert index.blocks == set()

            # A publisher restart: the new one starts its subscribers over from a snapshot.
            store_chain(m, 4, 2)
            until_equal(sub, index, m)
            assert pub.stop() == 0
            sub.close(0)
            store_chain(m, 5, 3)
            pub, sub, index = connect(ctx, layout, name, encoding)
            pubs.append(pub)
            until_equal(sub, index, m)
            assert len(index.blocks) == 5
            sub.close(0)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        for p in pubs:
            p.stop(signal.SIGKILL)


def test_decoders_reject_what_the_consumers_reject() -> None:
    with pytest.raises(ProtocolError):
        normalise({"type": "BlockUpdated", "block_hashes": [1]})
    with pytest.raises(ProtocolError):
        normalise({"block_hashes": [1], "type": "BlockRemoved", "medium": "CPU"})  # type not first
    with pytest.raises(ProtocolError):
        normalise(["BlockRemoved", [b"\x01" * 8], "CPU"])  # hashes must be integers
    with pytest.raises(ProtocolError):
        normalise(["BlockStored", [1], None, [1, 2], 4, None, "CPU"])  # 7 fields, not 8
    idx = RouterIndex(4)
    good = msgpack.packb([1.5, [["BlockStored", [1], None, [1, 2, 3, 4], 4, None, "CPU", None]], 0])
    idx.apply([b"", struct.pack(">Q", 0), good])
    assert idx.blocks == {1}
    short = msgpack.packb([1.5, [["BlockStored", [2], 1, [1, 2], 4, None, "CPU", None]], 0])
    with pytest.raises(ProtocolError):
        idx.apply([b"", struct.pack(">Q", 1), short])  # token count != block_size
    with pytest.raises(ProtocolError):
        idx.apply([b"", struct.pack(">Q", 2), good, b""])  # 4 frames
    llmd = IndexerIndex("p", "m")
    orphan = msgpack.packb([1.5, [{"type": "BlockStored", "block_hashes": [9],
                                   "parent_block_hash": 8, "token_ids": [1, 2, 3, 4],
                                   "block_size": 4, "lora_id": None, "medium": "CPU",
                                   "lora_name": None}], 0])
    llmd.apply([b"kv@p@m", struct.pack(">Q", 0), orphan])
    assert llmd.blocks == set()  # parent never stored: dropped
