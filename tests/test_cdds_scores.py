"""Tests of cdds_jax.scores against float64 NumPy loop references (under jax.jit)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdds_jax import scores
from cdds_jax import semantics as sem

G, D = 5, 6

# ----------------------------------------------------------------------------------------
# float64 NumPy references: one pair at a time, from the definitions
# ----------------------------------------------------------------------------------------


def _cos(a, b):
    a, b = a.ravel(), b.ravel()
    return a @ b / (max(np.linalg.norm(a), 1e-8) * max(np.linalg.norm(b), 1e-8))


def _centre_ref(t, axis, scale):
    out = np.array(t, np.float64)
    if axis == "levels":  # each column minus its mean over the G levels
        for i in range(out.shape[1]):
            col = out[:, i] - out[:, i].mean()
            out[:, i] = col / (col.std() + 1e-6) if scale else col
    else:  # each level minus its mean over the d columns
        for g in range(out.shape[0]):
            row = out[g] - out[g].mean()
            out[g] = row / (row.std() + 1e-6) if scale else row
    return out


def ref_compare(a, b, compare, scale=False):
    """cmp(A, B) of two [G, d] tables."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if compare == "cosine":
        return _cos(a, b)
    if compare == "centred":
        return _cos(_centre_ref(a, "levels", scale), _centre_ref(b, "levels", scale))
    if compare == "level_centred":
        return _cos(_centre_ref(a, "columns", scale), _centre_ref(b, "columns", scale))
    # w2: minus the mean over columns of the squared W2 distance of the quantile
    # functions, each integral over q taken on the G-level grid.
    total = 0.0
    for i in range(a.shape[1]):
        total += np.mean((a[:, i] - b[:, i]) ** 2)
    return -total / a.shape[1]


def ref_pair_scores(qv, qt, wv, wt, compare="cosine", scale=False):
    qv, qt, wv, wt = (np.asarray(z, np.float64) for z in (qv, qt, wv, wt))
    out = np.zeros((qv.shape[0], qt.shape[0]))
    for a in range(qv.shape[0]):
        for b in range(qt.shape[0]):
            xv = qt[b] @ wv.T  # X^v_b
            xt = qv[a] @ wt.T  # X^t_a
            out[a, b] = ref_compare(qv[a], xv, compare, scale) + ref_compare(
                qt[b], xt, compare, scale
            )
    return out


def ref_pooled(x, m):
    x = np.asarray(x, np.float64)
    out = np.zeros((x.shape[0], x.shape[2]))
    for s in range(x.shape[0]):
        vals = x[s][np.asarray(m[s], bool)]
        if len(vals) == 0:
            continue
        mean = vals.mean(0)
        out[s] = mean / max(np.linalg.norm(mean), 1e-8)
    return out


def _row_stochastic(rng, d=D):
    w = rng.uniform(0, 1, (d, d)) ** 3
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _quantile_tables(rng, n, tokens, g, d, shift=None):
    x = rng.standard_normal((n, tokens, d)).astype(np.float32)
    if shift is not None:
        x = x + shift[:, None, :]
    return np.asarray(sem.quantile_table(x, np.ones((n, tokens), bool), g))


COMPARES = [
    ("cosine", False),
    ("centred", False),
    ("centred", True),
    ("level_centred", False),
    ("level_centred", True),
    ("w2", False),
]


# ----------------------------------------------------------------------------------------
# Pair scores and embeddings
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("compare", "scale"), COMPARES)
def test_embeddings_gemm_equals_pair_scores_and_reference(compare, scale):
    rng = np.random.default_rng(6)
    qv = rng.normal(size=(3, G, D)).astype(np.float32)
    qt = (rng.normal(size=(4, G, D)) + 0.5).astype(np.float32)
    qt[2] = 0.0  # zero table: norms clamped, finite
    qv[1, :, 3] = 1.5  # a constant column: zero spread
    wv, wt = _row_stochastic(rng), _row_stochastic(rng)
    kw = dict(compare=compare, scale=scale)
    got = jax.jit(functools.partial(scores.pair_scores, **kw))(qv, qt, wv, wt)
    e_v = jax.jit(functools.partial(scores.image_embeddings, **kw))(qv, wt)
    e_t = jax.jit(functools.partial(scores.caption_embeddings, **kw))(qt, wv)
    width = 2 * G * D + (2 if compare == "w2" else 0)
    chex.assert_shape(e_v, (3, width))
    chex.assert_shape(e_t, (4, width))
    want = ref_pair_scores(qv, qt, wv, wt, compare, scale)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.score_gemm(e_v, e_t), want, rtol=1e-5, atol=1e-5)
    if compare != "w2":
        np.testing.assert_allclose(got[:, 2], 0.0, atol=1e-6)  # zero table: 0
    # gradients (through tables and weights) are finite, also for the zero table
    grads = jax.jit(
        jax.grad(
            lambda a, b, c, d: jnp.sum(scores.pair_scores(a, b, c, d, **kw)),
            (0, 1, 2, 3),
        )
    )(qv, qt, wv, wt)
    for gi in grads:
        assert np.all(np.isfinite(gi))


@pytest.mark.parametrize(("compare", "scale"), COMPARES)
def test_constant_tables_give_finite_scores(compare, scale):
    q = np.full((2, G, D), 0.3, np.float32)
    w = np.eye(D, dtype=np.float32)
    kw = dict(compare=compare, scale=scale)
    val, grads = jax.value_and_grad(
        lambda a, b: jnp.sum(scores.pair_scores(a, b, w, w, **kw)), (0, 1)
    )(q, q)
    assert np.isfinite(val)
    for gi in grads:
        assert np.all(np.isfinite(gi))


def test_w2_is_minus_the_mean_squared_quantile_distance():
    rng = np.random.default_rng(7)
    qv = rng.normal(size=(3, G, D)).astype(np.float32)
    eye = np.eye(D, dtype=np.float32)
    got = scores.pair_scores(qv, qv, eye, eye, compare="w2")
    # W = I: X^v = Q^t, X^t = Q^v; both terms are -mean((Q^v_a - Q^t_b)^2).
    want = -2 * np.mean((qv[:, None] - qv[None, :]).astype(np.float64) ** 2, (2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.diagonal(got), 0.0, atol=1e-5)
    assert np.all(np.asarray(got) <= 1e-5)


def test_unrelated_samples_under_each_comparison():
    # i.i.d. samples at the demo sizes (16 tokens, d 64, G 8): every sorted column has
    # the same increasing shape, so the uncentred cosine of UNRELATED samples is ~0.87.
    # Centring each column over the levels keeps that shape (it removes location, the
    # part related samples share): ~0.93, and blind to shared shifts. Centring each
    # level over the columns removes the shared shape: ~0 for unrelated samples, high
    # for samples sharing per-column shifts.
    rng = np.random.default_rng(8)
    n, tokens, g, d = 64, 16, 8, 64
    eye = np.eye(d, dtype=np.float32)

    def mean_cos(compare, shared):
        shift = rng.standard_normal((n, d)).astype(np.float32) * shared
        qa = _quantile_tables(rng, n, tokens, g, d, shift)
        qb = _quantile_tables(rng, n, tokens, g, d, shift)
        e_a = scores.image_embeddings(qa, eye, compare=compare)[:, : g * d]
        e_b = scores.image_embeddings(qb, eye, compare=compare)[:, : g * d]
        return float(np.mean(np.sum(np.asarray(e_a) * np.asarray(e_b), axis=1)))

    assert mean_cos("cosine", 0.0) == pytest.approx(0.87, abs=0.02)
    assert mean_cos("centred", 0.0) == pytest.approx(0.93, abs=0.02)
    assert abs(mean_cos("level_centred", 0.0)) < 0.05
    # related (a shared per-column shift of scale 0.5): only level_centred separates
    assert mean_cos("level_centred", 0.5) > 0.5
    assert mean_cos("centred", 0.5) == pytest.approx(0.93, abs=0.02)


def test_score_shape_errors():
    q = np.zeros((2, G, D), np.float32)
    w = np.eye(D, dtype=np.float32)
    with pytest.raises(ValueError, match="weights"):
        scores.image_embeddings(q, w[:3])
    with pytest.raises(ValueError, match="share G and d"):
        scores.pair_scores(q, q[:, :2], w, w)
    with pytest.raises(ValueError, match="compare"):
        scores.pair_scores(q, q, w, w, compare="dot")
    with pytest.raises(ValueError, match="table_scale"):
        scores.ScoreOptions(table_compare="w2", table_scale=True).validate()
    with pytest.raises(ValueError, match="tau_mode"):
        scores.ScoreOptions(tau_mode="auto").validate()


# ----------------------------------------------------------------------------------------
# Pooled cosine, the driver-facing functions, training score statistics
# ----------------------------------------------------------------------------------------


def test_pooled_cosine_embeddings():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 7, D)).astype(np.float32)
    mask = np.arange(7)[None, :] < np.array([7, 4, 0, 1])[:, None]
    x[~mask] = np.inf  # padding must not leak
    xb = x.astype(jnp.bfloat16)
    got = jax.jit(scores.pooled_cosine_embeddings)(xb, mask)
    assert got.dtype == jnp.float32
    want = ref_pooled(np.where(mask[..., None], np.asarray(xb, np.float64), 0.0), mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    g = jax.jit(jax.grad(lambda z: jnp.sum(scores.pooled_cosine_embeddings(z, mask))))(
        np.where(mask[..., None], x, 0.0)
    )
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("compare", scores.TABLE_COMPARES)
def test_retrieval_embeddings_sides_agree_with_pair_scores(compare):
    rng = np.random.default_rng(9)
    v = rng.normal(size=(3, 7, D)).astype(np.float32)
    t = rng.normal(size=(4, 5, D)).astype(np.float32)
    vm = np.ones((3, 7), bool)
    tm = np.arange(5)[None, :] < np.array([5, 2, 3, 1])[:, None]
    options = scores.ScoreOptions(num_levels=G, table_compare=compare)
    s_v = rng.uniform(0, 1, (D, D)).astype(np.float32)
    s_t = rng.uniform(0, 1, (D, D)).astype(np.float32)
    alpha = np.full((D,), 0.5, np.float32)
    w = scores.correlation_weights(s_v, s_t, alpha, alpha, options=options)
    np.testing.assert_allclose(w[0], sem.soft_threshold(s_v, alpha), atol=1e-7)
    both = scores.retrieval_embeddings(v, vm, t, tm, w, options=options)
    img = scores.retrieval_embeddings(v, vm, None, None, w, options=options)
    cap = scores.retrieval_embeddings(None, None, t, tm, w, options=options)
    assert img.caption is None and cap.image is None and img.q_t is None
    np.testing.assert_array_equal(both.image, img.image)
    np.testing.assert_array_equal(both.caption, cap.caption)
    q_v, q_t = sem.quantile_table(v, vm, G), sem.quantile_table(t, tm, G)
    want = scores.pair_scores(q_v, q_t, *w, compare=compare)
    np.testing.assert_allclose(
        scores.score_gemm(both.image, both.caption), want, rtol=1e-5, atol=1e-5
    )
    pooled = scores.retrieval_embeddings(
        v, vm, t, tm, None, options=options._replace(sampling=False)
    )
    assert pooled.q_v is None
    np.testing.assert_allclose(
        pooled.image, scores.pooled_cosine_embeddings(v, vm), atol=0
    )
    with pytest.raises(ValueError, match="weights"):
        scores.retrieval_embeddings(v, vm, t, tm, None, options=options)


def test_correlation_weights_temperature_modes():
    rng = np.random.default_rng(10)
    s = rng.uniform(0, 0.5, (D, D)).astype(np.float32)
    alpha = np.full((D,), 0.5, np.float32)
    rel = scores.ScoreOptions(tau_mode="relative", tau=0.2)
    w_v, _ = scores.correlation_weights(s, s, alpha, alpha, options=rel)
    tau = 0.2 * np.std(s.astype(np.float64), axis=1)
    np.testing.assert_allclose(
        w_v, sem.soft_threshold(s, alpha, tau=tau.astype(np.float32)), atol=1e-6
    )
    learned = scores.ScoreOptions(tau_mode="learned")
    w_v, _ = scores.correlation_weights(
        s, s, alpha, alpha, options=learned, log_tau=np.float32(np.log(0.05))
    )
    np.testing.assert_allclose(w_v, sem.soft_threshold(s, alpha, tau=0.05), atol=1e-6)


def test_score_statistics():
    rng = np.random.default_rng(11)
    s = rng.normal(size=(5, 5)).astype(np.float32)
    got = jax.jit(scores.score_statistics)(s)
    s64 = s.astype(np.float64)
    np.testing.assert_allclose(got["score_std"], np.std(s64), rtol=1e-5)
    np.testing.assert_allclose(got["score_pos"], np.mean(np.diag(s64)), rtol=1e-5)
    np.testing.assert_allclose(
        got["score_margin"], np.mean(np.diag(s64)) - np.mean(s64), rtol=1e-5, atol=1e-6
    )
    const = scores.score_statistics(np.zeros((4, 4), np.float32))
    assert float(const["score_std"]) == 0.0 and float(const["score_margin"]) == 0.0
    with pytest.raises(ValueError, match="square"):
        scores.score_statistics(s[:3])


# ----------------------------------------------------------------------------------------
# The table-comparison scores docs/cdds.md §10.5 quotes (pinned: the docs say what the
# code does)
# ----------------------------------------------------------------------------------------

_SIZES = {"demo": (16, 64, 8), "paper": (197, 512, 32)}  # tokens P, columns d, levels G


def _quoted_scores() -> dict[tuple[str, str, str], float]:
    """``{(comparison, case, sizes): value}`` from the table in docs/cdds.md §10.5."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "cdds.md").read_text()
    block = text.split("<!-- pinned: tests/test_cdds_scores.py -->")[1]
    out = {}
    rows = [x for x in block.strip().splitlines()[2:]]
    for line in rows:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        compare = re.sub(r"[`\s]", "", cells[0])
        for (case, sizes), cell in zip(
            [(c, s) for s in ("demo", "paper") for c in ("unrelated", "offsets")],
            cells[1:],
            strict=True,
        ):
            out[(compare, case, sizes)] = float(cell)
    return out


def _mean_pair_score(qa: jax.Array, qb: jax.Array, compare: str) -> float:
    """Mean score of row-matched quantile tables ``[n, G, d]``."""
    fa = np.asarray(scores._features(qa, compare, False), np.float64)
    fb = np.asarray(scores._features(qb, compare, False), np.float64)
    if compare == "w2":
        return float(np.mean(-np.sum((fa - fb) ** 2, axis=-1)))
    return float(np.mean(np.sum(fa * fb, axis=-1)))


def _pair_tables(sizes: str) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The quantile tables of the two cases (seeded): 'unrelated' pairs of i.i.d.
    N(0, 1) token sets, and 'offsets' pairs that share their content tokens and each
    add their own per-column offset (N(0, 0.5^2), the same for all tokens) and token
    noise (N(0, 0.5^2))."""
    p, d, g = _SIZES[sizes]
    n = 100
    rng = np.random.default_rng(0)
    draw = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    content = draw(n, p, d)
    own = [content + 0.5 * draw(n, 1, d) + 0.5 * draw(n, p, d) for _ in range(2)]
    table = jax.jit(sem.quantile_table, static_argnums=2)
    mask = np.ones((n, p), bool)
    pairs = {"unrelated": (draw(n, p, d), draw(n, p, d)), "offsets": tuple(own)}
    return {k: (table(a, mask, g), table(b, mask, g)) for k, (a, b) in pairs.items()}


def test_docs_quote_the_table_comparison_scores():
    quoted = _quoted_scores()
    assert len(quoted) == 16
    for sizes in _SIZES:
        for case, (qa, qb) in _pair_tables(sizes).items():
            for compare in scores.TABLE_COMPARES:
                got = _mean_pair_score(qa, qb, compare)
                want = quoted[(compare, case, sizes)]
                assert abs(got - want) <= 1e-3, (compare, case, sizes, got, want)
