"""CDDS pair scores, written as per-item retrieval embeddings (paper sec. 3.3-3.4).

The score of image ``a`` and caption ``b`` compares each side's quantile tables with
the other side's distribution samples (docs/cdds.md, 'Scores and losses'):

    s(a, b) = cmp(Q^v_a, X^v_b) + cmp(Q^t_b, X^t_a),
    X^v_b = Q^t_b W_v^T  (caption b's columns mixed into image columns),
    X^t_a = Q^v_a W_t^T  (image a's columns mixed into text columns).

Each term pairs a table of image ``a`` with a table of caption ``b``, so every score is
one dot product of an image embedding (built from ``Q^v_a`` and ``X^t_a``) with a
caption embedding (from ``X^v_b`` and ``Q^t_b``): training scores a ``[B, B]`` batch
and evaluation a ``[n_img, n_cap]`` split with ONE GEMM, never a per-pair tensor, and
both use the same functions here (the train step and the evaluation cannot drift).

The comparison ``cmp`` is ``semantics.table_compare`` (docs/cdds.md, 'Choices the
paper leaves open'):

* ``"cosine"``: cosine of the flattened ``G x d`` tables (the paper's reading). Every
  sorted column shares the same increasing shape, so unrelated i.i.d. samples already
  score ~0.87 (G 8, d 64, 16 tokens) to ~0.99 (G 32, d 512, 197 tokens).
* ``"centred"``: each column's mean over the G levels subtracted before the cosine
  (``table_scale``: also divided by the column's std over the levels). This removes
  each column's location and keeps its shape, which is the part unrelated samples
  share: unrelated i.i.d. samples score HIGHER than with ``cosine`` (~0.93 at the demo
  sizes), and a shift shared by related samples is invisible to it.
* ``"level_centred"``: at each quantile level the mean over the d columns subtracted
  before the cosine (``table_scale``: also divided by the level's std over the
  columns). This removes the shape every column shares and keeps how each column
  departs from it: unrelated i.i.d. samples score ~0, samples that share per-column
  shifts score high.
* ``"w2"``: ``-(1 / (G d)) ||A - B||_F^2``: minus the squared 1-D Wasserstein-2
  distance per column (the quantile functions on the G-level grid), averaged over the
  columns. Unbounded below, in squared feature units (the hinge margin is in the same
  units). ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 <a, b>`` with the squared norms as two
  extra coordinates keeps it one GEMM.

``table_scale`` divides by ``std + SCALE_EPS``; norms are clamped at
``arrays.NORM_EPS``, so constant or zero tables give finite scores and gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cdds_jax import reading, semantics
from cdds_jax.arrays import as_mask, check_tokens, f32, safe_norm, safe_sqrt

__all__ = [
    "SCALE_EPS",
    "TABLE_COMPARES",
    "Embeddings",
    "ScoreOptions",
    "caption_embeddings",
    "correlation_weights",
    "image_embeddings",
    "pair_scores",
    "pooled_cosine_embeddings",
    "retrieval_embeddings",
    "score_gemm",
    "score_statistics",
    "weights_from_scalars",
]

#: ``semantics.table_compare`` values.
TABLE_COMPARES = ("cosine", "centred", "level_centred", "w2")
#: Added to a column's (level's) std before dividing by it (``table_scale=True``), in
#: feature units: a constant column then becomes zeros instead of 0 / 0.
SCALE_EPS = 1e-6

_HIGHEST = lax.Precision.HIGHEST


class ScoreOptions(NamedTuple):
    """How tables become scores (static; hashable so it can be a jit static arg).

    Attributes:
      sampling: False = ``ablate.sampling=False``: the mean-pooled cosine of the
        semantic tokens replaces the distributional score (no tables, no W).
      num_levels: G quantile levels.
      table_compare: one of ``TABLE_COMPARES``.
      table_scale: divide the centred tables by their spread (``centred`` and
        ``level_centred`` only).
      tau_mode: ``semantics.TAU_MODES`` entry of the soft-threshold temperature.
      tau: the fixed temperature, or the multiplier of the ``relative`` one.
      identity_weights: ``semantics.w_source="identity"``: W = I on both sides (the
        control without related-semantics identification); S and alpha are unused.
    """

    sampling: bool = True
    num_levels: int = 32
    table_compare: str = "cosine"
    table_scale: bool = False
    tau_mode: str = "fixed"
    tau: float = 1.0
    identity_weights: bool = False

    @classmethod
    def from_config(cls, config: Any) -> ScoreOptions:
        """The score function of a CDDS config (``semantics.*`` through its reading,
        ``ablate.sampling``), shared by the train step and the evaluation; validated."""
        sc = config.semantics
        r = reading.of(sc)
        return cls(
            sampling=bool(config.ablate.sampling),
            num_levels=int(sc.num_levels),
            table_compare=r.table_compare,
            table_scale=r.table_scale,
            tau_mode=r.tau_mode,
            tau=float(sc.tau),
            identity_weights=r.w_source == "identity",
        ).validate()

    def validate(self) -> ScoreOptions:
        """Returns ``self``; raises ``ValueError`` naming a bad field."""
        if self.table_compare not in TABLE_COMPARES:
            raise ValueError(
                f"table_compare must be one of {TABLE_COMPARES}; got "
                f"{self.table_compare!r}."
            )
        if self.tau_mode not in semantics.TAU_MODES:
            raise ValueError(
                f"tau_mode must be one of {semantics.TAU_MODES}; got {self.tau_mode!r}."
            )
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1; got {self.num_levels}.")
        if self.table_scale and self.table_compare not in ("centred", "level_centred"):
            raise ValueError(
                "table_scale=True applies to table_compare 'centred' or "
                f"'level_centred'; got {self.table_compare!r}."
            )
        return self


class Embeddings(NamedTuple):
    """Per-item retrieval embeddings and the tables they came from.

    ``image @ caption.T`` are the scores. ``q_v`` / ``q_t`` are the raw quantile tables
    (``None`` without sampling or for an absent side), needed by L_x.
    """

    image: jax.Array | None  # [Bi, E]
    caption: jax.Array | None  # [Bt, E]
    q_v: jax.Array | None  # [Bi, G, d]
    q_t: jax.Array | None  # [Bt, G, d]


# ----------------------------------------------------------------------------------------
# Table features
# ----------------------------------------------------------------------------------------


def _check_table(q: jax.typing.ArrayLike, w: jax.typing.ArrayLike, name: str) -> None:
    qs = jnp.shape(q)
    if len(qs) != 3:
        raise ValueError(f"`{name}` must be [B, G, d]; got shape {qs}.")
    if jnp.shape(w) != (qs[2], qs[2]):
        raise ValueError(
            f"the weights must be [d, d] = ({qs[2]}, {qs[2]}) to match `{name}` {qs}; "
            f"got shape {jnp.shape(w)}."
        )


def _centre(table: jax.Array, axis: int, scale: bool) -> jax.Array:
    """``table`` minus its mean over ``axis`` (1: levels, 2: columns), optionally
    divided by its std over that axis plus ``SCALE_EPS``."""
    centred = table - jnp.mean(table, axis=axis, keepdims=True)
    if scale:
        std = safe_sqrt(jnp.mean(jnp.square(centred), axis=axis, keepdims=True))
        centred = centred / (std + SCALE_EPS)
    return centred


def _features(table: jax.Array, compare: str, scale: bool) -> jax.Array:
    """``[B, G, d] -> [B, G d]``: the vector one table contributes to its embedding.

    Unit-norm (clamped) for the cosine family; ``vec / sqrt(G d)`` for ``w2``.
    """
    b, g, d = table.shape
    if compare == "centred":
        table = _centre(table, 1, scale)
    elif compare == "level_centred":
        table = _centre(table, 2, scale)
    flat = table.reshape(b, g * d)
    if compare == "w2":
        return flat / jnp.sqrt(jnp.float32(g * d))
    return flat / safe_norm(flat, axis=-1)[:, None]


def _sq(x: jax.Array) -> jax.Array:
    return jnp.sum(x * x, axis=-1, keepdims=True)


def image_embeddings(
    q_v: jax.typing.ArrayLike,
    w_t: jax.typing.ArrayLike,
    *,
    compare: str = "cosine",
    scale: bool = False,
) -> jax.Array:
    """Per-image retrieval embeddings; ``@ caption_embeddings(...).T`` = the scores.

    Built from the two tables of image ``a`` that enter its scores: ``Q^v_a`` and
    ``X^t_a = Q^v_a W_t^T``. Cosine family: ``[f(Q^v_a), f(X^t_a)]`` with ``f`` the
    unit-norm flattened (centred) table. ``w2``: ``[2 f(Q^v_a), 2 f(X^t_a), -(|f(Q^v_a)|^2
    + |f(X^t_a)|^2), 1]`` with ``f = vec / sqrt(G d)``.

    Args:
      q_v: ``[Bi, G, d]`` image quantile tables.
      w_t: ``[d, d]`` text-direction weights ``W^t`` (rows: text columns).
      compare: one of ``TABLE_COMPARES``.
      scale: ``table_scale`` (centred comparisons only).

    Returns:
      ``[Bi, 2 G d]`` float32 (``[Bi, 2 G d + 2]`` for ``w2``).
    """
    _check_table(q_v, w_t, "q_v")
    q = f32(q_v)
    x_t = jnp.einsum("bgj,ij->bgi", q, f32(w_t), precision=_HIGHEST)  # X^t = Q^v W_t^T
    a1, a2 = _features(q, compare, scale), _features(x_t, compare, scale)
    if compare != "w2":
        return jnp.concatenate([a1, a2], axis=-1)
    ones = jnp.ones_like(a1[:, :1])
    return jnp.concatenate([2.0 * a1, 2.0 * a2, -(_sq(a1) + _sq(a2)), ones], axis=-1)


def caption_embeddings(
    q_t: jax.typing.ArrayLike,
    w_v: jax.typing.ArrayLike,
    *,
    compare: str = "cosine",
    scale: bool = False,
) -> jax.Array:
    """Per-caption retrieval embeddings (the partner of ``image_embeddings``).

    From ``X^v_b = Q^t_b W_v^T`` and ``Q^t_b``: ``[f(X^v_b), f(Q^t_b)]``; for ``w2``
    ``[f(X^v_b), f(Q^t_b), 1, -(|f(X^v_b)|^2 + |f(Q^t_b)|^2)]``.

    Args:
      q_t: ``[Bt, G, d]`` caption quantile tables.
      w_v: ``[d, d]`` image-direction weights ``W^v`` (rows: image columns).
      compare: one of ``TABLE_COMPARES``.
      scale: ``table_scale`` (centred comparisons only).

    Returns:
      ``[Bt, 2 G d]`` float32 (``[Bt, 2 G d + 2]`` for ``w2``).
    """
    _check_table(q_t, w_v, "q_t")
    q = f32(q_t)
    x_v = jnp.einsum("bgj,ij->bgi", q, f32(w_v), precision=_HIGHEST)  # X^v = Q^t W_v^T
    b1, b2 = _features(x_v, compare, scale), _features(q, compare, scale)
    if compare != "w2":
        return jnp.concatenate([b1, b2], axis=-1)
    ones = jnp.ones_like(b1[:, :1])
    return jnp.concatenate([b1, b2, ones, -(_sq(b1) + _sq(b2))], axis=-1)


def score_gemm(
    image_emb: jax.typing.ArrayLike, caption_emb: jax.typing.ArrayLike
) -> jax.Array:
    """``[Bi, E] x [Bt, E] -> [Bi, Bt]`` float32 scores at ``Precision.HIGHEST``.

    HIGHEST because the ``w2`` embeddings cancel large terms and a TF32 / bf16 pass
    would show; on CPU it costs nothing.
    """
    es, cs = jnp.shape(image_emb), jnp.shape(caption_emb)
    if len(es) != 2 or len(cs) != 2 or es[1] != cs[1]:
        raise ValueError(f"embeddings must be [Bi, E] and [Bt, E]; got {es} and {cs}.")
    return jnp.einsum("ae,be->ab", f32(image_emb), f32(caption_emb), precision=_HIGHEST)


def pair_scores(
    q_v: jax.typing.ArrayLike,
    q_t: jax.typing.ArrayLike,
    w_v: jax.typing.ArrayLike,
    w_t: jax.typing.ArrayLike,
    *,
    compare: str = "cosine",
    scale: bool = False,
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """All image-caption scores ``s(a, b) = cmp(Q^v_a, X^v_b) + cmp(Q^t_b, X^t_a)``.

    ONE GEMM of ``image_embeddings`` and ``caption_embeddings``; no per-pair tensor is
    formed. Cosine scores lie in ``[-2, 2]``; ``w2`` scores are ``<= 0``.

    Args:
      q_v: ``[Bi, G, d]`` image quantile tables.
      q_t: ``[Bt, G, d]`` caption quantile tables.
      w_v: ``[d, d]`` image-direction weights.
      w_t: ``[d, d]`` text-direction weights.
      compare: one of ``TABLE_COMPARES``.
      scale: ``table_scale``.
      precision: precision of the score GEMM (default: backend default).

    Returns:
      ``[Bi, Bt]`` float32.
    """
    qvs, qts = jnp.shape(q_v), jnp.shape(q_t)
    if len(qvs) != 3 or len(qts) != 3 or qvs[1:] != qts[1:]:
        raise ValueError(
            f"`q_v` [Bi, G, d] and `q_t` [Bt, G, d] must share G and d; got {qvs} "
            f"and {qts}."
        )
    if compare not in TABLE_COMPARES:
        raise ValueError(f"`compare` must be one of {TABLE_COMPARES}; got {compare!r}.")
    e_v = image_embeddings(q_v, w_t, compare=compare, scale=scale)
    e_t = caption_embeddings(q_t, w_v, compare=compare, scale=scale)
    return jnp.matmul(e_v, e_t.T, precision=precision)


# ----------------------------------------------------------------------------------------
# Mean-pooled cosine (ablate.sampling=False)
# ----------------------------------------------------------------------------------------


def pooled_cosine_embeddings(
    x: jax.typing.ArrayLike, mask: jax.typing.ArrayLike
) -> jax.Array:
    """Masked mean over tokens, L2-normalised (VSE++-style score for ``sampling=False``).

    The score matrix is ``pooled_cosine_embeddings(V^s, v_mask) @
    pooled_cosine_embeddings(T^s, t_mask).T``. The norm is clamped at ``NORM_EPS``; a
    sample without valid tokens gives the zero vector (finite gradients).

    Args:
      x: ``[B, N, d]`` tokens.
      mask: ``[B, N]`` validity.

    Returns:
      ``[B, d]`` float32.
    """
    check_tokens(x, mask, "x", "mask")
    m = as_mask(mask)
    xv = jnp.where(m[:, :, None], f32(x), 0.0)
    n = jnp.maximum(jnp.sum(m, axis=1).astype(jnp.float32), 1.0)
    mean = jnp.sum(xv, axis=1) / n[:, None]
    return mean / safe_norm(mean, axis=-1)[:, None]


# ----------------------------------------------------------------------------------------
# What the driver calls
# ----------------------------------------------------------------------------------------


def correlation_weights(
    s_v: jax.typing.ArrayLike,
    s_t: jax.typing.ArrayLike,
    alpha_v: jax.typing.ArrayLike,
    alpha_t: jax.typing.ArrayLike,
    *,
    options: ScoreOptions,
    log_tau: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(W^v, W^t)``: the soft-thresholded correlation weights of both directions.

    Args:
      s_v, s_t: ``[d, d]`` KL matrices (image -> text rows, text -> image rows).
      alpha_v, alpha_t: ``[d]`` threshold multipliers.
      options: the temperature mode and value.
      log_tau: learnable scalar for ``tau_mode="learned"``.

    Returns:
      Two ``[d, d]`` float32 row-stochastic matrices.
    """
    temp = lambda s: semantics.row_temperature(
        s, mode=options.tau_mode, tau=options.tau, log_tau=log_tau
    )
    w_v = semantics.soft_threshold(s_v, alpha_v, tau=temp(s_v))
    w_t = semantics.soft_threshold(s_t, alpha_t, tau=temp(s_t))
    return w_v, w_t


def weights_from_scalars(
    scalars: Mapping[str, jax.Array],
    s_v: jax.Array,
    s_t: jax.Array,
    options: ScoreOptions,
) -> tuple[jax.Array, jax.Array] | None:
    """``(W^v, W^t)`` from S and the model's learned scalars (``alpha_v``,
    ``alpha_t``, optional ``log_tau``); ``(I, I)`` with ``identity_weights``; None
    without sampling (no tables, no W)."""
    if not options.sampling:
        return None
    if options.identity_weights:
        eye = jnp.eye(jnp.shape(s_v)[0], dtype=jnp.float32)
        return eye, eye
    return correlation_weights(
        s_v,
        s_t,
        scalars["alpha_v"],
        scalars["alpha_t"],
        options=options,
        log_tau=scalars.get("log_tau"),
    )


def retrieval_embeddings(
    v_s: jax.typing.ArrayLike | None,
    v_mask: jax.typing.ArrayLike | None,
    t_s: jax.typing.ArrayLike | None,
    t_mask: jax.typing.ArrayLike | None,
    weights: tuple[jax.Array, jax.Array] | None,
    *,
    options: ScoreOptions,
) -> Embeddings:
    """Per-item embeddings whose dot products are the CDDS scores, for either side.

    With ``options.sampling`` the quantile tables of the semantic tokens are embedded
    by ``image_embeddings`` / ``caption_embeddings``; without, the mean-pooled cosine
    embeddings (``weights`` is then unused and may be None). Pass ``None`` for the
    tokens of a side to skip it (evaluation embeds images and captions apart).

    Args:
      v_s: ``[Bi, P, d]`` image semantic tokens or None; v_mask ``[Bi, P]``.
      t_s: ``[Bt, L, d]`` caption semantic tokens or None; t_mask ``[Bt, L]``.
      weights: ``(W^v, W^t)`` from ``correlation_weights``.
      options: the score's options.

    Returns:
      ``Embeddings`` (fields of an absent side are None).
    """
    options.validate()
    if not options.sampling:
        ie = None if v_s is None else pooled_cosine_embeddings(v_s, v_mask)
        ce = None if t_s is None else pooled_cosine_embeddings(t_s, t_mask)
        return Embeddings(ie, ce, None, None)
    if weights is None:
        raise ValueError("sampling=True needs `weights` = (W^v, W^t).")
    w_v, w_t = weights
    kw = dict(compare=options.table_compare, scale=options.table_scale)
    q_v = q_t = ie = ce = None
    if v_s is not None:
        q_v = semantics.quantile_table(v_s, v_mask, options.num_levels)
        ie = image_embeddings(q_v, w_t, **kw)
    if t_s is not None:
        q_t = semantics.quantile_table(t_s, t_mask, options.num_levels)
        ce = caption_embeddings(q_t, w_v, **kw)
    return Embeddings(ie, ce, q_v, q_t)


def score_statistics(scores: jax.typing.ArrayLike) -> dict[str, jax.Array]:
    """Spread of a training score matrix (the collapse guard's train-side signal).

    ``scores[a, b]`` with positives on the diagonal (pair a = image a, caption a).

    Returns:
      float32 scalars: ``score_std`` (population std of all ``B x B`` entries: near 0
      when the scores collapsed to one value), ``score_pos`` (mean of the diagonal),
      ``score_mean`` (mean of all entries) and ``score_margin = score_pos -
      score_mean``.
    """
    ss = jnp.shape(scores)
    if len(ss) != 2 or ss[0] != ss[1]:
        raise ValueError(f"`scores` must be square [B, B]; got shape {ss}.")
    s = f32(scores)
    pos = jnp.mean(jnp.diagonal(s))
    mean = jnp.mean(s)
    return {
        "score_std": jnp.std(s),
        "score_pos": pos,
        "score_mean": mean,
        "score_margin": pos - mean,
    }
