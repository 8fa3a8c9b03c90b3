"""Mesh, shardings and global arrays: data parallelism over a ``jax.sharding.Mesh``.

Every step function is ``jax.jit``-ed with explicit in/out shardings built here. The
batch axis is split over every mesh axis (pure data parallelism is the special case
``mesh = (("data", -1),)``); parameters follow regex rules from the config and are
replicated by default. Each process contributes its own share of a batch and
:func:`global_batch` assembles one global array from them.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "check_batch_sizes",
    "data_sharding",
    "global_batch",
    "initialize_distributed",
    "make_mesh",
    "param_shardings",
    "replicated",
    "to_host",
]


def initialize_distributed() -> None:
    """Starts multi-host JAX when the environment asks for it; a no-op otherwise.

    ``jax.distributed.initialize()`` takes its settings from the usual places: the
    cluster environments JAX detects itself (SLURM, Open MPI, TPU pods, Kubernetes) or
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``. A plain
    one-machine run sets none of them and stays single-process.

    jax 0.10 reads ``JAX_COORDINATOR_ADDRESS`` (and ``JAX_COORDINATOR_BIND_ADDRESS``,
    ``JAX_LOCAL_DEVICE_IDS``) itself but not the process count and id, so those two
    are read here and passed explicitly when set. CPU processes exchange collectives
    through gloo over TCP, JAX's default ``jax_cpu_collectives_implementation`` -
    nothing to set.

    ``XMODAL_DISTRIBUTED`` overrides the detection: ``1`` always initialises (a Cloud
    TPU VM slice, which JAX finds through the metadata server and no environment
    variable reveals cheaply), ``0`` never (one process per host on purpose), ``auto``
    or unset detects.

    Raises:
      ValueError: ``XMODAL_DISTRIBUTED`` is not ``0`` / ``1`` / ``auto``, or
        ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` is not an integer.
    """
    switch = os.environ.get("XMODAL_DISTRIBUTED", "auto").strip().lower() or "auto"
    if switch not in ("0", "1", "auto"):
        raise ValueError(
            f"XMODAL_DISTRIBUTED: expected 0, 1 or auto, got "
            f"{os.environ['XMODAL_DISTRIBUTED']!r}"
        )
    if switch == "0" or jax.distributed.is_initialized():
        return
    if switch == "auto":
        detected = any(
            k in os.environ
            for k in (
                "JAX_COORDINATOR_ADDRESS",
                "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES",
                "TPU_PROCESS_ADDRESSES",
            )
        )
        if not detected:
            return
        if "SLURM_JOB_ID" in os.environ and "SLURM_NTASKS" not in os.environ:
            return  # an interactive SLURM shell, not a job step
    kwargs: dict[str, int] = {}
    for env, name in (
        ("JAX_NUM_PROCESSES", "num_processes"),
        ("JAX_PROCESS_ID", "process_id"),
    ):
        if os.environ.get(env, "").strip():
            try:
                kwargs[name] = int(os.environ[env])
            except ValueError:
                raise ValueError(
                    f"{env}: expected an integer, got {os.environ[env]!r}"
                ) from None
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh(
    axes: Sequence[tuple[str, int]] = (("data", -1),),
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh over ``devices`` (default all) with named axes; one size may be -1.

    Args:
      axes: ``[(name, size), ...]``; -1 takes the remaining devices.
      devices: the devices to use (default ``jax.devices()``).
    """
    devices = list(jax.devices() if devices is None else devices)
    names = [name for name, _ in axes]
    sizes = [int(size) for _, size in axes]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {axes}: at most one axis may have size -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"mesh {axes}: {len(devices)} devices not divisible by {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {axes} needs {math.prod(sizes)} devices, {len(devices)} available"
        )
    grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, tuple(names))


def check_batch_sizes(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
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


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over all mesh axes, other axes replicated."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated over the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(
    abstract_tree: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, Sequence[str | None]]] = (),
) -> Any:
    """Shardings for a parameter (or state) tree from ``(regex, partition)`` rules.

    The first rule whose regex matches the leaf path (``a/b/kernel``) gives the
    ``PartitionSpec``; leaves no rule matches (and scalars) are replicated.
    """
    compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]

    def leaf_sharding(path: Sequence[Any], leaf: Any) -> NamedSharding:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        ndim = len(getattr(leaf, "shape", ()))
        for pattern, spec in compiled:
            if ndim and pattern.search(name):
                return NamedSharding(mesh, PartitionSpec(*spec))
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_tree)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles per-process host batches into global ``jax.Array``s split on axis 0.

    Each process passes its own rows (``global_batch_size / process_count``); the
    result's leading dimension is the global batch size.
    """
    sharding = data_sharding(mesh)

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        if not x.ndim:
            raise ValueError("global_batch: every leaf needs a leading batch axis")
        shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        if shape[0] % mesh.size:
            raise ValueError(
                f"global batch of {shape[0]} rows ({jax.process_count()} process(es) "
                f"x {x.shape[0]}) cannot be split over the {mesh.size} devices of mesh "
                f"{dict(mesh.shape)}: use a batch size divisible by {mesh.size}"
            )
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree_util.tree_map(put, local_batch)


def to_host(tree: Any) -> Any:
    """Fetches a tree of (possibly sharded, multi-host) arrays to NumPy on every host."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
