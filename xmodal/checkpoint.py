"""Orbax checkpointing of the train state, the data iterator and run metadata.

One checkpoint step holds three items:

- ``state``: the :class:`xmodal.state.TrainState` pytree (params, optimiser state,
  step, RNG, method statistics), restored onto the shardings of an abstract target
  (``ocp.args.StandardRestore``: restoring without a target would turn optax tuples
  into lists);
- ``data``: the grain iterator position (``grain.checkpoint.CheckpointSave``);
- ``meta``: JSON (epoch, best dev metric so far, early-stopping counters, ...).

A run directory has ``checkpoints/`` (the latest few, for resuming) and ``best/`` (the
best-on-dev state only, for evaluation). Saves are asynchronous; :meth:`wait` blocks.

A save is atomic (orbax writes a temporary folder and renames it), so a killed run
leaves complete steps plus, at most, a temporary folder. On resume the harness calls
:meth:`Checkpointer.reconcile` on every managed folder: temporary folders are removed
and steps newer than the restored one are dropped (the resumed run replays those
steps and saves them again, bit-identically), so a save never meets a step that
already exists.

What is on disk is the truth about what was saved (:func:`saved_steps`): a step
folder gets its number as its name only when its save completed, whereas the
manager's own list already holds a step whose asynchronous save is still running (or
has failed).

A restored state is checked to hold no NaN / Inf value (:func:`nonfinite_leaves`); a
checkpoint that does stops with ONE line naming it and its first bad array
(:class:`NonFiniteCheckpointError`) instead of resuming into a NaN loss or evaluating
garbage.
"""

from __future__ import annotations

import pathlib
import re
import shutil
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from xmodal import faults
from xmodal.errors import UserError

__all__ = [
    "Checkpointer",
    "NonFiniteCheckpointError",
    "abstract_like",
    "nonfinite_leaves",
    "restore_for_eval",
    "saved_steps",
]


class NonFiniteCheckpointError(UserError):
    """A checkpoint holds NaN / Inf values."""


def saved_steps(directory: str | pathlib.Path) -> list[int]:
    """The steps whose save completed, oldest first: the folders of ``directory``
    named by their step (an interrupted or failed save leaves only a temporary
    ``<step>.orbax-checkpoint-tmp*`` folder)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> list[jax.Array]:
    return [jnp.all(jnp.isfinite(x)) for x in leaves]


def nonfinite_leaves(tree: Any) -> list[str]:
    """The paths (``jax.tree_util.keystr``: ``params['dense']['kernel']``) of the
    floating arrays of ``tree`` that hold a NaN or Inf.

    An array this process holds whole (one device, or replicated) is checked on the
    host; the others (sharded over several processes) in one jitted reduction, so
    every process gets the same answer without compiling a program for the common
    case.
    """
    whole, split = [], []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.inexact):
            name = jax.tree_util.keystr(path).lstrip(".")
            local = leaf.is_fully_replicated or leaf.is_fully_addressable
            (whole if local else split).append((name, leaf))
    bad = [
        name
        for name, leaf in whole
        if not np.isfinite(np.asarray(_local_copy(leaf))).all()
    ]
    if split:
        flags = jax.device_get(_all_finite([leaf for _, leaf in split]))
        bad += [n for (n, _), ok in zip(split, flags, strict=True) if not bool(ok)]
    return bad


def _local_copy(leaf: jax.Array) -> Any:
    """The whole array from this process's own devices."""
    if leaf.is_fully_replicated:
        return leaf.addressable_shards[0].data
    return leaf


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing ``tree``, as restore targets."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree_util.tree_map(leaf, tree)


class Checkpointer:
    """A thin wrapper around ``ocp.CheckpointManager`` for {state, data, meta}.

    Args:
      directory: where the step folders go (created).
      max_to_keep: how many recent steps to keep.
      async_save: save in the background (call :meth:`wait` before exiting).
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        max_to_keep: int = 2,
        async_save: bool = True,
    ) -> None:
        self.directory = pathlib.Path(directory).absolute()
        # Multi-process: orbax finalises an async save with cross-process barriers
        # whose keys are the same for every manager ("ThreadSaveMultiHostValueHolder:
        # set_value_start"), so two managers finishing saves at once (``checkpoints/``
        # and ``best/`` after the same step) collide ("Barrier ... is already
        # ongoing") and the job fails or hangs. A key prefix per directory keeps them
        # apart; it is built from the last two path parts (``seed_1/best``), which
        # every process agrees on even where the shared folder is mounted elsewhere.
        prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", "/".join(self.directory.parts[-2:]))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            # Temporary folders of interrupted saves are removed by reconcile() (only
            # on resume, on process 0): orbax's own clean-up races with it.
            cleanup_tmp_directories=False,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=f"xmodal.{prefix}"
            ),
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every complete step, oldest first."""
        return sorted(int(s) for s in self.manager.all_steps())

    def reconcile(self, restored_step: int) -> list[int]:
        """Removes temporary folders and every step newer than ``restored_step``.

        Returns the dropped steps. Call on process 0 before training resumes.
        """
        if jax.process_index() == 0:
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
        dropped = [s for s in self.all_steps() if s > restored_step]
        for step in dropped:
            self.manager.delete(step)
        if dropped:
            self.manager.reload()
        return dropped

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_iter: Any = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Saves ``state`` (and the iterator position and ``meta``) as ``step``."""
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave(meta or {}),
        }
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        point = "best_write" if self.directory.name == "best" else "checkpoint_write"
        faults.reached_during_write(point, step, self.directory)

    def restore(
        self, step: int, target: Any, *, data_iter: Any = None
    ) -> tuple[Any, dict[str, Any]]:
        """Restores ``step`` onto ``target`` (a state or its abstract version).

        Also sets ``data_iter``'s position when given. Returns ``(state, meta)``.

        Raises:
          NonFiniteCheckpointError: the restored state holds NaN / Inf values.
        """
        items: dict[str, Any] = {
            "state": ocp.args.StandardRestore(abstract_like(target)),
            "meta": ocp.args.JsonRestore(),
        }
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        bad = nonfinite_leaves(restored["state"])
        if bad:
            more = f" (and {len(bad) - 1} more arrays)" if len(bad) > 1 else ""
            raise NonFiniteCheckpointError(
                f"checkpoint {self.directory}/{step} holds NaN/Inf values in "
                f"{bad[0]}{more}: move that step folder away to use an earlier one "
                f"(saved: {self.all_steps()}), or start afresh in another --workdir"
            )
        return restored["state"], dict(restored["meta"] or {})

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_for_eval(
    workdir: str | pathlib.Path, target: Any, *, which: str = "best"
) -> tuple[Any, dict[str, Any], str]:
    """The state to evaluate: ``best/`` (falling back to the latest) or ``latest``.

    Returns ``(state, meta, "best/<step>" | "checkpoints/<step>")``.

    Raises:
      FileNotFoundError: the run directory has no checkpoint.
      ValueError: ``which`` is neither "best" nor "latest".
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which: expected 'best' or 'latest', got {which!r}")
    workdir = pathlib.Path(workdir)
    for name in ("best", "checkpoints") if which == "best" else ("checkpoints",):
        folder = workdir / name
        if not folder.is_dir():
            continue
        ckpt = Checkpointer(folder, max_to_keep=None)
        try:
            step = ckpt.latest_step()
            if step is not None:
                state, meta = ckpt.restore(step, target)
                return state, meta, f"{name}/{step}"
        finally:
            ckpt.close()
    raise FileNotFoundError(
        f"no checkpoint under {workdir}/best or {workdir}/checkpoints"
    )
