"""Named points where a test can kill the process, to prove every kill resumes.

``XMODAL_FAULT=<point>@<step>`` makes the process send itself ``SIGKILL`` (what
``kill -9``, a lost node or the OOM killer does: no cleanup, no flush) when it reaches
``point`` at training step ``step``. Unset, each point is one dictionary lookup.

Points (in the order a step meets them):

- ``log``: right after a train row is written to ``metrics.jsonl``, before the next;
- ``best_write``: while the ``best/`` checkpoint of this step is being written;
- ``after_best``: after ``best/<step>`` is complete, before ``checkpoints/`` has it;
- ``checkpoint_write``: while the ``checkpoints/`` save of this step is being written.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time

__all__ = ["POINTS", "reached", "reached_during_write"]

POINTS = ("log", "best_write", "after_best", "checkpoint_write")


def _armed(point: str, step: int) -> bool:
    return os.environ.get("XMODAL_FAULT") == f"{point}@{int(step)}"


def reached(point: str, step: int) -> None:
    """Kills this process if ``XMODAL_FAULT`` names ``point`` at ``step``."""
    if _armed(point, step):
        os.kill(os.getpid(), signal.SIGKILL)


def reached_during_write(point: str, step: int, folder: pathlib.Path) -> None:
    """Like :func:`reached`, but waits (up to 5 s) until the asynchronous save has
    put its temporary folder under ``folder``, so the kill lands mid-write."""
    if not _armed(point, step):
        return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not any(folder.glob("*tmp*")):
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)
