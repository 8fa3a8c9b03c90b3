"""Tests for decalign_jax.losses against float64 NumPy loop references (under jit)."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decalign_jax import losses, prototypes

K = 7  # prototypes (official MOSI/MOSEI/SIMS setting)


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _assert_finite_tree(tree):
    for leaf in jax.tree_util.tree_leaves(tree):
        assert np.all(np.isfinite(np.asarray(leaf))), leaf


# ----------------------------------------------------------------------------------
# Decoupling loss
# ----------------------------------------------------------------------------------


def _decoupling_ref(unique, common):
    per_mod = []
    for s, c in zip(unique, common, strict=True):
        s, c = _f64(s), _f64(c)
        vals = []
        for b in range(s.shape[0]):
            a, v = s[b].ravel(), c[b].ravel()
            den = max(np.linalg.norm(a), 1e-8) * max(np.linalg.norm(v), 1e-8)
            vals.append((a @ v / den) ** 2)
        per_mod.append(np.mean(vals))
    return np.mean(per_mod)


_decoupling = jax.jit(jax.value_and_grad(losses.decoupling_loss, argnums=(0, 1)))


def test_decoupling_loss_matches_reference():
    rng = np.random.default_rng(0)
    b, d, lens = 5, 4, (6, 3, 2)
    unique = tuple(rng.normal(size=(b, t, d)).astype(np.float32) for t in lens)
    common = tuple(rng.normal(size=(b, t, d)).astype(np.float32) for t in lens)
    # Make sample 0 of the text pair nearly parallel (cos^2 close to 1).
    common[0][0] = 2.0 * unique[0][0] + 0.01
    unique[1][2] = 0.0  # an all-zero sample: cos = 0, value and grad finite
    val, grads = _decoupling(unique, common)
    np.testing.assert_allclose(val, _decoupling_ref(unique, common), rtol=1e-5)
    _assert_finite_tree(grads)


def test_decoupling_loss_degenerate_batch_one():
    z = tuple(jnp.zeros((1, t, 3)) for t in (2, 3, 4))
    val, grads = _decoupling(z, z)
    assert float(val) == 0.0
    _assert_finite_tree(grads)


def test_decoupling_loss_shape_errors():
    a = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="unique"):
        losses.decoupling_loss((a, a), (a, a, a))
    with pytest.raises(ValueError, match=r"unique\[1\] and common\[1\]"):
        losses.decoupling_loss((a, a, a), (a, jnp.zeros((2, 4, 4)), a))


# ----------------------------------------------------------------------------------
# Moments, MMD, homogeneity loss
# ----------------------------------------------------------------------------------


def _moments_ref(z):
    z = _f64(z)
    b, p = z.shape
    mu = np.array([sum(z[n, j] for n in range(b)) / b for j in range(p)])
    cov = np.zeros((p, p))
    for i in range(p):
        for j in range(p):
            cov[i, j] = sum(
                (z[n, i] - mu[i]) * (z[n, j] - mu[j]) for n in range(b)
            ) / max(b - 1, 1)
    skew = np.zeros(p)
    for j in range(p):
        var = max(sum((z[n, j] - mu[j]) ** 2 for n in range(b)) / b, 1e-6)
        skew[j] = sum((z[n, j] - mu[j]) ** 3 for n in range(b)) / b / var**1.5
    return mu, cov, skew


def _moment_matching_ref(zp, zq):
    return sum(
        np.mean((a - b) ** 2)
        for a, b in zip(_moments_ref(zp), _moments_ref(zq), strict=True)
    )


def _mmd_ref(x, y, bw):
    x, y = _f64(x), _f64(y)

    def k(a, b):
        return math.exp(-np.sum((a - b) ** 2) / (2.0 * bw))

    kxx = np.mean([[k(a, b) for b in x] for a in x])
    kyy = np.mean([[k(a, b) for b in y] for a in y])
    kxy = np.mean([[k(a, b) for b in y] for a in x])
    return kxx + kyy - 2.0 * kxy


def test_moment_matching_matches_reference():
    rng = np.random.default_rng(1)
    zp = rng.normal(size=(7, 4)).astype(np.float32)
    zq = (rng.gamma(2.0, size=(5, 4)) - 1.0).astype(np.float32)  # skewed, other B
    zq[:, 1] = 0.3  # a zero-variance dim: skewness floor path
    got = jax.jit(losses.moment_matching)(zp, zq)
    np.testing.assert_allclose(got, _moment_matching_ref(zp, zq), rtol=2e-5)


@pytest.mark.parametrize("bw", [1.0, 2.5])
def test_mmd_rbf_matches_reference(bw):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = (rng.normal(size=(4, 3)) + 0.7).astype(np.float32)
    got = jax.jit(losses.mmd_rbf, static_argnums=2)(x, y, bw)
    np.testing.assert_allclose(got, _mmd_ref(x, y, bw), rtol=1e-5, atol=1e-7)
    # The kernel divides by 2*bw (not 2*bw^2): the two conventions differ for bw != 1.
    if bw != 1.0:
        assert abs(_mmd_ref(x, y, bw) - _mmd_ref(x, y, bw**2)) > 1e-3


def test_mmd_rbf_large_offset_nonnegative_distances():
    # GEMM cancellation on far-from-origin data must not produce negative distances.
    x = jnp.full((3, 8), 1e3) + jnp.arange(3.0)[:, None] * 1e-3
    got = jax.jit(losses.mmd_rbf)(x, x)
    assert np.isfinite(got) and abs(float(got)) < 1e-5


_homo = jax.jit(jax.value_and_grad(losses.homo_loss))


def test_homo_loss_matches_reference():
    rng = np.random.default_rng(3)
    z = tuple((rng.normal(size=(6, 4)) * s + s).astype(np.float32) for s in (1, 2, 3))
    val, grads = _homo(z)
    pairs = ((0, 1), (0, 2), (1, 2))
    ref = np.mean([_moment_matching_ref(z[i], z[j]) for i, j in pairs]) + np.mean(
        [_mmd_ref(z[i], z[j], 1.0) for i, j in pairs]
    )
    np.testing.assert_allclose(val, ref, rtol=2e-5)
    _assert_finite_tree(grads)
    # Bandwidth is honoured.
    val2 = jax.jit(functools.partial(losses.homo_loss, bandwidth=0.5))(z)
    ref2 = np.mean([_moment_matching_ref(z[i], z[j]) for i, j in pairs]) + np.mean(
        [_mmd_ref(z[i], z[j], 0.5) for i, j in pairs]
    )
    np.testing.assert_allclose(val2, ref2, rtol=2e-5)


@pytest.mark.parametrize("case", ["batch1", "zero_var", "zeros"])
def test_homo_loss_no_nan(case):
    rng = np.random.default_rng(4)
    if case == "batch1":
        z = tuple(jnp.asarray(rng.normal(size=(1, 4)), jnp.float32) for _ in range(3))
    elif case == "zero_var":
        z = tuple(jnp.broadcast_to(jnp.arange(4.0) * s, (6, 4)) for s in (1, 2, 3))
    else:
        z = tuple(jnp.zeros((6, 4)) for _ in range(3))
    val, grads = _homo(z)
    _assert_finite_tree((val, grads))
    if case == "batch1":
        # B = 1: covariance and skewness are 0, so only the mean and MMD terms remain.
        zz = [_f64(a) for a in z]
        pairs = ((0, 1), (0, 2), (1, 2))
        ref = np.mean([np.mean((zz[i] - zz[j]) ** 2) for i, j in pairs]) + np.mean(
            [_mmd_ref(zz[i], zz[j], 1.0) for i, j in pairs]
        )
        np.testing.assert_allclose(val, ref, rtol=1e-5)


# ----------------------------------------------------------------------------------
# SupCon
# ----------------------------------------------------------------------------------


def _supcon_ref(feats, bins, tau, valid=None):
    f = _f64(feats)
    b = f.shape[0]
    valid = np.ones(b, bool) if valid is None else np.asarray(valid)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    per_anchor = []
    for i in range(b):
        if not valid[i]:
            continue
        cands = [j for j in range(b) if j != i and valid[j]]
        pos = [j for j in cands if bins[j] == bins[i]]
        if not pos:
            continue
        logits = {j: f[i] @ f[j] / tau for j in cands}
        m = max(logits.values())
        lse = m + math.log(sum(math.exp(v - m) for v in logits.values()))
        per_anchor.append(-np.mean([logits[j] - lse for j in pos]))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


_supcon = jax.jit(
    jax.value_and_grad(functools.partial(losses.supcon_loss, temperature=0.07))
)


def test_supcon_matches_reference():
    rng = np.random.default_rng(5)
    b = 10
    feats = rng.normal(size=(b, 6)).astype(np.float32)
    bins = np.array([0, 1, 1, 2, 0, 3, 1, 4, 4, 2], dtype=np.int32)  # 3, 5: no pos
    val, grads = _supcon(feats, bins)
    np.testing.assert_allclose(val, _supcon_ref(feats, bins, 0.07), rtol=1e-5)
    _assert_finite_tree(grads)
    # Validity mask: padded rows neither anchors nor candidates.
    valid = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0], bool)
    feats_pad = feats.copy()
    feats_pad[~valid] = 0.0
    got = jax.jit(functools.partial(losses.supcon_loss, temperature=0.1))(
        feats_pad, bins, valid=valid
    )
    np.testing.assert_allclose(got, _supcon_ref(feats_pad, bins, 0.1, valid), rtol=1e-5)
    # Dropping the padded rows gives the same value.
    np.testing.assert_allclose(
        got, _supcon_ref(feats[valid], bins[valid], 0.1), rtol=1e-5
    )


@pytest.mark.parametrize("case", ["batch1", "no_positive", "zeros"])
def test_supcon_degenerate(case):
    if case == "batch1":
        feats, bins = jnp.ones((1, 4)), jnp.zeros((1,), jnp.int32)
    elif case == "no_positive":
        feats, bins = jnp.eye(4), jnp.arange(4, dtype=jnp.int32)
    else:
        feats, bins = jnp.zeros((4, 4)), jnp.zeros((4,), jnp.int32)
    val, grads = _supcon(feats, bins)
    _assert_finite_tree((val, grads))
    if case != "zeros":
        assert float(val) == 0.0
    else:  # all logits 0: -log(1 / 3) per anchor
        np.testing.assert_allclose(val, math.log(3.0), rtol=1e-6)


def test_regression_bins_half_to_even():
    y = jnp.array([0.5, 1.5, 2.5, -0.5, -2.5, -1.5, 3.7, -4.0, 0.49, 0.51])
    got = jax.jit(losses.regression_bins)(y)
    chex.assert_trees_all_equal(got, jnp.array([3, 5, 5, 3, 1, 1, 6, 0, 3, 4]))
    assert got.dtype == jnp.int32


# ----------------------------------------------------------------------------------
# Task losses and total
# ----------------------------------------------------------------------------------


def test_task_losses_match_reference():
    rng = np.random.default_rng(6)
    b = 8
    pred = rng.normal(size=(b, 1)).astype(np.float32)
    label = np.array([0.0, 1.2, -0.4, 0.0, 2.0, -3.0, 0.6, 0.0], np.float32)
    valid = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
    p, y = _f64(pred[:, 0]), _f64(label)

    mse = jax.jit(losses.mse_loss)
    np.testing.assert_allclose(mse(pred, label), np.mean((p - y) ** 2), rtol=1e-6)
    np.testing.assert_allclose(
        mse(pred, label, valid), np.mean((p - y)[valid] ** 2), rtol=1e-6
    )

    def bce_ref(mask):
        vals = [
            -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))
            for x, yy, m in zip(p, y, mask, strict=True)
            if m and yy != 0
            for t in [float(yy > 0)]
        ]  # fmt: skip
        return np.mean(vals) if vals else 0.0

    sbce = jax.jit(losses.sims_binary_loss)
    np.testing.assert_allclose(sbce(pred, label), bce_ref(np.ones(b, bool)), rtol=1e-5)
    np.testing.assert_allclose(sbce(pred, label, valid), bce_ref(valid), rtol=1e-5)
    assert float(sbce(pred, np.zeros(b, np.float32))) == 0.0

    c = 6
    logits = rng.normal(size=(b, c)).astype(np.float32) * 3
    cls = rng.integers(0, c, b)

    def ce_ref(mask):
        z = _f64(logits)
        vals = [
            -(z[n, cls[n]] - math.log(sum(math.exp(v) for v in z[n])))
            for n in range(b)
            if mask[n]
        ]
        return np.mean(vals)

    ce = jax.jit(losses.cross_entropy_loss)
    np.testing.assert_allclose(
        ce(logits, cls.astype(np.float32)), ce_ref(np.ones(b, bool)), rtol=1e-5
    )
    np.testing.assert_allclose(ce(logits, cls, valid), ce_ref(valid), rtol=1e-5)
    assert float(ce(logits, cls, np.zeros(b, bool))) == 0.0
    assert float(mse(pred, label, np.zeros(b, bool))) == 0.0


def test_task_loss_shape_errors():
    with pytest.raises(ValueError, match="pred"):
        losses.mse_loss(jnp.zeros((4, 2)), jnp.zeros(4))
    with pytest.raises(ValueError, match="label"):
        losses.mse_loss(jnp.zeros(4), jnp.zeros(5))
    with pytest.raises(ValueError, match="valid"):
        losses.mse_loss(jnp.zeros(4), jnp.zeros(4), jnp.ones(3, bool))
    with pytest.raises(ValueError, match="label"):
        losses.cross_entropy_loss(jnp.zeros((4, 3)), jnp.zeros((4, 1)))


def test_total_loss():
    f = jax.jit(
        functools.partial(
            losses.total_loss, dec_weight=1.0, alpha=0.05, beta=0.07, ct_weight=0.003
        )
    )
    got = f(1.0, 2.0, 3.0, 4.0, 5.0)
    np.testing.assert_allclose(got, 1 + 2 + 0.05 * 3 + 0.07 * 4 + 0.003 * 5, rtol=1e-6)
    # A zero-weighted term is dropped, so even a NaN there does not leak.
    g = functools.partial(losses.total_loss, alpha=0.005, beta=0.0, ct_weight=0.001)
    got = jax.jit(g)(1.0, 2.0, 3.0, jnp.nan, 5.0)
    np.testing.assert_allclose(got, 1 + 2 + 0.005 * 3 + 0.001 * 5, rtol=1e-6)


# ----------------------------------------------------------------------------------
# Heterogeneity loss
# ----------------------------------------------------------------------------------


def _hetero_fn(grad, **kw):
    def f(pooled):
        return losses.hetero_loss(pooled, num_prototypes=K, **kw)

    if grad:
        return jax.jit(jax.value_and_grad(f, has_aux=True))
    return jax.jit(f)


# Compiles are the cost of this file (the EM gradient is slow to compile): value-only
# functions for the B = 12 references, one value-and-grad function for B = 4 and 1.
_hetero_value = _hetero_fn(False)
_hetero_value_maha = _hetero_fn(False, local_mahalanobis=True)
_hetero_grad = _hetero_fn(True)
_fit = jax.jit(prototypes.fit_diag_gmm, static_argnums=1)


def _bures_ref(mp, vp, mq, vq):
    kp, kq, d = mp.shape[0], mq.shape[0], mp.shape[1]
    out = np.zeros((kp, kq))
    for i in range(kp):
        for j in range(kq):
            out[i, j] = (
                sum(
                    (mp[i, t] - mq[j, t]) ** 2
                    + vp[i, t]
                    + vq[j, t]
                    - 2.0 * math.sqrt(vp[i, t] * vq[j, t] + 1e-8)
                    for t in range(d)
                )
                / d
            )
    return out


def _hetero_ref(pooled, plan, mahalanobis, eps=0.1):
    """Float64 loops for nu, L_local, the Bures / joint costs and the OT value of
    `plan`, on the prototypes that fit_diag_gmm returns for each modality."""
    fits = [_fit(jnp.asarray(x), K) for x in pooled]
    xs = [_f64(x) for x in pooled]
    mu = [_f64(f.means) for f in fits]
    var = [_f64(f.variances) for f in fits]
    gam = [_f64(f.responsibilities) for f in fits]
    b = xs[0].shape[0]
    nus = []
    for g in gam:
        nu = np.array([sum(g[n, k] for n in range(b)) / b for k in range(K)])
        nus.append(nu / nu.sum())
    local_terms = []
    for m in range(3):
        for mp in range(3):
            if m == mp:
                continue
            acc = 0.0
            for n in range(b):
                for k in range(K):
                    sq = (xs[m][n] - mu[mp][k]) ** 2
                    if mahalanobis:
                        sq = sq / var[mp][k]
                    acc += gam[m][n, k] * np.mean(sq)
            local_terms.append(acc / b)
    c_la = _bures_ref(mu[0], var[0], mu[1], var[1])
    c_lv = _bures_ref(mu[0], var[0], mu[2], var[2])
    c_av = _bures_ref(mu[1], var[1], mu[2], var[2])
    cost = np.zeros((K, K, K))
    for i in range(K):
        for j in range(K):
            for k in range(K):
                cost[i, j, k] = c_la[i, j] + c_lv[i, k] + c_av[j, k]
    p = _f64(plan)
    ot = np.sum(p * cost) + eps * np.sum(p * (np.log(np.maximum(p, 1e-8)) - 1.0))
    return nus, float(np.mean(local_terms)), float(ot)


def _clustered(rng, b, d, shift):
    centers = rng.normal(size=(3, d)) * 2.0
    return (centers[np.arange(b) % 3] + 0.5 * rng.normal(size=(b, d)) + shift).astype(
        np.float32
    )


def _check_against_reference(pooled, val, aux, mahalanobis):
    chex.assert_shape(aux["plan"], (K, K, K))
    nus, local_ref, ot_ref = _hetero_ref(pooled, aux["plan"], mahalanobis)
    for got_nu, ref_nu in zip(aux["marginals"], nus, strict=True):
        chex.assert_shape(got_nu, (K,))
        np.testing.assert_allclose(got_nu, ref_nu, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(aux["local"], local_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(aux["ot"], ot_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(val, local_ref + ot_ref, rtol=1e-4, atol=1e-5)
    # The plan couples the marginals: the last-updated (vision) one exactly; with the
    # official eps = 0.1 and 50 sweeps the first two need not have converged.
    plan = _f64(aux["plan"])
    np.testing.assert_allclose(plan.sum(axis=(0, 1)), nus[2], atol=3e-5)
    np.testing.assert_allclose(plan.sum(), 1.0, rtol=1e-4)


@pytest.mark.parametrize("mahalanobis", [False, True])
def test_hetero_loss_matches_reference(mahalanobis):
    rng = np.random.default_rng(7)
    b, d = 12, 5
    pooled = tuple(_clustered(rng, b, d, s) for s in (0.0, 0.5, -0.5))
    fn = _hetero_value_maha if mahalanobis else _hetero_value
    val, aux = fn(pooled)
    _check_against_reference(pooled, val, aux, mahalanobis)


@pytest.mark.parametrize("case", ["batch1", "batch4", "zero_var", "zeros"])
def test_hetero_loss_no_nan(case):
    rng = np.random.default_rng(8)
    d = 5
    if case == "batch1":
        pooled = tuple(rng.normal(size=(1, d)).astype(np.float32) for _ in range(3))
    elif case == "batch4":  # B = 4 < K = 7: duplicated components
        pooled = tuple(rng.normal(size=(4, d)).astype(np.float32) for _ in range(3))
    elif case == "zero_var":  # identical rows within each modality
        pooled = tuple(
            np.broadcast_to(np.arange(d, dtype=np.float32) * s, (4, d))
            for s in (1.0, -1.0, 2.0)
        )
    else:
        pooled = tuple(np.zeros((4, d), np.float32) for _ in range(3))
    (val, aux), grads = _hetero_grad(pooled)
    _assert_finite_tree((val, aux, grads))
    _check_against_reference(pooled, val, aux, False)
    if case in ("batch1", "zero_var", "zeros"):
        # Every prototype of modality m' sits on its (single distinct) sample x_m', and
        # gamma rows sum to 1: local = mean over ordered pairs of mean_d (x_m - x_m')^2.
        x = [_f64(p[0]) for p in pooled]
        pairs = [(m, n) for m in range(3) for n in range(3) if m != n]
        closed = np.mean([np.mean((x[m] - x[n]) ** 2) for m, n in pairs])
        np.testing.assert_allclose(aux["local"], closed, rtol=1e-4, atol=1e-6)
    if case == "batch4":
        assert any(float(jnp.abs(g).max()) > 0 for g in grads)


def test_hetero_loss_shape_errors():
    a = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="pooled"):
        losses.hetero_loss((a, a, jnp.zeros((4, 2))), num_prototypes=K)
    with pytest.raises(ValueError, match="num_prototypes"):
        losses.hetero_loss((a, a, a), num_prototypes=0)
    with pytest.raises(ValueError, match="cost_reduction"):
        losses.hetero_loss((a, a, a), num_prototypes=K, cost_reduction="max")
