"""Engine tests: config, optimiser, pipelines, checkpointing, loop, writer, sharding."""

from __future__ import annotations

import json
import math
import pathlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xmodal import checkpoint, errors, optim, pipeline, sharding
from xmodal import config as config_lib
from xmodal import loop as loop_lib
from xmodal.state import TrainState
from xmodal.workdir import open_workdir
from xmodal.writer import MetricWriter, Progress, format_duration

# ------------------------------------------------------------------------- config


def _write_config(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "exp.py"
    path.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.arg = arg or ''\n"
        "    c.train = ml_collections.ConfigDict()\n"
        "    c.train.batch_size = 64\n"
        "    c.train.lr = 0.1\n"
        "    c.train.flag = True\n"
        "    c.train.epochs = (9, 15)\n"
        "    c.train.name = 'x'\n"
        "    return c\n"
    )
    return str(path)


def test_load_config_arg_overrides_and_lock(tmp_path):
    path = _write_config(tmp_path)
    c = config_lib.load_config(f"{path}:demo")
    assert c.arg == "demo"
    config_lib.apply_overrides(
        c,
        [
            "train.batch_size=128",
            "train.lr=3e-4",
            "train.flag=false",
            "train.epochs=(1,2,3)",
            "train.name=abc",
        ],
    )
    assert c.train.batch_size == 128 and isinstance(c.train.batch_size, int)
    assert c.train.lr == pytest.approx(3e-4)
    assert c.train.flag is False
    assert c.train.epochs == (1, 2, 3)
    assert c.train.name == "abc"
    with pytest.raises(KeyError, match=r"train\.batchsize"):
        config_lib.apply_overrides(c, ["train.batchsize=1"])
    with pytest.raises(AttributeError):
        c.train.typo_field = 1  # locked: typos fail
    with open_workdir(tmp_path / "run", c):  # writes the run's config.json
        pass
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["epochs"] == [1, 2, 3]


def test_load_config_missing_file():
    with pytest.raises(FileNotFoundError, match=r"nope\.py"):
        config_lib.load_config("nope.py:demo")


def test_config_in_a_package_imports_its_siblings_from_any_folder(
    tmp_path, monkeypatch
):
    # As configs/mosi.py imports configs.decalign_base: no installed package has it.
    package = tmp_path / "xmodal_test_cfgs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text("BATCH = 7\n")
    (package / "exp.py").write_text(
        "import ml_collections\n"
        "from xmodal_test_cfgs import base\n"
        "def get_config(arg=None):\n"
        "    return ml_collections.ConfigDict({'batch': base.BATCH})\n"
    )
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    monkeypatch.chdir(tmp_path / "..")
    assert config_lib.load_config(str(package / "exp.py")).batch == 7


def test_repo_configs_load():
    for spec in ("configs/flickr.py", "configs/flickr.py:demo", "configs/coco.py"):
        c = config_lib.load_config(spec)
        assert c.optim.lr > 0


# ------------------------------------------------------------------------- optim


def _optim_cfg(**kw) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(
        dict(
            lr=0.1,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.01,
            decoupled_weight_decay=True,
            clip_norm=0.0,
            schedule="step",
            decay_epochs=(2,),
            decay_factor=0.3,
            warmup_steps=0,
            lr_groups=(("backbone", 0.1),),
        )
    )
    c.update(kw)
    return c


def _reference_adam(
    params, grads_seq, cfg, mults, steps_per_epoch, coupled=False, clip=0.0
):
    """Float64 PyTorch-style Adam(W) with per-group lr and step decay (plain loops)."""
    p = {k: np.asarray(v, np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, grads in enumerate(grads_seq):
        g = {k: np.asarray(val, np.float64) for k, val in grads.items()}
        if clip:
            norm = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
            if norm > clip:
                g = {k: x * clip / norm for k, x in g.items()}
        lr = cfg.lr * (
            cfg.decay_factor if t >= cfg.decay_epochs[0] * steps_per_epoch else 1.0
        )
        for k in p:
            gk = g[k] + (cfg.weight_decay * p[k] if coupled else 0.0)
            m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * gk
            v2[k] = cfg.b2 * v2[k] + (1 - cfg.b2) * gk * gk
            mhat = m[k] / (1 - cfg.b1 ** (t + 1))
            vhat = v2[k] / (1 - cfg.b2 ** (t + 1))
            upd = mhat / (np.sqrt(vhat) + cfg.eps)
            if not coupled:
                upd = upd + cfg.weight_decay * p[k]
            p[k] = p[k] - lr * mults[k] * upd
    return p


@pytest.mark.parametrize("coupled,clip", [(False, 0.0), (True, 0.5)])
def test_optimizer_matches_reference(coupled, clip):
    rng = np.random.default_rng(0)
    params = {"backbone": rng.normal(size=(3, 2)), "head": rng.normal(size=(4,))}
    grads_seq = [
        {k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(5)
    ]
    cfg = _optim_cfg(decoupled_weight_decay=not coupled, clip_norm=clip)
    tx = optim.make_optimizer(cfg, params, steps_per_epoch=1)
    p = jax.tree_util.tree_map(jnp.asarray, params)
    state = tx.init(p)
    update = jax.jit(tx.update)
    for grads in grads_seq:
        updates, state = update(jax.tree_util.tree_map(jnp.asarray, grads), state, p)
        p = jax.tree_util.tree_map(lambda a, b: a + b, p, updates)
    ref = _reference_adam(
        params,
        grads_seq,
        cfg,
        {"backbone": 0.1, "head": 1.0},
        1,
        coupled=coupled,
        clip=clip,
    )
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=2e-5, atol=1e-6)


def test_host_lr_factor_scales_updates():
    params = {"w": jnp.ones((3,))}
    cfg = _optim_cfg(weight_decay=0.0, lr_groups=())
    tx = optim.make_optimizer(cfg, params, steps_per_epoch=10)
    state = tx.init(params)
    assert optim.get_lr_factor(state) == 1.0
    grads = {"w": jnp.array([1.0, -2.0, 3.0])}
    full, _ = tx.update(grads, state, params)
    state = optim.set_lr_factor(state, 0.1)
    assert optim.get_lr_factor(state) == pytest.approx(0.1)
    scaled, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(
        np.asarray(scaled["w"]), 0.1 * np.asarray(full["w"]), rtol=1e-6
    )


def test_lr_schedule_step_and_warmup():
    fn = optim.learning_rate_fn(_optim_cfg(decay_epochs=(1, 3)), steps_per_epoch=10)
    assert float(fn(9)) == pytest.approx(0.1)
    assert float(fn(10)) == pytest.approx(0.03)
    assert float(fn(30)) == pytest.approx(0.009)
    warm = optim.learning_rate_fn(_optim_cfg(schedule="constant", warmup_steps=4), 10)
    assert float(warm(2)) == pytest.approx(0.05)
    assert float(warm(8)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.learning_rate_fn(_optim_cfg(schedule="bogus"), 10)


# ---------------------------------------------------------------------- pipeline


class _Range:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"x": np.int64(i), "v": np.full((2,), i, np.float32)}


def test_train_iterator_epochs_are_permutations_and_resume_exactly():
    n, batch = 12, 4
    it = pipeline.train_iterator(
        _Range(n), global_batch_size=batch, seed=3, num_threads=0
    )
    epochs = [
        np.concatenate([next(it)["x"] for _ in range(n // batch)]) for _ in range(2)
    ]
    for e in epochs:
        assert sorted(e.tolist()) == list(range(n))
    assert epochs[0].tolist() != epochs[1].tolist()  # reshuffled every epoch
    state = it.get_state()
    ahead = [next(it)["x"].tolist() for _ in range(3)]
    again = pipeline.train_iterator(
        _Range(n), global_batch_size=batch, seed=3, num_threads=0
    )
    again.set_state(state)
    assert [next(again)["x"].tolist() for _ in range(3)] == ahead
    with pytest.raises(ValueError, match="fewer than one batch"):
        pipeline.train_iterator(_Range(3), global_batch_size=4, seed=0)


def test_padded_epochs_cover_each_item_once_with_a_masked_short_batch():
    n, batch = 10, 4  # 3 steps per epoch: 4 + 4 + 2 valid (+ 2 padded)
    assert pipeline.steps_per_epoch(n, batch, pad_last_batch=True) == 3
    assert pipeline.steps_per_epoch(n, batch) == 2
    it = pipeline.train_iterator(
        _Range(n), global_batch_size=batch, seed=3, num_threads=0, pad_last_batch=True
    )
    epochs = []
    for _ in range(3):
        batches = [next(it) for _ in range(3)]
        valid = np.concatenate([b["valid"] for b in batches])
        assert valid.tolist() == [True] * n + [False] * 2  # the padding is at the end
        xs = np.concatenate([b["x"] for b in batches])
        assert sorted(xs[valid].tolist()) == list(range(n))  # each item exactly once
        assert xs[~valid].tolist() == [xs[0]] * 2  # copies of a real item
        epochs.append(xs[valid].tolist())
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch
    state = it.get_state()
    ahead = [next(it)["x"].tolist() for _ in range(4)]
    again = pipeline.train_iterator(
        _Range(n), global_batch_size=batch, seed=3, num_threads=0, pad_last_batch=True
    )
    again.set_state(state)
    assert [next(again)["x"].tolist() for _ in range(4)] == ahead
    # Fewer items than one batch: a single padded batch per epoch.
    small = pipeline.train_iterator(
        _Range(3), global_batch_size=4, seed=0, num_threads=0, pad_last_batch=True
    )
    assert next(small)["valid"].tolist() == [True, True, True, False]


def test_block_shards_are_disjoint_and_rebuild_the_global_batches_in_order():
    import grain

    ds = grain.MapDataset.range(40).seed(2).shuffle().repeat(None)
    glob = ds.batch(6, drop_remainder=True)
    shards = [
        pipeline.BlockShard(ds, block=2, index=p, count=3).batch(2, drop_remainder=True)
        for p in range(3)
    ]
    for step in range(8):  # crosses the epoch boundary (40 is not a multiple of 6)
        rebuilt = np.concatenate([shard[step] for shard in shards])
        np.testing.assert_array_equal(rebuilt, glob[step])
    with pytest.raises(ValueError, match="BlockShard"):
        pipeline.BlockShard(ds, block=2, index=3, count=3)


def test_eval_batches_pad_with_mask_and_cover_everything():
    batches = list(
        pipeline.eval_batches(_Range(10), global_batch_size=4, num_threads=0)
    )
    assert len(batches) == 3
    assert all(b["x"].shape == (4,) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert valid.sum() == 10 and not valid[10:].any()
    assert sorted(index[valid].tolist()) == list(range(10))


# ---------------------------------------------------------------------- sharding


def test_mesh_and_global_batch_on_8_devices():
    assert jax.device_count() == 8
    mesh = sharding.make_mesh((("data", -1),))
    assert mesh.shape == {"data": 8}
    mesh2 = sharding.make_mesh((("replica", 2), ("data", -1)))
    assert dict(mesh2.shape) == {"replica": 2, "data": 4}
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh((("data", 6),))
    local = {"a": np.arange(16, dtype=np.float32).reshape(8, 2), "b": np.arange(8)}
    glob = sharding.global_batch(local, mesh)
    assert glob["a"].shape == (8, 2)
    assert len(glob["a"].sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(sharding.to_host(glob["a"])), local["a"])
    with pytest.raises(ValueError, match=r"12 rows .* 8 devices .* divisible by 8"):
        sharding.global_batch({"a": np.zeros((12, 2))}, mesh)
    with pytest.raises(ValueError, match="leading batch axis"):
        sharding.global_batch({"a": np.float32(1.0)}, mesh)
    rules = (("kernel", ("data", None)),)
    tree = {"dense": {"kernel": jnp.zeros((8, 3)), "bias": jnp.zeros((3,))}}
    sh = sharding.param_shardings(tree, mesh, rules)
    assert sh["dense"]["kernel"].spec == jax.sharding.PartitionSpec("data", None)
    assert sh["dense"]["bias"].spec == jax.sharding.PartitionSpec()


# -------------------------------------------------------------------- checkpoint


def _toy_state(value: float = 1.0) -> TrainState:
    params = {"w": jnp.full((3,), value), "b": jnp.zeros(())}
    tx = optim.make_optimizer(_optim_cfg(), params, steps_per_epoch=5)
    return TrainState.create(
        params=params, tx=tx, rng=jax.random.PRNGKey(0), extra={"ema": jnp.ones((2, 2))}
    )


def test_checkpoint_round_trip_with_optimizer_and_iterator(tmp_path):
    state = _toy_state()
    grads = {"w": jnp.ones((3,)), "b": jnp.ones(())}
    state, _ = state.apply_gradients(grads)
    state = state.replace(opt_state=optim.set_lr_factor(state.opt_state, 0.5))
    it = pipeline.train_iterator(_Range(8), global_batch_size=2, seed=1, num_threads=0)
    next(it)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, state, data_iter=it, meta={"best_metric": 3.5})
    ckpt.wait()
    expected_next = next(it)["x"].tolist()

    fresh = _toy_state(value=7.0)
    it2 = pipeline.train_iterator(_Range(8), global_batch_size=2, seed=1, num_threads=0)
    restored, meta = ckpt.restore(ckpt.latest_step(), fresh, data_iter=it2)
    ckpt.close()
    assert meta == {"best_metric": 3.5}
    chex.assert_trees_all_close(restored.params, state.params)
    chex.assert_trees_all_close(restored.opt_state, state.opt_state)
    chex.assert_trees_all_equal_structs(restored.opt_state, state.opt_state)
    assert int(restored.step) == 1 and optim.get_lr_factor(restored.opt_state) == 0.5
    assert next(it2)["x"].tolist() == expected_next
    # A restored state keeps working with the optimiser (no tuple -> list damage).
    restored.apply_gradients(grads)


# -------------------------------------------------------------------------- loop


def _loop_step(state: TrainState, batch):
    loss = jnp.sum(state.params["w"] ** 2) * batch["scale"]
    grads = {"w": 2 * state.params["w"], "b": jnp.zeros(())}
    new, _ = state.apply_gradients(grads)
    return new, {"loss": loss}


@pytest.mark.parametrize("bad_step", [5, 2])
def test_loop_stops_on_nonfinite_loss_and_keeps_last_good_checkpoint(
    bad_step, tmp_path
):
    state = _toy_state()
    scales = iter([1.0] * (bad_step - 1) + [float("nan")] + [1.0] * 8)
    writer = MetricWriter(tmp_path, tensorboard=False)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    with pytest.raises(loop_lib.NonFiniteLossError) as err:
        loop_lib.train_loop(
            state,
            train_step=jax.jit(_loop_step),
            next_batch=lambda: {"scale": jnp.asarray(next(scales))},
            options=loop_lib.LoopOptions(
                total_steps=8,
                steps_per_epoch=4,
                log_every_steps=3,
                checkpoint_every_steps=3,
            ),
            outputs=loop_lib.LoopOutputs(writer=writer, checkpointer=ckpt),
        )
    assert err.value.step == bad_step
    # One line, a known outcome (exit status 2), not "unexpected".
    line, code = errors.describe(err.value)
    assert code == 2 and "unexpected" not in line and "\n" not in line
    assert f"training loss is nan at step {bad_step}" in line
    if bad_step == 5:
        assert f"last good checkpoint is step 3 ({tmp_path / 'ckpt'}/3)" in line
    else:
        assert "no checkpoint yet" in line and "None" not in line
    ckpt.wait()
    assert ckpt.latest_step() == (3 if bad_step == 5 else None)
    ckpt.close()
    writer.close()


def test_loop_best_on_dev_early_stopping_and_rerun(tmp_path):
    devs = iter([0.5, 0.7, 0.6, 0.65, 0.1])
    calls = []

    def evaluate(state):
        calls.append(int(state.step))
        return {"score": next(devs)}

    def run(state, meta=None):
        ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
        best = checkpoint.Checkpointer(tmp_path / "best", max_to_keep=1)
        result = loop_lib.train_loop(
            state,
            train_step=jax.jit(_loop_step),
            next_batch=lambda: {"scale": jnp.asarray(1.0)},
            options=loop_lib.LoopOptions(
                total_steps=20,
                steps_per_epoch=2,
                select_metric="score",
                select_mode="max",
                early_stop_patience=2,
                eval_every_steps=2,
            ),
            outputs=loop_lib.LoopOutputs(
                writer=MetricWriter(tmp_path, tensorboard=True),
                checkpointer=ckpt,
                best_checkpointer=best,
            ),
            evaluate=evaluate,
            meta=meta,
        )
        return result, ckpt, best

    result, ckpt, best = run(_toy_state())
    assert result.reason == "early_stopped"
    assert calls == [2, 4, 6, 8]
    assert result.meta["best_step"] == 4 and result.meta["best_metric"] == 0.7
    assert best.latest_step() == 4 and ckpt.latest_step() == 8
    restored, meta = ckpt.restore(8, _toy_state())
    ckpt.close()
    best.close()
    again, c2, b2 = run(restored, meta)  # a rerun must not train past the stop
    c2.close()
    b2.close()
    assert again.reason == "early_stopped" and int(again.state.step) == 8
    records = [
        json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert {r["split"] for r in records} == {"train", "dev"}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def _spread_step(state: TrainState, batch):
    new, _ = state.apply_gradients({"w": jnp.zeros((3,)), "b": jnp.zeros(())})
    return new, {"loss": jnp.asarray(1.0), "spread": batch["spread"]}


def _collapse_run(tmp_path, spreads, guard, devs=None, hook=None):
    values = iter(spreads)
    dev_values = iter(devs or [])
    seen = []
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    result = loop_lib.train_loop(
        _toy_state(),
        train_step=jax.jit(_spread_step),
        next_batch=lambda: {"spread": jnp.asarray(next(values), jnp.float32)},
        options=loop_lib.LoopOptions(
            total_steps=len(spreads),
            steps_per_epoch=5,
            log_every_steps=1,
            eval_every_steps=5 if devs else 0,
            select_metric="s" if devs else None,
            collapse=guard,
        ),
        outputs=loop_lib.LoopOutputs(
            writer=MetricWriter(tmp_path, tensorboard=False),
            checkpointer=ckpt,
            log=seen.append,
        ),
        evaluate=(lambda s: {"s": 1.0, "std": next(dev_values)}) if devs else None,
        on_epoch_start=hook,
    )
    ckpt.close()
    return result, seen


def test_collapse_guard_is_relative_to_the_runs_own_peak(tmp_path):
    guard = loop_lib.CollapseGuard(
        "spread", 1e-6, patience_steps=3, relative_floor=0.05, dev_metric="std"
    )
    # A run whose spread is tiny from the start (paper sizes at initialisation) is
    # not collapsed: the floor follows its own peak.
    result, seen = _collapse_run(tmp_path / "a", [1e-3] * 10, guard)
    assert not result.meta.get("collapse_warned_at") and not seen
    assert result.meta["collapse_peak"] == pytest.approx(1e-3)
    # The old absolute floor (0.01) would have flagged that run.
    absolute = loop_lib.CollapseGuard("spread", 0.01, patience_steps=3)
    result, seen = _collapse_run(tmp_path / "b", [1e-3] * 10, absolute)
    assert result.meta["collapse_warned_at"] == 3
    # A run that grows and then falls to 1% of its peak collapses; a dev evaluation
    # at that spread is degenerate, one at a healthy spread is not.
    spreads = [0.05, 0.1, 0.2, 0.2, 0.2, 0.002, 0.002, 0.002, 0.002, 0.002]
    result, seen = _collapse_run(tmp_path / "c", spreads, guard, devs=[0.15, 0.003])
    assert result.meta["collapse_warned_at"] == 8
    assert any("collapsed" in line for line in seen)
    assert result.meta["degenerate_steps"] == [10]
    assert result.meta["best_step"] == 5


def test_epoch_start_hook_runs_before_each_epoch(tmp_path):
    calls = []

    def hook(state, epoch):
        calls.append((int(state.step), epoch))
        return state

    guard = loop_lib.CollapseGuard("spread", 0.0, patience_steps=100)
    _collapse_run(tmp_path, [0.1] * 12, guard, hook=hook)
    assert calls == [(0, 0), (5, 1), (10, 2)]


def test_improved_and_progress_line():
    assert loop_lib.improved(1.0, None, "max")
    assert not loop_lib.improved(float("nan"), None, "max")
    assert loop_lib.improved(0.5, 1.0, "min") and not loop_lib.improved(1.0, 1.0, "min")
    progress = Progress(100, steps_per_epoch=10, enabled=False)
    progress.restart_clock(10)
    line = progress.update(20, {"loss": 1.5})
    assert line.startswith("step 20/100 (epoch 2.00/10)") and "loss 1.5" in line
    assert "step/s" in line and "ETA" in line
    assert format_duration(3725) == "1h02m" and format_duration(65) == "1m05s"
