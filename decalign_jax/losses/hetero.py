"""L_hete = L_OT + L_local: GMM prototypes and 3-marginal OT (docs/decalign.md §4.2-4.5)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from decalign_jax import prototypes
from decalign_jax.losses.numerics import (
    ORDERED_DST,
    ORDERED_SRC,
    PAIR_I,
    PAIR_J,
    as_float,
    check_positive,
    check_triple,
    check_valid,
    row_weights,
)

__all__ = ["OT_SOLVERS", "bind_hetero_loss", "hetero_loss"]

OT_SOLVERS = ("ott", "official")


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
    ot_solver: str = "ott",
    valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """L_hete = L_OT + L_local on time-pooled unique features (docs/decalign.md §4.2-4.5).

    1. A K-component diagonal GMM is fitted per modality by EM on the batch
       (:func:`decalign_jax.prototypes.fit_diag_gmm`, refit from scratch each call;
       gradients flow through EM).
    2. Marginals ``nu_m = mean_n gamma_m[n, :]``, renormalised to sum 1.
    3. Pairwise Bures costs ``C_la, C_lv, C_av`` ``[K, K]`` between the prototypes
       (:func:`~decalign_jax.prototypes.bures_cost`), joint cost
       ``C[i, j, k] = C_la[i, j] + C_lv[i, k] + C_av[j, k]``.
    4. Entropic 3-marginal OT on ``C`` with marginals (nu_l, nu_a, nu_v)
       (:func:`~decalign_jax.prototypes.multi_marginal_sinkhorn`, ott-jax or the
       official solver); L_OT is ``sum P C + eps sum P (log P - 1)``.
    5. Local term: for each of the 6 ordered pairs (m, m'), m != m',
       ``mean_n sum_k gamma_m[n, k] * mean_d (x_m[n] - mu^{m'}_k)^2`` (divided
       elementwise by ``var^{m'}_k`` when ``local_mahalanobis``); prototypes are
       matched **by index** across the independently fitted GMMs (as the official
       code). L_local is the mean of the 6 terms.

    The three GMM fits (and the three Bures costs) are vmapped, so they compile once.
    B < K is allowed (the GMM init tiles the batch: duplicate components), as is B = 1.
    With ``valid``, the fits, the marginals and the local term use the valid rows
    only: the value is that of the call on the valid rows alone.

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
      ot_solver: ``"ott"`` (ott-jax, default) or ``"official"`` (plain domain).
      valid: optional ``[B]`` bool, False for padded samples (at least one True).

    Returns:
      ``(loss, aux)`` with scalar ``loss = L_OT + L_local`` and ``aux`` a dict:
      ``"plan"`` ``[K, K, K]`` transport plan, ``"marginals"`` tuple of 3 ``[K]``
      (nu_l, nu_a, nu_v), ``"ot"`` scalar L_OT, ``"local"`` scalar L_local.
    """
    check_triple("pooled", pooled, 2)
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
    check_positive("ot_epsilon", ot_epsilon)
    check_positive("var_floor", var_floor)
    if cost_reduction not in ("mean", "sum"):
        raise ValueError(
            f"cost_reduction must be 'mean' or 'sum'; got {cost_reduction!r}"
        )
    if ot_solver not in OT_SOLVERS:
        raise ValueError(f"ot_solver must be one of {OT_SOLVERS}; got {ot_solver!r}")
    batch = jnp.shape(pooled[0])[0]
    check_valid(valid, batch)

    x = jnp.stack([as_float(p) for p in pooled])  # [3, B, d]
    fit = jax.vmap(
        functools.partial(
            prototypes.fit_diag_gmm,
            num_components=num_prototypes,
            num_iters=em_iters,
            var_floor=var_floor,
            valid=valid,
        )
    )(x)
    means, variances, gamma = fit.means, fit.variances, fit.responsibilities
    # means, variances: [3, K, d]; gamma: [3, B, K]
    w, n = row_weights(valid, batch, x.dtype)
    if valid is not None:
        gamma = gamma * w[None, :, None]  # padded rows count nowhere below

    nu = jnp.sum(gamma, axis=1) / jnp.maximum(n, 1.0)  # [3, K]
    nu = nu / jnp.maximum(jnp.sum(nu, axis=-1, keepdims=True), 1e-30)

    pi, pj = jnp.array(PAIR_I), jnp.array(PAIR_J)
    costs = jax.vmap(
        functools.partial(prototypes.bures_cost, reduction=cost_reduction)
    )(means[pi], variances[pi], means[pj], variances[pj])  # [3, K, K]: la, lv, av
    cost = prototypes.joint_cost(costs[0], costs[1], costs[2])
    plan, l_ot = prototypes.multi_marginal_sinkhorn(
        cost,
        (nu[0], nu[1], nu[2]),
        epsilon=ot_epsilon,
        num_iters=ot_iters,
        solver=ot_solver,
    )

    src, dst = jnp.array(ORDERED_SRC), jnp.array(ORDERED_DST)
    # [6, B, 1, d] - [6, 1, K, d] -> [6, B, K, d]; small (B, K, d <= 128, 7, 64).
    sq = jnp.square(x[src][:, :, None, :] - means[dst][:, None, :, :])
    if local_mahalanobis:
        sq = sq / variances[dst][:, None, :, :]
    dist = jnp.mean(sq, axis=-1)  # [6, B, K]
    per_sample = jnp.sum(gamma[src] * dist, axis=-1)  # [6, B]
    per_pair = jnp.sum(per_sample, axis=-1) / jnp.maximum(n, 1.0)  # [6]
    l_local = jnp.mean(per_pair)

    aux = {
        "plan": plan,
        "marginals": (nu[0], nu[1], nu[2]),
        "ot": l_ot,
        "local": l_local,
    }
    return l_ot + l_local, aux


def bind_hetero_loss(
    cfg: Any,
) -> Callable[..., tuple[jax.Array, dict[str, Any]]]:
    """:func:`hetero_loss` with the fields of a ``config.loss`` block bound.

    ``cfg`` has ``num_prototypes``, ``em_iters``, ``var_floor``, ``ot_epsilon``,
    ``ot_iters``, ``cost_reduction``, ``local_mahalanobis`` and ``ot_solver``.
    The driver and the benchmark both use it, so they run the same loss; ``valid``
    stays a call argument.
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
        ot_solver=str(cfg.ot_solver),
    )
