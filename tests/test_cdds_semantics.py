"""Tests of cdds_jax.semantics against float64 NumPy loop references (under jax.jit)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdds_jax import scores as score_lib
from cdds_jax import semantics as sem

B, P, L, D, K, G = 4, 7, 5, 6, 4, 5

# ----------------------------------------------------------------------------------------
# float64 NumPy references: plain loops, written from docs/cdds.md, not from the library
# ----------------------------------------------------------------------------------------


def _valid_values(x, m):
    return np.asarray(x, np.float64)[np.asarray(m, bool)]


def ref_hist_kl(v, vm, t, tm, num_bins, pair_mask=None):
    b, _, d = v.shape
    total = np.zeros((d, d))
    count = 0
    for a in range(b):
        xv, yv = _valid_values(v[a], vm[a]), _valid_values(t[a], tm[a])
        if len(xv) == 0 or len(yv) == 0:
            continue
        if pair_mask is not None and not pair_mask[a]:
            continue
        lo = min(xv.min(), yv.min())
        hi = max(xv.max(), yv.max())
        w = max((hi - lo) / num_bins, 1e-6 * max(1.0, abs(lo), abs(hi)))
        centres = [lo + (k + 0.5) * w for k in range(num_bins)]

        def hist(vals, col, centres=centres, w=w):
            h = np.zeros(num_bins)
            for k in range(num_bins):
                for value in vals[:, col]:
                    h[k] += np.exp(-(((value - centres[k]) / w) ** 2) / 2)
            h = h + 1e-6
            return h / h.sum()

        for i in range(d):
            p = hist(xv, i)
            for j in range(d):
                q = hist(yv, j)
                total[i, j] += sum(p[k] * np.log(p[k] / q[k]) for k in range(num_bins))
        count += 1
    return total / max(count, 1)


def ref_gauss_kl(v, vm, t, tm, pair_mask=None):
    b, _, d = v.shape
    total = np.zeros((d, d))
    count = 0
    for a in range(b):
        xv, yv = _valid_values(v[a], vm[a]), _valid_values(t[a], tm[a])
        if len(xv) == 0 or len(yv) == 0:
            continue
        if pair_mask is not None and not pair_mask[a]:
            continue
        for i in range(d):
            mv, sv = xv[:, i].mean(), np.sqrt(xv[:, i].var() + 1e-6)
            for j in range(d):
                mt, st = yv[:, j].mean(), np.sqrt(yv[:, j].var() + 1e-6)
                total[i, j] += (
                    np.log(st / sv) + (sv**2 + (mv - mt) ** 2) / (2 * st**2) - 0.5
                )
        count += 1
    return total / max(count, 1)


def ref_soft_threshold(s, alpha, tau=1.0):
    s = np.asarray(s, np.float64)
    taus = np.broadcast_to(np.asarray(tau, np.float64), (s.shape[0],))
    out = np.zeros_like(s)
    for i in range(s.shape[0]):
        e = np.exp(-(s[i] - s[i].min()) / taus[i])
        p = e / e.sum()
        k = p.mean() + max(alpha[i], 0.0) * p.std()
        r = np.maximum(p - k, 0.0)
        if r.sum() > 0:
            out[i] = r / r.sum()
        else:
            out[i, int(np.argmax(p))] = 1.0
    return out


def _interp(table, pos, upper):
    pos = min(max(pos, 0.0), upper)
    i0 = int(np.floor(pos))
    i1 = min(i0 + 1, upper)
    f = pos - i0
    return (1 - f) * table[i0] + f * table[i1]


def ref_quantile_table(x, m, levels):
    b, _, d = x.shape
    out = np.zeros((b, levels, d))
    for s in range(b):
        vals = _valid_values(x[s], m[s])
        n = len(vals)
        if n == 0:
            continue
        for i in range(d):
            col = np.sort(vals[:, i])
            for g in range(levels):
                q = (g + 0.5) / levels
                out[s, g, i] = _interp(col, q * n - 0.5, n - 1)
    return out


def ref_x_semantic(x, m, q_other, w):
    x, q_other, w = (np.asarray(z, np.float64) for z in (x, q_other, w))
    m = np.asarray(m, bool)
    b, n_tok, d = x.shape
    levels = q_other.shape[1]
    out = np.zeros((b, n_tok, d))
    for s in range(b):
        table = q_other[s] @ w.T  # [G, d]
        valid = np.flatnonzero(m[s])
        n = len(valid)
        for i in range(d):
            order = valid[np.argsort(x[s, valid, i], kind="stable")]
            for r, tok in enumerate(order):
                q = (r + 0.5) / n
                out[s, tok, i] = _interp(table[:, i], q * levels - 0.5, levels - 1)
    return out


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(B, P, D)).astype(np.float32)
    t = (rng.normal(size=(B, L, D)) * 1.5 + 0.3).astype(np.float32)
    v_mask = np.ones((B, P), bool)
    v_mask[2, 5:] = False  # ragged image side too
    t_len = np.array([5, 3, 0, 2])  # caption 2 has no valid word
    t_mask = np.arange(L)[None, :] < t_len[:, None]
    v[:, :, 2] = 0.7  # constant image column
    t[3, :, :] = 0.25  # a caption whose every value is equal
    t[1, :, 4] = -1.0  # constant text column
    # garbage in the padding: must never leak
    t[~t_mask] = np.nan
    v[~v_mask] = 1e30
    return v, v_mask, t, t_mask.astype(np.float32)  # float mask on the text side


# ----------------------------------------------------------------------------------------
# kl_correlation
# ----------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("estimator", "chunk_size"))
def _kl(v, vm, t, tm, pair_mask, estimator="histogram", chunk_size=None):
    return sem.kl_correlation(
        v,
        vm,
        t,
        tm,
        estimator=estimator,
        num_bins=K,
        pair_mask=pair_mask,
        chunk_size=chunk_size,
    )


def test_kl_histogram_matches_reference_both_directions(data):
    v, vm, t, tm = data
    pm = np.array([True, True, True, True])
    s_v = _kl(v, vm, t, tm, pm)
    s_t = _kl(t, tm, v, vm, pm)
    chex.assert_shape(s_v, (D, D))
    assert s_v.dtype == jnp.float32
    np.testing.assert_allclose(s_v, ref_hist_kl(v, vm, t, tm, K), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(s_t, ref_hist_kl(t, tm, v, vm, K), rtol=2e-4, atol=2e-5)
    # pair_mask drops pair 0 (pair 2 is already excluded by its empty caption).
    pm0 = np.array([False, True, True, True])
    np.testing.assert_allclose(
        _kl(v, vm, t, tm, pm0),
        ref_hist_kl(v, vm, t, tm, K, pair_mask=pm0),
        rtol=2e-4,
        atol=2e-5,
    )


def test_kl_histogram_chunked_equals_unchunked(data):
    v, vm, t, tm = data
    pm = np.ones(B, bool)
    full = _kl(v, vm, t, tm, pm)
    chunked = _kl(v, vm, t, tm, pm, chunk_size=3)  # 3 does not divide B = 4
    np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-6)
    assert not np.allclose(full, 0.0)


def test_kl_gaussian_matches_reference(data):
    v, vm, t, tm = data
    pm = np.array([True, False, True, True])
    got = _kl(v, vm, t, tm, pm, estimator="gaussian")
    want = ref_gauss_kl(v, vm, t, tm, pair_mask=pm)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3)
    got_t = _kl(t, tm, v, vm, np.ones(B, bool), estimator="gaussian")
    np.testing.assert_allclose(got_t, ref_gauss_kl(t, tm, v, vm), rtol=2e-4, atol=2e-3)


def test_kl_gaussian_large_offset_is_accurate():
    # Large common offset, small spread: the per-pair centring keeps the GEMM form exact.
    rng = np.random.default_rng(5)
    v = (50.0 + 0.1 * rng.normal(size=(3, P, D))).astype(np.float32)
    t = (50.0 + 0.1 * rng.normal(size=(3, L, D))).astype(np.float32)
    vm, tm = np.ones((3, P), bool), np.ones((3, L), bool)
    got = _kl(v, vm, t, tm, None, estimator="gaussian")
    np.testing.assert_allclose(got, ref_gauss_kl(v, vm, t, tm), rtol=1e-3, atol=1e-3)


def test_kl_bfloat16_inputs(data):
    v, vm, t, tm = data
    v16 = jnp.asarray(np.where(vm[..., None], v, 0.0), jnp.bfloat16)
    t16 = jnp.asarray(np.nan_to_num(t), jnp.bfloat16)
    pm = np.ones(B, bool)
    v64 = np.asarray(v16.astype(jnp.float32), np.float64)
    t64 = np.asarray(t16.astype(jnp.float32), np.float64)
    got = _kl(v16, vm, t16, tm, pm)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        got, ref_hist_kl(v64, vm, t64, tm, K), rtol=2e-4, atol=2e-5
    )


def test_kl_degenerate_inputs_are_finite():
    # All values equal -> identical histograms -> KL 0; no valid pair at all -> zeros.
    v = np.full((2, P, D), 3.0, np.float32)
    t = np.full((2, L, D), 3.0, np.float32)
    vm, tm = np.ones((2, P), bool), np.ones((2, L), bool)
    for est in ("histogram", "gaussian"):
        s = _kl(v, vm, t, tm, None, estimator=est)
        np.testing.assert_allclose(s, 0.0, atol=1e-5)
        s0 = _kl(v, vm, t, np.zeros((2, L), bool), None, estimator=est)
        np.testing.assert_array_equal(s0, np.zeros((D, D)))


def test_kl_is_stop_gradient(data):
    v, vm, t, tm = data
    v = np.where(vm[..., None], v, 0.0)
    t = np.nan_to_num(t)
    g = jax.jit(
        jax.grad(lambda a, b: jnp.sum(sem.kl_correlation(a, vm, b, tm)), (0, 1))
    )(v, t)
    for gi in g:
        np.testing.assert_array_equal(gi, 0.0)


def test_kl_rejects_bad_shapes(data):
    v, vm, t, tm = data
    with pytest.raises(ValueError, match="t_mask"):
        sem.kl_correlation(v, vm, t, tm[:, :3])
    with pytest.raises(ValueError, match="estimator"):
        sem.kl_correlation(v, vm, t, tm, estimator="kde")
    with pytest.raises(ValueError, match="pair_mask"):
        sem.kl_correlation(v, vm, t, tm, pair_mask=np.ones(B + 1, bool))


# ----------------------------------------------------------------------------------------
# soft_threshold
# ----------------------------------------------------------------------------------------


def test_soft_threshold_matches_reference_and_fallbacks():
    rng = np.random.default_rng(1)
    s = rng.uniform(0.0, 3.0, size=(D, D)).astype(np.float32)
    s[1] = 2.0  # uniform row: std 0, nothing above threshold -> one-hot argmax (col 0)
    alpha = np.array([1.0, 1.0, 0.0, -0.5, 3.0, 0.3], np.float32)  # 3.0 empties row 4
    for tau in (1.0, 0.5):
        got = jax.jit(functools.partial(sem.soft_threshold, tau=tau))(s, alpha)
        want = ref_soft_threshold(s, alpha, tau)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.sum(got, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(got[1], np.eye(D)[0])
    assert np.count_nonzero(want[4]) == 1


def test_soft_threshold_alpha_gradient():
    rng = np.random.default_rng(2)
    s = rng.uniform(0.0, 2.0, size=(D, D)).astype(np.float32)
    c = rng.normal(size=(D, D)).astype(np.float32)
    alpha = np.full((D,), 0.3, np.float32)
    f = lambda a: jnp.sum(sem.soft_threshold(s, a) * c)
    g = jax.jit(jax.grad(f))(alpha)
    assert np.all(np.isfinite(g))
    assert np.count_nonzero(np.asarray(g)) > 0
    # central finite difference in float64 on the reference
    eps = 1e-3
    for i in range(D):
        ap, am = alpha.astype(np.float64).copy(), alpha.astype(np.float64).copy()
        ap[i] += eps
        am[i] -= eps
        fd = (
            np.sum(ref_soft_threshold(s, ap) * c)
            - np.sum(ref_soft_threshold(s, am) * c)
        ) / (2 * eps)
        np.testing.assert_allclose(g[i], fd, rtol=1e-2, atol=1e-4)
    # gradient wrt S is finite even with a uniform row (std = 0)
    s_u = s.copy()
    s_u[0] = 1.0
    gs = jax.jit(jax.grad(lambda z: jnp.sum(sem.soft_threshold(z, alpha) * c)))(s_u)
    assert np.all(np.isfinite(gs))


def test_soft_threshold_per_row_tau():
    rng = np.random.default_rng(11)
    s = rng.uniform(0.0, 3.0, size=(D, D)).astype(np.float32)
    alpha = np.full((D,), 0.5, np.float32)
    tau = np.array([0.1, 0.5, 1.0, 2.0, 4.0, 0.3], np.float32)
    got = jax.jit(sem.soft_threshold)(s, alpha, tau=tau)
    np.testing.assert_allclose(got, ref_soft_threshold(s, alpha, tau), atol=1e-6)
    with pytest.raises(ValueError, match="tau"):
        sem.soft_threshold(s, alpha, tau=tau[:3])


def ref_row_temperature(s, mode, tau, log_tau=None):
    s = np.asarray(s, np.float64)
    if mode == "fixed":
        return np.full(s.shape[0], tau)
    if mode == "relative":
        return np.array([tau * max(np.std(row), 1e-6) for row in s])
    return np.full(s.shape[0], np.exp(np.clip(log_tau, -10.0, 10.0)))


@pytest.mark.parametrize("mode", sem.TAU_MODES)
def test_row_temperature_matches_reference(mode):
    rng = np.random.default_rng(12)
    s = rng.uniform(0.0, 0.5, size=(D, D)).astype(np.float32)
    s[2] = 0.3  # a constant row: floored spread, finite temperature
    log_tau = np.float32(-0.7)
    fn = jax.jit(functools.partial(sem.row_temperature, mode=mode, tau=0.5))
    got = fn(s, log_tau=log_tau if mode == "learned" else None)
    want = ref_row_temperature(s, mode, 0.5, log_tau)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(np.asarray(got) > 0)
    w = sem.soft_threshold(s, np.full(D, 1.0, np.float32), tau=got)
    assert np.all(np.isfinite(w)) and np.allclose(np.sum(w, axis=1), 1.0)


def test_relative_temperature_is_scale_free():
    # The relative temperature sees z-scores: W of c * S does not depend on c.
    rng = np.random.default_rng(13)
    s = rng.uniform(0.0, 0.5, size=(D, D)).astype(np.float32)
    alpha = np.full((D,), 0.5, np.float32)

    def w(z):
        return sem.soft_threshold(
            z, alpha, tau=sem.row_temperature(z, mode="relative", tau=0.3)
        )

    np.testing.assert_allclose(w(s), w(8.0 * s), atol=1e-5)
    fixed = lambda z: sem.soft_threshold(z, alpha, tau=1.0)
    assert np.abs(np.asarray(fixed(s)) - np.asarray(fixed(8.0 * s))).max() > 0.05


def test_learned_temperature_gradient():
    rng = np.random.default_rng(14)
    s = rng.uniform(0.0, 2.0, size=(D, D)).astype(np.float32)
    c = rng.normal(size=(D, D)).astype(np.float32)
    alpha = np.full((D,), 0.2, np.float32)

    def f(lt):
        tau = sem.row_temperature(s, mode="learned", tau=1.0, log_tau=lt)
        return jnp.sum(sem.soft_threshold(s, alpha, tau=tau) * c)

    g = jax.jit(jax.grad(f))(np.float32(0.1))
    eps = 1e-3
    ref = lambda lt: np.sum(ref_soft_threshold(s, alpha, np.exp(lt)) * c)
    fd = (ref(0.1 + eps) - ref(0.1 - eps)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-2, atol=1e-4)
    with pytest.raises(ValueError, match="log_tau"):
        sem.row_temperature(s, mode="learned", tau=1.0)
    with pytest.raises(ValueError, match="mode"):
        sem.row_temperature(s, mode="adaptive", tau=1.0)


# ----------------------------------------------------------------------------------------
# quantile_table
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(B, P, D)).astype(np.float32)
    x[0, :, 1] = np.round(x[0, :, 1])  # ties
    x[1, :, 3] = 2.0  # constant column
    lens = np.array([7, 4, 0, 1])  # n = 0 and n = 1 samples
    mask = np.arange(P)[None, :] < lens[:, None]
    x[~mask] = np.inf  # padding holds inf: must not produce NaN anywhere
    return x, mask


def test_quantile_table_matches_reference(tokens):
    x, mask = tokens
    got = jax.jit(sem.quantile_table, static_argnums=2)(x, mask, G)
    chex.assert_shape(got, (B, G, D))
    np.testing.assert_allclose(
        got, ref_quantile_table(x, mask, G), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(got[2], 0.0)  # n = 0


def test_quantile_table_hits_order_statistics_exactly(tokens):
    x, _ = tokens
    mask = np.ones((B, P), bool)
    xf = np.where(np.isfinite(x), x, 0.5).astype(np.float32)
    srt = np.sort(xf, axis=1)
    # G = n: level g is s_g; G = 3n: level 3r + 1 has q = (r + 0.5) / n, i.e. s_r.
    table = jax.jit(sem.quantile_table, static_argnums=2)
    np.testing.assert_array_equal(table(xf, mask, P), srt)
    np.testing.assert_array_equal(table(xf, mask, 3 * P)[:, 1::3], srt)


def test_quantile_table_gradient(tokens):
    x, mask = tokens
    rng = np.random.default_rng(4)
    c = rng.normal(size=(B, G, D)).astype(np.float32)
    g = jax.jit(jax.grad(lambda z: jnp.sum(sem.quantile_table(z, mask, G) * c)))(x)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[~mask], 0.0)
    # Reference gradient: d Q[g, i] / d x[token] = interpolation weight of its rank.
    want = np.zeros_like(x, np.float64)
    for s in range(B):
        valid = np.flatnonzero(mask[s])
        n = len(valid)
        if n == 0:
            continue
        for i in range(D):
            order = valid[np.argsort(x[s, valid, i], kind="stable")]
            for lvl in range(G):
                pos = min(max((lvl + 0.5) / G * n - 0.5, 0.0), n - 1)
                i0 = int(np.floor(pos))
                f = pos - i0
                want[s, order[i0], i] += (1 - f) * c[s, lvl, i]
                want[s, order[min(i0 + 1, n - 1)], i] += f * c[s, lvl, i]
    # Ties (sample 0 col 1, sample 1 col 3) may route gradient to either tied token.
    for s, i in ((0, 1), (1, 3)):
        want[s, :, i] = g[s, :, i]
        np.testing.assert_allclose(np.sum(g[s, :, i]), np.sum(c[s, :, i]), rtol=1e-5)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# x_semantic_tokens
# ----------------------------------------------------------------------------------------


def test_x_semantic_tokens_matches_reference(tokens):
    x, mask = tokens
    rng = np.random.default_rng(7)
    q_other = rng.normal(size=(B, G, D)).astype(np.float32)
    w = ref_soft_threshold(rng.uniform(0, 2, (D, D)), np.full(D, 0.4)).astype(
        np.float32
    )
    got = jax.jit(sem.x_semantic_tokens)(x, mask, q_other, w)
    chex.assert_shape(got, (B, P, D))
    np.testing.assert_allclose(got, ref_x_semantic(x, mask, q_other, w), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[~mask], 0.0)
    # gradients flow into q_other and w, not into x (ranks are stop-gradient)
    gx, gq, gw = jax.jit(
        jax.grad(
            lambda a, b, c: jnp.sum(sem.x_semantic_tokens(a, mask, b, c) ** 2),
            (0, 1, 2),
        )
    )(x, q_other, w)
    np.testing.assert_array_equal(gx, 0.0)
    assert np.all(np.isfinite(gq)) and np.all(np.isfinite(gw))
    assert np.count_nonzero(np.asarray(gq)) > 0 and np.count_nonzero(np.asarray(gw)) > 0


def test_x_semantic_of_own_table_reconstructs_tokens():
    # With G = n and W = I, sampling one's own quantile table at one's own ranks
    # returns the tokens exactly (positions and values from the same modality).
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, P, D)).astype(np.float32)
    mask = np.ones((2, P), bool)
    f = lambda z, w: sem.x_semantic_tokens(z, mask, sem.quantile_table(z, mask, P), w)
    got = jax.jit(f)(x, np.eye(D, dtype=np.float32))
    np.testing.assert_array_equal(got, x)


# ----------------------------------------------------------------------------------------
# End to end: gradients through the whole semantics pipeline on adversarial inputs
# ----------------------------------------------------------------------------------------


def test_pipeline_gradients_are_finite(data):
    v, vm, t, tm = data
    v = jnp.asarray(np.where(vm[..., None], v, 0.0), jnp.bfloat16)
    t = jnp.asarray(t, jnp.bfloat16)  # NaN padding stays in

    def loss(v_s, t_s, a_v, a_t):
        s_v = sem.kl_correlation(v_s, vm, t_s, tm)
        s_t = sem.kl_correlation(t_s, tm, v_s, vm, estimator="gaussian")
        w_v, w_t = sem.soft_threshold(s_v, a_v), sem.soft_threshold(s_t, a_t)
        q_v, q_t = sem.quantile_table(v_s, vm, G), sem.quantile_table(t_s, tm, G)
        scores = score_lib.pair_scores(q_v, q_t, w_v, w_t)
        v_x = sem.x_semantic_tokens(v_s, vm, q_t, w_v)
        t_x = sem.x_semantic_tokens(t_s, tm, q_v, w_t)
        return (
            jnp.sum(scores)
            + jnp.sum(v_x**2)
            + jnp.sum(jnp.where(tm[..., None] > 0, t_x, 0) ** 2)
        )

    a = jnp.full((D,), 0.5)
    val, grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2, 3)))(v, t, a, a)
    assert np.isfinite(val)
    for gi in grads:
        assert np.all(np.isfinite(np.asarray(gi, np.float32)))
    assert (
        np.count_nonzero(np.asarray(grads[2])) + np.count_nonzero(np.asarray(grads[3]))
        > 0
    )
