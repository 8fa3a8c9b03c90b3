"""Section ``kernels``: each library kernel against its naive form, same inputs, same run.

CDDS (sizes of ``Settings.cdds`` at ``Settings.kernel_batch``): the KL correlation as a
per-pair vmap and as a Python loop over pairs, against ``semantics.kl_correlation``;
the pair scores as a per-pair vmap forming every ``X^v_b``, ``X^t_a``, against
``scores.pair_scores`` (one GEMM). DecAlign (sizes of the last DecAlign case): EM and
the 3-marginal Sinkhorn, forward + backward, as an eager Python loop and as the jit of
the unrolled loop, against ``prototypes.fit_diag_gmm`` (a few EM iterations unrolled,
more in a ``lax.fori_loop``) and ``prototypes.multi_marginal_sinkhorn`` with the HEAD
config's ``loss.ot_solver`` (``"ott"``: ott-jax's multi-marginal Sinkhorn on log-domain
potentials, its fixed-point loop; ``"official"``: the plain-domain sweep in a
``lax.fori_loop``; ``decalign_setup.SOLVER_FORMS``). The naive retrieval ranks
are measured by ``cdds_eval`` and listed in this table too. Every naive form is checked
to compute the same as the library (``max_abs_diff``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import cdds_eval, cdds_setup, decalign_setup, markdown
from benchmarks.settings import Settings
from benchmarks.timing import log, time_jit
from cdds_jax import arrays, scores, semantics
from decalign_jax import prototypes

__all__ = [
    "NAME",
    "kernel_row",
    "kernels_cdds",
    "kernels_decalign",
    "measure",
    "naive_gmm",
    "naive_pair_kl",
    "naive_pair_scores",
    "naive_sinkhorn_value",
    "render",
]

NAME = "kernels"


# -- Naive forms ----------------------------------------------------------------------


def naive_pair_kl(
    x: jax.Array, xm: jax.Array, y: jax.Array, ym: jax.Array, num_bins: int
) -> jax.Array:
    """``[d, d]`` KL(column i of x || column j of y) of ONE pair, histogram estimator.

    ``x [N, d]`` and ``y [M, d]`` with masks ``xm [N]``, ``ym [M]``; the bins span the
    pair's joint range, as ``semantics.kl_correlation`` does for a batch.
    """
    big = jnp.inf
    lo = jnp.minimum(
        jnp.min(jnp.where(xm[:, None], x, big)), jnp.min(jnp.where(ym[:, None], y, big))
    )
    hi = jnp.maximum(
        jnp.max(jnp.where(xm[:, None], x, -big)),
        jnp.max(jnp.where(ym[:, None], y, -big)),
    )
    scale = jnp.maximum(1.0, jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
    width = jnp.maximum((hi - lo) / num_bins, semantics.HISTOGRAM_WIDTH_FLOOR * scale)
    centres = lo + (jnp.arange(num_bins) + 0.5) * width

    def hist(z: jax.Array, zm: jax.Array) -> jax.Array:
        u = (z[:, :, None] - centres) / width  # [N, d, K]
        h = jnp.sum(zm[:, None, None] * jnp.exp(-0.5 * u * u), axis=0)
        h = h + semantics.HISTOGRAM_EPS
        return h / jnp.sum(h, axis=-1, keepdims=True)

    p, q = hist(x, xm), hist(y, ym)
    return jnp.sum(p * jnp.log(p), axis=-1)[:, None] - jnp.matmul(
        p, jnp.log(q).T, precision=jax.lax.Precision.HIGHEST
    )


def _cos_flat(a: jax.Array, b: jax.Array) -> jax.Array:
    na = jnp.maximum(jnp.linalg.norm(a), arrays.NORM_EPS)
    nb = jnp.maximum(jnp.linalg.norm(b), arrays.NORM_EPS)
    return jnp.sum(a * b) / (na * nb)


def naive_pair_scores(
    q_v: jax.Array, q_t: jax.Array, w_v: jax.Array, w_t: jax.Array
) -> jax.Array:
    """Scores ``[B, B]`` by a per-pair vmap that forms X^v_b and X^t_a for every pair."""

    def one(qv: jax.Array, qt: jax.Array) -> jax.Array:  # [G, d] each
        return _cos_flat(qv, qt @ w_v.T) + _cos_flat(qt, qv @ w_t.T)

    return jax.vmap(lambda qv: jax.vmap(lambda qt: one(qv, qt))(q_t))(q_v)


def naive_gmm(
    x: jax.Array, num_components: int, num_iters: int, var_floor: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Diagonal-GMM EM (uncentred formulas) as a Python loop on ``x [B, d]``.

    Returns:
      ``(means [K, d], variances [K, d], responsibilities [B, K])``, initialised as
      ``prototypes.fit_diag_gmm`` is.
    """
    b, d = x.shape
    means = x[prototypes.gmm_init_indices(b, num_components)]
    var0 = jnp.maximum(jnp.var(x, axis=0), var_floor)
    variances = jnp.broadcast_to(var0, (num_components, d))
    log_w = jnp.full((num_components,), -math.log(num_components))

    def e_step(log_w, means, variances):
        maha = jnp.sum(
            (x[:, None, :] - means[None]) ** 2 / variances[None], axis=-1
        )  # [B, K]
        log_det = jnp.sum(jnp.log(variances), axis=-1)
        return jax.nn.softmax(
            log_w[None] - 0.5 * (maha + log_det[None] + d * math.log(2 * math.pi)),
            axis=-1,
        )

    for _ in range(num_iters):
        gamma = e_step(log_w, means, variances)
        mass = jnp.maximum(jnp.sum(gamma, axis=0), 1e-6)
        means = (gamma.T @ x) / mass[:, None]
        variances = jnp.maximum(
            (gamma.T @ (x * x)) / mass[:, None] - means**2, var_floor
        )
        log_w = jnp.log(mass / b)
    return means, variances, e_step(log_w, means, variances)


def _gmm_objective(
    means: jax.Array, variances: jax.Array, gamma: jax.Array
) -> jax.Array:
    """A scalar that depends on every output of the fit, to differentiate through it."""
    return (
        jnp.sum(means)
        + jnp.sum(variances)
        + jnp.sum(gamma * jnp.arange(gamma.shape[1]))
    )


def naive_sinkhorn_value(
    cost: jax.Array, marginals: tuple[jax.Array, ...], epsilon: float, num_iters: int
) -> jax.Array:
    """Log-domain 3-marginal Sinkhorn sweeps as a Python loop; the entropic value.

    ``cost [K, K, K]`` and three marginals ``[K]``; the value is
    ``<P, C> + epsilon <P, log P - 1>`` with ``log P`` floored at ``log 1e-8``.
    """
    log_a, log_b, log_c = (jnp.log(jnp.maximum(m, 1e-30)) for m in marginals)
    log_k = -cost / epsilon
    lse = jax.nn.logsumexp
    f = jnp.zeros_like(log_a)
    g = jnp.zeros_like(log_b)
    h = jnp.zeros_like(log_c)
    for _ in range(num_iters):
        f = log_a - lse(log_k + g[None, :, None] + h, axis=(1, 2))
        g = log_b - lse(log_k + f[:, None, None] + h[None, None, :], axis=(0, 2))
        h = log_c - lse(log_k + f[:, None, None] + g[None, :, None], axis=(0, 1))
    log_plan = log_k + f[:, None, None] + g[None, :, None] + h
    plan = jnp.exp(log_plan)
    log_term = jnp.maximum(log_plan, math.log(1e-8))
    return jnp.sum(plan * cost) + epsilon * jnp.sum(plan * (log_term - 1.0))


# -- Measurements ---------------------------------------------------------------------


def kernel_row(
    name: str,
    size: str,
    naive_form: str,
    naive: dict[str, Any],
    library: dict[str, Any],
    max_abs_diff: float,
    **extra: Any,
) -> dict[str, Any]:
    """One row of the kernels table: both timings, the speed-up, the difference."""
    row = {
        "kernel": name,
        "size": size,
        "naive_form": naive_form,
        "naive": naive,
        "library": library,
        "speedup": naive["median_s"] / library["median_s"],
        "max_abs_diff": float(max_abs_diff),
        **extra,
    }
    log(
        f"kernel {name} ({size}): {naive_form} {naive['median_s'] * 1e3:.2f} ms vs "
        f"library {library['median_s'] * 1e3:.2f} ms (x{row['speedup']:.1f}), "
        f"max |diff| {max_abs_diff:.2e}"
    )
    return row


def _kl_rows(settings: Settings, rng: np.random.Generator) -> list[dict[str, Any]]:
    """KL correlation: per-pair vmap / Python loop over pairs vs one GEMM."""
    s = settings.cdds
    b, d, k = settings.kernel_batch, s.dim, s.bins
    p, length = s.image_tokens, s.text_tokens
    chunk = cdds_setup.kl_chunk_size()
    v = jnp.asarray(rng.standard_normal((b, p, d), dtype=np.float32))
    t = jnp.asarray(rng.standard_normal((b, length, d), dtype=np.float32))
    vm = jnp.ones((b, p), jnp.float32)
    lengths = rng.integers(max(1, length // 2), length + 1, size=b)
    tm = jnp.asarray(np.arange(length)[None, :] < lengths[:, None], jnp.float32)
    args = (v, vm, t, tm)
    library = jax.jit(
        functools.partial(
            semantics.kl_correlation,
            estimator="histogram",
            num_bins=k,
            chunk_size=chunk,
        )
    )
    lib_t, lib_s = time_jit(library, args, settings)
    per_pair = jax.jit(functools.partial(naive_pair_kl, num_bins=k))
    vmapped = jax.jit(
        lambda v, vm, t, tm: jnp.mean(
            jax.vmap(functools.partial(naive_pair_kl, num_bins=k))(v, vm, t, tm),
            axis=0,
        )
    )

    def loop(v, vm, t, tm):
        acc = per_pair(v[0], vm[0], t[0], tm[0])
        for a in range(1, v.shape[0]):
            acc = acc + per_pair(v[a], vm[a], t[a], tm[a])
        return acc / v.shape[0]

    size = f"B {b}, P {p}, L {length}, d {d}, K {k}"
    rows = []
    for form, fn in (
        ("per-pair vmap, [B, d, d]", vmapped),
        ("Python loop over pairs", loop),
    ):
        naive_t, naive_s = time_jit(fn, args, settings)
        rows.append(
            kernel_row(
                "KL correlation",
                size,
                form,
                naive_t,
                lib_t,
                float(jnp.max(jnp.abs(naive_s - lib_s))),
                library_form=f"semantics.kl_correlation (chunk {chunk})",
            )
        )
    return rows


def kernels_cdds(settings: Settings) -> list[dict[str, Any]]:
    """KL correlation and pair scores: naive forms vs the library, CDDS sizes."""
    s = settings.cdds
    b, d, g = settings.kernel_batch, s.dim, s.levels
    rng = np.random.default_rng(3)
    rows = _kl_rows(settings, rng)

    # -- Pair scores: per-pair tensors vs the GEMM of per-item embeddings.
    q_v = jnp.asarray(rng.standard_normal((b, g, d), dtype=np.float32))
    q_t = jnp.asarray(rng.standard_normal((b, g, d), dtype=np.float32))
    w_v = jax.nn.softmax(jnp.asarray(rng.standard_normal((d, d), dtype=np.float32)))
    w_t = jax.nn.softmax(jnp.asarray(rng.standard_normal((d, d), dtype=np.float32)))
    args = (q_v, q_t, w_v, w_t)
    lib_t, lib_s = time_jit(jax.jit(scores.pair_scores), args, settings)
    naive_t, naive_s = time_jit(jax.jit(naive_pair_scores), args, settings)
    rows.append(
        kernel_row(
            "pair scores",
            f"B {b} x {b}, G {g}, d {d}",
            "per-pair vmap forming X^v_b, X^t_a",
            naive_t,
            lib_t,
            float(jnp.max(jnp.abs(naive_s - lib_s))),
            library_form="scores.pair_scores (one GEMM)",
        )
    )
    return rows


def _loop_rows(
    name: str,
    size: str,
    library_form: str,
    library: Callable[[jax.Array], jax.Array],
    naive: Callable[[jax.Array], jax.Array],
    arg: jax.Array,
    settings: Settings,
    diff: Callable[[Any, Any], float],
) -> list[dict[str, Any]]:
    """The eager and the jit-unrolled loop of ``naive`` vs ``library``, fwd + bwd.

    ``diff(library_value, unrolled_value)`` is the max abs difference reported.
    """
    lib_t, lib_v = time_jit(jax.jit(jax.value_and_grad(library)), (arg,), settings)
    unrolled_t, unrolled_v = time_jit(
        jax.jit(jax.value_and_grad(naive)), (arg,), settings
    )
    eager_t, _ = time_jit(jax.value_and_grad(naive), (arg,), settings)
    delta = diff(lib_v, unrolled_v)
    return [
        kernel_row(name, size, form, timing, lib_t, delta, library_form=library_form)
        for form, timing in (
            ("eager Python loop", eager_t),
            ("jit of unrolled Python loop", unrolled_t),
        )
    ]


def kernels_decalign(settings: Settings) -> list[dict[str, Any]]:
    """EM and Sinkhorn (forward + backward): Python loops vs the library's forms.

    Sizes of the last DecAlign case (B, d, K, iterations and ``loss.ot_solver`` of its
    HEAD config).
    """
    if not settings.decalign:
        return []
    case = settings.decalign[-1]
    config = decalign_setup.config(case, settings)
    lc = config.loss
    kp, iters, floor = lc.num_prototypes, lc.em_iters, lc.var_floor
    x = jax.random.normal(jax.random.PRNGKey(4), (case.batch, config.model.dim))

    def lib_gmm(x):
        fit = prototypes.fit_diag_gmm(x, kp, num_iters=iters, var_floor=floor)
        return _gmm_objective(fit.means, fit.variances, fit.responsibilities)

    def em_diff(lib_out: Any, naive_out: Any) -> float:
        # The fitted means, not the objective (a sum that hides where they differ).
        del lib_out, naive_out
        fit = prototypes.fit_diag_gmm(x, kp, num_iters=iters, var_floor=floor)
        return float(jnp.max(jnp.abs(fit.means - naive_gmm(x, kp, iters, floor)[0])))

    rows = _loop_rows(
        "EM (fwd+bwd)",
        f"B {case.batch}, d {config.model.dim}, K {kp}, {iters} iterations",
        "prototypes.fit_diag_gmm",
        lib_gmm,
        lambda x: _gmm_objective(*naive_gmm(x, kp, iters, floor)),
        x,
        settings,
        em_diff,
    )

    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(5), 4)
    pair = jnp.abs(jax.random.normal(k1, (3, kp, kp)))
    cost = prototypes.joint_cost(pair[0], pair[1], pair[2])
    marg = tuple(jax.nn.softmax(jax.random.normal(kk, (kp,))) for kk in (k2, k3, k4))
    eps, sweeps, solver = lc.ot_epsilon, lc.ot_iters, lc.ot_solver

    def lib_ot(cost):
        return prototypes.multi_marginal_sinkhorn(
            cost, marg, epsilon=eps, num_iters=sweeps, solver=solver
        )[1]

    rows += _loop_rows(
        "Sinkhorn 3-marginal (fwd+bwd)",
        f"K {kp}^3, {sweeps} sweeps, eps {eps}",
        f"prototypes.multi_marginal_sinkhorn (solver {solver!r}: "
        f"{decalign_setup.SOLVER_FORMS.get(solver, solver)})",
        lib_ot,
        lambda cost: naive_sinkhorn_value(cost, marg, eps, sweeps),
        cost,
        settings,
        lambda lib_v, naive_v: float(abs(lib_v[0] - naive_v[0])),
    )
    return rows


def measure(settings: Settings, results: Mapping[str, Any]) -> dict[str, Any]:
    """Each library kernel against its naive form, same inputs, same run."""
    del results  # speed-ups compare two forms; no ceiling is needed
    return {"rows": kernels_cdds(settings) + kernels_decalign(settings)}


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## Naive forms vs library kernels`` table (with ``cdds_eval``'s ranks)."""
    ms = markdown.ms
    lines = [
        "",
        "## Naive forms vs library kernels (same inputs, same run)",
        "",
        "Median times after compile + warm-up (jitted forms; the eager forms "
        "dispatch op by op). EM and Sinkhorn are timed forward + backward "
        "(`jax.value_and_grad`), the others forward. max |diff| compares the two "
        "results (EM: the fitted means; the naive EM uses the textbook uncentred "
        "formulas).",
        "",
    ]
    rows = [
        [
            r["kernel"],
            r["size"],
            r["naive_form"],
            ms(r["naive"]["median_s"]),
            r.get("library_form", ""),
            ms(r["library"]["median_s"]),
            f"x{r['speedup']:.1f}",
            f"{r['naive'].get('compile_s', 0):.2f} / "
            f"{r['library'].get('compile_s', 0):.2f} s",
            f"{r['max_abs_diff']:.1e}",
        ]
        for r in results[NAME]["rows"]
    ]
    rows += cdds_eval.naive_rank_rows(results)
    header = [
        "kernel",
        "size",
        "naive form",
        "naive",
        "library form",
        "library",
        "speed-up",
        "first call naive / library",
        "max abs diff",
    ]
    return lines + markdown.table(header, rows)
