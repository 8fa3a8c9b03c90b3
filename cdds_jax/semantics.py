"""CDDS related-semantics identification and distribution sampling (paper sec. 3.2-3.3).

Every function here is a pure, jit-compatible function of token arrays, so any
similarity head can reuse it (the paper's plug-and-play claim, Table 4).

Conventions (docs/cdds.md, 'Notation'):

* image tokens ``v`` ``[B, P, d]`` with mask ``v_mask`` ``[B, P]``; caption tokens ``t``
  ``[B, L, d]`` with mask ``t_mask`` ``[B, L]`` (right padded). Masks may be bool, int or
  float; any non-zero entry counts as valid.
* A *column* is one feature dimension; column ``i`` of a sample is the 1-D empirical
  distribution of its values over the sample's valid tokens.
* All statistics are computed in float32 and every function returns float32, whatever
  the input dtype (bfloat16 inputs are upcast first).

Pipeline (what the driver calls):

1. ``S^v = kl_correlation(V^s, v_mask, T^s, t_mask)`` and
   ``S^t = kl_correlation(T^s, t_mask, V^s, v_mask)`` (``[d, d]``, stop-gradient).
2. The S that W is built from: this batch's, their EMA or a window of batches
   (``cdds_jax.kl_statistics``).
3. ``W^v = soft_threshold(S^v, alpha_v, tau=row_temperature(S^v, ...))``, likewise W^t.
4. ``Q^v = quantile_table(V^s, v_mask, G)``, ``Q^t = quantile_table(T^s, t_mask, G)``;
   the scores of the tables are in ``cdds_jax.scores``.
5. For L_x: ``V^x = x_semantic_tokens(V^s, v_mask, Q^t, W^v)`` and
   ``T^x = x_semantic_tokens(T^s, t_mask, Q^v, W^t)``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from cdds_jax.arrays import as_mask as _as_mask
from cdds_jax.arrays import check_tokens as _check_tokens
from cdds_jax.arrays import f32 as _f32
from cdds_jax.arrays import safe_sqrt as _safe_sqrt

__all__ = [
    "GAUSSIAN_VAR_EPS",
    "HISTOGRAM_EPS",
    "HISTOGRAM_WIDTH_FLOOR",
    "LOG_TAU_RANGE",
    "SPREAD_EPS",
    "TAU_MODES",
    "kl_correlation",
    "quantile_table",
    "row_temperature",
    "soft_threshold",
    "x_semantic_tokens",
]

#: Added to every soft-histogram count before renormalising over bins (docs/cdds.md, 'The KL correlation matrix').
HISTOGRAM_EPS = 1e-6
#: Relative floor of the histogram bin width: ``w >= HISTOGRAM_WIDTH_FLOOR * max(1, |lo|, |hi|)``
#: so a degenerate support (``hi == lo``: all values equal) gives a finite, non-zero width.
HISTOGRAM_WIDTH_FLOOR = 1e-6
#: Added to every per-column variance of the ``gaussian`` estimator: ``std = sqrt(var + eps)``.
GAUSSIAN_VAR_EPS = 1e-6
#: Floor of a row's spread in the ``relative`` temperature: ``tau_i = tau * max(std_j
#: S_ij, SPREAD_EPS)`` (nats). A constant row (no information) then keeps a finite
#: temperature: its softmax is uniform whatever tau, and W falls back to the argmax.
SPREAD_EPS = 1e-6
#: Clamp of the ``learned`` log-temperature: ``tau = exp(clip(log_tau, *LOG_TAU_RANGE))``
#: so that ``-S / tau`` stays finite in float32 (S is a few nats; exp(-10) = 4.5e-5).
LOG_TAU_RANGE = (-10.0, 10.0)

#: ``semantics.tau_mode``: where the softmax temperature of p(j|i) comes from.
TAU_MODES = ("fixed", "relative", "learned")

_HIGHEST = lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _column_order(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-column sorting permutation, valid tokens first (ascending, ties by position).

    Args:
      x: ``[B, N, d]`` float32 (used only as a sort key: no gradient).
      mask: ``[B, N]`` bool.

    Returns:
      ``perm [B, N, d]`` int32: ``x[b, perm[b, r, i], i]`` is the ``r``-th smallest valid
      value of column ``i``; invalid tokens occupy ranks ``n_b .. N - 1``.
    """
    # +inf keys put padding last without ever entering the values (so no inf * 0).
    key = jnp.where(mask[:, :, None], lax.stop_gradient(x), jnp.inf)
    iota = lax.broadcasted_iota(jnp.int32, x.shape, 1)
    _, perm = lax.sort((key, iota), dimension=1, is_stable=True, num_keys=1)
    return perm


def _interp_positions(
    numer: jax.Array, denom: jax.Array | int, upper: jax.Array | int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Linear-interpolation indices for the position ``numer / denom`` in ``[0, upper]``.

    Integer arithmetic (floor division and remainder) keeps integral positions exact:
    a float quotient can come out as ``2.9999998`` (XLA rewrites division by a constant
    as a multiplication), which would blend two neighbours instead of hitting one.

    Args:
      numer: int32 numerators (any shape); denom: positive int32 denominators and
        upper: int32 upper clamps, both broadcastable to ``numer``.

    Returns:
      ``(i0, i1, frac)``: int32 neighbours and float32 weight of ``i1``.
    """
    i0 = jnp.floor_divide(numer, denom)
    frac = jnp.remainder(numer, denom).astype(jnp.float32) / jnp.asarray(
        denom, jnp.float32
    )
    below = numer <= 0
    above = i0 >= upper
    frac = jnp.where(below | above, 0.0, frac)
    i0 = jnp.clip(i0, 0, upper)
    i1 = jnp.minimum(i0 + 1, upper)
    return i0, i1, frac


# ----------------------------------------------------------------------------------------
# 1. KL correlation matrix (paper sec. 3.2)
# ----------------------------------------------------------------------------------------


def _pair_histograms(
    x: jax.Array, xm: jax.Array, y: jax.Array, ym: jax.Array, num_bins: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Soft histograms of one matched pair on its shared support.

    Args:
      x: ``[N, d]`` float32, xm: ``[N]`` bool; y: ``[M, d]`` float32, ym: ``[M]`` bool.
      num_bins: K.

    Returns:
      ``(P, log P, log Q)``, each ``[d, K]``: P for the columns of x, Q for those of y.
    """
    big = jnp.asarray(jnp.inf, jnp.float32)
    lo = jnp.minimum(
        jnp.min(jnp.where(xm[:, None], x, big)), jnp.min(jnp.where(ym[:, None], y, big))
    )
    hi = jnp.maximum(
        jnp.max(jnp.where(xm[:, None], x, -big)),
        jnp.max(jnp.where(ym[:, None], y, -big)),
    )
    # No valid token on either side: any finite support (the pair is excluded later).
    any_valid = jnp.any(xm) | jnp.any(ym)
    lo = jnp.where(any_valid, lo, 0.0)
    hi = jnp.where(any_valid, hi, 0.0)
    scale = jnp.maximum(1.0, jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
    width = jnp.maximum((hi - lo) / num_bins, HISTOGRAM_WIDTH_FLOOR * scale)
    centres = lo + (jnp.arange(num_bins, dtype=jnp.float32) + 0.5) * width  # [K]

    def log_hist(z: jax.Array, zm: jax.Array) -> jax.Array:
        z = jnp.where(zm[:, None], z, lo)  # padding may hold anything (even NaN)
        u = (z[:, :, None] - centres) / width  # [N, d, K]
        h = jnp.einsum("n,ndk->dk", zm.astype(jnp.float32), jnp.exp(-0.5 * u * u))
        h = h + HISTOGRAM_EPS
        return jnp.log(h) - jnp.log(jnp.sum(h, axis=-1, keepdims=True))

    log_p = log_hist(x, xm)
    log_q = log_hist(y, ym)
    return jnp.exp(log_p), log_p, log_q


def _histogram_kl(x, xm, y, ym, weight, n_eff, num_bins, chunk_size):
    fn = lambda args: _pair_histograms(*args, num_bins)
    if chunk_size is None:
        p, log_p, log_q = jax.vmap(fn)((x, xm, y, ym))
    else:
        # lax.map with batch_size vmaps over chunks and scans the chunks, so the
        # [chunk, tokens, d, K] soft assignment is the largest live buffer.
        p, log_p, log_q = lax.map(fn, (x, xm, y, ym), batch_size=chunk_size)
    # S^a = rowsum(P log P) 1^T - P (log Q)^T, summed over pairs: the cross term is ONE
    # GEMM contracting over (pair, bin), so no [B, d, d] tensor is formed.
    neg_entropy = jnp.sum(p * log_p, axis=-1)  # [B, d]
    row = jnp.einsum("a,ai->i", weight, neg_entropy, precision=_HIGHEST)
    cross = jnp.einsum(
        "aik,ajk->ij", weight[:, None, None] * p, log_q, precision=_HIGHEST
    )
    return (row[:, None] - cross) / n_eff


def _masked_moments(z, zm, n, shift):
    """Per-column mean (minus ``shift [B]``) and variance over valid tokens: ``[B, d]``."""
    valid = zm[:, :, None]
    denom = jnp.maximum(n, 1.0)[:, None]
    mean = jnp.sum(jnp.where(valid, z, 0.0), axis=1) / denom
    var = (
        jnp.sum(jnp.where(valid, jnp.square(z - mean[:, None, :]), 0.0), axis=1) / denom
    )
    return mean - shift[:, None], var


def _gaussian_kl(x, xm, y, ym, nx, ny, weight, n_eff):
    d = x.shape[-1]
    # KL is invariant to shifting both columns of a pair by the same scalar; centring on
    # the pair's pooled mean reduces cancellation in the expanded GEMM form below.
    total = jnp.sum(jnp.where(xm[:, :, None], x, 0.0), axis=(1, 2)) + jnp.sum(
        jnp.where(ym[:, :, None], y, 0.0), axis=(1, 2)
    )
    shift = total / jnp.maximum(d * (nx + ny), 1.0)
    mx, vx = _masked_moments(x, xm, nx, shift)
    my, vy = _masked_moments(y, ym, ny, shift)
    s2x = vx + GAUSSIAN_VAR_EPS
    s2y = vy + GAUSSIAN_VAR_EPS
    u = 0.5 / s2y  # [B, d]
    # KL_ij = 1/2 log s2y_j - 1/2 log s2x_i + (s2x_i + mx_i^2) u_j - 2 mx_i my_j u_j
    #         + my_j^2 u_j - 1/2, summed over pairs with weights.
    row = jnp.einsum("a,ai->i", weight, -0.5 * jnp.log(s2x), precision=_HIGHEST)
    col = jnp.einsum(
        "a,aj->j", weight, 0.5 * jnp.log(s2y) + my * my * u - 0.5, precision=_HIGHEST
    )
    lhs = jnp.stack([s2x + mx * mx, mx], axis=1) * weight[:, None, None]  # [B, 2, d]
    rhs = jnp.stack([u, -2.0 * my * u], axis=1)  # [B, 2, d]
    cross = jnp.einsum("aci,acj->ij", lhs, rhs, precision=_HIGHEST)
    return (row[:, None] + col[None, :] + cross) / n_eff


def kl_correlation(
    v_s: jax.typing.ArrayLike,
    v_mask: jax.typing.ArrayLike,
    t_s: jax.typing.ArrayLike,
    t_mask: jax.typing.ArrayLike,
    *,
    estimator: Literal["histogram", "gaussian"] = "histogram",
    num_bins: int = 16,
    pair_mask: jax.typing.ArrayLike | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    """Batch KL correlation matrix between the columns of two modalities (paper sec. 3.2).

    ``S[i, j] = mean_a KL(C^v_{a,i} || C^t_{a,j})`` over the matched pairs ``a`` (row
    ``a`` of ``v_s`` with row ``a`` of ``t_s``), where ``C^v_{a,i}`` is column ``i`` of
    ``v_s[a]`` over its valid tokens and ``C^t_{a,j}`` column ``j`` of ``t_s[a]`` over its
    valid words. The text->image matrix is ``kl_correlation(t_s, t_mask, v_s, v_mask)``.

    Estimators:

    * ``"histogram"``: per pair, one support shared by all columns of both modalities,
      ``[lo, hi]`` = min / max over the valid values; ``K = num_bins`` bins of width
      ``w = (hi - lo) / K``, floored at ``HISTOGRAM_WIDTH_FLOOR * max(1, |lo|, |hi|)``
      (a constant pair then gives identical histograms, KL = 0); centres
      ``lo + (k + 0.5) w``; Gaussian soft counts ``sum_n exp(-((x - c_k) / w)^2 / 2)``
      plus ``HISTOGRAM_EPS``, renormalised over bins. Memory ``[B, N, d, K]`` floats,
      or ``[chunk_size, N, d, K]`` with ``chunk_size``.
    * ``"gaussian"``: closed-form KL between per-column Gaussians (population mean and
      ``std = sqrt(var + GAUSSIAN_VAR_EPS)``), summed over pairs as GEMMs.

    Pairs are excluded (weight 0) when ``pair_mask`` is False or when either side has no
    valid token (e.g. an empty caption): they contribute nothing and do not count in the
    mean. If no pair remains, ``S`` is all zeros. Statistics are float32 with the
    GEMMs at ``Precision.HIGHEST``; tiny negative entries (``~1e-6``) are possible from
    rounding and are not clamped.

    Args:
      v_s: ``[B, P, d]`` row-modality tokens (any float dtype).
      v_mask: ``[B, P]`` validity of ``v_s`` (bool / int / float; non-zero = valid).
      t_s: ``[B, L, d]`` column-modality tokens, matched row-for-row with ``v_s``.
      t_mask: ``[B, L]`` validity of ``t_s``.
      estimator: ``"histogram"`` (default) or ``"gaussian"``.
      num_bins: K, histogram bins (static).
      pair_mask: optional ``[B]``; False excludes a pair (e.g. padding).
      chunk_size: histogram only: process this many pairs at a time (static).

    Returns:
      ``S [d, d]`` float32 under ``lax.stop_gradient``.
    """
    b, _, d = _check_tokens(v_s, v_mask, "v_s", "v_mask")
    bt, _, dt = _check_tokens(t_s, t_mask, "t_s", "t_mask")
    if bt != b or dt != d:
        raise ValueError(
            f"`t_s` {jnp.shape(t_s)} must share B and d with `v_s` {jnp.shape(v_s)}."
        )
    if estimator not in ("histogram", "gaussian"):
        raise ValueError(
            f"`estimator` must be 'histogram' or 'gaussian'; got {estimator!r}."
        )
    if num_bins < 1:
        raise ValueError(f"`num_bins` must be >= 1; got {num_bins}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1 or None; got {chunk_size}.")

    x = _f32(lax.stop_gradient(v_s))
    y = _f32(lax.stop_gradient(t_s))
    xm, ym = _as_mask(v_mask), _as_mask(t_mask)
    nx = jnp.sum(xm, axis=1).astype(jnp.float32)
    ny = jnp.sum(ym, axis=1).astype(jnp.float32)
    valid = (nx > 0) & (ny > 0)
    if pair_mask is not None:
        if jnp.shape(pair_mask) != (b,):
            raise ValueError(
                f"`pair_mask` must be [B] = ({b},); got shape {jnp.shape(pair_mask)}."
            )
        valid = valid & _as_mask(pair_mask)
    weight = valid.astype(jnp.float32)
    n_eff = jnp.maximum(jnp.sum(weight), 1.0)

    if estimator == "histogram":
        s = _histogram_kl(x, xm, y, ym, weight, n_eff, num_bins, chunk_size)
    else:
        s = _gaussian_kl(x, xm, y, ym, nx, ny, weight, n_eff)
    return lax.stop_gradient(s)


# ----------------------------------------------------------------------------------------
# 2. Adaptive soft threshold and its temperature (paper sec. 3.2)
# ----------------------------------------------------------------------------------------


def row_temperature(
    s: jax.typing.ArrayLike,
    *,
    mode: str,
    tau: float,
    log_tau: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Per-row softmax temperature of ``p(j|i) = softmax_j(-S_ij / tau_i)``.

    ``semantics.tau_mode`` (docs/cdds.md, 'Choices the paper leaves open'):

    * ``"fixed"``: ``tau_i = tau`` (the paper's reading, tau = 1).
    * ``"relative"``: ``tau_i = tau * max(std_j S_ij, SPREAD_EPS)`` with the population
      std of the row: the softmax sees z-scores of the row divided by ``tau``, so the
      sharpness no longer depends on how many nats a row spans (S of a batch spans
      about half a nat per row, which makes tau = 1 almost uniform). The std rather
      than max - min: one outlier column does not set the scale.
    * ``"learned"``: ``tau_i = exp(clip(log_tau, *LOG_TAU_RANGE))``, one learnable
      scalar shared by both directions (``tau`` is only its initial value, set by the
      model).

    Args:
      s: ``[d, e]`` KL matrix.
      mode: one of ``TAU_MODES``.
      tau: the temperature (``fixed``) or its multiplier (``relative``), > 0.
      log_tau: scalar learnable log-temperature (``learned`` only).

    Returns:
      ``[d]`` float32, > 0.
    """
    ss = jnp.shape(s)
    if len(ss) != 2:
        raise ValueError(f"`s` must be [d, e]; got shape {ss}.")
    if mode not in TAU_MODES:
        raise ValueError(f"`mode` must be one of {TAU_MODES}; got {mode!r}.")
    if mode != "learned" and tau <= 0:
        raise ValueError(f"`tau` must be > 0; got {tau}.")
    d = ss[0]
    if mode == "fixed":
        return jnp.full((d,), tau, jnp.float32)
    if mode == "relative":
        spread = jnp.std(lax.stop_gradient(_f32(s)), axis=-1)
        return tau * jnp.maximum(spread, SPREAD_EPS)
    if log_tau is None or jnp.size(log_tau) != 1:
        raise ValueError(
            "mode='learned' needs a scalar `log_tau`; got "
            f"{None if log_tau is None else jnp.shape(log_tau)}."
        )
    log_tau = jnp.clip(jnp.reshape(_f32(log_tau), ()), *LOG_TAU_RANGE)
    return jnp.broadcast_to(jnp.exp(log_tau), (d,))


def soft_threshold(
    s: jax.typing.ArrayLike,
    alpha: jax.typing.ArrayLike,
    *,
    tau: float | jax.typing.ArrayLike = 1.0,
) -> jax.Array:
    """Sparse row-stochastic correlation weights from a KL matrix (paper sec. 3.2).

    ``p(j|i) = softmax_j(-S_ij / tau_i)``; threshold ``k_i = mean_j p + max(alpha_i, 0)
    * std_j p`` (population std); ``W_ij = relu(p(j|i) - k_i)`` renormalised per row. A
    row with nothing above its threshold (e.g. a uniform row, where std = 0) is the
    one-hot of ``argmax_j p(j|i)`` (the first maximiser on ties). ``W`` is piecewise
    differentiable in ``alpha`` and ``tau`` (and in ``S``; the std's gradient is 0, not
    NaN, when a row is uniform); rows with a single survivor are one-hot and have zero
    gradient.

    Args:
      s: ``[d, e]`` KL matrix (rows: this direction's columns).
      alpha: ``[d]`` threshold multipliers (clamped at 0 here).
      tau: softmax temperature (> 0): a scalar, or ``[d]`` one per row
        (``row_temperature``).

    Returns:
      ``W [d, e]`` float32, rows summing to 1.
    """
    ss = jnp.shape(s)
    if len(ss) != 2:
        raise ValueError(f"`s` must be [d, e]; got shape {ss}.")
    if jnp.shape(alpha) != (ss[0],):
        raise ValueError(
            f"`alpha` must be [d] = ({ss[0]},) to match `s` {ss}; "
            f"got shape {jnp.shape(alpha)}."
        )
    if isinstance(tau, int | float) and tau <= 0:
        raise ValueError(f"`tau` must be > 0; got {tau}.")
    if jnp.shape(tau) not in ((), (ss[0],)):
        raise ValueError(
            f"`tau` must be a scalar or [d] = ({ss[0]},) to match `s` {ss}; "
            f"got shape {jnp.shape(tau)}."
        )
    tau = jnp.reshape(_f32(tau), (-1, 1))  # [1, 1] or [d, 1]
    p = jax.nn.softmax(-_f32(s) / tau, axis=-1)
    mean = jnp.mean(p, axis=-1, keepdims=True)
    std = _safe_sqrt(jnp.mean(jnp.square(p - mean), axis=-1, keepdims=True))
    k = mean + jnp.maximum(_f32(alpha), 0.0)[:, None] * std
    r = jax.nn.relu(p - k)
    total = jnp.sum(r, axis=-1, keepdims=True)
    nonempty = total > 0
    fallback = jax.nn.one_hot(jnp.argmax(p, axis=-1), ss[1], dtype=jnp.float32)
    return jnp.where(nonempty, r / jnp.where(nonempty, total, 1.0), fallback)


# ----------------------------------------------------------------------------------------
# 3. Quantile tables (paper sec. 3.3)
# ----------------------------------------------------------------------------------------


def quantile_table(
    x: jax.typing.ArrayLike, mask: jax.typing.ArrayLike, num_levels: int
) -> jax.Array:
    """Per-column quantile functions resampled to ``G = num_levels`` levels (paper sec. 3.3).

    For sample ``b`` with ``n`` valid tokens and column ``i`` sorted over them
    (``s_0 <= ... <= s_{n-1}``), level ``g`` (quantile ``q = (g + 0.5) / G``) sits at
    position ``q n - 0.5`` clamped to ``[0, n - 1]`` and is linearly interpolated
    between neighbours; hence ``q = (r + 0.5) / n`` yields ``s_r`` exactly (the
    position is the exact integer fraction ``((2g + 1) n - G) / (2G)``).

    Gradients flow through the sorted values (the permutation is constant). Padding
    sorts last via ``+inf`` sort keys but never enters the values, so neither values nor
    gradients can see ``inf * 0``; a sample with ``n = 0`` gives zeros.

    Args:
      x: ``[B, N, d]`` tokens.
      mask: ``[B, N]`` validity.
      num_levels: G (static, >= 1).

    Returns:
      ``[B, G, d]`` float32.
    """
    b, _, d = _check_tokens(x, mask, "x", "mask")
    if num_levels < 1:
        raise ValueError(f"`num_levels` must be >= 1; got {num_levels}.")
    g_levels = num_levels
    x = _f32(x)
    m = _as_mask(mask)
    xv = jnp.where(m[:, :, None], x, 0.0)
    perm = _column_order(x, m)
    sorted_x = jnp.take_along_axis(xv, perm, axis=1)  # [B, N, d], padding last
    n = jnp.sum(m, axis=1, dtype=jnp.int32)  # [B]
    g = jnp.arange(g_levels, dtype=jnp.int32)
    # position q n - 0.5 with q = (g + 0.5) / G, as the exact fraction below
    numer = (2 * g + 1)[None, :] * n[:, None] - g_levels  # [B, G]
    i0, i1, frac = _interp_positions(
        numer, 2 * g_levels, jnp.maximum(n - 1, 0)[:, None]
    )
    shape = (b, g_levels, d)
    v0 = jnp.take_along_axis(sorted_x, jnp.broadcast_to(i0[:, :, None], shape), axis=1)
    v1 = jnp.take_along_axis(sorted_x, jnp.broadcast_to(i1[:, :, None], shape), axis=1)
    frac = frac[:, :, None]
    out = (1.0 - frac) * v0 + frac * v1
    return jnp.where((n > 0)[:, None, None], out, 0.0)


# ----------------------------------------------------------------------------------------
# 4. Token-layout x-semantic components (paper sec. 3.3)
# ----------------------------------------------------------------------------------------


def x_semantic_tokens(
    x: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    q_other: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
) -> jax.Array:
    """Token-layout x-semantic component of matched pairs (paper sec. 3.3).

    ``X = q_other W^T`` (``X[g, i] = sum_j q_other[g, j] w[i, j]``: for each own column
    ``i`` the Wasserstein barycenter of its correlated counterpart columns). Token ``n``
    of column ``i`` with rank ``r`` among the column's ``n_valid`` valid values (ties by
    position; ranks are stop-gradient) takes ``X(., i)`` at quantile
    ``q = (r + 0.5) / n_valid``, i.e. at table position ``q G - 0.5`` clamped to
    ``[0, G - 1]`` with linear interpolation (the ``quantile_table`` convention).
    Positions come from one's own modality, values from the counterpart.

    Image side ``V^x = x_semantic_tokens(V^s, v_mask, Q^t, W^v)``; text side
    ``T^x = x_semantic_tokens(T^s, t_mask, Q^v, W^t)``. Gradients flow into ``q_other``
    and ``w`` only. Invalid tokens (and samples with no valid token) give 0.

    Args:
      x: ``[B, N, d]`` own tokens (only their per-column ranks are used).
      mask: ``[B, N]`` validity of ``x``.
      q_other: ``[B, G, e]`` counterpart quantile tables (row ``b`` matched with ``x[b]``).
      w: ``[d, e]`` weights of this direction (rows: own columns).

    Returns:
      ``[B, N, d]`` float32.
    """
    b, _, d = _check_tokens(x, mask, "x", "mask")
    qs = jnp.shape(q_other)
    if len(qs) != 3 or qs[0] != b:
        raise ValueError(
            f"`q_other` must be [B, G, e] with B = {b}; got shape {qs} "
            f"(`x` is {jnp.shape(x)})."
        )
    if jnp.shape(w) != (d, qs[2]):
        raise ValueError(
            f"`w` must be [d, e] = ({d}, {qs[2]}) to match `x` {jnp.shape(x)} and "
            f"`q_other` {qs}; got shape {jnp.shape(w)}."
        )
    g_levels = qs[1]
    m = _as_mask(mask)
    table = jnp.einsum("bgj,ij->bgi", _f32(q_other), _f32(w))  # [B, G, d]
    perm = _column_order(_f32(x), m)
    iota = lax.broadcasted_iota(jnp.int32, perm.shape, 1)
    # Inverse permutation: rank[b, perm[b, r, i], i] = r.
    rank = jnp.put_along_axis(jnp.zeros_like(perm), perm, iota, axis=1, inplace=False)
    n = jnp.maximum(jnp.sum(m, axis=1, dtype=jnp.int32), 1)[:, None, None]
    # position q G - 0.5 with q = (rank + 0.5) / n, as the exact fraction below
    i0, i1, frac = _interp_positions((2 * rank + 1) * g_levels - n, 2 * n, g_levels - 1)
    v0 = jnp.take_along_axis(table, i0, axis=1)
    v1 = jnp.take_along_axis(table, i1, axis=1)
    out = (1.0 - frac) * v0 + frac * v1
    return jnp.where(m[:, :, None], out, 0.0)
