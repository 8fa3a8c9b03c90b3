"""CDDS driver: the sharded step on 8 devices equals 1 device; a real tiny run; resume."""

from __future__ import annotations

import functools
import json

import chex
import jax
import numpy as np
import pytest

from cdds_jax import train
from xmodal import config as config_lib
from xmodal import optim, sharding


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _tiny(**overrides) -> config_lib.ml_collections.ConfigDict:
    c = config_lib.load_config("configs/flickr.py:tiny")
    config_lib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
    return c


@pytest.mark.parametrize("text_encoder", ["precomputed", "bigru"])
def test_sharded_step_equals_single_device(tmp_path, text_encoder):
    config = _tiny(**{"model.text_encoder": text_encoder})
    data = train.load_data(config, tmp_path, splits=("train",))
    source = data.pair_source(data.train)
    rows = [source[i] for i in range(config.train.batch_size)]
    local = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    # Two captions of one image in the batch: the hinge must mask the duplicate positive.
    assert len(set(local["image_id"].tolist())) < len(local["image_id"])
    model = train.build_model(config, len(data.vocab) if data.vocab else 0)
    example = {k: v[:1] for k, v in local.items()}
    lr_fn = optim.learning_rate_fn(config.optim, 10)

    def run(devices):
        mesh = sharding.make_mesh((("data", -1),), devices=devices)
        state, shardings = train.create_train_state(
            config, model, example, mesh, steps_per_epoch=10
        )
        state = state.replace(step=state.step + 12)  # past epoch 1: hardest negatives
        batch = sharding.global_batch(local, mesh)
        loss_and_grad = jax.jit(
            jax.value_and_grad(
                functools.partial(
                    train.compute_loss,
                    model=model,
                    config=config,
                    epoch=state.step / 10,
                ),
                has_aux=True,
            )
        )
        (loss, aux), grads = loss_and_grad(state.params, batch, jax.random.PRNGKey(3))
        step = jax.jit(
            functools.partial(
                train.train_step,
                model=model,
                config=config,
                steps_per_epoch=10,
                lr_fn=lr_fn,
            ),
            in_shardings=(shardings, sharding.data_sharding(mesh)),
            out_shardings=(shardings, sharding.replicated(mesh)),
        )
        with jax.transfer_guard("disallow"):
            new_state, metrics = step(state, batch)
        return jax.device_get((loss, aux, grads, new_state.params, metrics))

    one = run(jax.devices()[:1])
    eight = run(jax.devices())
    assert np.isfinite(one[0]) and one[0] > 0
    chex.assert_trees_all_close(one[0], eight[0], rtol=1e-5, atol=1e-5)
    # Gradients: norm-wise relative error. Elementwise, the soft-threshold alphas
    # amplify float32 reduction-order noise in S (~5e-7) to ~1e-4 relative; the
    # sharding logic itself is what this checks.
    diff = jax.tree_util.tree_map(lambda a, b: a - b, one[2], eight[2])
    assert float(optim.optax.tree.norm(diff)) <= 1e-5 * float(
        optim.optax.tree.norm(one[2])
    )
    # The jitted sharded train step computes the same loss and gradient norm. (Its
    # updated parameters are not compared: Adam's first step turns a ~0 gradient into
    # a full +-lr step, i.e. it would compare the sign of float noise.)
    chex.assert_trees_all_close(one[4]["loss"], eight[4]["loss"], rtol=1e-5)
    chex.assert_trees_all_close(one[4]["grad_norm"], eight[4]["grad_norm"], rtol=1e-5)
    grad_norm = float(optim.optax.tree.norm(one[2]))
    assert grad_norm > 0


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
    assert 0 <= metrics["rsum"] <= 600
    assert results["steps"] == 30

    parted = tmp_path / "parted"
    train.train_and_evaluate(_tiny(**{"train.num_steps": 10}), parted)  # stops at 10
    train.train_and_evaluate(_tiny(**{"train.num_steps": 30}), parted)  # resumes to 30

    config = _tiny()
    data = train.load_data(config, straight, splits=("train",))
    source = data.pair_source(data.train)
    example = {k: np.asarray(v)[None] for k, v in source[0].items()}
    mesh = sharding.make_mesh(config.mesh)
    target, _ = train.create_train_state(
        config, train.build_model(config), example, mesh, steps_per_epoch=15
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
