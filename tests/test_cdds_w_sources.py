"""Every source of W (``semantics.w_source``) in the jitted training step against
float64 NumPy references; the dataset pass of ``subset`` / ``precompute`` (its
memory bounded whatever the training set size, its hook in a real run); the readings
of the paper rows."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
from test_cdds_semantics import ref_hist_kl, ref_soft_threshold

from cdds_jax import dataset_statistics, evaluation, kl_statistics, reading, train
from cdds_jax.data import inputs
from xmodal import config as config_lib
from xmodal import sharding

MOMENTUM, WINDOW, FRACTION = 0.9, 2, 0.25


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _tiny(*overrides: str) -> config_lib.ml_collections.ConfigDict:
    c = config_lib.load_config("configs/flickr.py:tiny")
    config_lib.apply_overrides(c, list(overrides))
    return c


def _source_config(source: str):
    # No bottleneck noise: the decoupler is deterministic, so the test can recompute
    # the step's semantic tokens.
    return _tiny(
        "semantics.reading=paper",
        f"semantics.w_source={source}",
        f"semantics.ema_momentum={MOMENTUM}",
        f"semantics.window_steps={WINDOW}",
        f"semantics.subset_fraction={FRACTION}",
        "ablate.noise=False",
    )


class _Setup:
    """What every source's check shares: the tiny data, model, parameters, two
    training batches and the jitted model (one compile)."""

    def __init__(self, root):
        self.config = reading.fill(_source_config("batch"))
        self.data = train.load_data(self.config, root, splits=("train",))
        self.pairs = self.data.pair_source(self.data.train)
        b = int(self.config.train.batch_size)
        rows = lambda k: [self.pairs[i] for i in range(k * b, (k + 1) * b)]
        self.batches = [
            {k: np.stack([r[k] for r in rows(n)]) for k in self.pairs[0]}
            for n in (0, 1)
        ]
        self.model = train.build_model(self.config, self.data.backbones)
        self.mesh = sharding.make_mesh(self.config.mesh)
        example = {k: v[:1] for k, v in self.batches[0].items()}
        state, _ = train.create_train_state(
            self.config, self.model, example, self.mesh, steps_per_epoch=1
        )
        self.state = state
        self.apply = jax.jit(functools.partial(self.model.apply, train=False))

    def tokens(self, batch):
        img, txt, _ = self.apply(
            {"params": self.state.params},
            batch["image"],
            inputs.text_input(batch),
            batch["text_mask"],
        )
        as64 = lambda a: np.asarray(a, np.float64)
        return (as64(img["s"]), np.asarray(img["mask"])), (
            as64(txt["s"]),
            np.asarray(txt["mask"]),
        )

    def ref_s(self, batch):
        """float64 NumPy S^v, S^t of a batch's matched pairs."""
        (v, vm), (t, tm) = self.tokens(batch)
        bins = int(self.config.semantics.num_bins)
        return ref_hist_kl(v, vm, t, tm, bins), ref_hist_kl(t, tm, v, vm, bins)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield _Setup(tmp_path_factory.mktemp("w_sources"))


@pytest.mark.parametrize("source", kl_statistics.W_SOURCES)
def test_each_w_source_in_the_step_matches_numpy(setup, source):
    # The step's loss function (jitted), two batches: the W its scores use against
    # W from float64 NumPy S of the source's pairs (no bottleneck noise, so the
    # decoupler is deterministic and the test recomputes its tokens).
    config = reading.fill(_source_config(source))
    extra = jax.device_put(
        kl_statistics.init_from_config(config), sharding.replicated(setup.mesh)
    )
    hook = dataset_statistics.make_refresh(
        config,
        setup.model,
        setup.data.pair_eval_source(setup.data.train),
        setup.mesh,
        log=lambda _: None,
    )
    assert (hook is not None) == (source in kl_statistics.DATASET_SOURCES)
    if hook is not None:
        refreshed = hook(setup.state.replace(extra=extra), 0)
        extra = refreshed.extra
        assert int(extra["count"]) == 1
    loss_fn = jax.jit(
        functools.partial(
            train.compute_loss, model=setup.model, config=config, epoch=0.5
        )
    )
    rng = jax.random.PRNGKey(0)
    params = setup.state.params
    batches = [sharding.global_batch(x, setup.mesh) for x in setup.batches]
    _, aux1 = loss_fn(params, extra, batches[0], rng)
    _, aux2 = loss_fn(params, aux1["stats"], batches[1], rng)

    d = int(config.model.dim)
    if source == "identity":
        w_ref = (np.eye(d), np.eye(d))
    else:
        if source in kl_statistics.DATASET_SOURCES:
            idx = np.arange(len(setup.pairs))
            if source == "subset":
                idx = dataset_statistics.subset_indices(
                    len(idx), FRACTION, seed=int(config.seed), epoch=0
                )
                assert 0 < len(idx) < len(setup.pairs)
            chosen = {
                k: np.stack([setup.pairs[int(i)][k] for i in idx])
                for k in setup.pairs[0]
            }
            s_ref = setup.ref_s(chosen)
        else:
            s1, s2 = setup.ref_s(setup.batches[0]), setup.ref_s(setup.batches[1])
            s_ref = {
                "batch": s2,
                "ema": tuple(
                    MOMENTUM * a + (1 - MOMENTUM) * c
                    for a, c in zip(s1, s2, strict=True)
                ),
                "window": tuple((a + c) / 2 for a, c in zip(s1, s2, strict=True)),
            }[source]
        alphas = (np.asarray(params["alpha_v"]), np.asarray(params["alpha_t"]))
        w_ref = tuple(
            ref_soft_threshold(s, a) for s, a in zip(s_ref, alphas, strict=True)
        )
    for got, want in zip(aux2["weights"], w_ref, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)
    # W as the evaluation builds it: the same statistics, never a test pair's S.
    ev = evaluation.eval_weights(params, aux2["stats"], setup.model, config)
    if source in ("batch",):
        # The EMA of the batch matrices (the paper's reading forces this choice).
        ema = tuple(
            MOMENTUM * a + (1 - MOMENTUM) * c for a, c in zip(s1, s2, strict=True)
        )
        want_ev = tuple(
            ref_soft_threshold(s, a) for s, a in zip(ema, alphas, strict=True)
        )
    else:
        want_ev = w_ref
    for got, want in zip(ev, want_ev, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)


def _pass_peak(tmp_path, num_train: int) -> tuple[int, int]:
    """``(live bytes above the start, pairs)`` at the worst batch of one dataset pass
    over a training set of ``num_train`` images."""
    config = reading.fill(_source_config("precompute"))
    config.data.synthetic.num_train = num_train
    data = train.load_data(config, tmp_path / str(num_train), splits=("train",))
    model = train.build_model(config, data.backbones)
    mesh = sharding.make_mesh(config.mesh)
    state, _ = train.create_train_state(
        config, model, data.example(data.train), mesh, steps_per_epoch=1
    )
    sums = jax.jit(
        functools.partial(dataset_statistics.pair_sums, model=model, config=config)
    )

    def live() -> int:
        return sum(x.nbytes for x in jax.live_arrays())

    base, seen = live(), []
    s_v, s_t, pairs = dataset_statistics.correlation_over(
        state.params,
        data.pair_eval_source(data.train),
        sums_fn=sums,
        mesh=mesh,
        batch_size=int(config.eval.batch_size),
        on_batch=lambda _: seen.append(live() - base),
    )
    assert np.all(np.isfinite(np.asarray(s_v))) and np.all(np.asarray(s_t) > -1e-5)
    return max(seen), pairs


def test_dataset_pass_memory_does_not_grow_with_the_training_set(tmp_path):
    small, pairs_small = _pass_peak(tmp_path, 48)
    large, pairs_large = _pass_peak(tmp_path, 480)
    assert (pairs_small, pairs_large) == (240, 2400)
    # Ten times the pairs, the same live memory during the pass (a batch + sums).
    assert large <= small + 4096, (small, large)


def test_precompute_run_refreshes_each_epoch_and_names_the_reading(tmp_path, capsys):
    config = _tiny(
        "semantics.reading=paper",
        "semantics.w_source=precompute",
        "train.num_steps=16",  # 15 steps per epoch: epoch starts at 0 and 15
    )
    results = train.train_and_evaluate(config, tmp_path / "run")
    out = capsys.readouterr().out
    first = out.index("CDDS reading paper: W from S of all training pairs")
    assert first < out.index("step ")  # printed before training
    assert "overrides of the paper preset: w_source=precompute" in out
    assert out.count("S over 240 training pairs (precompute") == 2
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["reading"]["name"] == "paper"
    assert stored["reading"]["w_source"] == "precompute"
    assert results["reading"] == stored["reading"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["semantics"]["table_compare"] == "cosine"  # filled from the preset


@pytest.mark.parametrize("dataset", ["flickr", "coco"])
def test_every_paper_row_runs_the_paper_reading(dataset):
    from configs import cdds_base

    for row in cdds_base.PAPER_ROWS:
        c = config_lib.load_config(f"configs/{dataset}.py:{row}")
        r = reading.of(c)
        assert r.name == "paper" and r.overrides == (), row
        assert (r.w_source, r.table_compare, r.tau_mode) == ("batch", "cosine", "fixed")
        assert reading.describe(c).startswith("reading paper: W from each training")
    demo = config_lib.load_config(f"configs/{dataset}.py:demo")
    assert reading.of(demo).name == "project"
    assert "not the paper's reading" in reading.describe(demo)
