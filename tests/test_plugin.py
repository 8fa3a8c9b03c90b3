"""The distribution-sampling plug-in and the Table 4 heads as models (docs/cdds.md §15.7):
the plug-in is exactly CDDS's score, lambda = 0 is the head alone, every head trains
with it, the evaluation scores what the step trains, the train command end to end on
the synthetic SCAN precomp layout, and LAPS on the raw-image path."""

from __future__ import annotations

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdds_jax import (
    evaluation,
    head_model,
    head_objective,
    heads,
    losses,
    plugin,
    scores,
    semantics,
    train,
)
from xmodal import config as config_lib
from xmodal import sharding


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(arg: str = "scan_tiny", **overrides):
    c = config_lib.load_config(f"configs/flickr.py:{arg}")
    config_lib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
    return c


def _tokens(seed: int, b: int = 4, n: int = 6, d: int = 8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, n, d)).astype(np.float32)
    mask = np.arange(n)[None, :] < rng.integers(2, n + 1, size=(b, 1))
    return x, mask


# ----------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compare", ["cosine", "centred"])
def test_plugin_is_the_cdds_score(compare):
    # Same tokens, S and alpha: the plug-in's scores are cdds_jax.scores.pair_scores with
    # the soft-thresholded W, and its x-semantic tokens those of cdds_jax.semantics.
    v, vm = _tokens(0)
    t, tm = _tokens(1)
    options = scores.ScoreOptions(num_levels=4, table_compare=compare)
    ds = plugin.DistributionSampling(dim=8, options=options, alpha_init=0.5)
    s_v = jnp.asarray(np.random.default_rng(2).uniform(size=(8, 8)), jnp.float32)
    s_t = s_v.T + 0.1
    variables = ds.init(jax.random.PRNGKey(0), v, vm, t, tm, s_v=s_v, s_t=s_t)
    out = jax.jit(functools.partial(ds.apply, variables))(
        v, vm, t, tm, s_v=s_v, s_t=s_t
    )
    alpha = jnp.full((8,), 0.5)
    w_v = semantics.soft_threshold(s_v, alpha)
    w_t = semantics.soft_threshold(s_t, alpha)
    np.testing.assert_allclose(out.w_v, w_v, rtol=1e-5, atol=1e-6)
    q_v = semantics.quantile_table(v, vm, 4)
    q_t = semantics.quantile_table(t, tm, 4)
    want = scores.pair_scores(q_v, q_t, w_v, w_t, compare=compare)
    np.testing.assert_allclose(out.scores(), want, rtol=1e-5, atol=1e-6)
    v_x, t_x = plugin.x_semantic_tokens(out, v, vm, t, tm)
    np.testing.assert_allclose(
        v_x, semantics.x_semantic_tokens(v, vm, q_t, w_v), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        t_x, semantics.x_semantic_tokens(t, tm, q_v, w_t), rtol=1e-5, atol=1e-6
    )
    # One side at a time (evaluation) gives the same embeddings.
    image_only = ds.apply(variables, v, vm, None, None, s_v=s_v, s_t=s_t)
    np.testing.assert_allclose(image_only.image, out.image, rtol=1e-5, atol=1e-6)
    assert image_only.caption is None
    # The loss helper: the head's loss of s_head + lambda * s_DS.
    head = jnp.asarray(np.random.default_rng(3).normal(size=(4, 4)), jnp.float32)
    loss = functools.partial(
        losses.hinge_loss, image_ids=jnp.arange(4), max_violation=False
    )
    got = plugin.plugin_loss(loss, head, out, weight=0.3)
    np.testing.assert_allclose(got, loss(head + 0.3 * want), rtol=1e-5)
    assert plugin.plugin_loss(loss, head, None, weight=0.3) == loss(head)


def test_plugin_config_errors():
    with pytest.raises(ValueError, match="distribution sampling already"):
        plugin.enabled(_config(**{"plugin.enabled": True}))  # head "cdds"
    with pytest.raises(ValueError, match=r"model\.head: expected one of"):
        head_model.head_name(_config(**{"model.head": "clip"}))
    c = _config(**{"model.head": "laps"})
    assert head_model.head_fields(c, "swin")["sparse_ratio"] == 0.8
    assert head_model.head_fields(c, "vit")["aggr_ratio"] == 0.4
    chan = _config(**{"model.head": "chan", "plugin.enabled": True})
    assert head_model.HeadLoss.from_config(chan).margin == 0.05
    assert head_model.method_name(chan) == "CHAN + DS"


# ----------------------------------------------------------------------------------------
# Heads on the tiny SCAN precomp layout
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def precomp(tmp_path_factory):
    """The scan_tiny data (regions + BiGRU ids) and one training batch."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    config = _config()
    data = train.load_data(config, tmp_path_factory.mktemp("w"), splits=("train",))
    mp.undo()
    source = data.pair_source(data.train)
    rows = [source[i] for i in range(config.train.batch_size)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return data, batch


def _state(config, data, batch):
    model = train.build_model(config, data.backbones, len(data.vocab or ()))
    # One device: the 8-device step is tested for CDDS (test_cdds_train.py); here
    # only the models differ.
    mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
    example = {k: v[:1] for k, v in batch.items()}
    state, shardings = train.create_train_state(
        config, model, example, mesh, steps_per_epoch=4
    )
    return model, mesh, state, shardings


def test_lambda_zero_is_the_head_alone(precomp):
    # SGR: parameters, BatchNorm statistics and dropout, the fullest head. Past epoch 0:
    # the hardest negative is on. The plug-in with weight 0 trains the same function.
    data, batch = precomp
    sgr = {"model.head": "sgr", "heads.sgr.sim_dim": 8, "heads.sgr.sgr_step": 2}
    head_only = _config(**sgr)
    with_ds = _config(**sgr, **{"plugin.enabled": True, "plugin.weight": 0.0})
    runs = []
    for config in (head_only, with_ds):
        model, mesh, state, _ = _state(config, data, batch)
        fn = functools.partial(
            head_objective.compute_loss, model=model, config=config, epoch=1.5
        )
        (loss, aux), grads = jax.jit(jax.value_and_grad(fn, has_aux=True))(
            state.params,
            state.extra,
            sharding.global_batch(batch, mesh),
            jax.random.PRNGKey(7),
        )
        runs.append((state, loss, aux, grads))
    (s0, loss0, aux0, g0), (s1, loss1, aux1, g1) = runs
    assert set(s1.params) - set(s0.params) == {"plugin"}
    chex.assert_trees_all_equal(s0.params, {k: s1.params[k] for k in s0.params})
    assert float(loss0) > 0
    assert float(loss0) == float(loss1)
    shared = {k: g1[k] for k in g0}
    chex.assert_trees_all_close(g0, shared, rtol=0, atol=0)
    chex.assert_trees_all_equal(
        aux0["stats"]["batch_stats"], aux1["stats"]["batch_stats"]
    )
    assert int(aux1["stats"][plugin.STATS_KEY]["count"]) == 1  # S still tracked
    assert float(aux1["ds_score_std"]) > 0


@pytest.mark.parametrize("name", sorted(heads.HEADS))
def test_every_head_trains_with_the_plugin(precomp, name):
    data, batch = precomp
    overrides = {"model.head": name, "plugin.enabled": True}
    if name == "sgr":
        overrides["heads.sgr.sim_dim"] = 8
    config = _config(**overrides)
    model, mesh, state, shardings = _state(config, data, batch)
    step = train.jit_train_step(config, model, shardings, mesh, steps_per_epoch=4)
    global_batch = sharding.global_batch(batch, mesh)
    before = jax.device_get(state.params)  # the step donates the state
    for _ in range(2):
        state, metrics = step(state, global_batch)
    metrics = jax.device_get(metrics)
    for key in ("loss", "l_s", "score_std", "head_score_std", "ds_score_std"):
        assert np.isfinite(metrics[key]), key
    assert metrics["score_std"] > 0 and np.isfinite(metrics["alpha_v"])
    assert int(state.extra[plugin.STATS_KEY]["count"]) == 2
    moved = jax.tree_util.tree_map(
        lambda a, b: bool(np.any(a != b)), before, jax.device_get(state.params)
    )
    assert all(jax.tree_util.tree_leaves(moved["plugin"]))  # alpha is trained
    assert any(jax.tree_util.tree_leaves(moved["text_gru"]))


def test_evaluation_scores_what_the_step_trains(precomp):
    # SCAN has no dropout or batch statistics, so the evaluation's scores of the
    # training batch are the step's: the blocked head plus lambda times the plug-in's
    # GEMM, W from the statistics the step stored (this batch's S joined the EMA).
    data, batch = precomp
    config = _config(**{"model.head": "scan", "plugin.enabled": True})
    model, mesh, state, _ = _state(config, data, batch)
    global_batch = sharding.global_batch(batch, mesh)
    _, aux = jax.jit(
        functools.partial(train.loss_fn(config), model=model, config=config, epoch=0.5)
    )(state.params, state.extra, global_batch, jax.random.PRNGKey(0))
    kw = dict(model=model, config=config)
    img = evaluation.head_images(state.params, aux["stats"], global_batch, **kw)
    cap = evaluation.head_captions(state.params, aux["stats"], global_batch, **kw)
    got = heads.head_score_matrix(
        head_model.build_head(config, "features"),
        {},
        np.asarray(img["tokens"]),
        np.asarray(img["mask"]),
        np.asarray(cap["tokens"]),
        np.asarray(cap["mask"]),
        image_block=6,
        caption_block=7,
        image_emb=np.asarray(img["ds"]),
        caption_emb=np.asarray(cap["ds"]),
        weight=config.plugin.weight,
    )
    stats = scores.score_statistics(got)
    for key in ("score_std", "score_pos", "score_mean"):
        np.testing.assert_allclose(stats[key], aux[key], rtol=1e-4, atol=1e-5)


def test_dataset_sources_refresh_the_plugin_statistics(precomp):
    # w_source=precompute: the epoch-start pass over the training pairs writes S into
    # the plug-in's statistics (extra["ds"]), leaving the rest of the state alone.
    from cdds_jax import dataset_statistics

    data, batch = precomp
    config = _config(
        **{
            "model.head": "vse",
            "plugin.enabled": True,
            "semantics.w_source": "precompute",
        }
    )
    model, mesh, state, _ = _state(config, data, batch)
    hook = dataset_statistics.make_refresh(
        config, model, data.pair_eval_source(data.train), mesh, log=lambda _: None
    )
    assert hook is not None
    new = hook(state, 0)
    stats = new.extra[plugin.STATS_KEY]
    assert int(stats["count"]) == 1 and float(jnp.max(jnp.abs(stats["S_v"]))) > 0
    chex.assert_trees_all_equal(new.params, state.params)
    off = _config(**{"model.head": "vse", "semantics.w_source": "precompute"})
    assert dataset_statistics.make_refresh(off, model, None, mesh) is None


def test_train_command_scan_with_the_plugin(tmp_path):
    # python -m cdds_jax.train --config configs/flickr.py:scan_tiny
    #   --config.model.head=scan --config.plugin.enabled=True --workdir W
    from cdds_jax import evaluate

    overrides = {"model.head": "scan", "plugin.enabled": True, "train.num_steps": 8}
    results = train.train_and_evaluate(_config(**overrides), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 8
    assert saved["method"] == "SCAN + DS" and saved["head"] == "scan"
    assert saved["plugin"] == {"enabled": True, "weight": 1.0}
    metrics = saved["test"]["full"]
    assert 0 <= metrics["rsum"] <= 600 and metrics["degenerate"] == 0.0
    # The evaluate entry point restores the head model and scores it the same.
    rescored = evaluate.evaluate(_config(**overrides), tmp_path)
    for key, value in metrics.items():
        assert rescored["test"]["full"][key] == pytest.approx(value, abs=1e-6), key


# ----------------------------------------------------------------------------------------
# LAPS on the raw-image path
# ----------------------------------------------------------------------------------------


def test_laps_with_the_plugin_on_images(tmp_path):
    # Tiny random ViT + BERT on the synthetic JPEGs: LAPS cross_net with its ViT ratios
    # on the ViT's [CLS] + patch tokens, the plug-in beside it; one step, then the
    # blocked evaluation of the 4 test images.
    config = _config(
        "demo_raw",
        **{
            "model.head": "laps",
            "plugin.enabled": True,
            "data.synthetic.num_train": 10,
            "data.synthetic.num_dev": 4,
            "data.synthetic.num_test": 4,
            "train.batch_size": 8,
            "eval.batch_size": 8,
        },
    )
    data = train.load_data(config, tmp_path, splits=("train", "test"))
    source = data.pair_eval_source(data.train)
    rows = [source[i] for i in range(8)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    model, mesh, state, shardings = _state(config, data, batch)
    assert isinstance(model.head, heads.LAPSHead)
    assert (model.head.sparse_ratio, model.head.aggr_ratio) == (0.5, 0.4)
    assert "image_backbone" in state.params and "aggr_net" in state.params["head"]
    step = train.jit_train_step(config, model, shardings, mesh, steps_per_epoch=2)
    state, metrics = step(state, sharding.global_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"]))
    evaluator = evaluation.Evaluator(config, model, mesh, data)
    out = evaluator(state, data.test, ("full",))["full"]
    assert 0 <= out["rsum"] <= 600 and np.isfinite(out["score_std"])
