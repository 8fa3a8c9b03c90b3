"""S over training pairs, recomputed at each epoch start (the ``subset`` / ``precompute``
sources of W, the paper's Table 5 variants; docs/cdds.md §4.4, §10.3).

:func:`correlation_over` runs the model in evaluation mode over a source of matched
training pairs in fixed-size padded batches and accumulates, on device, the sums of
the per-pair KL matrices of both directions and the number of pairs: peak memory is
one batch's activations plus two ``[d, d]`` sums, whatever the training set size.
``S = sum / pairs`` is then the mean over the pairs, as a batch's S is over its own.

:func:`make_refresh` gives the harness its epoch-start hook: the state with its
statistics replaced by the new S (``kl_statistics.refresh_statistics``). The pairs of
``subset`` are drawn afresh each epoch from ``(seed, epoch)``, so a resumed run draws
the same ones; the pass is a pure function of the weights and the data, so a run killed
after a refresh and resumed recomputes the same S.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cdds_jax import kl_statistics, reading
from cdds_jax.arrays import as_mask
from cdds_jax.model import CDDSModel
from xmodal import pipeline, sharding
from xmodal.state import TrainState

__all__ = [
    "IndexedSource",
    "correlation_over",
    "make_refresh",
    "pair_sums",
    "subset_indices",
]


class IndexedSource:
    """The items ``indices`` of ``source`` (a subset of the training pairs)."""

    def __init__(self, source: pipeline.Source, indices: np.ndarray) -> None:
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> Any:
        return self.source[int(self.indices[i])]


def subset_indices(
    num_pairs: int, fraction: float, *, seed: int, epoch: int
) -> np.ndarray:
    """``max(1, round(fraction * num_pairs))`` distinct pair indices, sorted, drawn
    from ``(seed, epoch)``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"semantics.subset_fraction must be in (0, 1]; got {fraction}")
    rng = np.random.default_rng([int(seed), 7, int(epoch)])
    take = max(1, round(float(fraction) * int(num_pairs)))
    return np.sort(rng.choice(num_pairs, size=take, replace=False))


def pair_sums(
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    model: CDDSModel,
    config: ml_collections.ConfigDict,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(sum_a S^v_a, sum_a S^t_a, pairs)`` over the valid pairs of one batch.

    The model runs in evaluation mode (no bottleneck noise, no dropout): S describes
    the semantic components the scores compare. ``batch`` holds ``image``, the text
    (``text`` features or ``tokens`` ids), ``text_mask`` and ``valid`` ``[B]``
    (padding rows are False).
    """
    img, txt, _ = model.apply(
        {"params": params},
        batch["image"],
        batch["text"] if "text" in batch else batch["tokens"],
        batch["text_mask"],
        train=False,
    )
    valid = (
        as_mask(batch["valid"])
        & jnp.any(as_mask(img["mask"]), axis=1)
        & jnp.any(as_mask(txt["mask"]), axis=1)
    )
    s_v, s_t = kl_statistics.batch_correlation(
        img, txt, config.semantics, pair_mask=valid
    )
    pairs = jnp.sum(valid.astype(jnp.float32))
    return s_v * pairs, s_t * pairs, pairs


def correlation_over(
    params: Any,
    source: pipeline.Source,
    *,
    sums_fn: Callable[[Any, Any], tuple[jax.Array, jax.Array, jax.Array]],
    mesh: jax.sharding.Mesh,
    batch_size: int,
    num_threads: int = 4,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[jax.Array, jax.Array, int]:
    """``(S^v, S^t, pairs)``: the mean KL matrices over every pair of ``source``.

    ``sums_fn(params, global batch)`` is the jitted :func:`pair_sums`; the sums stay on
    device between batches. ``on_batch(k)`` is called after batch ``k`` (tests watch
    the live memory there). No pair: zeros.
    """
    total_v = total_t = total_n = None
    for k, local in enumerate(
        pipeline.eval_batches(
            source, global_batch_size=batch_size, num_threads=num_threads
        )
    ):
        batch = sharding.global_batch(local, mesh)
        sv, st, n = sums_fn(params, batch)
        if total_v is None:
            total_v, total_t, total_n = sv, st, n
        else:
            total_v, total_t, total_n = total_v + sv, total_t + st, total_n + n
        if on_batch is not None:
            on_batch(k)
    if total_v is None:
        raise ValueError("correlation_over: the source has no pairs")
    pairs = float(jax.device_get(total_n))
    denom = max(pairs, 1.0)
    return total_v / denom, total_t / denom, int(pairs)


def make_refresh(
    config: ml_collections.ConfigDict,
    model: CDDSModel,
    pairs: pipeline.Source,
    mesh: jax.sharding.Mesh,
    *,
    log: Callable[[str], None] = print,
) -> Callable[[TrainState, int], TrainState] | None:
    """The epoch-start hook of the dataset sources, or None for the others.

    ``pairs`` are the training pairs prepared as for evaluation (no augmentation);
    ``subset`` reads ``semantics.subset_fraction`` of them per epoch, ``precompute``
    all. The hook returns the state with refreshed statistics.
    """
    source = reading.of(config).w_source
    if source not in kl_statistics.DATASET_SOURCES or not config.ablate.sampling:
        return None
    sums_fn = jax.jit(functools.partial(pair_sums, model=model, config=config))

    def hook(state: TrainState, epoch: int) -> TrainState:
        chosen = pairs
        if source == "subset":
            chosen = IndexedSource(
                pairs,
                subset_indices(
                    len(pairs),
                    float(config.semantics.subset_fraction),
                    seed=int(config.seed),
                    epoch=epoch,
                ),
            )
        start = time.perf_counter()
        s_v, s_t, n = correlation_over(
            state.params,
            chosen,
            sums_fn=sums_fn,
            mesh=mesh,
            batch_size=int(config.eval.batch_size),
            num_threads=int(config.data.num_threads),
        )
        log(
            f"S over {n} training pairs ({source}, epoch {epoch}) in "
            f"{time.perf_counter() - start:.1f} s"
        )
        # The statistics keep the shardings the jitted train step was built with.
        shardings = jax.tree_util.tree_map(lambda x: x.sharding, state.extra)
        new = kl_statistics.refresh_statistics(state.extra, s_v, s_t)
        return state.replace(extra=jax.device_put(new, shardings))

    return hook
