"""One training run from start to end, the same for every method.

A driver opens its data, builds its model, and hands the harness a :class:`Method`:
the training source, how to create the sharded state and the jitted step, how to
evaluate the selection split and the test split, and how to print results. The
harness owns everything else, in this order:

1. step counts from the config (batch size, epochs or steps, intervals), checked
   before anything runs;
2. the finished-run shortcut: a run folder with its results file prints them and
   returns (an evaluation-only config change evaluates the best state once more and
   writes the results beside the earlier ones);
3. the data iterator, the two checkpointers (``checkpoints/``, ``best/``) and the
   automatic resume. Resume order: the newest complete step of ``checkpoints/``
   (state, iterator position, loop metadata) -> scratch. Anything newer than the
   restored step (in ``best/``, in ``metrics.jsonl``, in TensorBoard) is dropped, and
   temporary folders of interrupted saves are removed, so every killed run resumes
   with the same command and ends bit-identical to a straight run;
4. the metric writer, the training loop (:func:`xmodal.loop.train_loop`), SIGTERM
   preemption;
5. restoring the best-on-dev state (never a degenerate one), the test evaluation,
   ``curves.png``, and ``results.json`` written atomically.

:func:`run_seeds` repeats a run over ``config.seeds`` (one folder per seed) and lets
the method summarise them; :func:`evaluate` scores the best (or latest) state of every
run of a finished workdir again, for the evaluation entry points. The folders are
:func:`xmodal.workdir.run_folders`. A write that fails for lack of space or
permission stops with :class:`~xmodal.errors.DiskError` naming the path and the last
checkpoint saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections

from xmodal import errors, pipeline, sharding
from xmodal import loop as loop_lib
from xmodal import workdir as workdir_lib
from xmodal.checkpoint import Checkpointer, restore_for_eval, saved_steps
from xmodal.config import config_to_dict
from xmodal.state import TrainState
from xmodal.writer import MetricWriter, log, write_json

__all__ = [
    "Method",
    "Scoring",
    "StepCounts",
    "evaluate",
    "run_seeds",
    "step_counts",
    "train",
]


@dataclasses.dataclass(kw_only=True)
class Scoring:
    """What scoring a trained state asks of a method (one run): the part of
    :class:`Method` that :func:`evaluate` uses.

    Attributes:
      name: shown in messages ("CDDS", "DecAlign seed 1111").
      init_state: ``steps_per_epoch -> (fresh sharded state, state shardings)``; the
        target a checkpoint is restored into.
      test: ``state -> test results`` (the method's own structure).
      format_test: the results table for the test results.
      results_fields: extra fields of the results (method name, split, seed, ...).
    """

    name: str
    init_state: Callable[[int], tuple[TrainState, Any]]
    test: Callable[[TrainState], dict[str, Any]]
    format_test: Callable[[Mapping[str, Any]], str]
    results_fields: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True)
class Method(Scoring):
    """What a driver hands the harness for one run (one seed): its :class:`Scoring`
    (``results_fields`` go into ``results.json``) and how to train and select.

    Attributes:
      train_source: the training items (a grain-readable source).
      make_step: ``(state shardings, steps_per_epoch) -> jitted train step``.
      evaluate: ``state -> selection-split metrics`` (dev / valid). A result with
        ``degenerate`` = 1 is never selected.
      describe_dev: one console line for a dev result.
      select_metric, select_mode: the selection rule ("max" / "min").
      on_eval: ``(state, dev, loop meta) -> state`` after each evaluation.
      curve_keys: train metrics drawn in ``curves.png`` (loss parts).
      progress_keys: train metrics on the progress line.
      collapse: the collapse guard, or None.
      worker_count: grain worker processes for the training input.
      train_transform: per-item training transform with the epoch (image decoding
        and augmentation), run by the input pipeline; None for stored features.
      pad_last_batch: each epoch is one pass with a padded, masked short last batch
        (``pipeline.PadEpochs``; batches carry ``valid``) instead of full batches
        running across epoch boundaries.
      on_epoch_start: ``(state, epoch) -> state`` before the first step of every
        epoch (also when a run resumes exactly at an epoch start); it must be a pure
        function of the state, the epoch and the data, so a resumed run recomputes
        what a straight run computed (e.g. statistics over the training set).
    """

    train_source: pipeline.Source
    make_step: Callable[[Any, int], Callable[[TrainState, Any], Any]]
    evaluate: Callable[[TrainState], dict[str, float]]
    describe_dev: Callable[[Mapping[str, float]], str]
    select_metric: str
    select_mode: str = "max"
    on_eval: Callable[[TrainState, Mapping[str, float], dict[str, Any]], Any] | None = (
        None
    )
    curve_keys: tuple[str, ...] = ("loss",)
    progress_keys: tuple[str, ...] = ("loss", "lr")
    collapse: loop_lib.CollapseGuard | None = None
    worker_count: int = 0
    train_transform: pipeline.EpochTransform | None = None
    pad_last_batch: bool = False
    on_epoch_start: Callable[[TrainState, int], TrainState] | None = None


@dataclasses.dataclass(frozen=True)
class StepCounts:
    """Steps of a run derived from the config and the training set size."""

    batch_size: int
    steps_per_epoch: int
    total_steps: int
    eval_every_steps: int
    checkpoint_every_steps: int
    log_every_steps: int


def step_counts(
    config: ml_collections.ConfigDict,
    num_examples: int,
    *,
    pad_last_batch: bool = False,
) -> StepCounts:
    """Step counts from ``config.train`` for a training set of ``num_examples``.

    Reads ``batch_size``, ``num_steps`` (> 0 overrides ``num_epochs``), ``num_epochs``,
    ``log_every_steps``, ``eval_every_steps`` (0 = every ``eval_every_epochs`` epochs,
    default 1) and ``checkpoint_every_steps`` (0 or absent = at each evaluation).
    An epoch is ``ceil(num_examples / batch)`` steps with ``pad_last_batch``.

    Raises:
      ValueError: a batch size < 1 or larger than the training set (also with
        ``pad_last_batch``), or a run of no step.
    """
    t = config.train
    batch = int(t.batch_size)
    if batch <= 0:
        raise ValueError(f"config train.batch_size = {batch}: must be > 0")
    per_epoch = pipeline.steps_per_epoch(
        num_examples, batch, pad_last_batch=pad_last_batch
    )
    # Padded epochs would make one batch of mostly padding: refused like full ones.
    if per_epoch == 0 or batch > num_examples:
        raise ValueError(
            f"the training split has {num_examples} examples, fewer than one batch of "
            f"train.batch_size = {batch}"
        )
    total = int(t.num_steps) if t.num_steps > 0 else int(t.num_epochs * per_epoch)
    if total <= 0:
        raise ValueError(
            f"config train.num_epochs = {t.num_epochs} / train.num_steps = "
            f"{t.num_steps} give no training step"
        )
    eval_every = int(t.get("eval_every_steps", 0)) or max(
        1, int(float(t.get("eval_every_epochs", 1)) * per_epoch)
    )
    return StepCounts(
        batch_size=batch,
        steps_per_epoch=per_epoch,
        total_steps=total,
        eval_every_steps=eval_every,
        checkpoint_every_steps=int(t.get("checkpoint_every_steps", 0)) or eval_every,
        log_every_steps=int(t.log_every_steps),
    )


def _report_stored(path: pathlib.Path, method: Method) -> dict[str, Any]:
    results = json.loads(path.read_text())
    log(f"{method.name}: finished run, results from {path}:")
    log(method.format_test(results["test"]))
    return results


def _evaluate_best(
    path: pathlib.Path, method: Method, counts: StepCounts, results_path: pathlib.Path
) -> dict[str, Any]:
    """The finished run's best state on the (changed) evaluation settings."""
    best_state, _, which = _restore(method, path, "best", counts.steps_per_epoch)
    stored = json.loads((path / "results.json").read_text())
    results = dict(stored, test=method.test(best_state), checkpoint=which)
    write_json(results_path, results)
    log(f"{method.name}: {which} on the changed evaluation settings:")
    log(method.format_test(results["test"]))
    log(f"results written to {results_path} (results.json is unchanged)")
    return results


def _disk_error(exc: BaseException, ckpt: Checkpointer) -> errors.DiskError:
    cause = errors.disk_cause(exc)
    assert cause is not None
    # From the disk: the manager already lists a step whose save has just failed.
    steps = saved_steps(ckpt.directory)
    saved = (
        f"last checkpoint saved: {ckpt.directory}/{steps[-1]}"
        if steps
        else "no checkpoint saved yet"
    )
    return errors.DiskError(
        f"cannot write {cause.filename or ckpt.directory.parent}: "
        f"{os.strerror(cause.errno or 0)}; {saved}. Free space or fix permissions, "
        "then rerun the same command to resume"
    )


def train(
    config: ml_collections.ConfigDict,
    path: pathlib.Path,
    method: Method,
    mesh: jax.sharding.Mesh,
    *,
    results_name: str = "results.json",
) -> dict[str, Any]:
    """Trains ``method`` in run folder ``path`` (resuming), tests the best state.

    Returns the results dict (also written to ``path/results_name``), or
    ``{"preempted_at_step": N}`` after SIGTERM.
    """
    counts = step_counts(
        config, len(method.train_source), pad_last_batch=method.pad_last_batch
    )
    results_path = path / results_name
    if (path / "results.json").is_file():
        if workdir_lib.is_complete(path, counts.total_steps):
            if results_path.is_file():
                return _report_stored(results_path, method)
            return _evaluate_best(path, method, counts, results_path)
        # The run is being extended (more steps than it was run for): its earlier
        # results are kept under a name that says where they came from.
        aside = workdir_lib.move_results_aside(path)
        log(f"{method.name}: extending a finished run; its results moved to {aside}")
    path.mkdir(parents=True, exist_ok=True)
    state, shardings = method.init_state(counts.steps_per_epoch)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    log(
        f"{method.name}: {n_params / 1e6:.2f}M parameters | {counts.steps_per_epoch} "
        f"steps/epoch, {counts.total_steps} steps of {counts.batch_size}"
    )
    train_iter = pipeline.train_iterator(
        method.train_source,
        global_batch_size=counts.batch_size,
        seed=int(config.seed),
        num_threads=int(config.data.num_threads),
        worker_count=method.worker_count,
        transform=method.train_transform,
        pad_last_batch=method.pad_last_batch,
    )
    ckpt = Checkpointer(
        path / "checkpoints", max_to_keep=int(config.train.get("keep_checkpoints", 2))
    )
    best = Checkpointer(path / "best", max_to_keep=1)
    writer = None
    try:
        state, meta, restored = _resume(method.name, state, ckpt, best, train_iter)
        writer = MetricWriter(path, resume_step=restored)

        def on_dev(step: int, dev: Mapping[str, float], is_best: bool) -> None:
            log(f"{method.name} dev @ {step}: {method.describe_dev(dev)}"
                + (" (best)" if is_best else ""))  # fmt: skip
            _curves(path, method, writer)

        result = loop_lib.train_loop(
            state,
            train_step=method.make_step(shardings, counts.steps_per_epoch),
            next_batch=lambda: sharding.global_batch(next(train_iter), mesh),
            options=loop_lib.LoopOptions(
                total_steps=counts.total_steps,
                steps_per_epoch=counts.steps_per_epoch,
                log_every_steps=counts.log_every_steps,
                eval_every_steps=counts.eval_every_steps,
                checkpoint_every_steps=counts.checkpoint_every_steps,
                select_metric=method.select_metric,
                select_mode=method.select_mode,
                early_stop_patience=int(config.train.get("early_stop_patience", 0)),
                progress_keys=method.progress_keys,
                collapse=method.collapse,
            ),
            outputs=loop_lib.LoopOutputs(
                writer=writer,
                checkpointer=ckpt,
                best_checkpointer=best,
                data_iter=train_iter,
                on_dev=on_dev,
                log=log,
            ),
            evaluate=method.evaluate,
            on_eval=method.on_eval,
            on_epoch_start=method.on_epoch_start,
            meta=meta,
        )
    except Exception as exc:
        if errors.disk_cause(exc) is not None:
            raise _disk_error(exc, ckpt) from exc
        raise
    finally:
        for c in (ckpt, best):
            # When already failing (disk full) the first error is the one to report.
            with contextlib.suppress(Exception):
                c.close()
    if result.reason == "preempted":
        writer.close()
        log(f"{method.name}: preempted at step {int(result.state.step)}; rerun the "
            "command to resume")  # fmt: skip
        return {"preempted_at_step": int(result.state.step)}
    return _finish(path, method, result, writer, results_path)


def _resume(
    name: str,
    state: TrainState,
    ckpt: Checkpointer,
    best: Checkpointer,
    train_iter: Any,
) -> tuple[TrainState, dict[str, Any], int]:
    """The newest complete checkpoint (state, loop metadata, iterator position), else
    ``state`` from scratch; drops what is newer than it in ``checkpoints/`` and
    ``best/``. Returns ``(state, meta, restored step)``."""
    meta: dict[str, Any] = {}
    restored = 0
    latest = ckpt.latest_step()
    if latest is not None:
        state, meta = ckpt.restore(latest, state, data_iter=train_iter)
        restored = int(latest)
        log(f"{name}: resumed from {ckpt.directory}/{latest}")
    for folder in (ckpt, best):
        dropped = folder.reconcile(restored)
        if dropped:
            log(f"{name}: dropped {folder.directory.name}/{dropped} "
                "(newer than the restored step; replayed)")  # fmt: skip
    return state, meta, restored


def _curves(path: pathlib.Path, method: Method, writer: MetricWriter | None) -> None:
    if writer is None or not writer.enabled:
        return
    from xmodal import plot

    plot.plot_runs(
        [path],
        path / "curves.png",
        train_keys=method.curve_keys,
        dev_key=method.select_metric,
    )


def _finish(
    path: pathlib.Path,
    method: Method,
    result: loop_lib.LoopResult,
    writer: MetricWriter,
    results_path: pathlib.Path,
) -> dict[str, Any]:
    """Tests the best state, writes results and curves."""
    best_state, best_meta, which = restore_for_eval(path, result.state)
    test = method.test(best_state)
    steps = int(result.state.step)
    for name, metrics in _flat_test(test).items():
        writer.write(steps, metrics, split=name)
    writer.close()
    _curves(path, method, writer)
    degenerate = result.meta.get("degenerate_steps", [])
    results = {
        **method.results_fields,
        "checkpoint": which,
        "selected_step": best_meta.get("best_step"),
        "selection": f"{method.select_metric} ({method.select_mode})",
        "dev": best_meta.get("dev"),
        "test": test,
        "steps": steps,
        "stopped": result.reason,
        "degenerate_dev_steps": degenerate,
        "collapse_warned_at_step": result.meta.get("collapse_warned_at"),
    }
    if best_meta.get("best_step") is None and degenerate:
        results["warning"] = (
            "every dev evaluation was degenerate (collapsed scores): the latest "
            "checkpoint is reported, not a selected one"
        )
        log(f"WARNING: {results['warning']}")
    write_json(results_path, results)
    log(f"\n{method.name}: test, checkpoint {which}:")
    log(method.format_test(test))
    log(f"results written to {results_path}")
    return results


def _flat_test(test: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{"test" or "test_<protocol>": scalar metrics}`` for metrics.jsonl."""
    if all(isinstance(v, Mapping) for v in test.values()):
        return {f"test_{k}": dict(v) for k, v in test.items()}
    return {"test": {k: v for k, v in test.items() if isinstance(v, int | float)}}


def run_seeds(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    train_seed: Callable[[ml_collections.ConfigDict, pathlib.Path, str], dict],
    summarize: Callable[[Sequence[dict[str, Any]], Sequence[int]], dict[str, Any]],
    *,
    always_subdirs: bool,
    accept_config_changes: bool = False,
    break_lock: bool = False,
    on_open: Callable[[workdir_lib.Workdir], None] | None = None,
) -> dict[str, Any]:
    """Opens ``workdir`` and runs ``train_seed`` for each seed of ``config.seeds``.

    The workdir is locked (``break_lock``: also when its lock names another host) and
    its config checked (:func:`xmodal.workdir.open_workdir`) before anything is
    written; ``on_open(workdir)`` then writes what the method
    keeps beside its runs (e.g. a vocabulary). With no ``config.seeds`` and
    ``always_subdirs`` False, one run trains directly in the workdir. Otherwise each
    seed trains in ``workdir/seed_<s>/`` and ``summarize(per_seed_results, seeds)``
    gives the workdir's results (written to its results file). Rerunning resumes
    every unfinished seed.
    """
    with workdir_lib.open_workdir(
        workdir,
        config,
        accept_config_changes=accept_config_changes,
        break_lock=break_lock,
    ) as wd:
        if on_open is not None:
            on_open(wd)
        return _run_seeds(config, wd, train_seed, summarize, always_subdirs)


def _run_seeds(
    config: ml_collections.ConfigDict,
    workdir: workdir_lib.Workdir,
    train_seed: Callable[[ml_collections.ConfigDict, pathlib.Path, str], dict],
    summarize: Callable[[Sequence[dict[str, Any]], Sequence[int]], dict[str, Any]],
    always_subdirs: bool,
) -> dict[str, Any]:
    runs = workdir_lib.run_folders(workdir.path, config, always_subdirs=always_subdirs)
    name = workdir.results_name()
    if runs[0][1] == workdir.path:  # one run, in the workdir itself
        return train_seed(config, workdir.path, name)
    per_seed = []
    for seed_config, seed_dir in runs:
        if workdir.writer:
            seed_dir.mkdir(parents=True, exist_ok=True)
            write_json(seed_dir / "config.json", config_to_dict(seed_config))
        result = train_seed(seed_config, seed_dir, name)
        if "preempted_at_step" in result:
            return result
        per_seed.append(result)
    results = summarize(per_seed, [int(c.seed) for c, _ in runs])
    write_json(workdir.path / name, results)
    log(f"results written to {workdir.path / name}")
    return results


def _restore(
    scoring: Scoring, folder: pathlib.Path, which: str, steps_per_epoch: int
) -> tuple[TrainState, dict[str, Any], str]:
    """The ``which`` ("best" / "latest") state of the run in ``folder``:
    ``(state, meta, "best/<step>" | "checkpoints/<step>")``."""
    target, _ = scoring.init_state(steps_per_epoch)
    return restore_for_eval(folder, target, which=which)


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    prepare: Callable[
        [jax.sharding.Mesh], Callable[[ml_collections.ConfigDict], Scoring]
    ],
    summarize: Callable[[Sequence[dict[str, Any]], Sequence[int]], dict[str, Any]],
    *,
    checkpoint: str,
    split: str,
    always_subdirs: bool,
) -> dict[str, Any]:
    """Scores the ``checkpoint`` state ("best" / "latest") of every run of ``workdir``.

    Read-only on the runs, in this order: ``config`` must match the runs' config in
    every training key (:func:`xmodal.workdir.check_trained_with`); the mesh and the
    batch sizes; ``prepare(mesh)`` opens the method's data and model once and returns
    ``scoring_for_run(run config) -> Scoring``; then each run folder
    (:func:`xmodal.workdir.run_folders`) has its state restored and tested. A run's
    record is its ``results_fields`` with the checkpoint, the selected step, its dev
    metrics, the test results and its steps. One run's record is the results;
    several runs' records are summarised by ``summarize(records, seeds)``. The
    results go to ``workdir/results__evaluate-<checkpoint>__split-<split>.json``
    (:func:`xmodal.workdir.evaluation_name`; never a training result's name).
    """
    path = pathlib.Path(workdir)
    workdir_lib.check_trained_with(path, config)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_sizes(config, mesh)
    scoring_for_run = prepare(mesh)
    runs = workdir_lib.run_folders(path, config, always_subdirs=always_subdirs)
    per_run = []
    for run_config, folder in runs:
        scoring = scoring_for_run(run_config)
        state, meta, which = _restore(scoring, folder, checkpoint, 1)
        per_run.append(
            {
                **scoring.results_fields,
                "checkpoint": which,
                "selected_step": meta.get("best_step"),
                "dev": meta.get("dev"),
                "test": scoring.test(state),
                "steps": int(jax.device_get(state.step)),
            }
        )
    if runs[0][1] == path:  # one run, in the workdir itself
        results = per_run[0]
        log(f"Split '{split}', checkpoint {results['checkpoint']}:")
        log(scoring.format_test(results["test"]))
    else:
        results = summarize(per_run, [int(c.seed) for c, _ in runs])
    out = path / workdir_lib.evaluation_name(checkpoint, split)
    write_json(out, results)
    log(f"results written to {out}")
    return results
