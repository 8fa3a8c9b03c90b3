"""Errors a person can act on, and how the command line reports them.

Every entry point prints a *known* error as one line ``error: ...`` and exits with
status 2; ``--debug`` (or ``XMODAL_DEBUG=1``) shows the traceback instead. Known errors
are the ones below plus the standard exceptions our readers and the config layer raise
with a complete message (missing file, wrong key, wrong shape or value). Anything else
is reported in one line too, flagged as a probable bug (exit status 1).

A failed write is recognised wherever it comes from (:func:`disk_cause`): an
``OSError`` with a disk errno, or the message of tensorstore, which writes Orbax's
arrays and reports a failed write as a ``ValueError`` ending in
``[os_error_code='28']`` with the file it was writing.
"""

from __future__ import annotations

import errno
import os
import re

__all__ = [
    "ConfigChangedError",
    "DiskError",
    "UserError",
    "WorkdirBusyError",
    "describe",
    "disk_cause",
]


class UserError(Exception):
    """An error whose message says what to fix; printed without a traceback."""


class WorkdirBusyError(UserError):
    """Another live process holds the workdir's lock."""


class ConfigChangedError(UserError):
    """A rerun's config differs from the workdir's in something that changes training."""


class DiskError(UserError):
    """A write into the workdir failed (disk full, no permission, read-only)."""


# Standard exceptions whose messages are complete sentences in this code base.
_KNOWN = (FileNotFoundError, NotADirectoryError, KeyError, ValueError, TypeError)

# errno values that mean "the workdir cannot be written", not a bug.
_DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM, errno.EDQUOT, errno.EFBIG}
)


# tensorstore's failed write: '... local file "PATH": ... [os_error_code='28']'.
_TENSORSTORE_ERRNO = re.compile(r"\[os_error_code='?(\d+)'?\]")
_TENSORSTORE_PATH = re.compile(r'(?:local file|Failed writing:) "([^"]+)"')


def _tensorstore_cause(exc: BaseException) -> OSError | None:
    text = str(exc)
    code = _TENSORSTORE_ERRNO.search(text)
    if code is None or int(code.group(1)) not in _DISK_ERRNOS:
        return None
    path = _TENSORSTORE_PATH.search(text)
    number = int(code.group(1))
    return OSError(number, os.strerror(number), path.group(1) if path else None)


def disk_cause(exc: BaseException) -> OSError | None:
    """The disk-level ``OSError`` behind ``exc`` (itself, a cause or a context), also
    when tensorstore reported it as a ``ValueError`` (an ``OSError`` is made from its
    message: errno and file)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            return current
        found = _tensorstore_cause(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


def describe(exc: BaseException) -> tuple[str, int]:
    """``(one line, exit status)`` for ``exc``: 2 for known errors, 1 for bugs."""
    disk = disk_cause(exc)
    if isinstance(exc, UserError):
        # Written for people: kept whole (a changed config lists one key per line).
        return str(exc) or type(exc).__name__, 2
    if disk is not None:
        where = disk.filename or "the workdir"
        return f"cannot write {where}: {os.strerror(disk.errno or 0)}", 2
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if isinstance(exc, _KNOWN):
        return first, 2
    return (
        f"{type(exc).__name__}: {first} (unexpected; rerun with --debug for the "
        "traceback)",
        1,
    )
