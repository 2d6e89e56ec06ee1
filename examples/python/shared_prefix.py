#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Two processes sharing a prompt prefix through one kvbm segment.

A "prefill" process computes the KV bytes of a prompt's blocks, writes them into the segment's
payload and registers their hashes. A second process, serving another request with the same
system prompt, finds the shared prefix with match_blocks and reads the bytes without computing
them again. Run:  python3 shared_prefix.py [segment-name]
"""

import os
import sys

import kvbm

BLOCK = 16  # tokens per block
SYSTEM_PROMPT = list(range(1000, 1064))  # 64 tokens = 4 blocks shared by both requests


def fake_kv(tokens):
    """Stand-in for the model: the 'KV bytes' of one block of tokens."""
    return bytes(t % 251 for t in tokens) * 4  # 64 bytes per block of 16 tokens


def prefill(name, tokens, done_fd):
    """Computes every block of `tokens` that is not cached yet and registers it."""
    with kvbm.BlockManager.open(name) as mgr:
        hashes = kvbm.hash_token_blocks(tokens, BLOCK)
        cached = mgr.match_blocks(hashes)
        todo = hashes[len(cached):]
        fresh = mgr.allocate_blocks(len(todo))
        staged = []
        for i, (blk, h) in enumerate(zip(fresh, todo), start=len(cached)):
            blk.data[:] = fake_kv(tokens[i * BLOCK:(i + 1) * BLOCK])  # zero-copy write
            staged.append(blk.stage(h, BLOCK))
        mgr.register_blocks(staged)  # visible to every process from here on
        print(f"prefill: {len(cached)} blocks cached, {len(todo)} computed")
    os.write(done_fd, b"x")


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else f"kvbm-example-py-{os.getpid()}"
    cfg = kvbm.SegmentConfig(name=name, block_count=256, block_size=BLOCK, bytes_per_block=64)
    mgr = kvbm.BlockManager.create(cfg)
    try:
        first = SYSTEM_PROMPT + list(range(1, 33))  # 6 blocks
        second = SYSTEM_PROMPT + list(range(500, 540))  # 6 blocks (2 complete + 8 tokens)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            prefill(name, first, w)
            os._exit(0)
        os.read(r, 1)  # wait until the first request's blocks are registered
        _, status = os.waitpid(pid, 0)
        assert status == 0

        hashes = kvbm.hash_token_blocks(second, BLOCK)
        shared = mgr.match_blocks(hashes)  # the system prompt, computed by the other process
        print(f"second request: {len(shared)} of {len(hashes)} blocks found in the cache")
        for i, blk in enumerate(shared):
            assert blk.data == fake_kv(second[i * BLOCK:(i + 1) * BLOCK])
        print("shared KV bytes verified; counts:", mgr.counts())
        assert len(shared) == len(SYSTEM_PROMPT) // BLOCK
        del shared
    finally:
        mgr.close()
        kvbm.destroy(name)


if __name__ == "__main__":
    main()
