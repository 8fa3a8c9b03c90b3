"""Tests of decalign_jax.prototypes against float64 NumPy / SciPy / ott-jax references."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.test_util import check_grads
from scipy.special import logsumexp

from decalign_jax import losses
from decalign_jax.prototypes import (
    GMMFit,
    bures_cost,
    fit_diag_gmm,
    gmm_init_indices,
    joint_cost,
    multi_marginal_sinkhorn,
)

# ----------------------------------------------------------------------------
# float64 references, written as plain loops
# ----------------------------------------------------------------------------


def _np_gmm_em(x, num_components, num_iters=5, var_floor=1e-4):
    """Official EM (docs/decalign.md §4.2) in float64 with explicit loops."""
    x = np.asarray(x, np.float64)
    b, d = x.shape
    k_total = num_components
    # Tile whole-batch copies and truncate to K rows when B < K.
    if b < k_total:
        rows = [x[i % b] for i in range(k_total)]
        x_init = np.stack(rows)
    else:
        x_init = x
    n_init = x_init.shape[0]
    idx = np.round(np.linspace(0.0, n_init - 1, k_total)).astype(int)
    means = np.stack([x_init[i] for i in idx])
    var0 = np.zeros(d)
    for j in range(d):
        col = x[:, j]
        var0[j] = max(np.mean((col - col.mean()) ** 2), var_floor)
    variances = np.stack([var0] * k_total)
    weights = np.full(k_total, 1.0 / k_total)
    min_raw_mass = np.inf

    def e_step(weights, means, variances):
        gamma = np.zeros((b, k_total))
        for n in range(b):
            logp = np.zeros(k_total)
            for k in range(k_total):
                maha = 0.0
                logdet = 0.0
                for j in range(d):
                    maha += (x[n, j] - means[k, j]) ** 2 / variances[k, j]
                    logdet += math.log(variances[k, j])
                logp[k] = math.log(weights[k]) - 0.5 * (
                    maha + logdet + d * math.log(2 * math.pi)
                )
            m = logp.max()
            e = np.exp(logp - m)
            gamma[n] = e / e.sum()
        return gamma

    for _ in range(num_iters):
        gamma = e_step(weights, means, variances)
        new_w = np.zeros(k_total)
        new_mu = np.zeros((k_total, d))
        new_var = np.zeros((k_total, d))
        for k in range(k_total):
            raw = sum(gamma[n, k] for n in range(b))
            min_raw_mass = min(min_raw_mass, raw)
            nk = max(raw, 1e-6)
            new_w[k] = nk / b
            for j in range(d):
                s1 = sum(gamma[n, k] * x[n, j] for n in range(b))
                s2 = sum(gamma[n, k] * x[n, j] ** 2 for n in range(b))
                new_mu[k, j] = s1 / nk
                new_var[k, j] = max(s2 / nk - new_mu[k, j] ** 2, var_floor)
        weights, means, variances = new_w, new_mu, new_var
    gamma = e_step(weights, means, variances)
    return (weights, means, variances, gamma), min_raw_mass


def _np_bures(mp, vp, mq, vq, reduction):
    k1, d = mp.shape
    k2 = mq.shape[0]
    out = np.zeros((k1, k2))
    for i in range(k1):
        for j in range(k2):
            mean_term = [(mp[i, t] - mq[j, t]) ** 2 for t in range(d)]
            var_term = [
                vp[i, t] + vq[j, t] - 2 * math.sqrt(vp[i, t] * vq[j, t] + 1e-8)
                for t in range(d)
            ]
            red = np.mean if reduction == "mean" else np.sum
            out[i, j] = red(mean_term) + red(var_term)
    return out


def _np_plain_sinkhorn(cost, marginals, eps, num_iters):
    """Official plain-domain sweep, float64, loops over tensor entries."""
    cost = np.asarray(cost, np.float64)
    a, b, c = (np.asarray(m, np.float64) for m in marginals)
    k1, k2, k3 = cost.shape
    g = np.maximum(np.exp(-cost / eps), 1e-30)
    u, v, w = np.ones(k1), np.ones(k2), np.ones(k3)
    for _ in range(num_iters):
        for i in range(k1):
            s = sum(g[i, j, k] * v[j] * w[k] for j in range(k2) for k in range(k3))
            u[i] = a[i] / (s + 1e-8)
        for j in range(k2):
            s = sum(g[i, j, k] * u[i] * w[k] for i in range(k1) for k in range(k3))
            v[j] = b[j] / (s + 1e-8)
        for k in range(k3):
            s = sum(g[i, j, k] * u[i] * v[j] for i in range(k1) for j in range(k2))
            w[k] = c[k] / (s + 1e-8)
    plan = np.zeros_like(cost)
    for i in range(k1):
        for j in range(k2):
            for k in range(k3):
                plan[i, j, k] = u[i] * v[j] * w[k] * g[i, j, k]
    return plan, _np_value(plan, cost, eps)


def _np_value(plan, cost, eps):
    return float(
        np.sum(plan * cost)
        + eps * np.sum(plan * (np.log(np.maximum(plan, 1e-8)) - 1.0))
    )


def _np_log_sinkhorn_converged(cost, marginals, eps, num_iters=20000):
    """Independent float64 log-domain block-coordinate solve run to convergence."""
    cost = np.asarray(cost, np.float64)
    la, lb, lc = (np.log(np.asarray(m, np.float64)) for m in marginals)
    f = np.zeros(cost.shape[0])
    g = np.zeros(cost.shape[1])
    h = np.zeros(cost.shape[2])
    for _ in range(num_iters):
        z = (g[None, :, None] + h[None, None, :] - cost) / eps
        f = eps * (la - logsumexp(z, axis=(1, 2)))
        z = (f[:, None, None] + h[None, None, :] - cost) / eps
        g = eps * (lb - logsumexp(z, axis=(0, 2)))
        z = (f[:, None, None] + g[None, :, None] - cost) / eps
        h = eps * (lc - logsumexp(z, axis=(0, 1)))
    plan = np.exp((f[:, None, None] + g[None, :, None] + h[None, None, :] - cost) / eps)
    return plan


def _scipy_dual_solve(cost, marginals, eps):
    """Brute-force entropic OT: maximise the smooth unconstrained dual with BFGS.

    max_{f,g,h} <f,a> + <g,b> + <h,c> - eps sum exp((f+g+h-C)/eps); at the optimum
    P = exp((f+g+h-C)/eps) has the right marginals and the dual value equals
    sum P C + eps sum P (log P - 1).
    """
    cost = np.asarray(cost, np.float64)
    a, b, c = (np.asarray(m, np.float64) for m in marginals)
    k1, k2, k3 = cost.shape

    def neg_dual(z):
        f, g, h = z[:k1], z[k1 : k1 + k2], z[k1 + k2 :]
        p = np.exp(
            (f[:, None, None] + g[None, :, None] + h[None, None, :] - cost) / eps
        )
        val = f @ a + g @ b + h @ c - eps * p.sum()
        grad = np.concatenate([a - p.sum((1, 2)), b - p.sum((0, 2)), c - p.sum((0, 1))])
        return -val, -grad

    res = scipy.optimize.minimize(
        neg_dual,
        np.zeros(k1 + k2 + k3),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-12, "maxiter": 10000},
    )
    z = res.x
    f, g, h = z[:k1], z[k1 : k1 + k2], z[k1 + k2 :]
    plan = np.exp((f[:, None, None] + g[None, :, None] + h[None, None, :] - cost) / eps)
    return plan, -res.fun


def _tensor_marginals(plan):
    return plan.sum((1, 2)), plan.sum((0, 2)), plan.sum((0, 1))


def _random_marginals(rng, shape):
    return tuple(rng.dirichlet(np.full(k, 3.0)) for k in shape)


# ----------------------------------------------------------------------------
# GMM
# ----------------------------------------------------------------------------

# A batch on which the reference's EM clamps a component mass (N_k < 1e-6).
_DEAD_COMPONENT_X = np.array(
    [
        [1.79586e01, 5.33750e00, 5.00720e00],
        [1.35341e01, 6.54020e00, 5.00550e00],
        [-1.43309e01, 5.06000e-02, -1.58000e-02],
        [4.27300e-01, 2.21000e-02, -2.10000e-03],
        [9.22100e00, 2.15220e00, -1.90000e-03],
    ]
)


def _gmm_cases():
    rng = np.random.default_rng(0)
    clusters = np.concatenate(
        [rng.normal(-2.0, 0.5, (12, 5)), rng.normal(2.0, 1.0, (20, 5))]
    )
    zero_var_col = rng.normal(size=(16, 4))
    zero_var_col[:, 1] = 0.25  # one constant feature
    return {
        "clusters_B32_K7": (clusters, 7),
        "B_lt_K_B4_K7": (rng.normal(size=(4, 6)), 7),
        "B1_K7": (rng.normal(size=(1, 3)), 7),
        "all_rows_equal": (np.full((16, 4), 3.7), 5),
        "one_constant_feature": (zero_var_col, 5),
        "large_offset": (1000.0 + clusters, 7),
        "dead_component": (_DEAD_COMPONENT_X, 5),
        "K1": (rng.normal(size=(9, 2)), 1),
    }


_GMM_CASES = _gmm_cases()


@functools.cache
def _gmm_fn(num_components):
    return jax.jit(functools.partial(fit_diag_gmm, num_components=num_components))


def _assert_gmm_close(fit, ref, atol, rtol):
    weights, means, variances, gamma = ref
    chex.assert_trees_all_close(
        tuple(np.asarray(t, np.float64) for t in fit),
        (weights, means, variances, gamma),
        atol=atol,
        rtol=rtol,
    )


@pytest.mark.parametrize("case", sorted(_GMM_CASES))
def test_gmm_matches_float64_reference_x64(case):
    """Tight agreement with the loop reference when JAX also runs in float64."""
    x, k = _GMM_CASES[case]
    ref, min_mass = _np_gmm_em(x, k)
    if case == "dead_component":
        assert min_mass < 1e-6  # the test really exercises the mass clamp
    with jax.enable_x64(True):
        fit = _gmm_fn(k)(jnp.asarray(x, jnp.float64))
        assert fit.means.dtype == jnp.float64
        # The reference's raw E[x^2] - mu^2 itself loses ~1e-9 at offset 1e3.
        tol = 1e-7 if case == "large_offset" else 1e-9
        _assert_gmm_close(fit, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("case", ["clusters_B32_K7", "B_lt_K_B4_K7", "large_offset"])
def test_gmm_float32_matches_float64_reference(case):
    x, k = _GMM_CASES[case]
    x32 = np.asarray(x, np.float32)
    ref, _ = _np_gmm_em(x32.astype(np.float64), k)
    fit = _gmm_fn(k)(jnp.asarray(x32))
    assert isinstance(fit, GMMFit)
    chex.assert_shape(fit, ((k,), (k, x.shape[1]), (k, x.shape[1]), (x.shape[0], k)))
    chex.assert_tree_all_finite(fit)
    # Variances are relative to the data spread, means to its magnitude.
    weights, means, variances, gamma = ref
    np.testing.assert_allclose(fit.responsibilities, gamma, atol=2e-4)
    np.testing.assert_allclose(fit.weights, weights, atol=2e-4)
    np.testing.assert_allclose(fit.means, means, rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(fit.variances, variances, rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(fit.responsibilities.sum(-1), 1.0, atol=1e-6)
    assert np.all(np.asarray(fit.variances) >= 1e-4)


def test_gmm_b_lt_k_duplicates_components():
    x, k = _GMM_CASES["B_lt_K_B4_K7"]
    fit = _gmm_fn(k)(jnp.asarray(x, jnp.float32))
    # Component k starts at sample k mod 4, so k and k + 4 stay identical.
    np.testing.assert_allclose(fit.means[:3], fit.means[4:7], atol=1e-6)
    np.testing.assert_allclose(
        fit.responsibilities[:, :3], fit.responsibilities[:, 4:7], atol=1e-6
    )


def test_gmm_init_indices_exact_half_to_even():
    # Positions k (n - 1) / (K - 1); exact .5 ties go to the even index.
    np.testing.assert_array_equal(gmm_init_indices(32, 7), [0, 5, 10, 16, 21, 26, 31])
    # 25 / 6 * 3 = 12.5 -> 12 (float32 linspace gives 12.500001 -> 13).
    np.testing.assert_array_equal(gmm_init_indices(26, 7), [0, 4, 8, 12, 17, 21, 25])
    np.testing.assert_array_equal(gmm_init_indices(6, 3), [0, 2, 5])  # 2.5 -> 2
    np.testing.assert_array_equal(gmm_init_indices(4, 7), [0, 1, 2, 3, 0, 1, 2])
    np.testing.assert_array_equal(gmm_init_indices(1, 7), [0] * 7)
    np.testing.assert_array_equal(gmm_init_indices(7, 7), np.arange(7))
    np.testing.assert_array_equal(gmm_init_indices(10, 1), [0])


def test_gmm_num_iters_zero_is_init():
    x, k = _GMM_CASES["clusters_B32_K7"]
    fit = jax.jit(functools.partial(fit_diag_gmm, num_components=k, num_iters=0))(
        jnp.asarray(x, jnp.float32)
    )
    np.testing.assert_allclose(fit.means, x[gmm_init_indices(32, 7)], atol=1e-6)
    np.testing.assert_allclose(fit.weights, np.full(k, 1 / k), rtol=1e-6)
    np.testing.assert_allclose(
        fit.variances, np.broadcast_to(x.var(0), (k, x.shape[1])), rtol=1e-5
    )


def _gmm_grad_loss(x, k):
    fit = fit_diag_gmm(x, k)
    return (
        jnp.sum(fit.means**2)
        + jnp.sum(jnp.log(fit.variances))
        + jnp.sum(fit.responsibilities * jnp.arange(k))
        + jnp.sum(jnp.log(fit.weights))
    )


def test_gmm_gradients_finite_on_adversarial_batches():
    # B < K with zero-variance inputs is covered by the end-to-end test below.
    grad5 = jax.jit(jax.grad(functools.partial(_gmm_grad_loss, k=5)))
    base = _DEAD_COMPONENT_X  # a component mass gets clamped (see above)
    constant_col = base.copy()
    constant_col[:, 0] = -2.0
    for x in (
        base,
        np.full((5, 3), 3.7),  # all rows equal: zero variance everywhere
        constant_col,
        1e4 + base,  # large offset
        1e-6 * base,  # variances far below the floor
    ):
        chex.assert_tree_all_finite(grad5(jnp.asarray(x, jnp.float32)))


def test_gmm_gradients_match_finite_differences_x64():
    """Gradients flow through the EM loop and are correct (fwd and rev mode)."""
    x, _ = _GMM_CASES["clusters_B32_K7"]
    x = x[::3]  # 11 samples

    def f(x):
        fit = fit_diag_gmm(x, 3)
        w = jnp.arange(1.0, 4.0)
        return (
            jnp.sum(fit.means * w[:, None])
            + jnp.sum(jnp.sqrt(fit.variances))
            + jnp.sum(fit.responsibilities[:, 0])
        )

    with jax.enable_x64(True):
        check_grads(jax.jit(f), (jnp.asarray(x),), order=1, modes=("rev",), atol=1e-5)


def test_gmm_validation():
    with pytest.raises(ValueError, match=r"x must have shape \[B, d\]"):
        fit_diag_gmm(jnp.ones((3,)), 2)
    with pytest.raises(ValueError, match="num_components"):
        fit_diag_gmm(jnp.ones((3, 2)), 0)
    with pytest.raises(ValueError, match="num_iters"):
        fit_diag_gmm(jnp.ones((3, 2)), 2, num_iters=-1)
    with pytest.raises(ValueError, match="var_floor"):
        fit_diag_gmm(jnp.ones((3, 2)), 2, var_floor=0.0)


# ----------------------------------------------------------------------------
# Bures cost
# ----------------------------------------------------------------------------


def _bures_inputs(rng, k1=4, k2=5, d=6):
    return (
        rng.normal(size=(k1, d)),
        rng.uniform(0.1, 2.0, (k1, d)),
        rng.normal(size=(k2, d)),
        rng.uniform(0.1, 2.0, (k2, d)),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bures_matches_closed_form(reduction):
    rng = np.random.default_rng(1)
    mp, vp, mq, vq = _bures_inputs(rng)
    vp[0, :2] = 0.0  # zero-variance dims
    vq[1, 3] = 0.0
    mp[2] += 1000.0  # large offset
    ref = _np_bures(mp, vp, mq, vq, reduction)
    fn = jax.jit(functools.partial(bures_cost, reduction=reduction))
    with jax.enable_x64(True):
        out64 = fn(*(jnp.asarray(t) for t in (mp, vp, mq, vq)))
        np.testing.assert_allclose(out64, ref, rtol=1e-12, atol=1e-12)
    out32 = fn(*(jnp.asarray(t, jnp.float32) for t in (mp, vp, mq, vq)))
    chex.assert_shape(out32, (4, 5))
    np.testing.assert_allclose(out32, ref, rtol=1e-5, atol=1e-5)


def test_bures_sum_is_d_times_mean():
    rng = np.random.default_rng(2)
    args = tuple(jnp.asarray(t, jnp.float32) for t in _bures_inputs(rng, d=7))
    np.testing.assert_allclose(
        bures_cost(*args, reduction="sum"), 7 * bures_cost(*args), rtol=1e-6
    )


def test_bures_matches_ott_bures_on_diagonal_covariances():
    from ott.geometry import costs

    rng = np.random.default_rng(3)
    d = 4
    mp, vp, mq, vq = _bures_inputs(rng, k1=3, k2=4, d=d)

    def pack(m, v):  # ott's Bures packs [mean, flattened covariance]
        covs = np.stack([np.diag(row) for row in v]).reshape(len(v), d * d)
        return jnp.asarray(np.concatenate([m, covs], axis=1), jnp.float32)

    ott_cost = jax.jit(costs.Bures(dimension=d).all_pairs)(pack(mp, vp), pack(mq, vq))
    ours = bures_cost(
        *(jnp.asarray(t, jnp.float32) for t in (mp, vp, mq, vq)), reduction="sum"
    )
    # ott is the exact sum-reduced W2^2 (Newton-Schulz sqrtm); ours adds 1e-8
    # under each root, a ~1e-8 relative change here.
    np.testing.assert_allclose(ours, ott_cost, rtol=2e-3, atol=2e-3)


def test_bures_gradient_finite_at_zero_variance():
    mp = jnp.zeros((2, 3))
    mq = jnp.ones((3, 3))
    vp = jnp.zeros((2, 3))
    vq = jnp.array([[0.0, 1.0, 2.0]] * 3)

    grad_vp, grad_vq = jax.jit(
        jax.grad(
            lambda a, b: jnp.sum(bures_cost(mp, a, mq, b, reduction="sum")), (0, 1)
        )
    )(vp, vq)
    chex.assert_tree_all_finite((grad_vp, grad_vq))
    # d/dvp (vp + vq - 2 sqrt(vp vq + 1e-8)) = 1 - vq / sqrt(vp vq + 1e-8).
    ref = np.zeros((2, 3))
    for i in range(2):
        for t in range(3):
            ref[i, t] = sum(
                1 - float(vq[j, t]) / math.sqrt(float(vp[i, t] * vq[j, t]) + 1e-8)
                for j in range(3)
            )
    np.testing.assert_allclose(grad_vp, ref, rtol=1e-5)


def test_bures_validation():
    ok = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="reduction"):
        bures_cost(ok, ok, ok, ok, reduction="max")
    with pytest.raises(ValueError, match="means_p and vars_p"):
        bures_cost(ok, jnp.ones((3, 5)), ok, ok)
    with pytest.raises(ValueError, match="differ in d"):
        bures_cost(ok, ok, jnp.ones((2, 5)), jnp.ones((2, 5)))


# ----------------------------------------------------------------------------
# Joint cost and multi-marginal Sinkhorn
# ----------------------------------------------------------------------------


def test_joint_cost_matches_loop():
    rng = np.random.default_rng(4)
    c_la, c_lv, c_av = (
        rng.normal(size=(2, 3)),
        rng.normal(size=(2, 4)),
        rng.normal(size=(3, 4)),
    )
    out = jax.jit(joint_cost)(c_la, c_lv, c_av)
    chex.assert_shape(out, (2, 3, 4))
    ref = np.zeros((2, 3, 4))
    for i in range(2):
        for j in range(3):
            for k in range(4):
                ref[i, j, k] = c_la[i, j] + c_lv[i, k] + c_av[j, k]
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        joint_cost(c_la, c_lv, c_la)


@functools.cache
def _mm_jit(num_iters, solver):
    def fn(cost, margs, epsilon):
        return multi_marginal_sinkhorn(
            cost, margs, epsilon=epsilon, num_iters=num_iters, solver=solver
        )

    return jax.jit(fn)


def _mm_fn(epsilon, num_iters, solver):
    """Jitted solver; epsilon is traced so tests share compilations."""
    return lambda cost, margs: _mm_jit(num_iters, solver)(cost, margs, epsilon)


def test_plain_domain_matches_official_loop_reference():
    rng = np.random.default_rng(5)
    shape = (3, 4, 2)
    cost = rng.uniform(0.0, 2.0, shape)
    margs = _random_marginals(rng, shape)
    ref_plan, ref_value = _np_plain_sinkhorn(cost, margs, 0.1, 50)
    plan, value = _mm_fn(0.1, 50, "official")(
        jnp.asarray(cost, jnp.float32),
        tuple(jnp.asarray(m, jnp.float32) for m in margs),
    )
    np.testing.assert_allclose(plan, ref_plan, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(value, ref_value, rtol=1e-4, atol=1e-6)


def test_ott_solver_agrees_with_official_solver():
    """Both 50 sweeps, eps 0.1, costs O(1): agreement to float32 precision."""
    rng = np.random.default_rng(6)
    shape = (7, 7, 7)
    cost = jnp.asarray(rng.uniform(0.0, 1.5, shape), jnp.float32)
    margs = tuple(jnp.asarray(m, jnp.float32) for m in _random_marginals(rng, shape))
    plan_ott, value_ott = _mm_fn(0.1, 50, "ott")(cost, margs)
    plan_plain, value_plain = _mm_fn(0.1, 50, "official")(cost, margs)
    chex.assert_shape(plan_ott, shape)
    np.testing.assert_allclose(plan_ott, plan_plain, atol=1e-6)
    np.testing.assert_allclose(value_ott, value_plain, rtol=1e-5, atol=1e-6)
    # ... and end to end in hetero_loss on prototypes of features small enough
    # (0.3 N(0, 1)) that the official sweep meets its marginals (where it is valid;
    # at N(0, 1) it misses them by ~0.06 while ott meets them).
    xs = tuple(jnp.asarray(0.3 * rng.normal(size=(32, 8)), jnp.float32) for _ in "lav")
    out = {
        solver: jax.jit(
            functools.partial(losses.hetero_loss, num_prototypes=7, ot_solver=solver)
        )(xs)
        for solver in ("ott", "official")
    }
    official_plan, nu = out["official"][1]["plan"], out["official"][1]["marginals"]
    np.testing.assert_allclose(jnp.sum(official_plan, axis=(1, 2)), nu[0], atol=1e-6)
    np.testing.assert_allclose(out["ott"][1]["plan"], official_plan, atol=1e-7)
    np.testing.assert_allclose(out["ott"][0], out["official"][0], rtol=1e-5)


def test_ott_solver_is_ott_mmsinkhorn():
    """The plan is ott-jax's MMSinkhorn coupling (dense cost, fixed sweeps)."""
    from ott.experimental import mmsinkhorn

    rng = np.random.default_rng(7)
    shape = (4, 3, 5)
    cost = jnp.asarray(rng.uniform(0.0, 2.0, shape), jnp.float32)
    margs = tuple(jnp.asarray(m, jnp.float32) for m in _random_marginals(rng, shape))
    eps, iters = 0.1, 30
    solver = mmsinkhorn.MMSinkhorn(
        min_iterations=iters, max_iterations=iters, inner_iterations=iters
    )

    @jax.jit
    def ott_plan_fn(cost, margs):
        out = mmsinkhorn.run((cost, margs, eps), solver, solver.init_state(shape))
        return mmsinkhorn.coupling_tensor(out.potentials, cost, eps)

    ott_plan = ott_plan_fn(cost, margs)
    plan, _ = _mm_fn(eps, iters, "ott")(cost, margs)
    np.testing.assert_allclose(plan, ott_plan, rtol=1e-4, atol=1e-7)


def test_value_and_plan_match_brute_force_dual():
    rng = np.random.default_rng(8)
    shape = (3, 2, 4)
    eps = 0.3
    cost = rng.uniform(0.0, 1.0, shape)
    margs = _random_marginals(rng, shape)
    ref_plan, ref_value = _scipy_dual_solve(cost, margs, eps)
    # The reference is a feasible plan whose primal objective equals the dual value.
    for got, want in zip(_tensor_marginals(ref_plan), margs, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-8)
    np.testing.assert_allclose(_np_value(ref_plan, cost, eps), ref_value, atol=1e-9)
    with jax.enable_x64(True):
        for solver in ("ott", "official"):
            plan, value = _mm_fn(eps, 300, solver)(
                jnp.asarray(cost), tuple(jnp.asarray(m) for m in margs)
            )
            np.testing.assert_allclose(plan, ref_plan, atol=1e-7)
            np.testing.assert_allclose(value, ref_value, rtol=1e-7, atol=1e-7)
    # float32, default 50 sweeps: marginals met to ~1e-5 at this eps.
    plan32, value32 = _mm_fn(eps, 50, "ott")(
        jnp.asarray(cost, jnp.float32),
        tuple(jnp.asarray(m, jnp.float32) for m in margs),
    )
    for got, want in zip(_tensor_marginals(np.asarray(plan32)), margs, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(value32, ref_value, atol=1e-5)


@functools.cache
def _mm_grad_jit(num_iters, solver):
    def fn(cost, a, b, c, epsilon):
        plan, value = multi_marginal_sinkhorn(
            cost, (a, b, c), epsilon=epsilon, num_iters=num_iters, solver=solver
        )
        return value, plan

    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True))


def _mm_value_and_grads(epsilon, num_iters, solver):
    """jit(value_and_grad) wrt (cost, *marginals), with the plan as aux."""
    return lambda *args: _mm_grad_jit(num_iters, solver)(*args, epsilon)


def test_ott_solver_finite_where_official_solver_underflows():
    rng = np.random.default_rng(9)
    shape = (4, 3, 4)
    cost = rng.uniform(5.0, 10.0, shape)
    margs = _random_marginals(rng, shape)
    c32 = jnp.asarray(cost, jnp.float32)
    m32 = tuple(jnp.asarray(m, jnp.float32) for m in margs)

    # eps 0.05: C / eps in [100, 200], the plain kernel is all at its 1e-30 floor.
    # Block-coordinate Sinkhorn is slow at small eps: compare with an independent
    # float64 log-domain sweep at the same sweep count, and check the marginals.
    (value, plan), grads = _mm_value_and_grads(0.05, 3000, "ott")(c32, *m32)
    chex.assert_tree_all_finite((value, plan, grads))
    ref_plan = _np_log_sinkhorn_converged(cost, margs, 0.05, num_iters=3000)
    np.testing.assert_allclose(plan, ref_plan, atol=2e-5)
    np.testing.assert_allclose(value, _np_value(ref_plan, cost, 0.05), rtol=1e-5)
    for got, want in zip(
        _tensor_marginals(np.asarray(plan, np.float64)), margs, strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-4)
    # The official plain-domain sweep cannot meet the marginals here.
    (plain_value, plain_plan), plain_grads = _mm_value_and_grads(
        0.05, 3000, "official"
    )(c32, *m32)
    chex.assert_tree_all_finite((plain_value, plain_plan, plain_grads))
    assert float(jnp.sum(plain_plan)) < 1e-3

    # eps 0.01 (C / eps up to 1000): still finite, values and gradients.
    out = _mm_value_and_grads(0.01, 3000, "ott")(c32, *m32)
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("solver", ["ott", "official"])
def test_gradients_finite_with_zero_marginal_entries(solver):
    rng = np.random.default_rng(10)
    cost = jnp.asarray(rng.uniform(0.0, 2.0, (4, 3, 4)), jnp.float32)
    a = jnp.array([0.6, 0.0, 0.4, 0.0])  # dead GMM components
    b = jnp.array([0.3, 0.3, 0.4])
    c = jnp.array([1e-30, 0.25, 0.25, 0.5])
    (value, plan), grads = _mm_value_and_grads(0.1, 200, solver)(cost, a, b, c)
    chex.assert_tree_all_finite((value, plan, grads))
    for got, want in zip(_tensor_marginals(np.asarray(plan)), (a, b, c), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_gradient_wrt_cost_is_plan_at_convergence():
    """Envelope theorem: d value / dC = P at the optimum (unrolled gradients).

    Shares its compilations with the test above. (The float32 rounding of the
    reverse pass grows with the sweep count: ~3e-7 at 50 sweeps, ~2e-6 at 200.)
    """
    rng = np.random.default_rng(11)
    shape = (4, 3, 4)
    cost = jnp.asarray(rng.uniform(0.0, 1.0, shape), jnp.float32)
    margs = tuple(jnp.asarray(m, jnp.float32) for m in _random_marginals(rng, shape))
    for solver in ("ott", "official"):
        (_, plan), grads = _mm_value_and_grads(0.5, 200, solver)(cost, *margs)
        np.testing.assert_allclose(grads[0], plan, atol=5e-6)


def test_unrolled_gradients_match_finite_differences_x64():
    rng = np.random.default_rng(12)
    shape = (3, 2, 3)
    with jax.enable_x64(True):
        cost = jnp.asarray(rng.uniform(0.0, 1.0, shape))
        margs = tuple(jnp.asarray(m) for m in _random_marginals(rng, shape))

        def make(solver):
            @jax.jit
            def f(cost, a):
                plan, value = multi_marginal_sinkhorn(
                    cost, (a, *margs[1:]), epsilon=0.2, num_iters=4, solver=solver
                )
                return value + jnp.sum(plan[0] ** 2)

            return f

        # ott's loop is a custom_vjp: reverse mode only; the official one both.
        check_grads(make("ott"), (cost, margs[0]), order=1, modes=("rev",), atol=1e-5)
        check_grads(
            make("official"), (cost, margs[0]), order=1, modes=("fwd", "rev"), atol=1e-5
        )


def test_end_to_end_prototype_ot_gradients_finite():
    """GMMs -> marginals -> Bures -> joint cost -> OT; B < K, a constant modality."""
    rng = np.random.default_rng(13)
    k = 7

    def hetero_ot(xs):  # xs [3, B, d]: one vmapped EM for the three modalities
        fits = jax.vmap(functools.partial(fit_diag_gmm, num_components=k))(xs)
        nu = jnp.mean(fits.responsibilities, axis=1)  # [3, K]
        nu = nu / jnp.sum(nu, axis=-1, keepdims=True)
        c = [
            bures_cost(
                fits.means[p], fits.variances[p], fits.means[q], fits.variances[q]
            )
            for p, q in ((0, 1), (0, 2), (1, 2))
        ]
        _, value = multi_marginal_sinkhorn(joint_cost(*c), (nu[0], nu[1], nu[2]))
        return value

    b = 4
    xs = np.stack(
        [
            rng.normal(size=(b, 8)),
            3.0 * rng.normal(size=(b, 8)) + 5.0,
            np.full((b, 8), 0.5),  # zero variance
        ]
    )
    value, grads = jax.jit(jax.value_and_grad(hetero_ot))(jnp.asarray(xs, jnp.float32))
    chex.assert_tree_all_finite((value, grads))
    assert float(jnp.abs(grads).max()) > 0


def test_multi_marginal_validation():
    cost = jnp.ones((2, 3, 4))
    margs = (jnp.ones(2) / 2, jnp.ones(3) / 3, jnp.ones(4) / 4)
    with pytest.raises(ValueError, match=r"cost must have shape \[K1, K2, K3\]"):
        multi_marginal_sinkhorn(jnp.ones((2, 3)), margs)
    with pytest.raises(ValueError, match="3 vectors"):
        multi_marginal_sinkhorn(cost, margs[:2])
    with pytest.raises(ValueError, match=r"marginals\[1\]"):
        multi_marginal_sinkhorn(cost, (margs[0], jnp.ones(4) / 4, margs[2]))
    with pytest.raises(ValueError, match="epsilon"):
        multi_marginal_sinkhorn(cost, margs, epsilon=0.0)
    with pytest.raises(ValueError, match="num_iters"):
        multi_marginal_sinkhorn(cost, margs, num_iters=-1)
