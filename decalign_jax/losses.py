"""DecAlign training losses (pure ``jax.numpy``), spec ``decalign.md`` sections 2.4-2.6, 3.

Every function is a pure, jit-able function of arrays; options that change shapes or
control flow are keyword-only Python values (bind them with ``functools.partial`` or
mark them static). Sequences are **batch-first** ``[B, T, d]`` (the official PyTorch
code is channel-first ``[B, d, T]``; the losses are invariant to that layout).

Losses are computed in at least float32 (bf16 / f16 inputs are promoted). GEMMs that
feed distances or covariances run at ``Precision.HIGHEST`` so TPU / GPU TF32 defaults
do not cancel catastrophically in ``|x|^2 + |y|^2 - 2 x.y``.

Contents:

* :func:`decoupling_loss` - L_dec, squared cosine between unique and common features.
* :func:`hetero_loss` - L_hete = L_OT + L_local, GMM prototypes + 3-marginal OT.
* :func:`moment_matching`, :func:`mmd_rbf`, :func:`homo_loss` - L_homo = L_sem + L_MMD.
* :func:`supcon_loss`, :func:`regression_bins` - the contrastive ("CT") term.
* :func:`mse_loss`, :func:`cross_entropy_loss`, :func:`sims_binary_loss` - task terms.
* :func:`total_loss` - the weighted sum of spec 3.

Masking convention: an optional ``valid`` ``[B]`` bool marks real samples (False for
the padding of a short last batch). Masked means are ``sum(valid * l) / max(#valid,
1)``, i.e. 0 when nothing is valid. Padded rows must hold finite values (zeros are
fine): they are excluded from values with ``where`` but a NaN there would still reach
the gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Final

import jax
import jax.numpy as jnp

from decalign_jax import prototypes

__all__ = [
    "bind_hetero_loss",
    "cross_entropy_loss",
    "decoupling_loss",
    "hetero_loss",
    "homo_loss",
    "mmd_rbf",
    "moment_matching",
    "mse_loss",
    "regression_bins",
    "sims_binary_loss",
    "supcon_loss",
    "total_loss",
]

_HIGHEST: Final = jax.lax.Precision.HIGHEST

COSINE_EPS: Final = 1e-8
"""Norm floor of :func:`decoupling_loss` (torch ``cosine_similarity`` default)."""

NORMALIZE_EPS: Final = 1e-12
"""Norm floor of the L2 normalisation in :func:`supcon_loss` (torch ``F.normalize``)."""

SKEW_VAR_FLOOR: Final = 1e-6
"""Floor on the biased variance in the skewness denominator of :func:`moment_matching`."""

# Unordered modality pairs (l, a), (l, v), (a, v) and the 6 ordered pairs (m, m').
_PAIR_I: Final = (0, 0, 1)
_PAIR_J: Final = (1, 2, 2)
_ORDERED_SRC: Final = (0, 0, 1, 1, 2, 2)
_ORDERED_DST: Final = (1, 2, 0, 2, 0, 1)

_MASKED_LOGIT: Final = -1e30  # finite "minus infinity" for excluded logits


def _float(x: jax.Array) -> jax.Array:
    """Casts to a float dtype of at least float32 precision."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _safe_norm(x: jax.Array, eps: float, axis: int = -1) -> jax.Array:
    """``max(||x||_2, eps)`` along ``axis`` with a finite gradient at ``x = 0``."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis), eps * eps))


def _check_triple(name: str, xs: Sequence[jax.Array], ndim: int) -> None:
    if len(xs) != 3:
        raise ValueError(
            f"{name} must hold 3 arrays (text, audio, vision); got {len(xs)}"
        )
    shapes = [jnp.shape(x) for x in xs]
    for m, s in enumerate(shapes):
        if len(s) != ndim:
            raise ValueError(f"{name}[{m}] must have rank {ndim}; got shape {s}")
    if len({s[0] for s in shapes}) != 1:
        raise ValueError(f"{name} arrays must share the batch size; got {shapes}")


def _check_valid(valid: jax.Array | None, batch: int) -> None:
    if valid is not None and jnp.shape(valid) != (batch,):
        raise ValueError(
            f"valid must be [B={batch}]; got valid.shape={jnp.shape(valid)}"
        )


def _masked_mean(values: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Mean of ``values`` ``[B]`` over ``valid`` ``[B]`` (0 if none valid)."""
    if valid is None:
        return jnp.mean(values)
    valid = jnp.asarray(valid, dtype=bool)
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid).astype(values.dtype), 1.0)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, int | float) and not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")


# ----------------------------------------------------------------------------------
# Decoupling loss (spec 2.4)
# ----------------------------------------------------------------------------------


def decoupling_loss(
    unique: Sequence[jax.Array], common: Sequence[jax.Array]
) -> jax.Array:
    """L_dec: mean over modalities of mean_b cos^2(vec(s_m[b]), vec(c_m[b])).

    Each sample's unique sequence ``s_m[b]`` and common sequence ``c_m[b]`` are
    flattened over (T_m x d) and compared with the cosine similarity of the current
    torch convention (``torch.nn.functional.cosine_similarity`` since torch 1.12)::

        cos(a, b) = a . b / (max(||a||, eps) * max(||b||, eps)),   eps = 1e-8

    (each norm is floored separately; the older torch docs' ``max(||a|| ||b||, eps)``
    differs only when a norm is below 1e-8). The cosine is squared, averaged over the
    batch, then averaged over the three modalities. For an all-zero vector the value
    and the gradient are 0 (torch's gradient differs there; it is irrelevant).

    Args:
      unique: ``(s_l, s_a, s_v)``, each ``[B, T_m, d]`` (modality-unique features).
      common: ``(c_l, c_a, c_v)``, each with the shape of the matching ``unique``.

    Returns:
      Scalar loss in [0, 1].
    """
    _check_triple("unique", unique, 3)
    _check_triple("common", common, 3)
    for m, (s, c) in enumerate(zip(unique, common, strict=True)):
        if jnp.shape(s) != jnp.shape(c):
            raise ValueError(
                f"unique[{m}] and common[{m}] must have the same shape; got "
                f"{jnp.shape(s)} and {jnp.shape(c)}"
            )

    def per_modality(s: jax.Array, c: jax.Array) -> jax.Array:
        s = _float(s).reshape(s.shape[0], -1)
        c = _float(c).reshape(c.shape[0], -1)
        cos = jnp.sum(s * c, axis=-1) / (
            _safe_norm(s, COSINE_EPS) * _safe_norm(c, COSINE_EPS)
        )
        return jnp.mean(cos * cos)

    # A static loop over the 3 modalities: their sequence lengths differ.
    terms = [per_modality(s, c) for s, c in zip(unique, common, strict=True)]
    return sum(terms[1:], terms[0]) / 3.0


# ----------------------------------------------------------------------------------
# Heterogeneity loss: GMM prototypes + multi-marginal OT + local term (spec 2.5)
# ----------------------------------------------------------------------------------


def hetero_loss(
    pooled: Sequence[jax.Array],
    *,
    num_prototypes: int,
    em_iters: int = 5,
    var_floor: float = 1e-4,
    ot_epsilon: float = 0.1,
    ot_iters: int = 50,
    cost_reduction: str = "mean",
    local_mahalanobis: bool = False,
    log_domain: bool = True,
) -> tuple[jax.Array, dict[str, Any]]:
    """L_hete = L_OT + L_local on time-pooled unique features (spec 2.5 steps 2-8).

    1. A K-component diagonal GMM is fitted per modality by EM on the batch
       (:func:`decalign_jax.prototypes.fit_diag_gmm`, refit from scratch each call;
       gradients flow through EM).
    2. Marginals ``nu_m = mean_n gamma_m[n, :]``, renormalised to sum 1.
    3. Pairwise Bures costs ``C_la, C_lv, C_av`` ``[K, K]`` between the prototypes
       (:func:`~decalign_jax.prototypes.bures_cost`), joint cost
       ``C[i, j, k] = C_la[i, j] + C_lv[i, k] + C_av[j, k]``.
    4. Entropic 3-marginal OT on ``C`` with marginals (nu_l, nu_a, nu_v)
       (:func:`~decalign_jax.prototypes.multi_marginal_sinkhorn`); L_OT is the
       solver's value ``sum P C + eps sum P (log P - 1)``.
    5. Local term: for each of the 6 ordered pairs (m, m'), m != m',
       ``mean_n sum_k gamma_m[n, k] * mean_d (x_m[n] - mu^{m'}_k)^2`` (divided
       elementwise by ``var^{m'}_k`` when ``local_mahalanobis``); prototypes are
       matched **by index** across the independently fitted GMMs (as the official
       code). L_local is the mean of the 6 terms.

    The three GMM fits (and the three Bures costs) are vmapped, so they compile once.
    B < K is allowed (the GMM init tiles the batch: duplicate components), as is B = 1.

    Args:
      pooled: ``(x_l, x_a, x_v)``, each ``[B, d]`` (text, audio, vision order).
      num_prototypes: K, the number of GMM components per modality.
      em_iters: EM iterations.
      var_floor: variance floor of the GMM (also bounds the Mahalanobis division).
      ot_epsilon: entropic regularisation epsilon of the OT (``lambda_ot``).
      ot_iters: Sinkhorn sweeps.
      cost_reduction: ``"mean"`` (official default: Bures cost averaged over d) or
        ``"sum"``; passed to ``bures_cost``.
      local_mahalanobis: divide the local squared differences by the other
        modality's prototype variances.
      log_domain: use the log-domain Sinkhorn (default) instead of the plain sweep.

    Returns:
      ``(loss, aux)`` with scalar ``loss = L_OT + L_local`` and ``aux`` a dict:
      ``"plan"`` ``[K, K, K]`` transport plan, ``"marginals"`` tuple of 3 ``[K]``
      (nu_l, nu_a, nu_v), ``"ot"`` scalar L_OT, ``"local"`` scalar L_local.
    """
    _check_triple("pooled", pooled, 2)
    shapes = {jnp.shape(x) for x in pooled}
    if len(shapes) != 1:
        raise ValueError(
            f"pooled arrays must share one [B, d] shape; got "
            f"{[jnp.shape(x) for x in pooled]}"
        )
    if num_prototypes < 1:
        raise ValueError(f"num_prototypes must be >= 1; got {num_prototypes}")
    if em_iters < 0 or ot_iters < 1:
        raise ValueError(
            f"em_iters must be >= 0 and ot_iters >= 1; got {em_iters}, {ot_iters}"
        )
    _check_positive("ot_epsilon", ot_epsilon)
    _check_positive("var_floor", var_floor)
    if cost_reduction not in ("mean", "sum"):
        raise ValueError(
            f"cost_reduction must be 'mean' or 'sum'; got {cost_reduction!r}"
        )

    x = jnp.stack([_float(p) for p in pooled])  # [3, B, d]
    fit = jax.vmap(
        functools.partial(
            prototypes.fit_diag_gmm,
            num_components=num_prototypes,
            num_iters=em_iters,
            var_floor=var_floor,
        )
    )(x)
    means, variances, gamma = fit.means, fit.variances, fit.responsibilities
    # means, variances: [3, K, d]; gamma: [3, B, K]

    nu = jnp.mean(gamma, axis=1)  # [3, K]
    nu = nu / jnp.maximum(jnp.sum(nu, axis=-1, keepdims=True), 1e-30)

    pi, pj = jnp.array(_PAIR_I), jnp.array(_PAIR_J)
    costs = jax.vmap(
        functools.partial(prototypes.bures_cost, reduction=cost_reduction)
    )(means[pi], variances[pi], means[pj], variances[pj])  # [3, K, K]: la, lv, av
    cost = prototypes.joint_cost(costs[0], costs[1], costs[2])
    plan, l_ot = prototypes.multi_marginal_sinkhorn(
        cost,
        (nu[0], nu[1], nu[2]),
        epsilon=ot_epsilon,
        num_iters=ot_iters,
        log_domain=log_domain,
    )

    src, dst = jnp.array(_ORDERED_SRC), jnp.array(_ORDERED_DST)
    # [6, B, 1, d] - [6, 1, K, d] -> [6, B, K, d]; small (B, K, d <= 128, 7, 64).
    sq = jnp.square(x[src][:, :, None, :] - means[dst][:, None, :, :])
    if local_mahalanobis:
        sq = sq / variances[dst][:, None, :, :]
    dist = jnp.mean(sq, axis=-1)  # [6, B, K]
    per_pair = jnp.mean(jnp.sum(gamma[src] * dist, axis=-1), axis=-1)  # [6]
    l_local = jnp.mean(per_pair)

    aux = {
        "plan": plan,
        "marginals": (nu[0], nu[1], nu[2]),
        "ot": l_ot,
        "local": l_local,
    }
    return l_ot + l_local, aux


# ----------------------------------------------------------------------------------
# Homogeneity loss: moments + MMD (spec 2.6)
# ----------------------------------------------------------------------------------


def bind_hetero_loss(
    cfg: Any,
) -> Callable[[Sequence[jax.Array]], tuple[jax.Array, dict[str, Any]]]:
    """:func:`hetero_loss` with the fields of a ``config.loss`` block bound.

    ``cfg`` has ``num_prototypes``, ``em_iters``, ``var_floor``, ``ot_epsilon``,
    ``ot_iters``, ``cost_reduction``, ``local_mahalanobis`` and ``ot_log_domain``.
    The driver and the benchmark both use it, so they run the same loss.
    """
    return functools.partial(
        hetero_loss,
        num_prototypes=int(cfg.num_prototypes),
        em_iters=int(cfg.em_iters),
        var_floor=float(cfg.var_floor),
        ot_epsilon=float(cfg.ot_epsilon),
        ot_iters=int(cfg.ot_iters),
        cost_reduction=str(cfg.cost_reduction),
        local_mahalanobis=bool(cfg.local_mahalanobis),
        log_domain=bool(cfg.ot_log_domain),
    )


def _moments(z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean ``[p]``, unbiased covariance ``[p, p]`` and skewness ``[p]`` of ``[B, p]``."""
    batch = z.shape[0]
    mu = jnp.mean(z, axis=0)
    zc = z - mu
    cov = jnp.matmul(zc.T, zc, precision=_HIGHEST) / max(batch - 1, 1)
    var = jnp.maximum(jnp.mean(zc * zc, axis=0), SKEW_VAR_FLOOR)
    skew = jnp.mean(zc * zc * zc, axis=0) / (var * jnp.sqrt(var))
    return mu, cov, skew


def _moment_mse(
    a: tuple[jax.Array, jax.Array, jax.Array],
    b: tuple[jax.Array, jax.Array, jax.Array],
) -> jax.Array:
    return sum(
        (jnp.mean(jnp.square(u - v)) for u, v in zip(a, b, strict=True)),
        jnp.zeros((), a[0].dtype),
    )


def moment_matching(z_p: jax.Array, z_q: jax.Array) -> jax.Array:
    """L_sem for one modality pair: MSE of means + covariances + skewnesses.

    Per modality (rows = samples): mean ``mu = mean_n z``; full covariance
    ``(z - mu)^T (z - mu) / max(B - 1, 1)`` (unbiased; 0 for B = 1); per-dim skewness
    ``mean_n (z - mu)^3 / max(var, 1e-6)^1.5`` with the biased variance ``var``.
    Each MSE is the mean of squared differences over elements.

    Args:
      z_p: ``[B, p]`` features of modality p.
      z_q: ``[B', p]`` features of modality q (B' may differ from B).

    Returns:
      Scalar ``MSE(mu) + MSE(cov) + MSE(skew)``.
    """
    for name, z in (("z_p", z_p), ("z_q", z_q)):
        if jnp.ndim(z) != 2:
            raise ValueError(f"{name} must be [B, p]; got {name}.shape={jnp.shape(z)}")
    if jnp.shape(z_p)[1] != jnp.shape(z_q)[1]:
        raise ValueError(
            f"z_p and z_q must share the feature dim; got {jnp.shape(z_p)} and "
            f"{jnp.shape(z_q)}"
        )
    return _moment_mse(_moments(_float(z_p)), _moments(_float(z_q)))


def _sq_dists(x: jax.Array, y: jax.Array) -> jax.Array:
    """``[n, m]`` squared Euclidean distances via one GEMM, clamped at 0."""
    xy = jnp.matmul(x, y.T, precision=_HIGHEST)
    d = jnp.sum(x * x, axis=-1)[:, None] + jnp.sum(y * y, axis=-1)[None, :] - 2.0 * xy
    return jnp.maximum(d, 0.0)


def mmd_rbf(x: jax.Array, y: jax.Array, bandwidth: float = 1.0) -> jax.Array:
    """Biased (V-statistic) squared MMD with the official RBF kernel convention.

    ``k(a, b) = exp(-||a - b||^2 / (2 * bandwidth))`` - note ``2 * bandwidth``, not
    ``2 * bandwidth^2`` (spec 2.6 step 5; identical for the default 1.0, kept for
    parity). ``MMD^2 = mean K_xx + mean K_yy - 2 mean K_xy`` with the diagonals
    included (so it can be very slightly negative by rounding only when x ~ y).
    Squared distances come from one GEMM each and are clamped at 0.

    Args:
      x: ``[n, p]`` samples.
      y: ``[m, p]`` samples.
      bandwidth: kernel bandwidth (> 0).

    Returns:
      Scalar MMD^2 estimate.
    """
    for name, a in (("x", x), ("y", y)):
        if jnp.ndim(a) != 2:
            raise ValueError(f"{name} must be [n, p]; got {name}.shape={jnp.shape(a)}")
    if jnp.shape(x)[1] != jnp.shape(y)[1]:
        raise ValueError(
            f"x and y must share the feature dim; got {jnp.shape(x)} and {jnp.shape(y)}"
        )
    _check_positive("bandwidth", bandwidth)
    x, y = _float(x), _float(y)
    scale = -0.5 / bandwidth
    kxx = jnp.mean(jnp.exp(scale * _sq_dists(x, x)))
    kyy = jnp.mean(jnp.exp(scale * _sq_dists(y, y)))
    kxy = jnp.mean(jnp.exp(scale * _sq_dists(x, y)))
    return kxx + kyy - 2.0 * kxy


def homo_loss(z: Sequence[jax.Array], *, bandwidth: float = 1.0) -> jax.Array:
    """L_homo = L_sem + L_MMD over the pairs (l, a), (l, v), (a, v) (spec 2.6).

    ``L_sem`` is the pair-average of :func:`moment_matching` and ``L_MMD`` the
    pair-average of :func:`mmd_rbf`. Computed without a loop over pairs: moments once
    per modality (vmapped), one ``[3B, 3B]`` kernel GEMM for all MMD blocks.

    Args:
      z: ``(z_l, z_a, z_v)``, each ``[B, p]`` (PDE outputs).
      bandwidth: RBF bandwidth, ``exp(-||.||^2 / (2 * bandwidth))``.

    Returns:
      Scalar loss.
    """
    _check_triple("z", z, 2)
    if len({jnp.shape(a) for a in z}) != 1:
        raise ValueError(
            f"z arrays must share one [B, p] shape; got {[jnp.shape(a) for a in z]}"
        )
    _check_positive("bandwidth", bandwidth)
    zs = jnp.stack([_float(a) for a in z])  # [3, B, p]
    _, batch, dim = zs.shape
    pi, pj = jnp.array(_PAIR_I), jnp.array(_PAIR_J)

    mu, cov, skew = jax.vmap(_moments)(zs)
    sem = (
        jnp.mean(jnp.square(mu[pi] - mu[pj]), axis=-1)
        + jnp.mean(jnp.square(cov[pi] - cov[pj]), axis=(-2, -1))
        + jnp.mean(jnp.square(skew[pi] - skew[pj]), axis=-1)
    )  # [3]

    flat = zs.reshape(3 * batch, dim)
    kernel = jnp.exp((-0.5 / bandwidth) * _sq_dists(flat, flat))
    block_mean = jnp.mean(kernel.reshape(3, batch, 3, batch), axis=(1, 3))  # [3, 3]
    diag = jnp.diagonal(block_mean)
    mmd = diag[pi] + diag[pj] - 2.0 * block_mean[pi, pj]  # [3]
    return jnp.mean(sem) + jnp.mean(mmd)


# ----------------------------------------------------------------------------------
# Supervised contrastive ("CT") term (spec 3)
# ----------------------------------------------------------------------------------


def regression_bins(y: jax.Array) -> jax.Array:
    """SupCon label bins for regression: ``round(clip(y, -3, 3)) + 3`` in 0..6.

    Rounding is half-to-even (``jnp.round``, as torch). Returns int32 of y's shape.
    """
    y = _float(y)
    return (jnp.round(jnp.clip(y, -3.0, 3.0)) + 3.0).astype(jnp.int32)


def supcon_loss(
    features: jax.Array,
    bins: jax.Array,
    *,
    temperature: float,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Supervised contrastive loss on L2-normalised features (spec 3, "CT").

    ``f = features / max(||features||, 1e-12)`` (torch ``F.normalize``), logits
    ``f f^T / temperature``; for anchor i the softmax runs over j != i (and valid j);
    positives are j != i with ``bins[j] == bins[i]``. Per anchor the loss is
    ``-mean_{j in P(i)} log_softmax_i(j)``; the result is the mean over (valid)
    anchors with at least one positive, and 0 when no anchor has a positive (e.g.
    B = 1). No ``temperature / base_temperature`` rescaling is applied.

    Excluded logits are set to -1e30 (a finite "-inf", so fully masked rows stay
    NaN-free in value and gradient).

    Args:
      features: ``[B, D]`` representations (``final_rep`` before dropout).
      bins: ``[B]`` integer labels (bins for regression, class ids otherwise).
      temperature: softmax temperature tau (> 0).
      valid: optional ``[B]`` bool, False for padded samples (neither anchors nor
        candidates).

    Returns:
      Scalar loss (>= 0).
    """
    if jnp.ndim(features) != 2:
        raise ValueError(
            f"features must be [B, D]; got features.shape={jnp.shape(features)}"
        )
    batch = jnp.shape(features)[0]
    if jnp.shape(bins) != (batch,):
        raise ValueError(f"bins must be [B={batch}]; got bins.shape={jnp.shape(bins)}")
    _check_valid(valid, batch)
    _check_positive("temperature", temperature)

    f = _float(features)
    f = f / _safe_norm(f, NORMALIZE_EPS)[:, None]
    logits = jnp.matmul(f, f.T, precision=_HIGHEST) / temperature

    not_self = ~jnp.eye(batch, dtype=bool)
    if valid is None:
        cand = not_self
        anchor_ok = jnp.ones((batch,), dtype=bool)
    else:
        v = jnp.asarray(valid, dtype=bool)
        cand = not_self & v[None, :] & v[:, None]
        anchor_ok = v
    logits = jnp.where(cand, logits, _MASKED_LOGIT)
    log_prob = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)

    pos = cand & (bins[:, None] == bins[None, :])
    num_pos = jnp.sum(pos, axis=-1)
    mean_log_prob = jnp.sum(jnp.where(pos, log_prob, 0.0), axis=-1) / jnp.maximum(
        num_pos, 1
    ).astype(log_prob.dtype)
    has_pos = anchor_ok & (num_pos > 0)
    total = -jnp.sum(jnp.where(has_pos, mean_log_prob, 0.0))
    return total / jnp.maximum(jnp.sum(has_pos), 1).astype(total.dtype)


# ----------------------------------------------------------------------------------
# Task losses and the total objective (spec 3)
# ----------------------------------------------------------------------------------


def _flat_regression(pred: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
    ps, ys = jnp.shape(pred), jnp.shape(label)
    if len(ps) not in (1, 2) or (len(ps) == 2 and ps[1] != 1):
        raise ValueError(f"pred must be [B] or [B, 1]; got pred.shape={ps}")
    if len(ys) not in (1, 2) or (len(ys) == 2 and ys[1] != 1) or ys[0] != ps[0]:
        raise ValueError(
            f"label must be [B] or [B, 1] with B={ps[0]}; got label.shape={ys}"
        )
    return _float(pred).reshape(-1), _float(label).reshape(-1)


def mse_loss(
    pred: jax.Array, label: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """Mean squared error over valid samples (torch ``MSELoss`` on flattened inputs).

    Args:
      pred: ``[B]`` or ``[B, 1]`` predictions.
      label: ``[B]`` or ``[B, 1]`` targets.
      valid: optional ``[B]`` bool mask.

    Returns:
      Scalar ``mean_valid (pred - label)^2`` (0 when no sample is valid).
    """
    p, y = _flat_regression(pred, label)
    _check_valid(valid, p.shape[0])
    return _masked_mean(jnp.square(p - y), valid)


def cross_entropy_loss(
    logits: jax.Array, label: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """Unweighted softmax cross-entropy averaged over valid samples.

    Args:
      logits: ``[B, C]`` class scores.
      label: ``[B]`` integer class ids in ``[0, C)`` (floats are truncated to int,
        as the official ``.long()``); out-of-range ids give an undefined value.
      valid: optional ``[B]`` bool mask.

    Returns:
      Scalar ``mean_valid -log softmax(logits)[label]`` (0 when no sample is valid).
    """
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits must be [B, C]; got logits.shape={jnp.shape(logits)}")
    batch = jnp.shape(logits)[0]
    if jnp.shape(label) != (batch,):
        raise ValueError(
            f"label must be [B={batch}]; got label.shape={jnp.shape(label)}"
        )
    _check_valid(valid, batch)
    logp = jax.nn.log_softmax(_float(logits), axis=-1)
    idx = jnp.asarray(label).astype(jnp.int32)
    nll = -jnp.take_along_axis(logp, idx[:, None], axis=-1)[:, 0]
    return _masked_mean(nll, valid)


def sims_binary_loss(
    pred: jax.Array, label: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """CH-SIMS auxiliary BCE-with-logits of ``pred`` vs ``1[label > 0]`` (spec 3).

    Only samples with ``label != 0`` (and valid) count; the loss is their mean of
    ``softplus(pred) - pred * t`` (the stable BCE-with-logits), and 0 when none.

    Args:
      pred: ``[B]`` or ``[B, 1]`` regression outputs used as logits.
      label: ``[B]`` or ``[B, 1]`` sentiment scores.
      valid: optional ``[B]`` bool mask.

    Returns:
      Scalar loss.
    """
    p, y = _flat_regression(pred, label)
    _check_valid(valid, p.shape[0])
    mask = y != 0
    if valid is not None:
        mask = mask & jnp.asarray(valid, dtype=bool)
    target = (y > 0).astype(p.dtype)
    bce = jax.nn.softplus(p) - p * target
    return _masked_mean(bce, mask)


def total_loss(
    task: jax.Array,
    dec: jax.Array,
    hete: jax.Array,
    homo: jax.Array,
    ct: jax.Array,
    *,
    dec_weight: float = 1.0,
    alpha: float,
    beta: float,
    ct_weight: float,
) -> jax.Array:
    """``L = task + dec_weight L_dec + alpha L_hete + beta L_homo + ct_weight L_CT``.

    A term whose weight is the Python number 0 is dropped (not multiplied), so an
    unused term (e.g. MOSEI's beta = 0) can never inject NaN/inf into the loss. The
    SIMS BCE term is part of ``task`` (add ``0.01 * sims_binary_loss`` to it).

    Args:
      task, dec, hete, homo, ct: scalar loss terms.
      dec_weight, alpha, beta, ct_weight: their weights.

    Returns:
      Scalar total loss.
    """
    out = jnp.asarray(task)
    for weight, term in (
        (dec_weight, dec),
        (alpha, hete),
        (beta, homo),
        (ct_weight, ct),
    ):
        if isinstance(weight, int | float) and weight == 0:
            continue
        out = out + weight * term
    return out
