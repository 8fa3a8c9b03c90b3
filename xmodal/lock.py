"""The lock of a workdir: one live run at a time, also across hosts.

``WORKDIR/.lock`` names its owner as JSON (``pid``, ``host``, ``started``). Two ways of
holding it, chosen by what the file system supports:

1. ``flock`` (the normal case). The kernel drops the lock when its process dies
   (``kill -9`` included), so a file still naming an owner whose lock is not held is
   left by a dead run. If that owner was on THIS host, the lock is taken over with a
   warning. If it names ANOTHER host, the run is refused: some shared file systems
   keep ``flock`` locks per host, so this host cannot see whether the other run is
   alive. The one line says how to check, and ``--break_lock`` takes the lock once
   the user knows that run is gone.
2. An exclusive-create lock file, where ``flock`` fails with ``ENOLCK`` /
   ``EOPNOTSUPP`` (NFS without a lock daemon, some FUSE file systems); said once per
   process. The owner's JSON is written to a temporary file that is then hard-linked
   to ``.lock`` (``link`` fails if ``.lock`` exists, and the file appears complete),
   and a thread refreshes its modification time every :data:`HEARTBEAT_S` seconds.
   An existing file is a live run unless its owner was on this host and that process
   is gone, or its heartbeat stopped more than :data:`STALE_S` seconds ago; a file
   naming another host is, as above, only taken with ``--break_lock``. Released, the
   file is removed. (Taking over a stale file is check-then-replace, not atomic: two
   runs started in the same instant on a dead run's lock file could both get it.)

Only process 0 of a job locks (:func:`xmodal.workdir.open_workdir`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import threading
import time
import uuid
import warnings
from typing import Any

from xmodal.errors import WorkdirBusyError

__all__ = ["HEARTBEAT_S", "LOCK_NAME", "STALE_S", "Lock", "acquire"]

LOCK_NAME = ".lock"
#: Seconds between two heartbeats of a lock file (fallback mode).
HEARTBEAT_S = 30.0
#: A lock file whose heartbeat is older than this is stale (fallback mode).
STALE_S = 10 * HEARTBEAT_S
# errno values of a file system without flock.
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_said_fallback = False


def _me() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _owner(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def _who(info: dict[str, Any]) -> str:
    return (
        f"process {info.get('pid', '?')} on host {info.get('host', '?')} (since "
        f"{info.get('started', '?')})"
    )


def _busy(
    path: pathlib.Path, info: dict[str, Any], extra: str = ""
) -> WorkdirBusyError:
    return WorkdirBusyError(
        f"workdir {path} is in use by {_who(info)}{extra}; wait for it to end or stop "
        "it, or use another --workdir"
    )


def _other_host(
    path: pathlib.Path, info: dict[str, Any], extra: str = ""
) -> WorkdirBusyError:
    host, pid = info.get("host", "?"), info.get("pid", "?")
    return WorkdirBusyError(
        f"workdir {path} is locked by {_who(info)}{extra}, and this host "
        f"({socket.gethostname()}) cannot tell whether that run is alive: check on "
        f"{host} that it has ended (e.g. ssh {host} ps -p {pid}), then rerun with "
        "--break_lock"
    )


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _write_owner(fd: int, lock: pathlib.Path, me: dict[str, Any]) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
    except OSError as e:  # disk full at start: name the file
        raise OSError(e.errno, e.strerror, str(lock)) from None


class Lock:
    """A held workdir lock; :meth:`release` gives it back (idempotent)."""

    def __init__(
        self, lock: pathlib.Path, *, fd: int | None = None, inode: int | None = None
    ) -> None:
        self.path, self._fd, self._inode = lock, fd, inode
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if fd is None:  # a lock file: keep it fresh
            self._thread = threading.Thread(
                target=self._beat, name="xmodal-lock-heartbeat", daemon=True
            )
            self._thread.start()

    @property
    def mode(self) -> str:
        """``flock`` or ``file`` (the exclusive-create fallback)."""
        return "flock" if self._fd is not None else "file"

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:  # still ours
                    os.unlink(self.path)


def acquire(path: pathlib.Path, *, break_lock: bool = False) -> Lock:
    """Locks the workdir ``path`` (see the module docstring).

    Raises:
      WorkdirBusyError: a live run holds the lock, or the lock names a run on
        another host and ``break_lock`` is False.
    """
    lock = path / LOCK_NAME
    me = _me()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(path, _owner(lock.read_text(errors="replace").strip())) from None
    except OSError as e:
        os.close(fd)
        if e.errno not in _NO_FLOCK:
            raise
        return _acquire_file(path, me, break_lock=break_lock, reason=e)
    previous = _owner(os.read(fd, 4096).decode(errors="replace").strip())
    if previous:
        if previous.get("host") != me["host"] and not break_lock:
            os.close(fd)
            raise _other_host(path, previous)
        _took_over(path, previous, break_lock)
    _write_owner(fd, lock, me)
    return Lock(lock, fd=fd)


def _live(info: dict[str, Any], age: float, host: str) -> bool:
    """Whether the lock file's owner ``info`` (heartbeat ``age`` seconds ago) counts
    as a live run, seen from ``host``: a fresh heartbeat and, on this host, a live
    pid (another host's pid cannot be checked)."""
    return (
        bool(info)
        and age < STALE_S
        and (info.get("host") != host or _pid_alive(info.get("pid")))
    )


def check_free(path: pathlib.Path) -> None:
    """Raises :class:`WorkdirBusyError` if a live run holds the lock of ``path``;
    reads only (no lock file is created). Lets a second run on a live workdir be
    told so before anything else about the workdir is compared."""
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(
                path, _owner(lock.read_text(errors="replace").strip())
            ) from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            info = _owner(lock.read_text(errors="replace").strip())
            age = time.time() - os.fstat(fd).st_mtime
            if _live(info, age, socket.gethostname()):
                raise _busy(path, info, f", last heartbeat {age:.0f} s ago") from None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _warn(message: str) -> None:
    """``warnings.warn`` pointing at the code that opened the workdir (not at this
    module, :mod:`xmodal.workdir` or ``contextlib``)."""
    skip = (__file__, str(pathlib.Path(__file__).with_name("workdir.py")))
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and (
        frame.f_code.co_filename in skip
        or frame.f_code.co_filename == contextlib.__file__
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _took_over(path: pathlib.Path, previous: dict[str, Any], broken: bool) -> None:
    how = "--break_lock" if broken else "that process ended without releasing it"
    _warn(f"taking over the lock of {path} from {_who(previous)}: {how}")


def _acquire_file(
    path: pathlib.Path, me: dict[str, Any], *, break_lock: bool, reason: OSError
) -> Lock:
    global _said_fallback
    lock = path / LOCK_NAME
    if not _said_fallback:
        _said_fallback = True
        _warn(
            f"file locks (flock) are not supported where {path} is "
            f"({errno.errorcode.get(reason.errno or 0, reason.errno)}): the workdir is "
            f"locked with the lock file {lock} instead (host, pid, a heartbeat every "
            f"{HEARTBEAT_S:g} s)"
        )
    tmp = path / f"{LOCK_NAME}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        tmp.write_text(json.dumps(me))
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(tmp)) from None
    try:
        for _ in range(2):  # a stale file is removed once, then linked again
            try:
                os.link(tmp, lock)
                return Lock(lock, inode=os.stat(lock).st_ino)
            except FileExistsError:
                pass
            _check_stale(path, lock, me, break_lock=break_lock)
        raise _busy(path, _owner(lock.read_text(errors="replace")))
    finally:
        tmp.unlink(missing_ok=True)


def _check_stale(
    path: pathlib.Path, lock: pathlib.Path, me: dict[str, Any], *, break_lock: bool
) -> None:
    """Removes the lock file ``lock`` if its owner is gone; raises if it is not."""
    try:
        stat = os.stat(lock)
        info = _owner(lock.read_text(errors="replace").strip())
    except FileNotFoundError:
        return  # released in between: link again
    age = time.time() - stat.st_mtime
    beat = f", last heartbeat {age:.0f} s ago"
    # An empty file: a flock-mode file (released) or a run killed while writing it.
    if _live(info, age, me["host"]):
        raise _busy(path, info, beat)
    if info and info.get("host") != me["host"] and not break_lock:
        raise _other_host(path, info, beat)
    if info:
        _took_over(path, info, break_lock and info.get("host") != me["host"])
    with contextlib.suppress(FileNotFoundError):
        if os.stat(lock).st_ino == stat.st_ino:  # not replaced since it was read
            os.unlink(lock)
