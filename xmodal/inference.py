"""Running a jitted function over every item of a source (evaluation, embedding).

The source is read in padded global batches (:func:`xmodal.pipeline.eval_batches`),
each batch becomes a global array split over the mesh, ``fn`` runs on it, and the
valid rows are put back in source order on the host. Nothing is dropped and the batch
shape is fixed, so ``fn`` compiles once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from xmodal import pipeline, sharding

__all__ = ["map_source"]


def map_source(
    fn: Callable[[Any], Any],
    source: pipeline.Source,
    *,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    num_threads: int = 4,
) -> Any:
    """``fn`` over all items; returns its output tree as host arrays ``[len(source), ...]``.

    Args:
      fn: ``batch -> tree of arrays`` with leading dimension = the global batch size.
      source: the items (dicts of NumPy arrays).
      mesh: the device mesh the batches are split over.
      batch_size: global evaluation batch size.
      num_threads: grain read threads.
    """
    out: Any = None
    n = len(source)
    for local in pipeline.eval_batches(
        source, global_batch_size=batch_size, num_threads=num_threads
    ):
        batch = sharding.global_batch(local, mesh)
        result = fn(batch)
        result, index, valid = sharding.to_host(
            (result, batch["index"], batch["valid"])
        )
        index, valid = np.asarray(index), np.asarray(valid, bool)
        if out is None:
            out = jax.tree_util.tree_map(
                lambda r: np.zeros((n, *np.shape(r)[1:]), np.asarray(r).dtype), result
            )

        rows = index[valid]
        for dst, src in zip(
            jax.tree_util.tree_leaves(out),
            jax.tree_util.tree_leaves(result),
            strict=True,
        ):
            dst[rows] = np.asarray(src)[valid]
    return out
