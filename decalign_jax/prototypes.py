"""DecAlign heterogeneity alignment: GMM prototypes, Bures costs, 3-marginal OT.

The pieces of ``docs/decalign.md`` section 2.5, as pure, ``jax.jit``-compatible
functions that are differentiable end to end (gradients flow through every EM
iteration and every Sinkhorn sweep, as in the official code, which detaches
nothing):

* :func:`fit_diag_gmm` -- diagonal GMM refit from scratch on a mini-batch by a
  fixed number of EM iterations (docs/decalign.md §4.2), optionally on the valid rows
  of a padded batch.
* :func:`bures_cost` -- squared 2-Wasserstein (Bures) distance between diagonal
  Gaussian prototypes, reduced over feature dims (step 4).
* :func:`joint_cost` -- the K1 x K2 x K3 tensor of the three pairwise costs
  (step 5).
* :func:`multi_marginal_sinkhorn` -- entropic 3-marginal OT (step 6) through
  ott-jax's multi-marginal Sinkhorn (default) or the official plain-domain
  50-sweep solver, the one solver written here.

Why the EM is not ott-jax's: ``ott.tools.gaussian_mixture`` fits
*full*-covariance mixtures (Cholesky parametrisation), initialises by k-means++
(random), has no variance floor, and ``fit_model_em`` runs EM as a Python loop
that raises on NaN (so it cannot run under ``jit``). None of the paper's
deterministic init, shared clamped initial variance or clamped M-step is
expressible there, so the EM is written directly.

For the transport, ott-jax's ``mmsinkhorn.run`` takes the dense cost tensor and
a fixed sweep count. Its two limits are handled here: it takes
``eps * log(a)`` of the marginals, so a dead GMM component (zero mass) would give
NaN gradients -- the marginals are floored at :data:`MARGINAL_FLOOR` and
renormalised; its loop is a ``custom_vjp`` fixed point, so only reverse-mode AD
works through it (the official solver supports both).

Numerical constants (all from the official code unless noted):

* ``var_floor`` (1e-4): lower clamp of every GMM variance (init and M-step).
* ``_MIN_COMPONENT_MASS`` (1e-6): lower clamp of the soft counts N_k.
* ``_BURES_SQRT_EPS`` (1e-8): added under the square root of the Bures cross
  term; keeps its gradient finite at zero variance (it makes the variance term
  of a pair of zero-variance dims -2e-4 instead of 0, as in the official code).
* ``_KERNEL_FLOOR`` (1e-30): lower clamp of the plain-domain Gibbs kernel.
* ``_DENOM_EPS`` (1e-8): added to every plain-domain scaling denominator.
* ``_PLAN_LOG_FLOOR`` (1e-8): ``log(max(P, 1e-8))`` in the entropic value.
* :data:`MARGINAL_FLOOR` (1e-8, ours): floor of the ott solver's marginals
  (then renormalised), so zero-mass entries keep finite potentials and
  gradients; their plan rows get mass ~1e-8 instead of exactly 0.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.experimental import mmsinkhorn

__all__ = [
    "MARGINAL_FLOOR",
    "GMMFit",
    "bures_cost",
    "fit_diag_gmm",
    "gmm_init_indices",
    "gmm_init_rows",
    "joint_cost",
    "multi_marginal_sinkhorn",
]

_MIN_COMPONENT_MASS = 1e-6
_BURES_SQRT_EPS = 1e-8
_KERNEL_FLOOR = 1e-30
_DENOM_EPS = 1e-8
_PLAN_LOG_FLOOR = 1e-8
MARGINAL_FLOOR = 1e-8
"""Floor on the marginals of the ott solver (then renormalised), see
:func:`multi_marginal_sinkhorn`."""
_LOG_2PI = math.log(2.0 * math.pi)
_UNROLL_EM_ITERS = 8  # EM loops up to this many iterations are unrolled


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------
# Diagonal GMM by EM
# ----------------------------------------------------------------------------


class GMMFit(NamedTuple):
    """A fitted diagonal Gaussian mixture and the batch's posteriors.

    Attributes:
      weights: ``[K]`` mixing weights pi_k = max(N_k, 1e-6) / B (they sum to 1
        unless a component's mass was clamped).
      means: ``[K, d]`` component means.
      variances: ``[K, d]`` diagonal variances, each >= ``var_floor``.
      responsibilities: ``[B, K]`` posteriors of the final E-step (rows sum
        to 1).
    """

    weights: jax.Array
    means: jax.Array
    variances: jax.Array
    responsibilities: jax.Array


def gmm_init_indices(batch_size: int, num_components: int) -> np.ndarray:
    """Rows of the batch that initialise the K component means.

    The rule is ``round(linspace(0, n - 1, K))`` with round-half-to-even, where
    ``n = batch_size`` if ``batch_size >= num_components``. If the batch is
    smaller than K it is first tiled (whole-batch copies, like torch's
    ``Tensor.repeat``: rows ``0..B-1, 0..B-1, ...``) ``ceil(K / B)`` times and
    truncated to its first K rows; the rule applied to that length-K batch
    selects every row, so component k starts at sample ``k mod B`` (duplicated
    components). The positions ``k (n - 1) / (K - 1)`` are evaluated in exact
    rational arithmetic: a float32 ``linspace`` (e.g. ``jnp.linspace``) lands
    just above or below exact .5 ties for some (B, K) (B=26, K=7 gives 12.5 for
    k=3, which must round to 12) and would flip them.

    Args:
      batch_size: B >= 1.
      num_components: K >= 1.

    Returns:
      ``[K]`` int array of row indices into the (un-tiled) batch, in ``[0, B)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_components < 1:
        raise ValueError(f"num_components must be >= 1, got {num_components}")
    n = max(batch_size, num_components)  # length of the (tiled, truncated) batch
    if num_components == 1:
        positions = [0]
    else:
        positions = [
            round(Fraction(k * (n - 1), num_components - 1))  # half-to-even
            for k in range(num_components)
        ]
    return np.asarray(positions, dtype=np.int32) % batch_size


def _log_joint(
    x: jax.Array, log_weights: jax.Array, means: jax.Array, variances: jax.Array
) -> jax.Array:
    """``[B, K]`` log pi_k + log N(x_n | mu_k, diag(var_k)).

    The squared distance is formed by broadcasting over ``[B, K, d]`` (not the
    GEMM expansion x^2 - 2 x mu + mu^2), which would cancel catastrophically for
    features with a large offset; B * K * d is small for prototype fitting.
    """
    d = x.shape[-1]
    diff = x[:, None, :] - means[None, :, :]  # [B, K, d]
    maha = jnp.sum(diff * diff / variances[None, :, :], axis=-1)  # [B, K]
    log_det = jnp.sum(jnp.log(variances), axis=-1)  # [K]
    return log_weights[None, :] - 0.5 * (maha + log_det[None, :] + d * _LOG_2PI)


def gmm_init_rows(valid: jax.Array, num_components: int) -> jax.Array:
    """:func:`gmm_init_indices` for a traced mask: the rule on the valid rows only.

    With ``n = sum(valid)`` valid rows (at least 1), component k starts at the
    ``p_k``-th valid row (in batch order), ``p_k = round(k (m - 1) / (K - 1)) mod n``
    with ``m = max(n, K)`` and round-half-to-even, evaluated in exact integer
    arithmetic (as :func:`gmm_init_indices`, which it equals for an all-True mask).

    Args:
      valid: ``[B]`` bool, True for real rows (at least one).
      num_components: K >= 1 (static).

    Returns:
      ``[K]`` int32 row indices into the batch, each a valid row.
    """
    valid = jnp.asarray(valid, dtype=bool)
    n = jnp.maximum(jnp.sum(valid.astype(jnp.int32)), 1)
    k = jnp.arange(num_components, dtype=jnp.int32)
    if num_components == 1:
        pos = jnp.zeros((1,), jnp.int32)
    else:
        q = num_components - 1
        num = k * (jnp.maximum(n, num_components) - 1)
        quot, rem = num // q, num % q
        up = (2 * rem > q) | ((2 * rem == q) & (quot % 2 == 1))  # half-to-even
        pos = quot + up.astype(jnp.int32)
    # Valid rows first, each group in batch order (a stable sort of the mask).
    order = jnp.argsort(~valid, stable=True)
    return order[pos % n].astype(jnp.int32)


def fit_diag_gmm(
    x: jax.Array,
    num_components: int,
    *,
    num_iters: int = 5,
    var_floor: float = 1e-4,
    valid: jax.Array | None = None,
) -> GMMFit:
    """Fit a K-component diagonal GMM to a batch by a fixed number of EM steps.

    Exactly docs/decalign.md §4.2 (the official ``_fit_gmm_em``):

    * Init: means = rows :func:`gmm_init_indices` of x (tiled and truncated if
      B < K); variances = biased per-dim batch variance of x, clamped >=
      ``var_floor``, shared by all K; weights uniform 1/K.
    * ``num_iters`` EM iterations (unrolled up to 8, else a ``lax.fori_loop``):
      E-step gamma = softmax_k(log pi_k - 1/2 [sum_d (x - mu_k)^2 / var_k +
      sum_d log var_k + d log 2 pi]);
      M-step N_k = max(sum_n gamma_nk, 1e-6), pi_k = N_k / B,
      mu_k = sum_n gamma_nk x_n / N_k,
      var_k = max(sum_n gamma_nk x_n^2 / N_k - mu_k^2, var_floor).
    * A final E-step gives the returned responsibilities.

    With ``valid`` (a short last batch padded to a static shape), every batch
    statistic runs over the valid rows only (B above is their count, the init
    rows are :func:`gmm_init_rows`), so the fit equals the fit on the valid rows
    alone; padded rows get responsibilities too (finite, to be ignored).

    Numerics (algebraically identical to the formulas above, clamps
    included): EM runs on the batch centred by its per-dim mean m (means are
    carried as mu_k - m and shifted back at the end), and the M-step variance
    is evaluated as ``sum_n gamma_nk (x_n - mu_k)^2 / N_k + (1 - r_k) mu_k^2``
    with ``r_k = sum_n gamma_nk / N_k`` (= 1 unless the mass was clamped), so
    neither the E-step distances nor the variances cancel catastrophically for
    features with a large offset (the raw ``E[x^2] - mu^2`` loses all digits in
    float32 when |x| >> std). With a clamped mass the textbook mean
    ``sum gamma x / N_k`` is ``r_k m + sum gamma (x - m) / N_k``, kept exactly.

    Args:
      x: ``[B, d]`` batch (B >= 1); integer input is cast to the default
        float dtype.
      num_components: K >= 1 (static).
      num_iters: number of EM iterations (static, >= 0).
      var_floor: lower clamp of the variances (> 0).
      valid: optional ``[B]`` bool, False for padded rows (at least one True).

    Returns:
      :class:`GMMFit` with ``weights [K]``, ``means [K, d]``,
      ``variances [K, d]``, ``responsibilities [B, K]``.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape [B, d], got shape {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must have B >= 1 rows and d >= 1 dims, got {x.shape}")
    if not _is_int(num_components) or num_components < 1:
        raise ValueError(f"num_components must be an int >= 1, got {num_components!r}")
    if not _is_int(num_iters) or num_iters < 0:
        raise ValueError(f"num_iters must be an int >= 0, got {num_iters!r}")
    num_components, num_iters = int(num_components), int(num_iters)
    if isinstance(var_floor, (int, float)) and not var_floor > 0:
        raise ValueError(f"var_floor must be > 0, got {var_floor}")
    if valid is not None and jnp.shape(valid) != (x.shape[0],):
        raise ValueError(
            f"valid must have shape ({x.shape[0]},), got {jnp.shape(valid)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    b = x.shape[0]
    k = num_components

    if valid is None:
        w, n = None, b
        center = jnp.mean(x, axis=0)  # [d]
        init_rows = gmm_init_indices(b, k)
    else:
        w = jnp.asarray(valid, dtype=bool).astype(x.dtype)  # [B]
        n = jnp.maximum(jnp.sum(w), 1.0)
        center = jnp.sum(w[:, None] * x, axis=0) / n
        init_rows = gmm_init_rows(valid, k)
    xc = x - center  # EM runs on centred data; means are carried as mu - center
    means0 = xc[init_rows]  # [K, d]
    sq = xc * xc if w is None else w[:, None] * xc * xc
    var0 = jnp.maximum(jnp.sum(sq, axis=0) / n, var_floor)  # biased, [d]
    variances0 = jnp.broadcast_to(var0, (k, x.shape[1]))
    log_weights0 = jnp.full((k,), -math.log(k), dtype=x.dtype)

    def em_step(_, params):
        log_weights, means_c, variances = params
        gamma = jax.nn.softmax(_log_joint(xc, log_weights, means_c, variances), axis=-1)
        if w is not None:
            gamma = gamma * w[:, None]  # padded rows carry no mass
        raw_mass = jnp.sum(gamma, axis=0)  # [K]
        mass = jnp.maximum(raw_mass, _MIN_COMPONENT_MASS)
        kept = raw_mass / mass  # r_k: 1 unless the mass was clamped
        # the mean sum(gamma x) / N_k, in centred coordinates
        new_means_c = (gamma.T @ xc) / mass[:, None] + (kept - 1.0)[:, None] * center
        diff = xc[:, None, :] - new_means_c[None, :, :]  # [B, K, d] = x - mu_k
        spread = jnp.einsum("bk,bkd->kd", gamma, diff * diff) / mass[:, None]
        new_means = new_means_c + center
        clamp_excess = (1.0 - kept)[:, None] * new_means * new_means
        new_vars = jnp.maximum(spread + clamp_excess, var_floor)
        return jnp.log(mass / n), new_means_c, new_vars

    params = (log_weights0, means0, variances0)
    if num_iters <= _UNROLL_EM_ITERS:  # a few static steps: let XLA fuse across them
        for i in range(num_iters):
            params = em_step(i, params)
    else:
        params = jax.lax.fori_loop(0, num_iters, em_step, params)
    log_weights, means_c, variances = params
    gamma = jax.nn.softmax(_log_joint(xc, log_weights, means_c, variances), axis=-1)
    means = means_c + center
    return GMMFit(
        weights=jnp.exp(log_weights),
        means=means,
        variances=variances,
        responsibilities=gamma,
    )


# ----------------------------------------------------------------------------
# Costs
# ----------------------------------------------------------------------------


def bures_cost(
    means_p: jax.Array,
    vars_p: jax.Array,
    means_q: jax.Array,
    vars_q: jax.Array,
    *,
    reduction: Literal["mean", "sum"] = "mean",
) -> jax.Array:
    """Pairwise squared Bures (2-Wasserstein) cost of diagonal Gaussians.

    C_ij = red_d (mu^p_id - mu^q_jd)^2
           + red_d (var^p_id + var^q_jd - 2 sqrt(var^p_id var^q_jd + 1e-8)),

    with red_d the mean over dims (``"mean"``, the official
    ``hetero_cost_reduction``) or the sum (``"sum"``, the true squared W2).
    The 1e-8 under the root (official) keeps the gradient finite at zero
    variance; it also makes the cost of two identical zero-variance Gaussians
    -2e-4 per dim rather than 0 (not clamped, as in the official code).
    Formed by broadcasting over ``[K1, K2, d]`` (exact for large offsets,
    unlike the GEMM expansion; K1 * K2 * d is small for prototypes).

    Args:
      means_p: ``[K1, d]``.
      vars_p: ``[K1, d]`` non-negative variances.
      means_q: ``[K2, d]``.
      vars_q: ``[K2, d]`` non-negative variances.
      reduction: ``"mean"`` (default) or ``"sum"`` over d.

    Returns:
      ``[K1, K2]`` cost matrix.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    means_p, vars_p = jnp.asarray(means_p), jnp.asarray(vars_p)
    means_q, vars_q = jnp.asarray(means_q), jnp.asarray(vars_q)
    if means_p.ndim != 2 or vars_p.shape != means_p.shape:
        raise ValueError(
            "means_p and vars_p must both have shape [K1, d], got "
            f"{means_p.shape} and {vars_p.shape}"
        )
    if means_q.ndim != 2 or vars_q.shape != means_q.shape:
        raise ValueError(
            "means_q and vars_q must both have shape [K2, d], got "
            f"{means_q.shape} and {vars_q.shape}"
        )
    if means_p.shape[1] != means_q.shape[1]:
        raise ValueError(
            f"means_p {means_p.shape} and means_q {means_q.shape} differ in d"
        )
    diff = means_p[:, None, :] - means_q[None, :, :]  # [K1, K2, d]
    var_sum = vars_p[:, None, :] + vars_q[None, :, :]
    cross = jnp.sqrt(vars_p[:, None, :] * vars_q[None, :, :] + _BURES_SQRT_EPS)
    per_dim = diff * diff + var_sum - 2.0 * cross
    if reduction == "mean":
        return jnp.mean(per_dim, axis=-1)
    return jnp.sum(per_dim, axis=-1)


def joint_cost(c_la: jax.Array, c_lv: jax.Array, c_av: jax.Array) -> jax.Array:
    """3-way cost tensor C[i, j, k] = c_la[i, j] + c_lv[i, k] + c_av[j, k].

    Args:
      c_la: ``[K1, K2]`` cost between marginals 1 and 2.
      c_lv: ``[K1, K3]`` cost between marginals 1 and 3.
      c_av: ``[K2, K3]`` cost between marginals 2 and 3.

    Returns:
      ``[K1, K2, K3]`` cost tensor.
    """
    c_la, c_lv, c_av = jnp.asarray(c_la), jnp.asarray(c_lv), jnp.asarray(c_av)
    if c_la.ndim != 2 or c_lv.ndim != 2 or c_av.ndim != 2:
        raise ValueError(
            "c_la, c_lv, c_av must be matrices, got shapes "
            f"{c_la.shape}, {c_lv.shape}, {c_av.shape}"
        )
    k1, k2 = c_la.shape
    k3 = c_lv.shape[1]
    if c_lv.shape != (k1, k3) or c_av.shape != (k2, k3):
        raise ValueError(
            "inconsistent shapes: need c_la [K1, K2], c_lv [K1, K3], "
            f"c_av [K2, K3], got {c_la.shape}, {c_lv.shape}, {c_av.shape}"
        )
    return c_la[:, :, None] + c_lv[:, None, :] + c_av[None, :, :]


# ----------------------------------------------------------------------------
# Multi-marginal entropic OT
# ----------------------------------------------------------------------------


def _check_mm_inputs(
    cost: jax.Array, marginals: tuple[jax.Array, ...], num_iters: int, epsilon
) -> None:
    if cost.ndim != 3:
        raise ValueError(f"cost must have shape [K1, K2, K3], got {cost.shape}")
    if len(marginals) != 3:
        raise ValueError(f"marginals must be 3 vectors, got {len(marginals)}")
    for m, a in enumerate(marginals):
        if a.shape != (cost.shape[m],):
            raise ValueError(
                f"marginals[{m}] must have shape ({cost.shape[m]},) to match "
                f"cost {cost.shape}, got {a.shape}"
            )
    if not _is_int(num_iters) or num_iters < 0:
        raise ValueError(f"num_iters must be an int >= 0, got {num_iters!r}")
    if isinstance(epsilon, (int, float)) and not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")


def _plain_domain_plan(
    cost: jax.Array, marginals: tuple[jax.Array, ...], epsilon, num_iters: int
) -> jax.Array:
    """Official plain-domain sweep (docs/decalign.md §4.4); returns the plan."""
    a, b, c = marginals
    kernel = jnp.maximum(jnp.exp(-cost / epsilon), _KERNEL_FLOOR)

    def sweep(_, scalings):
        u, v, w = scalings
        u = a / (jnp.einsum("ijk,j,k->i", kernel, v, w) + _DENOM_EPS)
        v = b / (jnp.einsum("ijk,i,k->j", kernel, u, w) + _DENOM_EPS)
        w = c / (jnp.einsum("ijk,i,j->k", kernel, u, v) + _DENOM_EPS)
        return u, v, w

    ones = tuple(jnp.ones_like(m) for m in marginals)
    u, v, w = jax.lax.fori_loop(0, num_iters, sweep, ones)
    return u[:, None, None] * v[None, :, None] * w[None, None, :] * kernel


def _ott_log_plan(
    cost: jax.Array, marginals: tuple[jax.Array, ...], epsilon, num_iters: int
) -> jax.Array:
    """ott-jax's multi-marginal Sinkhorn on the dense cost; returns log P.

    Marginals are floored at :data:`MARGINAL_FLOOR` and renormalised first (ott
    takes ``eps * log(a)``: an exact zero would give -inf potentials and NaN
    gradients).
    """
    floored = tuple(jnp.maximum(m, MARGINAL_FLOOR) for m in marginals)
    floored = tuple(m / jnp.sum(m) for m in floored)
    # min = max = inner iterations: a fixed sweep count, the marginal error is
    # evaluated once at the end (the official code runs a fixed count too).
    solver = mmsinkhorn.MMSinkhorn(
        min_iterations=num_iters, max_iterations=num_iters, inner_iterations=num_iters
    )
    out = mmsinkhorn.run(
        (cost, floored, epsilon), solver, solver.init_state(cost.shape)
    )
    f, g, h = out.potentials
    return (f[:, None, None] + g[None, :, None] + h[None, None, :] - cost) / epsilon


def multi_marginal_sinkhorn(
    cost: jax.Array,
    marginals: tuple[jax.Array, jax.Array, jax.Array],
    *,
    epsilon: float | jax.Array = 0.1,
    num_iters: int = 50,
    solver: Literal["ott", "official"] = "ott",
) -> tuple[jax.Array, jax.Array]:
    """Entropic 3-marginal OT by sequential Sinkhorn sweeps (docs/decalign.md §4.4).

    ``solver="official"`` is exactly the official plain-domain sweep: kernel
    G = max(exp(-C / eps), 1e-30), scalings u = v = w = 1, then ``num_iters``
    sweeps of, in order (each using the freshest others),
    u = a / (sum_jk G v w + 1e-8), v = b / (sum_ik G u w + 1e-8),
    w = c / (sum_ij G u v + 1e-8); plan P = (u ⊗ v ⊗ w) ⊙ G. It underflows
    when C / eps is large (G hits its floor, the 1e-8 dominates the
    denominators and the marginals are not met). Differentiable in forward and
    reverse mode (a ``lax.fori_loop``).

    ``solver="ott"`` (default) runs ott-jax's multi-marginal Sinkhorn
    (``ott.experimental.mmsinkhorn``, Benamou et al. 2015): the same sequential
    block-coordinate sweep on log-domain potentials f = eps log u (init 0),
    f = eps log a - eps logsumexp_jk((g_j + h_k - C_ijk) / eps), without the
    kernel floor and denominator epsilons, stable for small eps / large costs,
    for exactly ``num_iters`` sweeps. Marginals are first floored at
    :data:`MARGINAL_FLOOR` (1e-8) and renormalised, so a dead GMM component
    (zero mass) keeps finite potentials and gradients; 1e-8 is below float32
    resolution relative to live entries (~1/K), which are unchanged. Gradients
    are ott's unrolled backpropagation through the sweeps (reverse mode only:
    the loop is a ``custom_vjp``). On well-conditioned inputs both solvers
    agree to float32 precision.

    Both return value = sum P C + eps sum P (log max(P, 1e-8) - 1) (the
    official primal value); no stop-gradient anywhere.

    Args:
      cost: ``[K1, K2, K3]`` dense cost tensor (e.g. :func:`joint_cost`).
      marginals: three non-negative vectors ``[K1]``, ``[K2]``, ``[K3]``,
        each summing to 1 (not checked: values may be traced).
      epsilon: entropic regularisation eps > 0 (official ``lambda_ot`` 0.1).
      num_iters: number of full sweeps (static, >= 0; >= 1 for ``"ott"``).
      solver: ``"ott"`` (default) or ``"official"`` (static).

    Returns:
      ``(plan [K1, K2, K3], value [])``.
    """
    cost = jnp.asarray(cost)
    marginals = tuple(jnp.asarray(m) for m in marginals)
    _check_mm_inputs(cost, marginals, num_iters, epsilon)
    num_iters = int(num_iters)
    if solver == "ott":
        if num_iters < 1:
            raise ValueError(
                f"num_iters must be >= 1 for solver 'ott', got {num_iters}"
            )
        log_plan = _ott_log_plan(cost, marginals, epsilon, num_iters)
        plan = jnp.exp(log_plan)
        log_term = jnp.maximum(log_plan, math.log(_PLAN_LOG_FLOOR))
    elif solver == "official":
        plan = _plain_domain_plan(cost, marginals, epsilon, num_iters)
        log_term = jnp.log(jnp.maximum(plan, _PLAN_LOG_FLOOR))
    else:
        raise ValueError(f"solver must be 'ott' or 'official', got {solver!r}")
    value = jnp.sum(plan * cost) + epsilon * jnp.sum(plan * (log_term - 1.0))
    return plan, value
