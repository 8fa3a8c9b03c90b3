"""The KL correlation statistics a CDDS train state keeps, and which S builds W.

The paper estimates S from each batch's matched pairs (sec. 3.2); 64 pairs give a noisy
S, so the source of S is a choice (``semantics.w_source``, docs/cdds.md, 'Choices the
paper leaves open'): this batch's S, an EMA of the batch matrices, or their mean over
a window of the last batches. Evaluation never sees a test pair's S: it reads the
stored statistics. All functions are pure and jit-compatible; the statistics are a
dict of statically shaped arrays stored in ``TrainState.extra``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from cdds_jax import semantics
from cdds_jax.arrays import f32 as _f32

__all__ = [
    "W_SOURCES",
    "evaluation_correlation",
    "init_from_config",
    "init_statistics",
    "step_correlation",
    "training_correlation",
    "update_statistics",
]

#: ``semantics.w_source``: which S the training step builds W from.
W_SOURCES = ("batch", "ema", "window")


def init_statistics(dim: int, *, window_steps: int = 0) -> dict[str, jax.Array]:
    """The S statistics a train state carries (``TrainState.extra``), zero-initialised.

    * ``S_v``, ``S_t`` ``[d, d]``: EMAs of the batch matrices (the first update sets
      them to the first batch's, so there is no bias towards zero); evaluation builds W
      from them (docs/cdds.md, 'Choices the paper leaves open').
    * ``count`` int32 scalar: number of updates so far.
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
      S of all their pairs pooled (up to pairs excluded for an empty side).

    Args:
      stats: the statistics AFTER ``update_statistics`` with this batch.
      s_v, s_t: ``[d, d]`` this batch's matrices.
      source: one of ``W_SOURCES``.

    Returns:
      ``(S^v, S^t)``, each ``[d, d]`` float32, stop-gradient.
    """
    if source not in W_SOURCES:
        raise ValueError(f"`source` must be one of {W_SOURCES}; got {source!r}.")
    _check_statistics(stats, s_v, s_t)
    if source == "batch":
        out = (_f32(s_v), _f32(s_t))
    elif source == "ema":
        out = (stats["S_v"], stats["S_t"])
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

    The window mean when training read a window (``source="window"``), else the EMA
    (for ``"batch"`` the EMA stands in for the batch matrices evaluation lacks).
    """
    if source not in W_SOURCES:
        raise ValueError(f"`source` must be one of {W_SOURCES}; got {source!r}.")
    if source == "window":
        if "S_v_window" not in stats:
            raise ValueError(
                "source='window' needs statistics made with window_steps > 0."
            )
        return _window_mean(stats)
    return stats["S_v"], stats["S_t"]


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
    ``ema_momentum``, ``w_source``). The batch's S (both directions, docs/cdds.md §4.1)
    updates the EMA / window; ``w_source`` picks which S the weights use (§4.4).
    Without sampling (``ablate.sampling=False``) S is zero and unused.
    """
    if sampling:
        kl = functools.partial(
            semantics.kl_correlation,
            estimator=cfg.kl,
            num_bins=cfg.num_bins,
            chunk_size=int(cfg.kl_chunk_size) or None,
        )
        s_v = kl(image["s"], image["mask"], text["s"], text["mask"])
        s_t = kl(text["s"], text["mask"], image["s"], image["mask"])
    else:
        d = image["s"].shape[-1]
        s_v = s_t = jnp.zeros((d, d), jnp.float32)
    new = update_statistics(stats, s_v, s_t, momentum=cfg.ema_momentum)
    w_v, w_t = training_correlation(new, s_v, s_t, source=cfg.w_source)
    return w_v, w_t, new


def init_from_config(config: Any) -> dict[str, jax.Array]:
    """:func:`init_statistics` for a CDDS config: EMAs of S^v and S^t, their count and
    (``semantics.w_source="window"``) the window of the last batches' matrices."""
    sc = config.semantics
    window = int(sc.window_steps) if sc.w_source == "window" else 0
    return init_statistics(config.model.dim, window_steps=window)
