"""Tests of cdds_jax.losses against float64 NumPy loop references (under jax.jit)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdds_jax import losses
from cdds_jax import objective as obj
from cdds_jax import semantics as sem

# ----------------------------------------------------------------------------------------
# float64 NumPy references (plain loops)
# ----------------------------------------------------------------------------------------


def ref_hinge(s, ids, margin, max_violation, pair_mask=None):
    s = np.asarray(s, np.float64)
    b = s.shape[0]
    valid = np.ones(b, bool) if pair_mask is None else np.asarray(pair_mask, bool)
    total = 0.0
    for a in range(b):  # image -> text, row a
        if not valid[a]:
            continue
        costs = [
            max(0.0, margin + s[a, c] - s[a, a])
            for c in range(b)
            if valid[c] and ids[c] != ids[a]
        ]
        if costs:
            total += max(costs) if max_violation else sum(costs)
    for c in range(b):  # text -> image, column c
        if not valid[c]:
            continue
        costs = [
            max(0.0, margin + s[a, c] - s[c, c])
            for a in range(b)
            if valid[a] and ids[a] != ids[c]
        ]
        if costs:
            total += max(costs) if max_violation else sum(costs)
    return total


def ref_infonce(s, ids, temperature, pair_mask=None):
    s = np.asarray(s, np.float64) / temperature
    b = s.shape[0]
    valid = np.ones(b, bool) if pair_mask is None else np.asarray(pair_mask, bool)
    total = 0.0
    for a in range(b):
        if not valid[a]:
            continue
        row = [s[a, c] for c in range(b) if valid[c] and (c == a or ids[c] != ids[a])]
        col = [s[c, a] for c in range(b) if valid[c] and (c == a or ids[c] != ids[a])]
        total += np.log(np.sum(np.exp(row))) - s[a, a]
        total += np.log(np.sum(np.exp(col))) - s[a, a]
    return total


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_modality(m, mask):
    m = np.asarray(m, np.float64)
    mask = np.asarray(mask, bool)
    dists = [_softmax(m[b, n]) for b in range(m.shape[0]) for n in range(m.shape[1])]
    valid = [mask[b, n] for b in range(m.shape[0]) for n in range(m.shape[1])]
    pooled = [p for p, ok in zip(dists, valid, strict=True) if ok]
    out = np.zeros(m.shape[0])
    if not pooled:
        return out
    pbar = np.mean(pooled, axis=0)
    for b in range(m.shape[0]):
        kls = [
            np.sum(_softmax(m[b, n]) * np.log(_softmax(m[b, n]) / pbar))
            for n in range(m.shape[1])
            if mask[b, n]
        ]
        out[b] = np.mean(kls) if kls else 0.0
    return out


def ref_completeness(x, cs, cm, ws, wm, mask):
    x, cs, cm = (np.asarray(z, np.float64) for z in (x, cs, cm))
    out = np.zeros(x.shape[0])
    for b in range(x.shape[0]):
        errs = [
            np.sum((x[b, n] - (ws * cs[b, n] + wm * cm[b, n])) ** 2) / x.shape[2]
            for n in range(x.shape[1])
            if mask[b, n]
        ]
        out[b] = np.mean(errs) if errs else 0.0
    return out


# ----------------------------------------------------------------------------------------
# Contrastive losses
# ----------------------------------------------------------------------------------------

B = 5
IDS = np.array([3, 7, 3, 1, 7])  # duplicates: pairs (0, 2) and (1, 4) share images


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    return rng.uniform(-1.0, 1.0, size=(B, B)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("margin",))
def _hinge(s, ids, max_violation, pair_mask, margin=0.2):
    return losses.hinge_loss(
        s, ids, margin=margin, max_violation=max_violation, pair_mask=pair_mask
    )


def test_hinge_matches_reference_with_traced_max_violation(scores):
    ones = np.ones(B, bool)
    pm = np.array([True, True, False, True, True])
    for mv in (False, True):
        for mask in (ones, pm):
            got = _hinge(scores, IDS, jnp.asarray(mv), mask)
            want = ref_hinge(scores, IDS, 0.2, mv, mask)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert _hinge._cache_size() == 1  # one compile serves both modes and masks
    # the two modes differ on this input (else the traced switch would be untested)
    assert not np.isclose(
        ref_hinge(scores, IDS, 0.2, False), ref_hinge(scores, IDS, 0.2, True)
    )
    # Python bool and bf16 scores are accepted
    got = losses.hinge_loss(jnp.asarray(scores, jnp.bfloat16), IDS, max_violation=True)
    s16 = np.asarray(jnp.asarray(scores, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(got, ref_hinge(s16, IDS, 0.2, True), rtol=1e-5)


def test_hinge_positives_never_count_and_gradients(scores):
    # Making a same-image off-diagonal score huge changes nothing.
    s = scores.copy()
    s[0, 2] = s[2, 0] = 50.0
    for mv in (False, True):
        np.testing.assert_allclose(
            _hinge(s, IDS, mv, np.ones(B, bool)),
            _hinge(scores, IDS, mv, np.ones(B, bool)),
            rtol=1e-6,
        )
    g = jax.jit(jax.grad(lambda z: losses.hinge_loss(z, IDS, max_violation=True)))(s)
    assert np.all(np.isfinite(g))
    assert g[0, 2] == 0.0 and g[2, 0] == 0.0
    # all pairs of one image: no negatives, zero loss
    same = np.zeros(B, np.int32)
    assert float(_hinge(scores, same, False, np.ones(B, bool))) == 0.0
    with pytest.raises(ValueError, match="image_ids"):
        losses.hinge_loss(scores, IDS[:3], max_violation=False)


def test_infonce_matches_reference(scores):
    f = jax.jit(
        lambda s, pm: losses.infonce_loss(s, IDS, temperature=0.05, pair_mask=pm)
    )
    for pm in (np.ones(B, bool), np.array([1, 0, 1, 1, 1], np.float32)):
        np.testing.assert_allclose(
            f(scores, pm), ref_infonce(scores, IDS, 0.05, pm.astype(bool)), rtol=1e-5
        )
    # a padded pair: finite gradients, none reaching its row or column
    pm = np.array([1, 1, 0, 1, 1], bool)
    g = jax.jit(jax.grad(lambda z: losses.infonce_loss(z, IDS, pair_mask=pm)))(scores)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[2], 0.0)
    np.testing.assert_array_equal(g[:, 2], 0.0)
    g = jax.jit(jax.grad(lambda z: losses.infonce_loss(z, np.zeros(B, np.int32))))(
        scores
    )
    assert np.all(np.isfinite(g))  # every row reduces to its positive: loss 0
    np.testing.assert_allclose(g, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Token losses
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 6)).astype(np.float32)
    lens = np.array([5, 2, 0, 3])  # sample 2 has no valid token
    mask = (np.arange(5)[None, :] < lens[:, None]).astype(np.float32)
    return x, mask


def test_modality_loss_matches_reference(tokens):
    x, mask = tokens
    m = x * 3.0
    m[0, 0] = [80.0, -80.0, 0.0, 0.0, 0.0, 0.0]  # near one-hot: underflowing softmax
    f = jax.jit(losses.modality_loss)
    got = f(m, mask)
    want = ref_modality(m, mask)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert float(got[2]) == 0.0
    m_pad = m.copy()
    m_pad[mask == 0] = np.nan  # padding content never leaks
    np.testing.assert_allclose(f(m_pad, mask), got, rtol=1e-6)
    # identical tokens everywhere: every distribution equals the mean, loss 0
    np.testing.assert_allclose(
        f(np.broadcast_to(m[0, 1], m.shape), mask), 0.0, atol=1e-6
    )
    g = jax.jit(jax.grad(lambda z: jnp.sum(losses.modality_loss(z, mask))))(m_pad)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[mask == 0], 0.0)


def test_modality_loss_empty_batch_and_bf16(tokens):
    x, mask = tokens
    empty = np.zeros_like(mask)
    f = jax.jit(lambda z, msk: jnp.sum(losses.modality_loss(z, msk)))
    assert float(f(x, empty)) == 0.0
    assert np.all(np.isfinite(jax.jit(jax.grad(f))(x, empty)))
    x16 = jnp.asarray(x, jnp.bfloat16)
    got = jax.jit(losses.modality_loss)(x16, mask)
    assert got.dtype == jnp.float32
    want = ref_modality(np.asarray(x16.astype(jnp.float32)), mask)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_completeness_loss_matches_reference_and_stops_target_gradient(tokens):
    x, mask = tokens
    rng = np.random.default_rng(2)
    cs = rng.normal(size=x.shape).astype(np.float32)
    cm = rng.normal(size=x.shape).astype(np.float32)
    ws, wm = np.float32(0.8), np.float32(1.3)
    f = jax.jit(losses.completeness_loss)
    got = f(x, cs, cm, ws, wm, mask)
    np.testing.assert_allclose(
        got, ref_completeness(x, cs, cm, ws, wm, mask), rtol=1e-5, atol=1e-7
    )
    assert float(got[2]) == 0.0
    loss = lambda *a: jnp.sum(losses.completeness_loss(*a, mask))
    cs_pad = np.where(mask[..., None] > 0, cs, np.nan).astype(np.float32)
    gx, gcs, gws = jax.jit(jax.grad(loss, (0, 1, 3)))(x, cs_pad, cm, ws, wm)
    np.testing.assert_array_equal(gx, 0.0)  # sg on the target
    assert np.all(np.isfinite(gcs)) and np.isfinite(gws)
    # d/dw_s = sum_b mean_n -2 <x - recon, cs> / d, in float64
    want = 0.0
    for b in range(x.shape[0]):
        n = int(mask[b].sum())
        for t in range(n):
            r = x[b, t] - (ws * cs[b, t] + wm * cm[b, t])
            want += -2.0 * np.dot(r.astype(np.float64), cs[b, t]) / (6 * n)
    np.testing.assert_allclose(gws, want, rtol=1e-4)
    with pytest.raises(ValueError, match="comp_m"):
        losses.completeness_loss(x, cs, cm[:, :2], ws, wm, mask)


# ----------------------------------------------------------------------------------------
# The objective: composition of the terms and the ablation switches
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(5)
    b, p, n, d, g = 5, 4, 3, 6, 4

    def side(tokens, lens):
        mask = np.arange(tokens)[None, :] < np.asarray(lens)[:, None]
        comp = {k: rng.normal(size=(b, tokens, d)).astype(np.float32) for k in "xsm"}
        return {**comp, "mask": mask}

    image = side(p, [4, 4, 4, 4, 4])
    text = side(n, [3, 1, 2, 3, 2])
    w = rng.uniform(0, 1, (2, d, d)) ** 3
    w = (w / w.sum(axis=-1, keepdims=True)).astype(np.float32)
    tables = obj.SampledTables(
        q_v=rng.normal(size=(b, g, d)).astype(np.float32),
        q_t=rng.normal(size=(b, g, d)).astype(np.float32),
        w_v=w[0],
        w_t=w[1],
    )
    scores = rng.uniform(-1, 1, (b, b)).astype(np.float32)
    return scores, IDS, image, text, tables


# (decouple, modality, integrity, sampling) -> the weights the paper's Table 3 gives
# (a_s, a_m, a_f, a_x) with a_s = 1, a_m = 0.7, a_f = 0.3, written out by hand.
SWITCHES = {
    (True, True, True, True): (1.0, 0.7, 0.3, 0.7),
    (True, False, True, True): (1.0, 0.0, 0.3, 0.7),
    (True, True, False, True): (1.0, 0.7, 0.0, 0.0),
    (True, True, True, False): (1.0, 0.7, 1.0, 0.0),  # L_f takes the whole weight
    (True, True, False, False): (1.0, 0.7, 0.0, 0.0),
    (False, True, True, True): (1.0, 0.0, 0.0, 0.0),  # no decoupler: only L_s
}


@pytest.mark.parametrize("switches", list(SWITCHES))
@pytest.mark.parametrize(
    ("contrastive", "epoch"), [("hinge", 0.5), ("hinge", 2.0), ("infonce", 0.25)]
)
def test_objective_matches_reference(batch, switches, contrastive, epoch):
    scores, ids, image, text, tables = batch
    decouple, modality, integrity, sampling = switches
    options = obj.ObjectiveOptions(
        contrastive=contrastive,
        margin=0.2,
        temperature=0.1,
        max_violation_after_epochs=1.0,
        ramp_epochs=1.0,
        a_s=1.0,
        a_m=0.7,
        a_f=0.3,
        decouple=decouple,
        modality=modality,
        integrity=integrity,
        sampling=sampling,
    )
    w_s, w_m = np.float32(0.8), np.float32(1.1)
    fn = jax.jit(functools.partial(obj.objective, w_s=w_s, w_m=w_m, options=options))
    got = fn(scores, ids, image, text, epoch=epoch, tables=tables if sampling else None)

    # Reference: every term from the float64 loops, weighted by the table above.
    if contrastive == "hinge":
        l_s = ref_hinge(scores, ids, 0.2, max_violation=epoch >= 1.0)
    else:
        l_s = ref_infonce(scores, ids, 0.1)
    ramp = min(epoch, 1.0)
    l_m = sum(ref_modality(c["m"], c["mask"]).sum() for c in (image, text))
    comp = lambda c, cs: ref_completeness(c["x"], cs, c["m"], w_s, w_m, c["mask"]).sum()
    l_f = comp(image, image["s"]) + comp(text, text["s"])
    v_x = sem.x_semantic_tokens(image["s"], image["mask"], tables.q_t, tables.w_v)
    t_x = sem.x_semantic_tokens(text["s"], text["mask"], tables.q_v, tables.w_t)
    l_x = comp(image, np.asarray(v_x)) + comp(text, np.asarray(t_x))
    a_s, a_m, a_f, a_x = SWITCHES[switches]
    want = a_s * ramp * l_s + a_m * l_m + a_f * l_f + a_x * l_x
    np.testing.assert_allclose(got.total, want, rtol=1e-5, atol=1e-5)
    assert options.term_weights() == pytest.approx((a_s, a_m, a_f, a_x))
    # Parts: unweighted, 0 when switched off.
    np.testing.assert_allclose(got.l_s, l_s, rtol=1e-5, atol=1e-6)
    on_m = decouple and modality
    on_f = decouple and integrity
    on_x = on_f and sampling
    np.testing.assert_allclose(got.l_m, l_m if on_m else 0.0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.l_f, l_f if on_f else 0.0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.l_x, l_x if on_x else 0.0, rtol=1e-5, atol=1e-5)


def test_objective_errors(batch):
    scores, ids, image, text, _ = batch
    kw = dict(w_s=1.0, w_m=1.0, epoch=0.0)
    with pytest.raises(ValueError, match="tables"):
        obj.objective(scores, ids, image, text, options=obj.ObjectiveOptions(), **kw)
    with pytest.raises(ValueError, match="contrastive"):
        obj.objective(
            scores,
            ids,
            image,
            text,
            options=obj.ObjectiveOptions(contrastive="triplet", sampling=False),
            **kw,
        )
