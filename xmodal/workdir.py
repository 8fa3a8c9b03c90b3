"""A run directory: one live run at a time, and the config it was started with.

Opening a workdir (:func:`open_workdir`, a context manager) does three things, in this
order, before anything is written into it:

1. **Lock.** ``WORKDIR/.lock`` is locked for the life of the run and holds the
   owner's process id, host and start time (:mod:`xmodal.lock`). A second run on a
   live workdir stops at once with :class:`~xmodal.errors.WorkdirBusyError` naming
   the owner. A lock left by a dead run of this host is taken over, with a warning;
   one naming another host only with ``break_lock`` (``--break_lock``).
2. **Config memory.** ``WORKDIR/config.json`` holds the config the run was started
   with. A rerun whose config differs in a key that changes training stops with
   :class:`~xmodal.errors.ConfigChangedError`: one line per changed key and the flag
   that accepts the change (``--accept_config_changes``). Keys that cannot change
   the trained weights are sorted into three kinds (:data:`FREE_KEYS`,
   :data:`EXTEND_KEYS`, :data:`EVAL_KEYS`); every accepted change is appended to
   ``config_history.jsonl``. A training change is not accepted where a run has
   finished (its ``results.json``, or a seed's, exists): ``config.json`` must keep
   describing the stored results, and a finished run has nothing left to train with
   the new values, so the rerun stops and asks for another workdir.
3. **Results naming.** When only evaluation keys changed, the results of the rerun are
   written beside the earlier ones (``results__<key>-<value>.json``), never over them.

Only process 0 locks and writes; every process runs the same config check, so all of
them stop on a changed config.

The layout of the runs inside a workdir is known here and nowhere else:
:func:`run_folders` (the workdir itself, or one ``seed_<s>/`` folder per seed),
:func:`is_complete` (a finished run with nothing left to train),
:func:`move_results_aside` (the results of a run that is being extended) and
:func:`evaluation_name` (the results of an evaluation command).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections

from xmodal import config as config_lib
from xmodal import files
from xmodal import lock as lock_lib
from xmodal.errors import ConfigChangedError

__all__ = [
    "EVAL_KEYS",
    "EXTEND_KEYS",
    "FREE_KEYS",
    "ConfigDiff",
    "Workdir",
    "check_trained_with",
    "config_diff",
    "evaluation_name",
    "is_complete",
    "move_results_aside",
    "open_workdir",
    "run_folders",
]

# Keys that change neither the trained weights nor the results (threads, logging,
# device layout: the sharded step equals the single-device one, tested).
FREE_KEYS: tuple[str, ...] = (
    "data.num_threads",
    "data.worker_count",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "mesh",
    "seeds",
)
# Keys that lengthen or shorten a run without changing the steps already taken.
EXTEND_KEYS: tuple[str, ...] = ("train.num_steps", "train.num_epochs")
# Keys that change only the evaluation of a trained state (its results, not weights).
EVAL_KEYS: tuple[str, ...] = (
    "eval.batch_size",
    "eval.block_size",
    "data.test_split",
    "data.test_protocols",
)


def _matches(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


@dataclasses.dataclass(frozen=True)
class ConfigDiff:
    """How a rerun's config differs from the stored one.

    Attributes:
      changed: ``{dotted key: (stored value, new value)}`` for every differing key
        (a key present on one side only has ``"<absent>"`` on the other).
    """

    changed: dict[str, tuple[Any, Any]]

    def keys_of(self, names: tuple[str, ...]) -> list[str]:
        return sorted(k for k in self.changed if _matches(k, names))

    @property
    def training(self) -> list[str]:
        """Changed keys that change training."""
        allowed = FREE_KEYS + EXTEND_KEYS + EVAL_KEYS
        return sorted(k for k in self.changed if not _matches(k, allowed))

    @property
    def evaluation(self) -> list[str]:
        return self.keys_of(EVAL_KEYS)

    def lines(self, keys: list[str] | None = None) -> list[str]:
        keys = sorted(self.changed) if keys is None else keys
        return [
            f"  {k}: {json.dumps(self.changed[k][0])} -> {json.dumps(self.changed[k][1])}"
            for k in keys
        ]


def config_diff(stored: Mapping[str, Any], new: Mapping[str, Any]) -> ConfigDiff:
    """The keys whose JSON values differ between two config dicts."""
    a, b = config_lib.flatten(stored), config_lib.flatten(new)
    absent = "<absent>"
    changed = {
        k: (a.get(k, absent), b.get(k, absent))
        for k in sorted(set(a) | set(b))
        if a.get(k, absent) != b.get(k, absent)
    }
    return ConfigDiff(changed)


@dataclasses.dataclass
class Workdir:
    """An open, locked run directory.

    Attributes:
      path: the directory.
      eval_changes: evaluation-only keys that differ from the stored config, with
        their new values; non-empty means results go to :meth:`results_name`'s file.
      writer: whether this process writes (process 0).
    """

    path: pathlib.Path
    eval_changes: dict[str, Any]
    writer: bool

    def results_name(self) -> str:
        """``results.json``, or ``results__<key>-<value>[__...].json`` after
        evaluation-only changes (never the name of an earlier result)."""
        if not self.eval_changes:
            return "results.json"
        parts = []
        for key, value in sorted(self.eval_changes.items()):
            text = value if isinstance(value, str) else json.dumps(value)
            parts.append(re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{key}-{text}").strip("_"))
        return "results__" + "__".join(parts) + ".json"


def _finished_results(path: pathlib.Path) -> list[pathlib.Path]:
    """The ``results.json`` of finished runs in the workdir (itself or its seeds)."""
    return sorted(
        p
        for p in (path / "results.json", *path.glob("seed_*/results.json"))
        if p.is_file()
    )


def _check_config(
    path: pathlib.Path, new: dict[str, Any], *, accept: bool
) -> tuple[ConfigDiff | None, dict[str, Any]]:
    stored_path = path / "config.json"
    if not stored_path.is_file():
        return None, {}
    try:
        stored = json.loads(stored_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigChangedError(
            f"{stored_path} is not valid JSON ({exc}); move it away to start afresh"
        ) from None
    diff = config_diff(stored, new)
    finished = _finished_results(path)
    if diff.training and accept and finished:
        lines = "\n".join(diff.lines(diff.training))
        raise ConfigChangedError(
            f"{finished[0]} holds the results of a finished run trained with the "
            f"stored config, which a training change would no longer describe:\n"
            f"{lines}\n--accept_config_changes continues unfinished runs only: "
            "use another --workdir for the changed training"
        )
    if diff.training and not accept:
        lines = "\n".join(diff.lines(diff.training))
        raise ConfigChangedError(
            f"the config differs from the one {path} was trained with in "
            f"{len(diff.training)} key(s) that change training:\n{lines}\n"
            "use another --workdir, or rerun with --accept_config_changes to continue "
            "this run with the new values"
        )
    return diff, {k: diff.changed[k][1] for k in diff.evaluation}


@contextlib.contextmanager
def open_workdir(
    path: str | os.PathLike,
    config: ml_collections.ConfigDict,
    *,
    accept_config_changes: bool = False,
    break_lock: bool = False,
) -> Iterator[Workdir]:
    """Locks ``path``, checks ``config`` against the stored one, records changes.

    Call after the config is resolved and the data opened: nothing is written into
    ``path`` before this (the lock file is the first write). ``break_lock`` takes
    over a lock that names a run on another host (:func:`xmodal.lock.acquire`).

    Raises:
      WorkdirBusyError: another live process holds the lock, or the lock names
        another host and ``break_lock`` is False.
      ConfigChangedError: a training key changed and ``accept_config_changes`` is
        False, or a finished run's results exist (nothing in the workdir is
        modified).
    """
    path = pathlib.Path(path)
    new = config_lib.config_to_dict(config)
    writer = jax.process_index() == 0
    if writer:
        lock_lib.check_free(path)  # a live run is named before any config difference
    diff, eval_changes = _check_config(path, new, accept=accept_config_changes)
    held = None
    if writer:
        path.mkdir(parents=True, exist_ok=True)
        held = lock_lib.acquire(path, break_lock=break_lock)
    try:
        if writer:
            # Checked again under the lock: another run may have started in between.
            diff, eval_changes = _check_config(path, new, accept=accept_config_changes)
            if diff is None:
                files.atomic_write_text(
                    path / "config.json", json.dumps(new, indent=2, sort_keys=True)
                )
            elif diff.changed:
                record = {
                    "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "changed": {k: list(v) for k, v in diff.changed.items()},
                    "accepted_training_change": bool(diff.training),
                }
                with open(path / "config_history.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if not eval_changes:
                    # config.json describes the weights and results.json; after an
                    # evaluation-only change it keeps describing the earlier results.
                    files.atomic_write_text(
                        path / "config.json", json.dumps(new, indent=2, sort_keys=True)
                    )
        yield Workdir(path=path, eval_changes=eval_changes, writer=writer)
    finally:
        if held is not None:
            held.release()


def check_trained_with(
    path: str | os.PathLike, config: ml_collections.ConfigDict
) -> None:
    """Read-only check that ``config`` can score the run in ``path``: it must not
    differ from the stored config in a training key (evaluation keys may differ).

    Raises:
      FileNotFoundError: ``path`` holds no run (no config.json).
      ConfigChangedError: a training key differs.
    """
    path = pathlib.Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no config.json here; is this a run folder (--workdir of a "
            "training run)?"
        )
    diff, _ = _check_config(path, config_lib.config_to_dict(config), accept=False)
    del diff


def evaluation_name(checkpoint: str, split: str) -> str:
    """The results file of an evaluation command: never a training result's name."""
    return f"results__evaluate-{checkpoint}__split-{split}.json"


def run_folders(
    path: str | os.PathLike, config: ml_collections.ConfigDict, *, always_subdirs: bool
) -> list[tuple[ml_collections.ConfigDict, pathlib.Path]]:
    """The runs of the workdir ``path``: ``[(run config, run folder)]``.

    With no ``config.seeds`` and ``always_subdirs`` False, the one run is ``path``
    itself with ``config``. Otherwise each seed ``s`` of ``config.seeds`` (or
    ``config.seed`` alone) has its run in ``path/seed_<s>/`` with a copy of ``config``
    whose ``seed`` is ``s``.
    """
    path = pathlib.Path(path)
    seeds = [int(s) for s in (config.get("seeds") or ())]
    if not seeds and not always_subdirs:
        return [(config, path)]
    runs = []
    for seed in seeds or [int(config.seed)]:
        run_config = ml_collections.ConfigDict(config.to_dict())
        run_config.seed = seed
        runs.append((run_config, path / f"seed_{seed}"))
    return runs


def is_complete(path: pathlib.Path, total_steps: int) -> bool:
    """Whether the finished run in ``path`` (it has ``results.json``) has nothing left
    to train: it stopped early, or its newest checkpoint is at ``total_steps``."""
    if (
        json.loads((path / "results.json").read_text()).get("stopped")
        == "early_stopped"
    ):
        return True
    folder = path / "checkpoints"
    steps = [int(p.name) for p in folder.glob("*") if p.name.isdigit()]
    return bool(steps) and max(steps) >= total_steps


def move_results_aside(path: pathlib.Path) -> pathlib.Path:
    """Renames ``path/results.json`` of a run that is being extended (trained for more
    steps) to ``results__steps-<N>.json``, N its steps; returns the new path (process 0
    renames)."""
    stored = path / "results.json"
    steps = json.loads(stored.read_text()).get("steps")
    aside = path / f"results__steps-{steps}.json"
    if jax.process_index() == 0:
        os.replace(stored, aside)
    return aside
