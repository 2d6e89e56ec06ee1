# SPDX-License-Identifier: Apache-2.0
"""Helpers of the kvbm Python tests: hash chains, registration, forked children with pipes."""

from __future__ import annotations

import os
import pickle
import signal
import traceback
from typing import Any, Callable, List

import kvbm


def hashes(n: int, seed: int = 1) -> List[kvbm.SequenceHash]:
    """n chained hashes (positions 0..n-1) distinct per seed."""
    return kvbm.hash_token_blocks([seed * 1_000_003 + i for i in range(4 * n)], 4)


def register(m: kvbm.BlockManager, hs: List[kvbm.SequenceHash]) -> List[kvbm.ImmutableBlock]:
    blocks = m.allocate_blocks(len(hs))
    assert blocks is not None
    return m.register_blocks([b.stage(h, m.block_size()) for b, h in zip(blocks, hs)])


class Child:
    """A forked child running `body(conn)`; `conn` sends/receives pickled messages with the
    parent. The child exits 0 when body returns, 1 with its traceback sent on an exception."""

    def __init__(self, body: Callable[["Channel"], None]) -> None:
        to_child_r, to_child_w = os.pipe()
        to_parent_r, to_parent_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(to_child_w)
                os.close(to_parent_r)
                body(Channel(to_child_r, to_parent_w))
            except BaseException:
                code = 1
                try:
                    Channel(-1, to_parent_w).send(("error", traceback.format_exc()))
                except BaseException:
                    pass
            finally:
                os._exit(code)
        os.close(to_child_r)
        os.close(to_parent_w)
        self.pid = pid
        self.chan = Channel(to_parent_r, to_child_w)

    def recv(self) -> Any:
        msg = self.chan.recv()
        if isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "error":
            raise AssertionError(f"child failed:\n{msg[1]}")
        return msg

    def send(self, obj: Any) -> None:
        self.chan.send(obj)

    def join(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.chan.close()
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            if code != 0:
                leftover = self.chan.leftover
                raise AssertionError(f"child exited with {code}: {leftover}")
            return code
        return -os.WTERMSIG(status)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        self.chan.close()


class Channel:
    """Length-prefixed pickles over a pair of pipe fds."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.leftover: Any = None

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj)
        os.write(self.wfd, len(data).to_bytes(4, "little") + data)

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.read(self.rfd, n - len(out))
            if not chunk:
                raise EOFError("the other side closed the pipe")
            out += chunk
        return out

    def recv(self) -> Any:
        n = int.from_bytes(self._read(4), "little")
        return pickle.loads(self._read(n))

    def close(self) -> None:
        if self.rfd >= 0:
            try:
                self.leftover = self.recv()
            except (EOFError, OSError):
                pass
        for fd in (self.rfd, self.wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.rfd = self.wfd = -1
