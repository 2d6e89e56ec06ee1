# SPDX-License-Identifier: Apache-2.0
"""kvbm-ctl events over real loopback sockets: framing, both encodings, the snapshot a new
subscriber gets, replay, --dp-rank, the connecting layout and a clean stop on SIGINT/SIGTERM.
Every receive has a timeout; every publisher process is stopped in teardown."""

from __future__ import annotations

import signal
import struct
from typing import Callable, Iterator, List

import msgpack
import pytest
import zmq

import kvbm
from events_support import (
    Publisher,
    RouterIndex,
    cached_fragments,
    decode_batch,
    free_port,
    store_chain,
    sub_socket,
)

BS = 4


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def publishers() -> Iterator[Callable[..., Publisher]]:
    started: List[Publisher] = []

    def start(name: str, *args: str) -> Publisher:
        p = Publisher(name, *args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop(signal.SIGKILL)


def segment(name: str, blocks: int = 16) -> kvbm.BlockManager:
    return kvbm.BlockManager.create(
        kvbm.SegmentConfig(
            name=name, block_count=blocks, block_size=BS, eviction="lru", store_token_ids=True
        )
    )


def until_equal(sock: zmq.Socket, index: RouterIndex, m: kvbm.BlockManager) -> None:
    want = cached_fragments(m)
    while index.blocks != want:
        index.apply(sock.recv_multipart())  # zmq.Again after 5 s fails the test


def test_snapshot_then_live_events_map_encoding(name, ctx, publishers) -> None:
    with segment(name) as m:
        store_chain(m, 1, 3)
        port = free_port()
        publishers(name, "--endpoint", f"tcp://*:{port}")
        sub = sub_socket(ctx)
        sub.connect(f"tcp://127.0.0.1:{port}")
        frames = sub.recv_multipart()
        topic, seq, _, events, dp_rank = decode_batch(frames)
        assert topic == b"" and dp_rank == 0
        # Each (re)subscription gets AllBlocksCleared + every cached block, parents first.
        assert events[0] == {"type": "AllBlocksCleared"}
        stored = events[1:]
        assert all(list(e.keys())[0] == "type" and e["type"] == "BlockStored" for e in stored)
        assert all(e["medium"] == "CPU" and e["lora_id"] is None and e["lora_name"] is None
                   for e in stored)
        got = [h for e in stored for h in e["block_hashes"]]
        assert set(got) == cached_fragments(m)
        first = [e for e in stored if e["parent_block_hash"] is None]
        assert first and all(e["token_ids"] for e in stored)
        index = RouterIndex(BS)
        index.apply(frames)
        held = store_chain(m, 2, 2, keep=True)
        frames = sub.recv_multipart()
        _, seq2, _, events, _ = decode_batch(frames)
        assert seq2 == seq + 1
        # One chain registered in one call: one BlockStored with both blocks and their ids.
        assert len(events) == 1 and events[0]["type"] == "BlockStored"
        assert events[0]["block_hashes"] == [b.sequence_hash.current_fragment for b in held]
        assert events[0]["parent_block_hash"] is None
        assert len(events[0]["token_ids"]) == 2 * BS
        assert events[0]["block_size"] == BS
        index.apply(frames)
        assert index.blocks == cached_fragments(m)


def test_array_encoding_and_removals(name, ctx, publishers) -> None:
    with segment(name, blocks=4) as m:
        port = free_port()
        publishers(name, "--endpoint", f"tcp://*:{port}", "--encoding", "array")
        sub = sub_socket(ctx)
        sub.connect(f"tcp://127.0.0.1:{port}")
        index = RouterIndex(BS)
        frames = sub.recv_multipart()
        payload_events = decode_batch(frames)[3]
        assert payload_events[0] == {"type": "AllBlocksCleared"}
        index.apply(frames)
        store_chain(m, 1, 4)
        until_equal(sub, index, m)
        store_chain(m, 2, 2)  # evicts two blocks: BlockRemoved
        saw_removed = False
        while index.blocks != cached_fragments(m) or not saw_removed:
            frames = sub.recv_multipart()
            raw = msgpack.unpackb(frames[2], raw=False)
            for e in raw[1]:
                assert isinstance(e, list)
                saw_removed |= e[0] == "BlockRemoved"
                if e[0] == "BlockRemoved":
                    assert len(e) == 3 and e[2] == "CPU"
                if e[0] == "BlockStored":
                    assert len(e) == 8 and e[5] is None and e[6] == "CPU" and e[7] is None
            index.apply(frames)


def test_replay_returns_the_buffered_batches(name, ctx, publishers) -> None:
    with segment(name, blocks=64) as m:
        port, rport = free_port(), free_port()
        publishers(
            name, "--endpoint", f"tcp://*:{port}", "--replay-endpoint", f"tcp://*:{rport}",
            "--buffer", "4",
        )
        sub = sub_socket(ctx)
        sub.connect(f"tcp://127.0.0.1:{port}")
        seen = {}
        frames = sub.recv_multipart()
        seen[decode_batch(frames)[1]] = frames[2]
        for seed in range(1, 7):
            store_chain(m, seed, 1)
            frames = sub.recv_multipart()
            seen[decode_batch(frames)[1]] = frames[2]
        last = max(seen)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.RCVTIMEO, 5000)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{rport}")

        def replay(start: int) -> List[int]:
            dealer.send_multipart([b"", struct.pack(">Q", start)])
            got = []
            while True:
                parts = dealer.recv_multipart()
                assert parts[0] == b"" and len(parts) == 3
                if parts[1] == b"\xff" * 8:
                    assert parts[2] == b""
                    return got
                (s,) = struct.unpack(">Q", parts[1])
                assert parts[2] == seen[s]  # exactly what was published
                got.append(s)

        # --buffer 4: the last four batches, in order, from the start asked for.
        assert replay(0) == list(range(last - 3, last + 1))
        assert replay(last - 1) == [last - 1, last]
        assert replay(last + 1) == []


def test_connecting_publisher_and_dp_rank(name, ctx, publishers) -> None:
    with segment(name) as m:
        store_chain(m, 1, 2)
        base = free_port()
        while True:  # the publisher connects to base + 2
            port = base + 2
            probe = ctx.socket(zmq.SUB)
            try:
                probe.bind(f"tcp://127.0.0.1:{port}")
                break
            except zmq.ZMQError:
                probe.close(0)
                base = free_port()
        sub = probe
        sub.setsockopt(zmq.RCVTIMEO, 5000)
        sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
        publishers(
            name, "--endpoint", f"tcp://127.0.0.1:{base}", "--dp-rank", "2", "--topic",
            "kv@pod-a@model-x",
        )
        frames = sub.recv_multipart()
        topic, _, _, events, dp_rank = decode_batch(frames)
        assert topic == b"kv@pod-a@model-x"
        assert dp_rank == 2
        assert events[0] == {"type": "AllBlocksCleared"}
        sub.close(0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stops_cleanly_on_signal(name, ctx, publishers, sig) -> None:
    with segment(name):
        port = free_port()
        p = publishers(name, "--endpoint", f"tcp://*:{port}")
        sub = sub_socket(ctx)
        sub.connect(f"tcp://127.0.0.1:{port}")
        decode_batch(sub.recv_multipart())  # running and publishing
        assert p.stop(sig) == 0
