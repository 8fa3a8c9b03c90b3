"""The training loop: step bookkeeping, logging, dev evaluation, best-on-dev,
early stopping, non-finite-loss stop, periodic and preemption checkpoints.

The loop knows nothing about a method: it calls ``train_step(state, batch)`` (jitted
by the driver, returning device scalars), fetches metrics only at log points, and calls
``evaluate(state)`` for dev metrics. Order of a step ``s -> s + 1``:

1. run the step; keep its metric dict on device;
2. at a log point (also forced before every evaluation and checkpoint) fetch the
   pending metrics; if any ``loss`` is non-finite, stop with the first bad step number
   (:class:`NonFiniteLossError`) *before* anything is saved, so the last good
   checkpoint survives;
3. at an evaluation point: dev metrics -> best-on-dev bookkeeping (save to the
   ``best`` checkpointer when improved), the driver's ``on_eval`` hook (e.g. a
   plateau learning-rate rule), early stopping;
4. at a checkpoint point (and at the end, and on SIGTERM): save state + iterator
   position + loop metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from xmodal.checkpoint import Checkpointer
from xmodal.writer import MetricWriter, Progress

__all__ = ["LoopResult", "NonFiniteLossError", "improved", "train_loop"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/Inf; ``step`` is the first bad step (1-based)."""

    def __init__(self, step: int, message: str) -> None:
        super().__init__(message)
        self.step = step


@dataclasses.dataclass
class LoopResult:
    """What the loop ended with."""

    state: Any
    meta: dict[str, Any]
    reason: str  # "finished" | "early_stopped" | "preempted"


def improved(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` (strictly) in ``mode`` ("max" or "min")."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


class _Preemption:
    """Turns SIGTERM into a flag checked at step boundaries (single process)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except (RuntimeError, AttributeError):
                return False
        return self.requested


def _due(step: int, every: int, total: int) -> bool:
    return (every > 0 and step % every == 0) or step == total


def train_loop(
    *,
    state: Any,
    train_step: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]],
    next_batch: Callable[[], Any],
    total_steps: int,
    steps_per_epoch: int,
    writer: MetricWriter,
    checkpointer: Checkpointer,
    data_iter: Any = None,
    best_checkpointer: Checkpointer | None = None,
    evaluate: Callable[[Any], Mapping[str, float]] | None = None,
    select_metric: str | None = None,
    select_mode: str = "max",
    early_stop_patience: int = 0,
    on_eval: Callable[[Any, Mapping[str, float], dict[str, Any]], Any] | None = None,
    log_every_steps: int = 50,
    eval_every_steps: int = 0,
    checkpoint_every_steps: int = 0,
    meta: dict[str, Any] | None = None,
    loss_key: str = "loss",
) -> LoopResult:
    """Runs ``train_step`` from ``state.step`` to ``total_steps``.

    Args:
      state: the (restored or fresh) train state; must have an integer ``step``.
      train_step: ``(state, batch) -> (state, metrics)`` with device scalar metrics.
      next_batch: returns the next global batch.
      total_steps: last step number.
      steps_per_epoch: for progress display and the ``epoch`` metadata.
      writer, checkpointer, best_checkpointer: outputs.
      data_iter: the grain iterator whose position is checkpointed.
      evaluate: ``state -> dev metrics``; called every ``eval_every_steps`` and at
        the end.
      select_metric, select_mode: the dev metric that defines "best" and its direction.
      early_stop_patience: stop after this many evaluations without improvement
        (0 = never).
      on_eval: ``(state, dev_metrics, meta) -> state``, e.g. a plateau LR rule. It may
        update ``meta`` in place (it is checkpointed).
      log_every_steps, eval_every_steps, checkpoint_every_steps: intervals (0 = only
        at the end).
      meta: loop metadata restored from a checkpoint (best value, counters).
      loss_key: the metric checked for finiteness.

    Raises:
      NonFiniteLossError: with the first step whose loss was not finite.
    """
    meta = dict(meta or {})
    meta.setdefault("best_metric", None)
    meta.setdefault("best_step", None)
    meta.setdefault("evals_since_best", 0)
    step = int(jax.device_get(state.step))
    if meta.get("stopped_early_at") is not None:
        # A rerun of an early-stopped run must not train on past the stop.
        return LoopResult(state=state, meta=meta, reason="early_stopped")
    progress = Progress(
        total_steps, steps_per_epoch=steps_per_epoch, enabled=writer.enabled
    )
    pending: list[tuple[int, Mapping[str, Any]]] = []
    reason = "finished"

    def flush(at_step: int) -> None:
        nonlocal pending
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), values in zip(pending, fetched, strict=True):
            loss = float(np.asarray(values[loss_key]))
            if not math.isfinite(loss):
                last = checkpointer.latest_step()
                raise NonFiniteLossError(
                    s,
                    f"training loss is {loss} at step {s}; stopping. The last good "
                    f"checkpoint is step {last} in {checkpointer.directory}",
                )
        keys = fetched[0].keys()
        mean = {k: float(np.mean([np.asarray(v[k]) for v in fetched])) for k in keys}
        mean["epoch"] = at_step / steps_per_epoch
        writer.write(at_step, mean, split="train")
        progress.update(
            at_step, {k: v for k, v in mean.items() if k in (loss_key, "lr")}
        )
        pending = []

    def save(at_step: int) -> None:
        meta["epoch"] = at_step / steps_per_epoch
        checkpointer.save(at_step, state, data_iter=data_iter, meta=meta)

    if step == 0 or step < total_steps:
        progress.update(step)
    with _Preemption() as preemption:
        while step < total_steps:
            batch = next_batch()
            state, metrics = train_step(state, batch)
            step += 1
            pending.append((step, metrics))
            eval_now = evaluate is not None and _due(
                step, eval_every_steps, total_steps
            )
            ckpt_now = _due(step, checkpoint_every_steps, total_steps)
            stop_now = preemption.reached(step)
            # Blocking every <= 16 steps also keeps simulated CPU devices from
            # deadlocking (ENVIRONMENT.md) and bounds the pending metric list.
            if (
                _due(step, log_every_steps, total_steps)
                or eval_now
                or ckpt_now
                or stop_now
                or len(pending) >= 16
            ):
                flush(step)
            if eval_now:
                assert evaluate is not None
                dev = dict(evaluate(state))
                writer.write(step, dev, split="dev")
                if select_metric is not None:
                    value = float(dev[select_metric])
                    if improved(value, meta["best_metric"], select_mode):
                        meta.update(
                            best_metric=value, best_step=step, evals_since_best=0
                        )
                        if best_checkpointer is not None:
                            best_checkpointer.save(
                                step, state, meta=dict(meta, dev=dev)
                            )
                    else:
                        meta["evals_since_best"] += 1
                    logging.info(
                        "dev %s = %.4f at step %d (best %.4f at step %s)",
                        select_metric,
                        value,
                        step,
                        meta["best_metric"]
                        if meta["best_metric"] is not None
                        else math.nan,
                        meta["best_step"],
                    )
                if on_eval is not None:
                    state = on_eval(state, dev, meta)
                if (
                    early_stop_patience
                    and meta["evals_since_best"] >= early_stop_patience
                ):
                    reason = "early_stopped"
                    meta["stopped_early_at"] = step
                    save(step)
                    break
            if stop_now:
                reason = "preempted"
                save(step)
                break
            if ckpt_now:
                save(step)
    checkpointer.wait()
    if best_checkpointer is not None:
        best_checkpointer.wait()
    return LoopResult(state=state, meta=meta, reason=reason)
