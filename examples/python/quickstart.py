#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Quick start (the README's Python example): every worker process runs this against one segment.

The first call creates the segment; later calls (in this or any other process) find the prompt's
blocks already cached and reuse their KV bytes instead of computing them.
Run:  python3 quickstart.py [segment-name]     (twice: the second run finds everything cached)
"""
import sys

import kvbm

BLOCK = 16  # tokens per block
prompt_token_ids = list(range(1000, 1100))  # the request's prompt: 100 tokens -> 6 full blocks


def compute_kv(block_hash):
    """Stand-in for the model: the KV bytes of one block (4096 bytes here)."""
    return bytes([block_hash.position % 256]) * 4096


cfg = kvbm.SegmentConfig(name=sys.argv[1] if len(sys.argv) > 1 else "tier0",
                         block_count=4096, block_size=BLOCK, bytes_per_block=4096)
with kvbm.BlockManager.open_or_create(cfg) as mgr:          # every worker process does this
    hashes = kvbm.hash_token_blocks(prompt_token_ids, BLOCK)  # list, array('I'), numpy, bytes
    cached = mgr.match_blocks(hashes)                         # prefix cached by any process
    for blk in cached:
        assert blk.data[:4096] == compute_kv(blk.sequence_hash)  # read-only view, no copy
    fresh = mgr.allocate_blocks(len(hashes) - len(cached))    # list[MutableBlock] or None
    staged = []
    for blk, h in zip(fresh, hashes[len(cached):]):
        blk.data[:] = compute_kv(h)                           # writable view, no copy
        staged.append(blk.stage(h, BLOCK))
    held = mgr.register_blocks(staged)                        # now matched by every process
    print(f"{len(hashes)} blocks: {len(cached)} cached, {len(held)} computed")
