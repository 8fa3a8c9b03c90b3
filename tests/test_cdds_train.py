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


def test_sharded_loss_and_grads_equal_single_device(tmp_path):
    config = _tiny()
    data = train.load_data(config, tmp_path, splits=("train",))
    source = data.pair_source(data.train)
    rows = [source[i] for i in range(config.train.batch_size)]
    local = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    # Two captions of one image in the batch: the hinge must mask the duplicate positive.
    assert len(set(local["image_id"].tolist())) < len(local["image_id"])
    model = train.build_model(config)
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
            in_shardings=(shardings.params, sharding.data_sharding(mesh), None),
            out_shardings=sharding.replicated(mesh),
        )
        rng = jax.device_put(jax.random.PRNGKey(3), sharding.replicated(mesh))
        with jax.transfer_guard("disallow"):
            out = loss_and_grad(state.params, batch, rng)
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
