"""Parity of the Table 4 heads (cdds_jax.heads) with the published scoring.

Each ``torch_*`` function below is this project's own re-statement, in float64
PyTorch, of one head's published score as the authors' code computes it: one caption
at a time, sliced to its ``n_word`` valid words (docs/cdds.md §15 names the files it
was read from). The Flax heads get the same random inputs (captions right padded, the
padding filled with large garbage) and the same weights (our Flax parameters copied into
the torch tensors); scores, the gradients w.r.t. both token sets and w.r.t. every
parameter are compared at float32 tolerance. SCAN's attention is also checked against a
float64 NumPy loop, and the blocked evaluation against the unblocked head.
"""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdds_jax import heads, losses, retrieval
from cdds_jax.heads import blocked, ops
from cdds_jax.heads.scan import attended_context

# Normwise tolerances: max |ours - ref| <= rtol * max |ref| (+ a float32 floor). The
# float32 gradients of the sharp softmaxes (SCAN's lambda 9, LSE 6) sit ~2e-5 from float64
# for torch's own float32 as well, hence the gradients' looser bound.
RTOL = 1e-5
RTOL_GRAD = 5e-5
LENGTHS = (5, 2, 1, 4)  # caption lengths of the parity inputs (L = 5)

# ----------------------------------------------------------------------------------------
# Inputs and comparison
# ----------------------------------------------------------------------------------------


def make_inputs(seed=0, bi=3, p=6, lengths=LENGTHS, length=5, d=8, garbage=1e3):
    """Random tokens; padded words hold ``garbage`` (large values or NaN)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(bi, p, d)).astype(np.float32)
    cap = rng.normal(size=(len(lengths), length, d)).astype(np.float32)
    cap_mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    cap = np.where(cap_mask[..., None], cap, np.float32(garbage)).astype(np.float32)
    img_mask = np.ones((bi, p), bool)
    weights = rng.normal(size=(bi, len(lengths)))  # the loss is sum(weights * scores)
    return img, img_mask, cap, cap_mask, weights


def assert_close(ours, ref, name, rtol=RTOL):
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref.detach().numpy() if torch.is_tensor(ref) else ref, np.float64)
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    assert np.all(np.isfinite(ours)), name
    err = np.max(np.abs(ours - ref), initial=0.0)
    scale = np.max(np.abs(ref), initial=0.0)
    assert err <= rtol * scale + 1e-7, (
        f"{name}: max abs diff {err:.3g}, scale {scale:.3g}"
    )


def flat_params(variables):
    return flax.traverse_util.flatten_dict(variables.get("params", {}), sep="/")


def torch_tensors(flat):
    return {
        k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True)
        for k, v in flat.items()
    }


def jax_loss_and_grads(
    head, variables, img, img_mask, cap, cap_mask, weights, train=False, rngs=None
):
    """Scores and the gradients of ``sum(weights * scores)`` w.r.t. img, cap, params."""
    mutable = ["batch_stats"] if train else False

    def loss(img_, cap_, params):
        out = head.apply(
            {**variables, "params": params},
            img_,
            img_mask,
            cap_,
            cap_mask,
            train=train,
            mutable=mutable,
            rngs=rngs,
        )
        scores, stats = out if train else (out, None)
        return jnp.sum(jnp.asarray(weights, jnp.float32) * scores), (scores, stats)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, (scores, stats)), grads = fn(
        jnp.asarray(img), jnp.asarray(cap), variables.get("params", {})
    )
    return scores, grads, stats


def check_parity(head, variables, inputs, torch_fn, train=False):
    """Scores and gradients of ``head`` against ``torch_fn(img, cap, lengths, P)``."""
    img, img_mask, cap, cap_mask, weights = inputs
    scores, (g_img, g_cap, g_params), stats = jax_loss_and_grads(
        head, variables, img, img_mask, cap, cap_mask, weights, train=train
    )
    t_img = torch.tensor(img, dtype=torch.float64, requires_grad=True)
    t_cap = torch.tensor(cap, dtype=torch.float64, requires_grad=True)
    lengths = [int(n) for n in cap_mask.sum(1)]
    t_params = torch_tensors(flat_params(variables))
    ref = torch_fn(t_img, t_cap, lengths, t_params)
    (torch.tensor(weights) * ref).sum().backward()
    assert_close(scores, ref, "scores")
    assert_close(g_img, t_img.grad, "grad img", RTOL_GRAD)
    assert_close(g_cap, t_cap.grad, "grad cap", RTOL_GRAD)  # padding: exactly 0
    assert np.all(np.asarray(g_cap)[~cap_mask] == 0.0)
    for key, grad in flat_params({"params": g_params}).items():
        assert_close(grad, t_params[key].grad, f"grad {key}", RTOL_GRAD)
    return scores, stats


# ----------------------------------------------------------------------------------------
# Shared torch pieces (the authors' helpers, restated)
# ----------------------------------------------------------------------------------------


def t_l2norm(x, dim=-1, eps=1e-8):  # SCAN / SGRAF / CHAN ``l2norm``
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def t_cosine(x1, x2, dim, eps=1e-8):  # SCAN ``cosine_similarity``
    w12 = (x1 * x2).sum(dim)
    return w12 / (x1.norm(dim=dim) * x2.norm(dim=dim)).clamp(min=eps)


def t_attention(query, context, smooth, norm_context=False):
    """SCAN ``func_attention`` (clipped_l2norm); query [n, qL, d], context [n, sL, d]."""
    attn = torch.bmm(context, query.transpose(1, 2))  # [n, sL, qL]
    attn = t_l2norm(F.leaky_relu(attn, 0.1), dim=2)  # over the queries
    attn = torch.softmax(attn.transpose(1, 2) * smooth, dim=2)  # [n, qL, sL]
    out = torch.bmm(attn, context)
    return t_l2norm(out) if norm_context else out  # SGRAF's SCAN_attention norms it


def t_linear(x, params, name):
    return x @ params[f"{name}/kernel"] + params[f"{name}/bias"]


# ----------------------------------------------------------------------------------------
# VSE++
# ----------------------------------------------------------------------------------------


def torch_vse(img, cap, lengths, params, text_pool="mean"):
    """VSE++: ``im.mm(s.t())`` of l2norm-ed image and caption vectors."""
    im = img.mean(1)
    im = im / im.pow(2).sum(1, keepdim=True).sqrt()  # vsepp ``l2norm`` (no eps)
    rows = []
    for i, n in enumerate(lengths):
        rows.append(cap[i, :n].mean(0) if text_pool == "mean" else cap[i, n - 1])
    s = torch.stack(rows)
    s = s / s.pow(2).sum(1, keepdim=True).sqrt()
    return im.mm(s.t())


def torch_vse_loss(scores, margin, max_violation):
    """VSE++ ``ContrastiveLoss`` on a square score matrix."""
    diagonal = scores.diag().view(-1, 1)
    cost_s = (margin + scores - diagonal).clamp(min=0)
    cost_im = (margin + scores - diagonal.t()).clamp(min=0)
    eye = torch.eye(scores.size(0), dtype=torch.bool)
    cost_s, cost_im = cost_s.masked_fill(eye, 0), cost_im.masked_fill(eye, 0)
    if max_violation:
        cost_s, cost_im = cost_s.max(1)[0], cost_im.max(0)[0]
    return cost_s.sum() + cost_im.sum()


@pytest.mark.parametrize("text_pool", ["mean", "last"])
def test_vse_parity(text_pool):
    inputs = make_inputs()
    head = heads.VSEHead(text_pool=text_pool)
    check_parity(head, {}, inputs, lambda i, c, n, p: torch_vse(i, c, n, p, text_pool))


def test_vse_hinge_is_vsepp_contrastive_loss():
    img, im, cap, cm, _ = make_inputs(bi=4)
    scores = heads.VSEHead().apply({}, img, im, cap, cm)
    t = torch.tensor(np.asarray(scores, np.float64))
    for hardest in (True, False):
        ours = losses.hinge_loss(
            scores, jnp.arange(4), margin=0.2, max_violation=hardest
        )
        assert_close(ours, torch_vse_loss(t, 0.2, hardest), f"hinge {hardest}")


# ----------------------------------------------------------------------------------------
# SCAN
# ----------------------------------------------------------------------------------------


def torch_scan(
    img,
    cap,
    lengths,
    params,
    direction,
    agg,
    smooth_t2i=9.0,
    smooth_i2t=4.0,
    lambda_lse=6.0,
):
    """SCAN ``xattn_score_t2i`` / ``xattn_score_i2t`` (and their mean for "both")."""
    img, cap = t_l2norm(img), t_l2norm(cap)  # the encoders' last step
    n_image = img.size(0)

    def aggregate(row):
        if agg == "lse":
            return torch.log(torch.exp(row * lambda_lse).sum(1)) / lambda_lse
        return row.mean(1)

    sims = []
    for i, n in enumerate(lengths):
        words = cap[i, :n].unsqueeze(0).repeat(n_image, 1, 1)
        parts = []
        if direction in ("t2i", "both"):
            ctx = t_attention(words, img, smooth_t2i)
            parts.append(aggregate(t_cosine(words, ctx, dim=2)))
        if direction in ("i2t", "both"):
            ctx = t_attention(img, words, smooth_i2t)
            parts.append(aggregate(t_cosine(img, ctx, dim=2)))
        sims.append(sum(parts) / len(parts))
    return torch.stack(sims, 1)


@pytest.mark.parametrize(
    "config",
    ["f30k_t2i_lse", "f30k_t2i_avg", "f30k_i2t_lse", "coco_i2t_avg", "coco_i2t_lse"],
)
def test_scan_parity_published_configs(config):
    kw = heads.SCAN_CONFIGS[config]
    head = heads.SCANHead(**kw)
    ref_kw = {k: v for k, v in kw.items()}
    check_parity(
        head,
        {},
        make_inputs(seed=1),
        lambda i, c, n, p: torch_scan(i, c, n, p, **ref_kw),
    )


def test_scan_parity_both_directions():
    head = heads.SCANHead(direction="both", agg="mean")
    check_parity(
        head,
        {},
        make_inputs(seed=2),
        lambda i, c, n, p: torch_scan(i, c, n, p, "both", "mean"),
    )


def np_attention(query, context, smooth):
    """float64 SCAN attention of ONE pair: query [qL, d], context [sL, d] (valid)."""
    a = context @ query.T  # [sL, qL]
    a = np.where(a > 0, a, 0.1 * a)
    a = a / (np.sqrt((a * a).sum(1, keepdims=True)) + 1e-8)
    logits = smooth * a.T  # [qL, sL]
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return w @ context


@pytest.mark.parametrize("query", ["words", "regions"])
def test_scan_attention_matches_float64_loop(query):
    img, _, cap, cm, _ = make_inputs(seed=3, p=7)
    im = np.arange(7)[None, :] < np.array([7, 4, 1])[:, None]  # padded regions too
    img = np.where(im[..., None], img, np.float32(np.nan))
    out = jax.jit(lambda *a: attended_context(*a, query=query, smooth=4.0))(
        img, im, cap, cm
    )
    out = np.asarray(out)
    for i in range(img.shape[0]):
        for t in range(cap.shape[0]):
            v = img[i, im[i]].astype(np.float64)
            w = cap[t, cm[t]].astype(np.float64)
            if query == "words":
                ref, rows = np_attention(w, v, 4.0), cm[t]
            else:
                ref, rows = np_attention(v, w, 4.0), im[i]
            np.testing.assert_allclose(out[i, t][rows], ref, rtol=1e-5, atol=1e-6)
            assert np.all(out[i, t][~rows] == 0.0)


# ----------------------------------------------------------------------------------------
# CHAN
# ----------------------------------------------------------------------------------------


def torch_chan(img, cap, lengths, params, coding, pooling, beta=0.1):
    """CHAN: hard assignment coding, then Mean / LSE pooling over the coded entries."""
    img, cap = t_l2norm(img), t_l2norm(cap)
    sims = []
    for i, n in enumerate(lengths):
        s = torch.einsum("ird,wd->irw", img, cap[i, :n])  # [n_image, regions, words]
        coded = s.max(dim=1)[0] if coding == "vha" else s.max(dim=2)[0]
        if pooling == "mean":
            sims.append(coded.mean(1))
        else:
            sims.append(torch.logsumexp(coded / beta, dim=1))
    return torch.stack(sims, 1)


@pytest.mark.parametrize(
    "coding,pooling", [("vha", "mean"), ("vha", "lse"), ("tha", "mean")]
)
def test_chan_parity(coding, pooling):
    head = heads.CHANHead(coding=coding, pooling=pooling)
    check_parity(
        head,
        {},
        make_inputs(seed=4),
        lambda i, c, n, p: torch_chan(i, c, n, p, coding, pooling),
    )


# ----------------------------------------------------------------------------------------
# SGR / SAF
# ----------------------------------------------------------------------------------------


def t_batch_norm(x, stats, params, name, train):
    """``BatchNorm1d`` (channel axis 1) with running stats updated in place."""
    return F.batch_norm(
        x,
        stats[f"{name}/mean"],
        stats[f"{name}/var"],
        params[f"{name}/scale"],
        params[f"{name}/bias"],
        training=train,
        momentum=0.1,
        eps=1e-5,
    )


def t_self_attention(local, params, stats, prefix, train):
    """SGRAF ``VisualSA`` (with BatchNorm) / ``TextSA`` (without); dropout off."""
    raw_global = local.mean(1)
    l_emb = t_linear(local, params, f"{prefix}/embedding_local")
    g_emb = t_linear(raw_global, params, f"{prefix}/embedding_global")
    if prefix == "v_global_w":
        l_emb = t_batch_norm(l_emb, stats, params, f"{prefix}/bn_local", train)
        g_emb = t_batch_norm(g_emb, stats, params, f"{prefix}/bn_global", train)
    l_emb, g_emb = torch.tanh(l_emb), torch.tanh(g_emb)
    common = l_emb * g_emb.unsqueeze(1)
    weights = torch.softmax(
        t_linear(common, params, f"{prefix}/embedding_common").squeeze(2), dim=1
    )
    return t_l2norm((weights.unsqueeze(2) * local).sum(1))


def torch_sgr(img, cap, lengths, params, stats, module, steps, train):
    """SGRAF ``EncoderSimilarity`` (SGR or SAF) for every caption, image batch."""
    img, cap = t_l2norm(img), t_l2norm(cap)
    n_image = img.size(0)
    img_glo = t_self_attention(img, params, stats, "v_global_w", train)
    sims = []
    for i, n in enumerate(lengths):
        cap_i = cap[i, :n].unsqueeze(0)
        words = cap_i.repeat(n_image, 1, 1)
        cap_glo = t_self_attention(cap_i, params, stats, "t_global_w", train)
        ctx = t_attention(words, img, 9.0, norm_context=True)
        sim_loc = t_l2norm(t_linear((ctx - words) ** 2, params, "sim_tranloc_w"))
        sim_glo = t_l2norm(t_linear((img_glo - cap_glo) ** 2, params, "sim_tranglo_w"))
        emb = torch.cat([sim_glo.unsqueeze(1), sim_loc], 1)
        if module == "SGR":
            for s in range(steps):
                q = t_linear(emb, params, f"SGR_module_{s}/graph_query_w")
                k = t_linear(emb, params, f"SGR_module_{s}/graph_key_w")
                edge = torch.softmax(torch.bmm(q, k.permute(0, 2, 1)), dim=-1)
                emb = F.relu(
                    t_linear(
                        torch.bmm(edge, emb), params, f"SGR_module_{s}/sim_graph_w"
                    )
                )
            vec = emb[:, 0, :]
        else:
            gate = t_linear(emb, params, "SAF_module/attn_sim_w").permute(0, 2, 1)
            gate = torch.sigmoid(
                t_batch_norm(gate, stats, params, "SAF_module/bn", train)
            )
            gate = gate / (gate.abs().sum(dim=-1, keepdim=True) + 1e-8)  # l1norm
            vec = t_l2norm(torch.matmul(gate, emb).squeeze(1))
        sims.append(torch.sigmoid(t_linear(vec, params, "sim_eval_w")))
    return torch.cat(sims, 1)


def _random_stats(variables, seed):
    """Non-trivial running statistics (so evaluation mode is really checked)."""
    rng = np.random.default_rng(seed)
    stats = flax.traverse_util.flatten_dict(variables["batch_stats"], sep="/")
    new = {
        k: (
            rng.normal(size=v.shape) * 0.1
            if k.endswith("mean")
            else rng.uniform(0.5, 1.5, size=v.shape)
        ).astype(np.float32)
        for k, v in stats.items()
    }
    return {**variables, "batch_stats": flax.traverse_util.unflatten_dict(new, sep="/")}


@pytest.mark.parametrize("module", ["SGR", "SAF"])
@pytest.mark.parametrize("train", [False, True])
def test_sgr_parity(module, train):
    inputs = make_inputs(seed=5)
    img, im, cap, cm, _ = inputs
    head = heads.SGRHead(module=module, sim_dim=16, sgr_step=2, dropout_rate=0.0)
    variables = _init(head, img, im, cap, cm)
    variables = _random_stats(variables, seed=6)
    t_stats = {
        k: torch.tensor(np.asarray(v), dtype=torch.float64)
        for k, v in flax.traverse_util.flatten_dict(
            variables["batch_stats"], sep="/"
        ).items()
    }
    _, new_stats = check_parity(
        head,
        variables,
        inputs,
        lambda i, c, n, p: torch_sgr(i, c, n, p, t_stats, module, 2, train),
        train=train,
    )
    if train:  # the running statistics moved exactly as torch's did
        for key, value in flax.traverse_util.flatten_dict(
            new_stats["batch_stats"], sep="/"
        ).items():
            assert_close(value, t_stats[key], f"running {key}")


# ----------------------------------------------------------------------------------------
# LAPS cross_net
# ----------------------------------------------------------------------------------------


def torch_laps(img, cap, lengths, params, sparse_ratio, aggr_ratio):
    """LAPS ``CrossSparseAggrNet_v2`` + ``mask_xattn_one_text`` for every caption."""
    n_image, n_tok, dim = img.shape
    img_n, cap_n = F.normalize(img, dim=-1), F.normalize(cap, dim=-1)
    has_cls = math.isqrt(n_tok) ** 2 != n_tok
    cls = img[:, :1] if has_cls else None
    spatial = img[:, 1:] if has_cls else img
    spatial_n = img_n[:, 1:] if has_cls else img_n
    num = spatial.shape[1]
    keep = math.ceil(num * sparse_ratio)
    with torch.no_grad():
        glo = F.normalize(spatial.mean(dim=1, keepdim=True), dim=-1)
        self_attention = (glo * spatial_n).sum(dim=-1)
    sims = []
    for i, n in enumerate(lengths):
        words = cap_n[i, :n].unsqueeze(0).repeat(n_image, 1, 1)
        with torch.no_grad():
            cap_glo = F.normalize(cap[i, :n].mean(0, keepdim=True).unsqueeze(0), dim=-1)
            score = self_attention + (cap_glo * spatial_n).sum(dim=-1)
        order = torch.argsort(score, dim=1, descending=True)
        gather = lambda idx: torch.gather(
            spatial, 1, idx.unsqueeze(-1).expand(-1, -1, dim)
        )
        selected, dropped = gather(order[:, :keep]), gather(order[:, keep:])
        drop_w = torch.softmax(torch.gather(score, 1, order[:, keep:]), dim=1)
        extra = (dropped * drop_w.unsqueeze(-1)).sum(dim=1, keepdim=True)
        h = F.layer_norm(
            selected,
            (dim,),
            params["aggr_net/norm/scale"],
            params["aggr_net/norm/bias"],
            eps=1e-5,
        )
        h = F.gelu(t_linear(h, params, "aggr_net/fc1"))
        h = t_linear(h, params, "aggr_net/fc2")  # [n_image, keep, N_s]
        mix = torch.softmax(h.transpose(2, 1) * params["aggr_net/scale"], dim=2)
        tokens = [torch.bmm(mix, selected), extra]
        if has_cls:
            tokens.insert(0, cls)
        tokens = F.normalize(torch.cat(tokens, dim=1), dim=-1)
        a = F.leaky_relu(torch.bmm(words, tokens.transpose(1, 2)), negative_slope=0.1)
        sims.append(a.max(dim=2)[0].mean(1) + a.max(dim=1)[0].mean(1))
    return torch.stack(sims, 1)


@pytest.mark.parametrize("p,ratios", [(17, (0.5, 0.4)), (16, (0.8, 0.6))])
def test_laps_parity(p, ratios):
    sparse, aggr = ratios
    inputs = make_inputs(seed=7, p=p)
    img, im, cap, cm, _ = inputs
    head = heads.LAPSHead(sparse_ratio=sparse, aggr_ratio=aggr)
    variables = _init(head, img, im, cap, cm)
    # A non-trivial scale and LayerNorm so their gradients are checked too.
    params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    rng = np.random.default_rng(8)
    params = {
        k: v + 0.3 * rng.normal(size=v.shape).astype(np.float32)
        if "norm" in k or "scale" in k
        else v
        for k, v in params.items()
    }
    variables = {"params": flax.traverse_util.unflatten_dict(params, sep="/")}
    check_parity(
        head, variables, inputs, lambda i, c, n, q: torch_laps(i, c, n, q, sparse, aggr)
    )


def test_laps_sizes_are_the_authors():
    assert heads.laps.laps_sizes(196, sparse_ratio=0.5, aggr_ratio=0.4) == (98, 39)
    assert heads.laps.laps_sizes(49, sparse_ratio=0.8, aggr_ratio=0.6) == (40, 23)
    assert heads.laps.has_cls_token(197) and not heads.laps.has_cls_token(144)
    with pytest.raises(ValueError, match="aggregated tokens"):
        heads.laps.laps_sizes(4, sparse_ratio=0.5, aggr_ratio=0.4)


# ----------------------------------------------------------------------------------------
# Every head: masks, empty rows, errors, blocked evaluation
# ----------------------------------------------------------------------------------------


def _head_cases():
    return {
        "vse": heads.VSEHead(),
        "scan": heads.SCANHead(),
        "sgr": heads.SGRHead(sim_dim=16, sgr_step=2),
        "saf": heads.SGRHead(module="SAF", sim_dim=16),
        "chan": heads.CHANHead(pooling="lse"),
        "laps": heads.LAPSHead(sparse_ratio=0.5, aggr_ratio=0.5),
    }


def _init(head, img, im, cap, cm):
    return jax.jit(head.init)(jax.random.PRNGKey(0), img, im, cap, cm)


@pytest.mark.parametrize("name", sorted(_head_cases()))
def test_padding_and_empty_rows_are_safe(name):
    head = _head_cases()[name]
    img, im, cap, cm, _ = make_inputs(seed=9, p=9, lengths=(5, 3, 0, 1))
    variables = _init(head, img, im, cap, cm)

    @jax.jit
    def scores_and_grad(img_, im_, cap_):
        fn = lambda c: head.apply(variables, img_, im_, c, cm)
        return fn(cap_), jax.grad(lambda c: jnp.sum(fn(c)))(cap_)

    zeros = np.where(cm[..., None], cap, 0.0).astype(np.float32)
    nans = np.where(cm[..., None], cap, np.nan).astype(np.float32)
    s_zero, _ = scores_and_grad(img, im, zeros)
    s_nan, grad = scores_and_grad(img, im, nans)
    s_nan, grad = np.asarray(s_nan), np.asarray(grad)
    assert np.all(np.isfinite(s_nan))
    np.testing.assert_array_equal(s_nan, np.asarray(s_zero))  # padding never enters
    assert np.all(np.isfinite(grad)) and np.all(grad[~cm] == 0.0)
    # An image without valid tokens (a padded block row) is finite too.
    im_empty = im.copy()
    im_empty[1] = False
    img_empty = np.where(im_empty[..., None], img, np.nan).astype(np.float32)
    out, grad = scores_and_grad(img_empty, im_empty, nans)
    assert np.all(np.isfinite(np.asarray(out))) and np.all(np.isfinite(grad))


def test_head_inputs_are_checked():
    img, im, cap, cm, _ = make_inputs()
    head = heads.SCANHead()
    with pytest.raises(ValueError, match=r"`cap_mask` must be \[Bt, L\]"):
        head.apply({}, img, im, cap, cm[:, :-1])
    with pytest.raises(ValueError, match="share the width d"):
        head.apply({}, img, im, cap[..., :-1], cm)
    with pytest.raises(ValueError, match=r"`img` must be \[B, N, d\]"):
        head.apply({}, img[0], im, cap, cm)
    with pytest.raises(ValueError, match="unknown head"):
        heads.make_head("clip")
    with pytest.raises(ValueError, match="`agg` must be one of"):
        heads.SCANHead(agg="softmax").apply({}, img, im, cap, cm)
    assert set(heads.HEADS) == {"vse", "scan", "sgr", "chan", "laps"}


@pytest.mark.parametrize("name", sorted(_head_cases()))
def test_blocked_scores_equal_unblocked(name):
    head = _head_cases()[name]
    lengths = (5, 2, 1, 4, 3, 5, 2)
    img, im, cap, cm, _ = make_inputs(seed=10, bi=5, p=9, lengths=lengths)
    variables = _init(head, img, im, cap, cm)
    full = np.asarray(jax.jit(head.apply)(variables, img, im, cap, cm))
    before = blocked.block_kernel._cache_size()
    out = heads.head_score_matrix(
        head, variables, img, im, cap, cm, image_block=2, caption_block=3
    )
    np.testing.assert_allclose(out, full, rtol=1e-6, atol=1e-6)
    # A larger split reuses the same compiled block kernel: the per-block memory is
    # that of one [2 x 3] block, whatever the split.
    big = make_inputs(seed=11, bi=7, p=9, lengths=lengths * 2)
    heads.head_score_matrix(head, variables, *big[:4], image_block=2, caption_block=3)
    assert blocked.block_kernel._cache_size() == before + 1


def test_block_memory_does_not_grow_with_the_split():
    head = heads.SCANHead()
    kw = dict(num_image_tokens=9, num_words=5, dim=8)
    small = heads.block_memory_bytes(head, {}, image_block=2, caption_block=3, **kw)
    large = heads.block_memory_bytes(head, {}, image_block=4, caption_block=6, **kw)
    assert 0 < small < large  # it scales with the block, the only input size it sees


def test_evaluate_head_matches_rank_metrics():
    head = heads.CHANHead()
    lengths = tuple(int(n) for n in np.random.default_rng(13).integers(1, 6, size=20))
    img, im, cap, cm, _ = make_inputs(seed=13, bi=10, p=6, lengths=lengths)
    c2i = np.repeat(np.arange(10), 2)
    full = np.asarray(jax.jit(head.apply)({}, img, im, cap, cm))
    run = lambda protocols: heads.evaluate_head(
        head,
        {},
        img,
        im,
        cap,
        cm,
        c2i,
        protocols=protocols,
        image_block=3,
        caption_block=4,
    )
    got = run(("full", "1k_5fold"))
    assert got["full"] == pytest.approx(retrieval.rank_metrics(full, c2i))
    folds = [
        retrieval.rank_metrics(
            full[2 * f : 2 * f + 2, 4 * f : 4 * f + 4], c2i[4 * f : 4 * f + 4] - 2 * f
        )
        for f in range(5)
    ]
    want = {k: np.mean([m[k] for m in folds]) for k in folds[0]}
    assert got["1k_5fold"] == pytest.approx(want)
    alone = run(("1k_5fold",))  # folds scored on their own, not sliced from "full"
    assert alone["1k_5fold"] == pytest.approx(want)


def test_ops_empty_rows_are_zero():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    m = jnp.array([[True, False], [False, False]])
    for fn in (ops.masked_mean, ops.masked_max, ops.masked_logsumexp):
        out = fn(x, m, axis=1)
        assert float(out[1]) == 0.0 and float(out[0]) == pytest.approx(1.0)
    soft = ops.masked_softmax(x, m, axis=1)
    np.testing.assert_array_equal(np.asarray(soft), [[1.0, 0.0], [0.0, 0.0]])
