"""The training loop: step bookkeeping, logging, dev evaluation, best-on-dev, collapse
guard, early stopping, non-finite-loss stop, periodic and preemption checkpoints.

The loop knows nothing about a method: it calls ``train_step(state, batch)`` (jitted
by the driver, returning device scalars), fetches metrics only at log points, and calls
``evaluate(state)`` for dev metrics. Order of a step ``s -> s + 1``:

1. run the step; keep its metric dict on device;
2. at a log point (also forced before every evaluation and checkpoint) fetch the
   pending metrics; if any ``loss`` is non-finite, stop with the first bad step number
   (:class:`NonFiniteLossError`) *before* anything is saved, so the last good
   checkpoint survives; feed the collapse guard;
3. at an evaluation point: dev metrics -> best-on-dev bookkeeping (save to the
   ``best`` checkpointer when improved and the dev scores are not degenerate), the
   driver's ``on_eval`` hook (e.g. a plateau learning-rate rule), early stopping;
4. at a checkpoint point (and at the end, and on SIGTERM): save state + iterator
   position + loop metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from xmodal import faults
from xmodal.checkpoint import Checkpointer, saved_steps
from xmodal.errors import UserError
from xmodal.writer import MetricWriter, Progress

__all__ = [
    "CollapseGuard",
    "LoopOptions",
    "LoopOutputs",
    "LoopResult",
    "NonFiniteLossError",
    "improved",
    "train_loop",
]


class NonFiniteLossError(UserError, RuntimeError):
    """The training loss became NaN/Inf; ``step`` is the first bad step (1-based).

    A known outcome of training (divergence, bad data), not a bug: one line, exit
    status 2 (:mod:`xmodal.errors`)."""

    def __init__(self, step: int, message: str) -> None:
        super().__init__(message)
        self.step = step


@dataclasses.dataclass(frozen=True)
class CollapseGuard:
    """Warns once when a train metric stays below its floor for ``patience_steps``.

    The floor is ``max(floor, relative_floor * peak)``, ``peak`` being the largest
    value of the metric seen so far in the run (kept in the loop metadata, so a resumed
    run goes on with it): a run is judged against its own spread, which at
    initialisation may be tiny for a healthy model (docs/cdds.md §10.11), and an
    absolute ``floor`` only catches exact collapse.

    Attributes:
      metric: the train metric watched (e.g. the spread of the batch score matrix).
      floor: values below this count as collapsed, whatever the run's history.
      patience_steps: how many consecutive steps below the floor before the warning
        (checked at log points, so the resolution is ``log_every_steps``).
      relative_floor: values below this fraction of the run's peak count as
        collapsed (0 = no relative floor).
      dev_metric: the same spread in dev results: an evaluation whose value is below
        ``relative_floor * peak`` is marked degenerate (never selected); None = the
        dev results decide alone.
    """

    metric: str
    floor: float
    patience_steps: int
    relative_floor: float = 0.0
    dev_metric: str | None = None

    def threshold(self, peak: float | None) -> float:
        """The collapse floor given the run's peak so far."""
        return max(self.floor, self.relative_floor * float(peak or 0.0))


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """How long to train and when to log, evaluate and save.

    Attributes:
      total_steps: the last step number.
      steps_per_epoch: for the progress line and the ``epoch`` metadata.
      log_every_steps, eval_every_steps, checkpoint_every_steps: intervals (0 = only
        at the end).
      select_metric, select_mode: the dev metric that defines "best" and its
        direction ("max" or "min"); None = no selection.
      early_stop_patience: stop after this many evaluations without improvement
        (0 = never).
      loss_key: the metric checked for finiteness.
      progress_keys: train metrics shown on the progress line.
      collapse: the collapse guard, or None.
    """

    total_steps: int
    steps_per_epoch: int
    log_every_steps: int = 50
    eval_every_steps: int = 0
    checkpoint_every_steps: int = 0
    select_metric: str | None = None
    select_mode: str = "max"
    early_stop_patience: int = 0
    loss_key: str = "loss"
    progress_keys: tuple[str, ...] = ("loss", "lr")
    collapse: CollapseGuard | None = None


@dataclasses.dataclass
class LoopOutputs:
    """Where the loop writes: metrics, the latest checkpoints, the best one.

    Attributes:
      writer: metrics.jsonl / TensorBoard.
      checkpointer: ``checkpoints/``.
      best_checkpointer: ``best/`` (None = no best-on-dev state).
      data_iter: the grain iterator whose position is checkpointed.
      on_dev: called with ``(step, dev metrics, is_best)`` after each evaluation
        (the console line, the curves).
      log: prints one line (process 0).
    """

    writer: MetricWriter
    checkpointer: Checkpointer
    best_checkpointer: Checkpointer | None = None
    data_iter: Any = None
    on_dev: Callable[[int, Mapping[str, float], bool], None] | None = None
    log: Callable[[str], None] = print


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


class _Run:
    """The mutable bookkeeping of one :func:`train_loop` call."""

    def __init__(self, options: LoopOptions, out: LoopOutputs, meta: dict[str, Any]):
        self.options, self.out, self.meta = options, out, meta
        self.pending: list[tuple[int, Mapping[str, Any]]] = []
        self.progress = Progress(
            options.total_steps,
            steps_per_epoch=options.steps_per_epoch,
            enabled=out.writer.enabled,
        )

    def flush(self, at_step: int) -> None:
        """Fetches pending metrics, checks the loss, writes the mean, prints."""
        o = self.options
        if not self.pending:
            return
        fetched = jax.device_get([m for _, m in self.pending])
        for (s, _), values in zip(self.pending, fetched, strict=True):
            loss = float(np.asarray(values[o.loss_key]))
            if not math.isfinite(loss):
                # The last save still being written counts once it is on disk.
                with contextlib.suppress(Exception):
                    self.out.checkpointer.wait()
                saved = saved_steps(self.out.checkpointer.directory)
                last = saved[-1] if saved else None
                where = (
                    f"the last good checkpoint is step {last} "
                    f"({self.out.checkpointer.directory}/{last}); rerunning resumes "
                    "there and meets the same step"
                    if last is not None
                    else "no checkpoint yet"
                )
                raise NonFiniteLossError(
                    s,
                    f"training loss is {loss} at step {s}; stopped before saving "
                    f"it: {where}. Lower optim.lr or check the data "
                    "(--accept_config_changes continues with a changed config)",
                )
            self._watch_collapse(s, values)
        keys = fetched[0].keys()
        mean = {k: float(np.mean([np.asarray(v[k]) for v in fetched])) for k in keys}
        mean["epoch"] = at_step / o.steps_per_epoch
        self.pending = []
        self.out.writer.write(at_step, mean, split="train")
        faults.reached("log", at_step)
        if _due(at_step, o.log_every_steps, o.total_steps):
            self.progress.update(
                at_step, {k: v for k, v in mean.items() if k in o.progress_keys}
            )

    def _watch_collapse(self, step: int, values: Mapping[str, Any]) -> None:
        guard = self.options.collapse
        if guard is None or guard.metric not in values:
            return
        value = float(np.asarray(values[guard.metric]))
        if math.isfinite(value):
            self.meta["collapse_peak"] = max(
                self.meta.get("collapse_peak") or 0.0, value
            )
        floor = guard.threshold(self.meta.get("collapse_peak"))
        if value >= floor:
            self.meta["collapse_since"] = None
            return
        since = self.meta.get("collapse_since") or step
        self.meta["collapse_since"] = since
        if step - since + 1 >= guard.patience_steps and not self.meta.get(
            "collapse_warned_at"
        ):
            self.meta["collapse_warned_at"] = step
            self.out.log(
                f"WARNING: training scores have collapsed: {guard.metric} {value:.3g} "
                f"< {floor:.3g} since step {since} (the model gives every pair "
                "about the same score); dev selection ignores degenerate checkpoints"
            )

    def mark_degenerate(self, dev: dict[str, float]) -> None:
        """Marks ``dev`` degenerate when its spread is below the relative floor."""
        guard = self.options.collapse
        if guard is None or guard.dev_metric is None or guard.dev_metric not in dev:
            return
        floor = guard.relative_floor * float(self.meta.get("collapse_peak") or 0.0)
        if float(dev[guard.dev_metric]) < floor:
            dev["degenerate"] = 1.0

    def evaluate(
        self, state: Any, step: int, evaluate: Callable[[Any], Mapping[str, float]]
    ) -> dict[str, float]:
        o, meta = self.options, self.meta
        dev = dict(evaluate(state))
        self.mark_degenerate(dev)
        self.out.writer.write(step, dev, split="dev")
        is_best = False
        if o.select_metric is not None:
            value = float(dev[o.select_metric])
            degenerate = bool(dev.get("degenerate", 0.0))
            if degenerate:
                meta.setdefault("degenerate_steps", []).append(step)
            if not degenerate and improved(value, meta["best_metric"], o.select_mode):
                is_best = True
                meta.update(best_metric=value, best_step=step, evals_since_best=0)
                if self.out.best_checkpointer is not None:
                    self.out.best_checkpointer.save(
                        step, state, meta=dict(meta, dev=dev)
                    )
                    self.out.best_checkpointer.wait()
                    faults.reached("after_best", step)
            else:
                meta["evals_since_best"] += 1
        if self.out.on_dev is not None:
            self.out.on_dev(step, dev, is_best)
        return dev


def train_loop(
    state: Any,
    *,
    train_step: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]],
    next_batch: Callable[[], Any],
    options: LoopOptions,
    outputs: LoopOutputs,
    evaluate: Callable[[Any], Mapping[str, float]] | None = None,
    on_eval: Callable[[Any, Mapping[str, float], dict[str, Any]], Any] | None = None,
    on_epoch_start: Callable[[Any, int], Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> LoopResult:
    """Runs ``train_step`` from ``state.step`` to ``options.total_steps``.

    Args:
      state: the (restored or fresh) train state; must have an integer ``step``.
      train_step: ``(state, batch) -> (state, metrics)`` with device scalar metrics.
      next_batch: returns the next global batch.
      options: intervals, selection, early stopping, collapse guard.
      outputs: writer, checkpointers, iterator, console hooks.
      evaluate: ``state -> dev metrics``; called every ``eval_every_steps`` and at
        the end. A dev result with ``degenerate`` = 1 is never selected as best.
      on_eval: ``(state, dev_metrics, meta) -> state``, e.g. a plateau LR rule. It may
        update ``meta`` in place (it is checkpointed).
      on_epoch_start: ``(state, epoch) -> state`` before the first step of each epoch
        (step a multiple of ``steps_per_epoch``); not checkpointed separately: the
        next checkpoint holds its result, and a run resumed at an epoch start runs
        it again.
      meta: loop metadata restored from a checkpoint (best value, counters).

    Raises:
      NonFiniteLossError: with the first step whose loss was not finite.
    """
    meta = dict(meta or {})
    meta.setdefault("best_metric", None)
    meta.setdefault("best_step", None)
    meta.setdefault("evals_since_best", 0)
    o, out = options, outputs
    step = int(jax.device_get(state.step))
    if meta.get("stopped_early_at") is not None:
        # A rerun of an early-stopped run must not train on past the stop.
        return LoopResult(state=state, meta=meta, reason="early_stopped")
    run = _Run(o, out, meta)
    reason = "finished"

    def save(at_step: int) -> None:
        meta["epoch"] = at_step / o.steps_per_epoch
        out.checkpointer.save(at_step, state, data_iter=out.data_iter, meta=meta)

    first = True
    with _Preemption() as preemption:
        while step < o.total_steps:
            if on_epoch_start is not None and step % o.steps_per_epoch == 0:
                state = on_epoch_start(state, step // o.steps_per_epoch)
            batch = next_batch()
            state, metrics = train_step(state, batch)
            step += 1
            if first:
                # The first step includes compilation: not a step's time.
                jax.block_until_ready(metrics)
                run.progress.restart_clock(step)
                first = False
            run.pending.append((step, metrics))
            eval_now = evaluate is not None and _due(
                step, o.eval_every_steps, o.total_steps
            )
            ckpt_now = _due(step, o.checkpoint_every_steps, o.total_steps)
            stop_now = preemption.reached(step)
            # Blocking every <= 16 steps also keeps simulated CPU devices from
            # deadlocking on a 2-core machine and bounds the pending metric list.
            if (
                _due(step, o.log_every_steps, o.total_steps)
                or eval_now
                or ckpt_now
                or stop_now
                or len(run.pending) >= 16
            ):
                run.flush(step)
            if eval_now:
                assert evaluate is not None
                dev = run.evaluate(state, step, evaluate)
                if on_eval is not None:
                    state = on_eval(state, dev, meta)
                if o.early_stop_patience and (
                    meta["evals_since_best"] >= o.early_stop_patience
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
            if eval_now or ckpt_now:
                run.progress.restart_clock(step)
    out.checkpointer.wait()
    if out.best_checkpointer is not None:
        out.best_checkpointer.wait()
    return LoopResult(state=state, meta=meta, reason=reason)
