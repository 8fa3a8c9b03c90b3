"""Output on process 0: ``metrics.jsonl``, TensorBoard events, progress lines, the
console (:func:`log`) and results files (:func:`write_json`, with :func:`mean_std`
summarising runs).

``metrics.jsonl`` has one JSON object per write: ``{"step": ..., "split": "train",
"time": ..., "<name>": value, ...}``; TensorBoard scalars are ``<split>/<name>``.
Other processes get a writer that does nothing, so drivers call it unconditionally.

A resumed run opens the writer with the step it restored: rows written after that
step by the run that died are removed (the resumed run writes them again), and
TensorBoard is told to purge its events from that step on, so neither file holds a
step twice.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import jax
import numpy as np

from xmodal import files

__all__ = [
    "MetricWriter",
    "Progress",
    "format_duration",
    "log",
    "mean_std",
    "read_metrics",
    "truncate_metrics",
    "write_json",
]


def log(message: str) -> None:
    """Prints one line on process 0."""
    if jax.process_index() == 0:
        print(message, flush=True)


def write_json(path: pathlib.Path, value: Any) -> None:
    """Writes ``value`` as JSON to ``path`` atomically (process 0)."""
    if jax.process_index() == 0:
        files.atomic_write_text(path, json.dumps(value, indent=2))


def mean_std(
    rows: Sequence[Mapping[str, Any]], scale: Callable[[str], float] | None = None
) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std"}}`` over runs (population std) of numeric metrics.

    ``scale(metric)`` multiplies a metric before the statistics (e.g. 100 for
    fractions shown in percent).
    """
    out = {}
    for key, first in rows[0].items():
        if not isinstance(first, int | float) or isinstance(first, bool):
            continue
        factor = scale(key) if scale is not None else 1.0
        values = np.asarray([float(r[key]) * factor for r in rows])
        out[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out


def _to_float(value: Any) -> float:
    return float(np.asarray(value))


class MetricWriter:
    """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard event files.

    Args:
      workdir: the run directory.
      enabled: write anything at all (default: only on process 0).
      tensorboard: also write TensorBoard event files under ``workdir/tensorboard``.
      resume_step: the step the run restarts from (0 for a fresh start): rows of
        later steps are dropped. None keeps the file as it is (evaluation only).
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        *,
        enabled: bool | None = None,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = pathlib.Path(workdir)
        self._jsonl: TextIO | None = None
        self._tb = None
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            truncate_metrics(path, resume_step)
        self._jsonl = open(path, "a")  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else int(resume_step) + 1
            self._tb = SummaryWriter(
                str(self.workdir / "tensorboard"), purge_step=purge
            )

    def write(
        self, step: int, metrics: Mapping[str, Any], *, split: str = "train"
    ) -> None:
        """Writes scalar ``metrics`` at ``step`` under ``split``."""
        if not self.enabled:
            return
        values = {k: _to_float(v) for k, v in metrics.items()}
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update(
            {k: (v if math.isfinite(v) else repr(v)) for k, v in values.items()}
        )
        assert self._jsonl is not None
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        except OSError as e:  # a full disk fails write() without naming the file
            raise OSError(e.errno, e.strerror, self._jsonl.name) from e
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", value, int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def truncate_metrics(path: pathlib.Path, last_step: int) -> int:
    """Rewrites ``path`` without rows after ``last_step``; returns how many went."""
    text = path.read_text()
    rows = read_metrics(path)
    keep = [r for r in rows if int(r.get("step", 0)) <= last_step]
    if len(keep) == len(rows) and (not text or text.endswith("\n")):
        return 0
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(partial, path)
    return len(rows) - len(keep)


def format_duration(seconds: float) -> str:
    """``3h02m``, ``4m05s``, ``12s``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Prints ``step 120/3000 (epoch 2.00/25) | loss 1.234 ... | 5.2 step/s | ETA 9m12s``.

    The rate counts training time only: the loop calls :meth:`restart_clock` after
    anything that is not a training step (compilation, evaluation, checkpointing), so
    the time until the next update is not charged to the steps in between. The rate
    is the mean over every timed interval since the (re)start.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        steps_per_epoch: int | None = None,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.stream = stream or sys.stdout
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._mark: tuple[int, float] | None = None
        self._timed_steps = 0
        self._timed_seconds = 0.0

    def restart_clock(self, step: int) -> None:
        """Starts timing at ``step``, now (time until here is not a step's)."""
        self._mark = (step, time.perf_counter())

    @property
    def rate(self) -> float:
        """Training steps per second so far (NaN before the first timed interval)."""
        if not self._timed_steps or self._timed_seconds <= 0:
            return float("nan")
        return self._timed_steps / self._timed_seconds

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> str:
        """Prints (process 0) and returns the progress line for ``step``."""
        now = time.perf_counter()
        if self._mark is not None and step > self._mark[0]:
            self._timed_steps += step - self._mark[0]
            self._timed_seconds += now - self._mark[1]
        self._mark = (step, now)
        parts = [f"step {step}/{self.total_steps}"]
        if self.steps_per_epoch:
            epoch = step / self.steps_per_epoch
            total = self.total_steps / self.steps_per_epoch
            parts[0] += f" (epoch {epoch:.2f}/{total:.4g})"
        if metrics:
            parts.append(
                " ".join(f"{k} {_to_float(v):.4g}" for k, v in sorted(metrics.items()))
            )
        rate = self.rate
        if math.isfinite(rate):
            eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
            parts.append(f"{rate:.2f} step/s | ETA {format_duration(eta)}")
        line = " | ".join(parts)
        if self.enabled:
            print(line, file=self.stream, flush=True)
        return line
