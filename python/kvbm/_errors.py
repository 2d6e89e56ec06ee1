# SPDX-License-Identifier: Apache-2.0
"""Exceptions raised by kvbm.

Every error a kvbm call reports is a :class:`kvbm.Error` with a stable ``.code`` string (the
C++ ``Errc`` name) and ``.errno`` (0 when no system call failed). Each code has its own subclass,
so callers can ``except kvbm.NotFoundError`` or test ``err.code == "not_found"``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "Error",
    "InvalidConfigError",
    "AlreadyExistsError",
    "NotFoundError",
    "LayoutMismatchError",
    "ProcessTableFullError",
    "PermissionDeniedError",
    "CorruptedError",
    "SystemCallError",
    "BlocksInUseError",
    "FencedError",
    "EventsLostError",
    "BlockSizeMismatchError",
]


class Error(Exception):
    """Base class of every kvbm error.

    Attributes:
        code: stable lower-case name of the error ("not_found", "invalid_config", ...).
        errno: the errno of the failed system call, or 0 when no system call failed.
    """

    code: str = "error"

    def __init__(self, message: str, *, code: Optional[str] = None, errno: int = 0) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.errno = errno

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), str(self), self.code, self.errno, dict(self.__dict__)))


def _rebuild(cls: Type[Error], message: str, code: str, errno: int, state: Dict[str, Any]) -> Error:
    err = cls.__new__(cls)
    Error.__init__(err, message, code=code, errno=errno)
    err.__dict__.update(state)
    return err


class InvalidConfigError(Error, ValueError):
    """A bad configuration value or segment name (also a ValueError)."""

    code = "invalid_config"


class AlreadyExistsError(Error):
    """create() of a segment that already exists."""

    code = "already_exists"


class NotFoundError(Error):
    """The segment does not exist (open, destroy)."""

    code = "not_found"


class LayoutMismatchError(Error):
    """The object is not a kvbm segment of this layout version / ABI."""

    code = "layout_mismatch"


class ProcessTableFullError(Error):
    """Every process-table entry of the segment is taken by a live process."""

    code = "process_table_full"


class PermissionDeniedError(Error):
    """The shared-memory object's mode does not allow this user to attach."""

    code = "permission_denied"


class CorruptedError(Error):
    """The segment is damaged or was never initialised; kvbm-ctl repair may help."""

    code = "corrupted"


class SystemCallError(Error, OSError):
    """A system call failed; ``.errno`` tells which error (also an OSError)."""

    code = "system"


class BlocksInUseError(Error):
    """reset_inactive_pool() drained the inactive pool, but some blocks are still in use."""

    code = "blocks_in_use"


class FencedError(Error):
    """This process's attachment was reclaimed by another process (it looked dead)."""

    code = "fenced"


class EventsLostError(Error):
    """Events older than the event ring's oldest entry were requested."""

    code = "events_lost"


class BlockSizeMismatchError(Error, ValueError):
    """MutableBlock.stage() with a block size other than the segment's (also a ValueError).

    Attributes:
        expected: the segment's block size.
        actual: the block size passed to stage().
        block: the MutableBlock handed back (stage() consumed the original handle).
    """

    code = "block_size_mismatch"

    def __init__(self, message: str, *, expected: int = 0, actual: int = 0, block: Any = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual
        self.block = block


_BY_CODE: Dict[str, Type[Error]] = {
    cls.code: cls
    for cls in (
        InvalidConfigError,
        AlreadyExistsError,
        NotFoundError,
        LayoutMismatchError,
        ProcessTableFullError,
        PermissionDeniedError,
        CorruptedError,
        SystemCallError,
        BlocksInUseError,
        FencedError,
        EventsLostError,
    )
}


def _make(code: str, errno: int, message: str) -> Error:
    """The exception for an error reported by the library (used by kvbm._native)."""
    cls = _BY_CODE.get(code, Error)
    return cls(message, code=code, errno=errno)
