"""CDDS driver: the sharded step on 8 devices equals 1 device; a real tiny run; resume;
the score options in the step and the evaluation; the collapse signals."""

from __future__ import annotations

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdds_jax import evaluation, scores, train
from cdds_jax.model import CDDSModel
from xmodal import config as config_lib
from xmodal import optim, sharding


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _tiny(**overrides) -> config_lib.ml_collections.ConfigDict:
    c = config_lib.load_config("configs/flickr.py:tiny")
    config_lib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
    return c


def test_sharded_loss_and_grads_equal_single_device(tmp_path):
    config = _tiny()
    data = train.load_data(config, tmp_path, splits=("train",))
    source = data.pair_source(data.train)
    rows = [source[i] for i in range(config.train.batch_size)]
    local = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    # Two captions of one image in the batch: the hinge must mask the duplicate positive.
    assert len(set(local["image_id"].tolist())) < len(local["image_id"])
    model = train.build_model(config, data.backbones)
    example = {k: v[:1] for k, v in local.items()}

    def run(devices):
        mesh = sharding.make_mesh((("data", -1),), devices=devices)
        state, shardings = train.create_train_state(
            config, model, example, mesh, steps_per_epoch=10
        )
        batch = sharding.global_batch(local, mesh)
        # epoch 1.2: past the warm-up ramp; config.loss.max_violation_after_epochs is
        # set to 1 so the hardest-negative branch runs.
        loss_and_grad = jax.jit(
            jax.value_and_grad(
                functools.partial(
                    train.compute_loss, model=model, config=config, epoch=1.2
                ),
                has_aux=True,
            ),
            in_shardings=(
                shardings.params,
                shardings.extra,
                sharding.data_sharding(mesh),
                None,
            ),
            out_shardings=sharding.replicated(mesh),
        )
        rng = jax.device_put(jax.random.PRNGKey(3), sharding.replicated(mesh))
        with jax.transfer_guard("disallow"):
            out = loss_and_grad(state.params, state.extra, batch, rng)
        return jax.device_get(out)

    config.unlock()
    config.loss.max_violation_after_epochs = 1
    config.lock()
    (loss1, aux1), grads1 = run(jax.devices()[:1])
    (loss8, aux8), grads8 = run(jax.devices())
    assert np.isfinite(loss1) and loss1 > 0
    for key in ("l_s", "l_m", "l_f", "l_x"):
        assert aux1[key] > 0, key
    chex.assert_trees_all_close(loss1, loss8, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(aux1, aux8, rtol=1e-5, atol=1e-5)
    # Gradients, norm-wise: elementwise, the soft-threshold alphas amplify the
    # float32 reduction-order noise of S (~5e-7) to ~1e-4 relative.
    diff = jax.tree_util.tree_map(lambda a, b: a - b, grads1, grads8)
    norm = optim.optax.tree.norm
    assert float(norm(grads1)) > 0
    assert float(norm(diff)) <= 1e-5 * float(norm(grads1))


def _batch(config, tmp_path):
    data = train.load_data(config, tmp_path, splits=("train", "dev"))
    source = data.pair_source(data.train)
    rows = [source[i] for i in range(config.train.batch_size)]
    return data, {k: np.stack([r[k] for r in rows]) for k in rows[0]}


OPTIONS = [
    {},  # the defaults: EMA S, fixed tau, centred tables
    {"semantics.table_compare": "cosine"},  # the paper's table comparison
    {"semantics.w_source": "batch"},  # the paper's literal reading
    {
        "semantics.tau_mode": "relative",
        "semantics.table_compare": "centred",
        "semantics.table_scale": True,
    },
    {
        "semantics.w_source": "window",
        "semantics.window_steps": 3,
        "semantics.tau_mode": "learned",
        "semantics.table_compare": "level_centred",
    },
    {"semantics.w_source": "window", "semantics.table_compare": "w2"},
    {"ablate.sampling": False},
]


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: "-".join(map(str, o.values()))
)
def test_step_and_evaluation_share_the_score_function(tmp_path, options):
    # Without noise the model is deterministic, so the evaluation's embeddings of the
    # training batch, with the S statistics the step just stored, must reproduce the
    # step's B x B score matrix (its std, positive mean and mean).
    config = _tiny(**options, **{"ablate.noise": False})
    data, local = _batch(config, tmp_path)
    model = train.build_model(config, data.backbones)
    mesh = sharding.make_mesh(config.mesh)
    state, _ = train.create_train_state(
        config, model, {k: v[:1] for k, v in local.items()}, mesh, steps_per_epoch=3
    )
    if options.get("semantics.w_source") == "window":
        window = config.semantics.window_steps
        chex.assert_shape(state.extra["S_v_window"], (window, 16, 16))
    assert ("log_tau" in state.params) == (
        options.get("semantics.tau_mode") == "learned"
    )
    batch = sharding.global_batch(local, mesh)
    loss, aux = jax.jit(
        functools.partial(train.compute_loss, model=model, config=config, epoch=0.5)
    )(state.params, state.extra, batch, jax.random.PRNGKey(0))
    assert np.isfinite(loss)
    embed = functools.partial(evaluation.embed_images, model=model, config=config)
    img = embed(state.params, aux["stats"], batch)
    embed = functools.partial(evaluation.embed_captions, model=model, config=config)
    cap = embed(state.params, aux["stats"], batch)
    got = scores.score_statistics(scores.score_gemm(img, cap))
    for key in ("score_std", "score_pos", "score_mean", "score_margin"):
        np.testing.assert_allclose(got[key], aux[key], rtol=1e-4, atol=1e-5)


def test_train_step_metrics_and_learned_temperature(tmp_path):
    config = _tiny(**{"semantics.tau_mode": "learned", "semantics.tau": 0.5})
    data, local = _batch(config, tmp_path)
    model = train.build_model(config, data.backbones)
    mesh = sharding.make_mesh(config.mesh)
    state, shardings = train.create_train_state(
        config, model, {k: v[:1] for k, v in local.items()}, mesh, steps_per_epoch=3
    )
    np.testing.assert_allclose(state.params["log_tau"], np.log(0.5), rtol=1e-6)
    step = train.jit_train_step(config, model, shardings, mesh, steps_per_epoch=3)
    before = float(state.params["log_tau"])
    state, metrics = step(state, sharding.global_batch(local, mesh))
    metrics = jax.device_get(metrics)
    for key in ("score_std", "score_margin", "score_pos", "score_mean", "tau"):
        assert np.isfinite(metrics[key]), key
    assert metrics["score_std"] > 0
    np.testing.assert_allclose(
        metrics["score_margin"], metrics["score_pos"] - metrics["score_mean"], atol=1e-6
    )
    np.testing.assert_allclose(metrics["tau"], 0.5, rtol=1e-5)
    assert float(state.params["log_tau"]) != before  # it is trained
    assert int(state.extra["count"]) == 1


def test_evaluator_flags_a_constant_score_model_as_degenerate(tmp_path):
    config = _tiny()
    data, local = _batch(config, tmp_path)
    model = train.build_model(config, data.backbones)
    mesh = sharding.make_mesh(config.mesh)
    state, _ = train.create_train_state(
        config, model, {k: v[:1] for k, v in local.items()}, mesh, steps_per_epoch=3
    )
    evaluator = evaluation.Evaluator(config, model, mesh, data)
    healthy = evaluator(state, data.dev, ("full",))["full"]
    assert healthy["degenerate"] == 0.0 and healthy["score_std"] > config.collapse.floor
    # Zero weights everywhere: every token, table and embedding is 0, so is every score.
    zero = state.replace(params=jax.tree_util.tree_map(jnp.zeros_like, state.params))
    dead = evaluator(zero, data.dev, ("full",))["full"]
    assert dead["degenerate"] == 1.0
    assert dead["score_std"] == 0.0 and dead["tie_fraction"] == 1.0
    # Pessimistic ranks: a constant model ranks every positive last, never first.
    assert dead["i2t_r1"] == dead["t2i_r1"] == 0.0
    assert dead["rsum"] == 0.0  # 16 dev images: even R@10 misses


def test_train_and_evaluate_then_resume_matches_straight_run(tmp_path):
    # One real run on a tiny config; then the same run stopped part-way and resumed.
    straight = tmp_path / "straight"
    results = train.train_and_evaluate(_tiny(), straight)
    for name in ("config.json", "metrics.jsonl", "results.json"):
        assert (straight / name).is_file(), name
    assert list((straight / "tensorboard").glob("events.out.tfevents.*"))
    assert (straight / "checkpoints").is_dir() and (straight / "best").is_dir()
    saved = json.loads((straight / "results.json").read_text())
    assert saved["selected_on"] == "dev"
    metrics = saved["test"]["full"]
    assert set(metrics) >= {"i2t_r1", "t2i_r1", "rsum", "i2t_medr", "t2i_meanr"}
    assert set(metrics) >= {"score_std", "tie_fraction", "degenerate"}
    assert 0 <= metrics["rsum"] <= 600
    assert results["steps"] == 30
    # The evaluate entry point scores the same best checkpoint to the same numbers.
    from cdds_jax import evaluate

    rescored = evaluate.evaluate(_tiny(), straight)
    assert rescored["checkpoint"] == saved["checkpoint"]
    for key, value in metrics.items():
        assert rescored["test"]["full"][key] == pytest.approx(value, abs=1e-6), key

    parted = tmp_path / "parted"
    train.train_and_evaluate(_tiny(**{"train.num_steps": 10}), parted)  # stops at 10
    train.train_and_evaluate(_tiny(**{"train.num_steps": 30}), parted)  # resumes to 30

    config = _tiny()
    data = train.load_data(config, straight, splits=("train",))
    source = data.pair_source(data.train)
    example = {k: np.asarray(v)[None] for k, v in source[0].items()}
    mesh = sharding.make_mesh(config.mesh)
    target, _ = train.create_train_state(
        config,
        train.build_model(config, data.backbones),
        example,
        mesh,
        steps_per_epoch=15,
    )
    from xmodal.checkpoint import restore_for_eval

    a, _, which_a = restore_for_eval(straight, target, which="latest")
    b, _, which_b = restore_for_eval(parted, target, which="latest")
    assert which_a == which_b == "checkpoints/30"
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(a.extra, b.extra, rtol=1e-6, atol=1e-6)
    lines = (parted / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines if '"train"' in x]
    assert steps == sorted(steps) and steps[-1] == 30


def _paper_size_spread(img, txt, scalars, config) -> np.ndarray:
    """The B x B score matrix of the paper's reading (batch S, cosine tables)."""
    from cdds_jax import semantics

    sc = config.semantics
    s_v, s_t = (
        semantics.kl_correlation(*args, num_bins=sc.num_bins)
        for args in (
            (img["s"], img["mask"], txt["s"], txt["mask"]),
            (txt["s"], txt["mask"], img["s"], img["mask"]),
        )
    )
    options = scores.ScoreOptions.from_config(config)
    weights = scores.weights_from_scalars(scalars, s_v, s_t, options)
    emb = scores.retrieval_embeddings(
        img["s"], img["mask"], txt["s"], txt["mask"], weights, options=options
    )
    return np.asarray(scores.score_gemm(emb.image, emb.caption))


def test_collapse_guard_leaves_healthy_paper_size_scores_alone():
    # Paper sizes (d 512, G 32, 197 image tokens, up to 40 words, 16 bins), the
    # paper's reading: (a) a model with random weights, (b) i.i.d. tokens as the
    # semantic components, 40 words each (unrelated tables score ~0.99 there, docs/cdds.md
    # §10.5).
    # Their score spreads at the start are the runs' own peaks, so neither the
    # training guard nor the dev check flags them; (b) is below the absolute floor
    # (0.01) the guard used to have.
    from cdds_jax import reading, retrieval
    from xmodal import loop as loop_lib

    config = reading.fill(config_lib.load_config("configs/flickr.py"))
    assert reading.of(config).name == "paper" and config.model.dim == 512
    rng = np.random.default_rng(0)
    b = 8
    images = rng.standard_normal((b, 197, 768)).astype(np.float32)
    text = rng.standard_normal((b, 40, 768)).astype(np.float32)
    mask = np.arange(40)[None, :] < rng.integers(12, 41, size=(b, 1))
    model = CDDSModel(dim=512, num_heads=8, num_samples=1, sigma=0.0)
    params = jax.jit(functools.partial(model.init, train=False))(
        jax.random.PRNGKey(0), images[:1], text[:1], mask[:1]
    )
    img, txt, scalars = jax.jit(functools.partial(model.apply, train=False))(
        params, images, text, mask
    )
    model_scores = _paper_size_spread(img, txt, scalars, config)
    tokens = {
        "s": rng.standard_normal((b, 197, 512)).astype(np.float32),
        "mask": np.ones((b, 197), bool),
    }
    words = {
        "s": rng.standard_normal((b, 40, 512)).astype(np.float32),
        "mask": np.ones((b, 40), bool),
    }
    iid_scores = _paper_size_spread(tokens, words, scalars, config)
    assert float(np.std(iid_scores)) < 0.01  # the former absolute floor flags it
    c = config.collapse
    guard = loop_lib.CollapseGuard(
        "score_std", c.floor, c.patience_steps, relative_floor=c.relative_floor
    )
    for matrix in (model_scores, iid_scores):
        spread = float(np.std(matrix))
        assert spread > 0
        assert spread >= guard.threshold(spread)  # its own peak: not collapsed
        assert spread < guard.threshold(100 * spread)  # 1% of a peak: collapsed
        dev = retrieval.degeneracy(matrix, np.arange(b), floor=c.floor)
        assert dev["degenerate"] == 0.0
