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
the method summarise them. A write that fails for lack of space or permission stops
with :class:`~xmodal.errors.DiskError` naming the path and the last checkpoint saved.
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

from xmodal import errors, files, pipeline, sharding
from xmodal import loop as loop_lib
from xmodal.checkpoint import Checkpointer, restore_for_eval
from xmodal.config import config_to_dict
from xmodal.state import TrainState
from xmodal.workdir import Workdir, open_workdir
from xmodal.writer import MetricWriter

__all__ = [
    "Method",
    "StepCounts",
    "check_batch_sizes",
    "log",
    "mean_std",
    "run_seeds",
    "step_counts",
    "train",
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


@dataclasses.dataclass
class Method:
    """What a driver hands the harness for one run (one seed).

    Attributes:
      name: shown in messages ("CDDS", "DecAlign seed 1111").
      train_source: the training items (a grain-readable source).
      init_state: ``steps_per_epoch -> (fresh sharded state, state shardings)``.
      make_step: ``(state shardings, steps_per_epoch) -> jitted train step``.
      evaluate: ``state -> selection-split metrics`` (dev / valid). A result with
        ``degenerate`` = 1 is never selected.
      test: ``state -> test results`` (the method's own structure).
      describe_dev: one console line for a dev result.
      format_test: the results table for the test results.
      select_metric, select_mode: the selection rule ("max" / "min").
      results_fields: extra fields of ``results.json`` (method name, split, ...).
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
    """

    name: str
    train_source: pipeline.Source
    init_state: Callable[[int], tuple[TrainState, Any]]
    make_step: Callable[[Any, int], Callable[[TrainState, Any], Any]]
    evaluate: Callable[[TrainState], dict[str, float]]
    test: Callable[[TrainState], dict[str, Any]]
    describe_dev: Callable[[Mapping[str, float]], str]
    format_test: Callable[[Mapping[str, Any]], str]
    select_metric: str
    select_mode: str = "max"
    results_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    on_eval: Callable[[TrainState, Mapping[str, float], dict[str, Any]], Any] | None = (
        None
    )
    curve_keys: tuple[str, ...] = ("loss",)
    progress_keys: tuple[str, ...] = ("loss", "lr")
    collapse: loop_lib.CollapseGuard | None = None
    worker_count: int = 0
    train_transform: pipeline.EpochTransform | None = None
    pad_last_batch: bool = False


@dataclasses.dataclass(frozen=True)
class StepCounts:
    """Steps of a run derived from the config and the training set size."""

    batch_size: int
    steps_per_epoch: int
    total_steps: int
    eval_every_steps: int
    checkpoint_every_steps: int
    log_every_steps: int


def check_batch_sizes(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> None:
    """Batch sizes > 0 and divisible by the devices and processes (before training)."""
    for key in ("train.batch_size", "eval.batch_size"):
        section, name = key.split(".")
        value = int(config[section][name])
        if value <= 0:
            raise ValueError(f"config {key} = {value}: must be > 0")
        for count, what in ((mesh.size, "devices"), (jax.process_count(), "processes")):
            if value % count:
                raise ValueError(
                    f"config {key} = {value} cannot be split over the {count} {what} "
                    f"(mesh {dict(mesh.shape)}): use a multiple of {count}, e.g. "
                    f"--config.{key}={max(count, value // count * count)}"
                )


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
    """
    t = config.train
    batch = int(t.batch_size)
    if batch <= 0:
        raise ValueError(f"config train.batch_size = {batch}: must be > 0")
    per_epoch = pipeline.steps_per_epoch(
        num_examples, batch, pad_last_batch=pad_last_batch
    )
    if per_epoch == 0:
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


def _complete(path: pathlib.Path, stored: pathlib.Path, counts: StepCounts) -> bool:
    """Whether the run in ``path`` has nothing left to train."""
    if json.loads(stored.read_text()).get("stopped") == "early_stopped":
        return True
    folder = path / "checkpoints"
    steps = [int(p.name) for p in folder.glob("*") if p.name.isdigit()]
    return bool(steps) and max(steps) >= counts.total_steps


def _report_stored(path: pathlib.Path, method: Method) -> dict[str, Any]:
    results = json.loads(path.read_text())
    log(f"{method.name}: finished run, results from {path}:")
    log(method.format_test(results["test"]))
    return results


def _evaluate_best(
    path: pathlib.Path, method: Method, counts: StepCounts, results_path: pathlib.Path
) -> dict[str, Any]:
    """The finished run's best state on the (changed) evaluation settings."""
    state, _ = method.init_state(counts.steps_per_epoch)
    best_state, _, which = restore_for_eval(path, state)
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
    latest = ckpt.latest_step()
    saved = (
        f"last checkpoint saved: {ckpt.directory}/{latest}"
        if latest is not None
        else "no checkpoint saved yet"
    )
    return errors.DiskError(
        f"cannot write {cause.filename or ckpt.directory}: "
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
    stored = path / "results.json"
    if stored.is_file():
        if _complete(path, stored, counts):
            if results_path.is_file():
                return _report_stored(results_path, method)
            return _evaluate_best(path, method, counts, results_path)
        # The run is being extended (more steps than it was run for): its earlier
        # results are kept under a name that says where they came from.
        steps = json.loads(stored.read_text()).get("steps")
        aside = path / f"results__steps-{steps}.json"
        if jax.process_index() == 0:
            os.replace(stored, aside)
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
        meta: dict[str, Any] = {}
        restored = 0
        latest = ckpt.latest_step()
        if latest is not None:
            state, meta = ckpt.restore(latest, state, data_iter=train_iter)
            restored = int(latest)
            log(f"{method.name}: resumed from {ckpt.directory}/{latest}")
        for folder in (ckpt, best):
            dropped = folder.reconcile(restored)
            if dropped:
                log(f"{method.name}: dropped {folder.directory.name}/{dropped} "
                    "(newer than the restored step; replayed)")  # fmt: skip
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
    on_open: Callable[[Workdir], None] | None = None,
) -> dict[str, Any]:
    """Opens ``workdir`` and runs ``train_seed`` for each seed of ``config.seeds``.

    The workdir is locked and its config checked (:func:`xmodal.workdir.open_workdir`)
    before anything is written; ``on_open(workdir)`` then writes what the method
    keeps beside its runs (e.g. a vocabulary). With no ``config.seeds`` and
    ``always_subdirs`` False, one run trains directly in the workdir. Otherwise each
    seed trains in ``workdir/seed_<s>/`` and ``summarize(per_seed_results, seeds)``
    gives the workdir's results (written to its results file). Rerunning resumes
    every unfinished seed.
    """
    with open_workdir(
        workdir, config, accept_config_changes=accept_config_changes
    ) as wd:
        if on_open is not None:
            on_open(wd)
        return _run_seeds(config, wd, train_seed, summarize, always_subdirs)


def _run_seeds(
    config: ml_collections.ConfigDict,
    workdir: Workdir,
    train_seed: Callable[[ml_collections.ConfigDict, pathlib.Path, str], dict],
    summarize: Callable[[Sequence[dict[str, Any]], Sequence[int]], dict[str, Any]],
    always_subdirs: bool,
) -> dict[str, Any]:
    seeds = [int(s) for s in (config.get("seeds") or ())]
    name = workdir.results_name()
    if not seeds and not always_subdirs:
        return train_seed(config, workdir.path, name)
    per_seed = []
    for seed in seeds or [int(config.seed)]:
        seed_config = ml_collections.ConfigDict(config.to_dict())
        seed_config.seed = seed
        seed_dir = workdir.path / f"seed_{seed}"
        if workdir.writer:
            seed_dir.mkdir(parents=True, exist_ok=True)
            write_json(seed_dir / "config.json", config_to_dict(seed_config))
        result = train_seed(seed_config, seed_dir, name)
        if "preempted_at_step" in result:
            return result
        per_seed.append(result)
    results = summarize(per_seed, seeds or [int(config.seed)])
    write_json(workdir.path / name, results)
    log(f"results written to {workdir.path / name}")
    return results


def mean_std(
    rows: Sequence[Mapping[str, Any]], scale: Callable[[str], float] | None = None
) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std"}}`` over runs (population std) of numeric metrics.

    ``scale(metric)`` multiplies a metric before the statistics (e.g. 100 for
    fractions shown in percent).
    """
    import numpy as np

    out = {}
    for key, first in rows[0].items():
        if not isinstance(first, int | float) or isinstance(first, bool):
            continue
        factor = scale(key) if scale is not None else 1.0
        values = np.asarray([float(r[key]) * factor for r in rows])
        out[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out
