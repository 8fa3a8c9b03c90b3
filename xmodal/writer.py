"""Metric output on process 0: ``metrics.jsonl``, TensorBoard events, progress lines.

``metrics.jsonl`` has one JSON object per write: ``{"step": ..., "split": "train",
"time": ..., "<name>": value, ...}``; TensorBoard scalars are ``<split>/<name>``.
Other processes get a writer that does nothing, so drivers call it unconditionally.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import jax
import numpy as np

__all__ = ["MetricWriter", "Progress", "format_duration"]


def _to_float(value: Any) -> float:
    return float(np.asarray(value))


class MetricWriter:
    """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard event files.

    Args:
      workdir: the run directory.
      enabled: write anything at all (default: only on process 0).
      tensorboard: also write TensorBoard event files under ``workdir/tensorboard``.
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        *,
        enabled: bool | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = pathlib.Path(workdir)
        self._jsonl: TextIO | None = None
        self._tb = None
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

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
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
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
    """Prints ``step 120/3000 (epoch 2/25) | loss 1.234 ... | 5.2 step/s | ETA 9m12s``.

    Rates are measured between calls (the first call after a (re)start only sets the
    clock, so compilation time does not distort the ETA).
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
        self._last: tuple[int, float] | None = None

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> str:
        """Prints (process 0) and returns the progress line for ``step``."""
        now = time.perf_counter()
        rate = float("nan")
        if self._last is not None and step > self._last[0]:
            rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
        self._last = (step, now)
        parts = [f"step {step}/{self.total_steps}"]
        if self.steps_per_epoch:
            epoch = step / self.steps_per_epoch
            total = self.total_steps / self.steps_per_epoch
            parts[0] += f" (epoch {epoch:.2f}/{total:.0f})"
        if metrics:
            parts.append(
                " ".join(f"{k} {_to_float(v):.4g}" for k, v in sorted(metrics.items()))
            )
        if math.isfinite(rate):
            eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
            parts.append(f"{rate:.2f} step/s | ETA {format_duration(eta)}")
        line = " | ".join(parts)
        if self.enabled:
            print(line, file=self.stream, flush=True)
        return line
