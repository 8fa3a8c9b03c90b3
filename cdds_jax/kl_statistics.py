"""The KL correlation statistics a CDDS train state keeps, and which S builds W.

The paper estimates S from each batch's matched pairs (sec. 3.2) and reports two
cheaper sources as worse (Table 5): S precomputed over the whole training set, and S
from a random subset of it. The source is ``semantics.w_source`` (docs/cdds.md §4.4,
§10.3), one of ``W_SOURCES``:

* ``batch``: this batch's S (the paper's reading);
* ``ema``: an EMA of the batch matrices (the first step: the batch's own);
* ``window``: the mean S of the last ``window_steps`` batches;
* ``subset``: S of a random ``subset_fraction`` of the training pairs, and
  ``precompute``: S of all training pairs, each recomputed at the start of every epoch by a pass over the
  training pairs with the current weights (:func:`refresh_statistics` stores it; the
  pass is ``cdds_jax.dataset_statistics``);
* ``identity``: no S at all: ``W = I`` in training and evaluation, the control for
  "w/o related-semantics identification" that the paper's ablations lack.

Evaluation never sees a test pair's S: it reads the stored statistics
(:func:`evaluation_correlation`). All functions are pure and jit-compatible; the
statistics are a dict of statically shaped arrays stored in ``TrainState.extra``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from cdds_jax import reading, semantics
from cdds_jax.arrays import f32 as _f32

__all__ = [
    "BATCH_SOURCES",
    "DATASET_SOURCES",
    "W_SOURCES",
    "batch_correlation",
    "check_source",
    "evaluation_correlation",
    "init_from_config",
    "init_statistics",
    "refresh_statistics",
    "step_correlation",
    "training_correlation",
    "update_statistics",
]

#: ``semantics.w_source``: which S the training step builds W from.
W_SOURCES = ("batch", "ema", "window", "subset", "precompute", "identity")
#: Sources fed by each training batch's S (:func:`update_statistics`).
BATCH_SOURCES = ("batch", "ema", "window")
#: Sources recomputed by a pass over training pairs (:func:`refresh_statistics`).
DATASET_SOURCES = ("subset", "precompute")


def check_source(source: str) -> str:
    """``source`` if it is one of ``W_SOURCES``; else ``ValueError``."""
    if source not in W_SOURCES:
        raise ValueError(f"`source` must be one of {W_SOURCES}; got {source!r}.")
    return source


def init_statistics(dim: int, *, window_steps: int = 0) -> dict[str, jax.Array]:
    """The S statistics a train state carries (``TrainState.extra``), zero-initialised.

    * ``S_v``, ``S_t`` ``[d, d]``: EMAs of the batch matrices (the first update sets
      them to the first batch's, so there is no bias towards zero), or for the
      dataset sources the latest refreshed S; evaluation builds W from them
      (docs/cdds.md §4.4).
    * ``count`` int32 scalar: number of updates (refreshes) so far.
    * with ``window_steps > 0`` also ``S_v_window``, ``S_t_window``
      ``[window_steps, d, d]``: a ring buffer of the last batches' matrices (static
      shape; slot ``count % window_steps`` is written next).

    Args:
      dim: d.
      window_steps: ring-buffer length (0: no buffer).

    Returns:
      A dict of float32 / int32 arrays.
    """
    if dim < 1 or window_steps < 0:
        raise ValueError(
            f"`dim` must be >= 1 and `window_steps` >= 0; got {dim}, {window_steps}."
        )
    stats = {
        "S_v": jnp.zeros((dim, dim), jnp.float32),
        "S_t": jnp.zeros((dim, dim), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
    }
    if window_steps:
        stats["S_v_window"] = jnp.zeros((window_steps, dim, dim), jnp.float32)
        stats["S_t_window"] = jnp.zeros((window_steps, dim, dim), jnp.float32)
    return stats


def _check_statistics(stats: dict[str, jax.Array], s_v, s_t) -> None:
    d = jnp.shape(stats["S_v"])
    for name, s in (("s_v", s_v), ("s_t", s_t)):
        if jnp.shape(s) != d:
            raise ValueError(
                f"`{name}` must be [d, d] = {d} like the statistics; got {jnp.shape(s)}."
            )


def update_statistics(
    stats: dict[str, jax.Array],
    s_v: jax.typing.ArrayLike,
    s_t: jax.typing.ArrayLike,
    *,
    momentum: float,
) -> dict[str, jax.Array]:
    """The statistics after one more batch (pure; the step stores the result).

    EMA: ``S <- S_batch`` on the first update, else ``m S + (1 - m) S_batch``. Window
    (when present): ``S_batch`` written into slot ``count % window_steps``.

    Args:
      stats: as made by ``init_statistics``.
      s_v, s_t: ``[d, d]`` this batch's matrices.
      momentum: m in [0, 1).

    Returns:
      The new statistics, same structure and shapes.
    """
    _check_statistics(stats, s_v, s_t)
    s_v, s_t = _f32(s_v), _f32(s_t)
    count = stats["count"]
    first = count == 0
    new = {
        "S_v": jnp.where(first, s_v, momentum * stats["S_v"] + (1 - momentum) * s_v),
        "S_t": jnp.where(first, s_t, momentum * stats["S_t"] + (1 - momentum) * s_t),
        "count": count + 1,
    }
    if "S_v_window" in stats:
        slot = count % stats["S_v_window"].shape[0]
        for key, s in (("S_v_window", s_v), ("S_t_window", s_t)):
            new[key] = lax.dynamic_update_index_in_dim(stats[key], s, slot, axis=0)
    return new


def refresh_statistics(
    stats: dict[str, jax.Array], s_v: jax.typing.ArrayLike, s_t: jax.typing.ArrayLike
) -> dict[str, jax.Array]:
    """The statistics holding a freshly computed dataset-level S (``subset`` /
    ``precompute``): ``S_v``, ``S_t`` replaced, ``count`` + 1, the rest unchanged."""
    _check_statistics(stats, s_v, s_t)
    return {
        **stats,
        "S_v": _f32(s_v),
        "S_t": _f32(s_t),
        "count": stats["count"] + 1,
    }


def _window_mean(stats: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Mean of the filled slots of the ring buffers (zeros before any update)."""
    window = stats["S_v_window"].shape[0]
    filled = jnp.minimum(stats["count"], window)
    weight = (jnp.arange(window) < filled).astype(jnp.float32)
    denom = jnp.maximum(filled, 1).astype(jnp.float32)
    mean = lambda buf: jnp.einsum("w,wij->ij", weight, buf) / denom
    return mean(stats["S_v_window"]), mean(stats["S_t_window"])


def training_correlation(
    stats: dict[str, jax.Array],
    s_v: jax.Array,
    s_t: jax.Array,
    *,
    source: str,
) -> tuple[jax.Array, jax.Array]:
    """The ``(S^v, S^t)`` a training step builds W from (``semantics.w_source``).

    * ``"batch"``: this batch's ``s_v``, ``s_t`` (the paper's reading, a noisy estimate
      from B pairs);
    * ``"ema"``: the EMA in ``stats`` (already updated with this batch, so the first
      step uses the batch's own S);
    * ``"window"``: the mean of the last ``window_steps`` batches' matrices (fewer
      before the buffer is full). The batches have equal sizes, so this equals the
      S of all their pairs pooled (up to pairs excluded for an empty side);
    * ``"subset"`` / ``"precompute"``: the refreshed S in ``stats``;
    * ``"identity"``: zeros (W = I is set by the score, which ignores S).

    Args:
      stats: the statistics AFTER ``update_statistics`` with this batch.
      s_v, s_t: ``[d, d]`` this batch's matrices.
      source: one of ``W_SOURCES``.

    Returns:
      ``(S^v, S^t)``, each ``[d, d]`` float32, stop-gradient.
    """
    check_source(source)
    _check_statistics(stats, s_v, s_t)
    if source == "batch":
        out = (_f32(s_v), _f32(s_t))
    elif source in ("ema", *DATASET_SOURCES):
        out = (stats["S_v"], stats["S_t"])
    elif source == "identity":
        out = (jnp.zeros_like(stats["S_v"]), jnp.zeros_like(stats["S_t"]))
    else:
        if "S_v_window" not in stats:
            raise ValueError(
                "source='window' needs statistics made with window_steps > 0."
            )
        out = _window_mean(stats)
    return lax.stop_gradient(out[0]), lax.stop_gradient(out[1])


def evaluation_correlation(
    stats: dict[str, jax.Array], *, source: str
) -> tuple[jax.Array, jax.Array]:
    """The ``(S^v, S^t)`` evaluation builds W from: no test pair ever produces S.

    The window mean when training read a window (``source="window"``); the refreshed S
    for the dataset sources; zeros for ``"identity"`` (W = I, S unused); else the EMA
    (for ``"batch"`` the EMA of the batch matrices stands in for the matched test pairs
    evaluation does not have: the paper's reading forces this choice).
    """
    check_source(source)
    if source == "identity":
        return jnp.zeros_like(stats["S_v"]), jnp.zeros_like(stats["S_t"])
    if source == "window":
        if "S_v_window" not in stats:
            raise ValueError(
                "source='window' needs statistics made with window_steps > 0."
            )
        return _window_mean(stats)
    return stats["S_v"], stats["S_t"]


def batch_correlation(
    image: Mapping[str, jax.Array],
    text: Mapping[str, jax.Array],
    cfg: Any,
    *,
    pair_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(S^v, S^t)`` of a batch's matched pairs, both directions (docs/cdds.md §4.1).

    ``image`` / ``text`` are the decoupler outputs (``s [B, N, d]``, ``mask [B, N]``);
    ``cfg`` is a ``config.semantics`` block (``kl``, ``num_bins``, ``kl_chunk_size``);
    ``pair_mask`` ``[B]`` drops padded pairs.
    """
    kl = functools.partial(
        semantics.kl_correlation,
        estimator=cfg.kl,
        num_bins=cfg.num_bins,
        chunk_size=int(cfg.kl_chunk_size) or None,
        pair_mask=pair_mask,
    )
    s_v = kl(image["s"], image["mask"], text["s"], text["mask"])
    s_t = kl(text["s"], text["mask"], image["s"], image["mask"])
    return s_v, s_t


def step_correlation(
    image: Mapping[str, jax.Array],
    text: Mapping[str, jax.Array],
    stats: dict[str, jax.Array],
    cfg: Any,
    *,
    sampling: bool,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """One training step's KL matrices: ``(S^v, S^t)`` for W, and the new statistics.

    ``image`` / ``text`` are the decoupler outputs (``s [B, N, d]``, ``mask [B, N]``);
    ``cfg`` is a ``config.semantics`` block (``kl``, ``num_bins``, ``kl_chunk_size``,
    ``ema_momentum`` and the reading's ``w_source``, :mod:`cdds_jax.reading`). For the
    batch sources the batch's S (both directions, docs/cdds.md §4.1) updates the EMA /
    window and ``w_source`` picks which S the weights use (§4.4). The dataset sources
    read the refreshed S and leave the statistics as they are; ``identity`` computes
    no S. Without sampling (``ablate.sampling=False``) S is zero and unused.
    """
    source = check_source(reading.of(cfg).w_source)
    d = image["s"].shape[-1]
    s_v = s_t = jnp.zeros((d, d), jnp.float32)
    if sampling and source not in BATCH_SOURCES:
        w_v, w_t = training_correlation(stats, s_v, s_t, source=source)
        return w_v, w_t, stats
    if sampling:
        s_v, s_t = batch_correlation(image, text, cfg)
    else:
        source = "batch"  # S is unused; the statistics still count the steps
    new = update_statistics(stats, s_v, s_t, momentum=cfg.ema_momentum)
    w_v, w_t = training_correlation(new, s_v, s_t, source=source)
    return w_v, w_t, new


def init_from_config(config: Any) -> dict[str, jax.Array]:
    """:func:`init_statistics` for a CDDS config: S^v and S^t (EMAs or refreshed),
    their count and (``w_source="window"``) the window of the last batches' matrices."""
    sc = config.semantics
    window = int(sc.window_steps) if reading.of(sc).w_source == "window" else 0
    return init_statistics(config.model.dim, window_steps=window)
