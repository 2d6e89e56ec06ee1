# SPDX-License-Identifier: Apache-2.0
"""kvbm: a KV-cache block manager shared by every process on a host.

All block metadata (allocation, content-hash registration, prefix matching, eviction) lives in
one POSIX shared-memory segment; every attached process works on it directly, and a process that
dies (even in the middle of an operation) is recovered. Optionally the segment also holds each
block's payload bytes (``bytes_per_block``), readable and writable from every process without a
copy.

    import kvbm
    cfg = kvbm.SegmentConfig(name="demo", block_count=4096, block_size=16)
    with kvbm.BlockManager.open_or_create(cfg) as mgr:
        hashes = kvbm.hash_token_blocks(tokens, 16)
        cached = mgr.match_blocks(hashes)               # prefix already cached by anyone
        fresh = mgr.allocate_blocks(len(hashes) - len(cached))
        staged = [b.stage(h, 16) for b, h in zip(fresh, hashes[len(cached):])]
        held = mgr.register_blocks(staged)              # now visible to every process

Block handles (MutableBlock -> CompleteBlock -> ImmutableBlock, and WeakBlock) are context
managers with release(); using one after release()/stage()/reset()/register raises ValueError.
Errors are kvbm.Error subclasses with ``.code`` and ``.errno``.
"""

from __future__ import annotations

from ._errors import (
    AlreadyExistsError,
    BlocksInUseError,
    BlockSizeMismatchError,
    CorruptedError,
    Error,
    EventsLostError,
    FencedError,
    InvalidConfigError,
    LayoutMismatchError,
    NotFoundError,
    PermissionDeniedError,
    ProcessTableFullError,
    SystemCallError,
)
from ._native import (
    BlockInfo,
    BlockManager,
    CompleteBlock,
    Event,
    EventReader,
    ImmutableBlock,
    MutableBlock,
    SegmentConfig,
    SequenceHash,
    WeakBlock,
    destroy,
    hash_token_blocks,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "BlockInfo",
    "BlockManager",
    "BlockSizeMismatchError",
    "BlocksInUseError",
    "CompleteBlock",
    "CorruptedError",
    "Error",
    "Event",
    "EventReader",
    "EventsLostError",
    "FencedError",
    "ImmutableBlock",
    "InvalidConfigError",
    "LayoutMismatchError",
    "MutableBlock",
    "NotFoundError",
    "PermissionDeniedError",
    "ProcessTableFullError",
    "SegmentConfig",
    "SequenceHash",
    "SystemCallError",
    "WeakBlock",
    "destroy",
    "hash_token_blocks",
]

# Classes defined in the compiled module report this package as their home (help(), repr).
for _name in __all__:
    try:
        globals()[_name].__module__ = __name__
    except (AttributeError, TypeError):
        pass
del _name
