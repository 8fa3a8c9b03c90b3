r"""CDDS training driver.

    python -m cdds_jax.train --config configs/flickr.py --workdir runs/f30k
    python -m cdds_jax.train --config configs/flickr.py:demo --workdir runs/demo

Flat, in sections: data -> model & state -> loss & step -> the run (the harness,
xmodal/run.py, resumes from ``workdir/checkpoints`` else starts from scratch; the
evaluator is cdds_jax/evaluation.py).
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cdds_jax import (
    dataset_statistics,
    encoders,
    kl_statistics,
    reading,
    retrieval,
    semantics,
)
from cdds_jax import model as model_lib
from cdds_jax.data import inputs
from cdds_jax.evaluation import Evaluator
from cdds_jax.model import CDDSModel
from cdds_jax.objective import compute_loss
from xmodal import loop as loop_lib
from xmodal import optim, run, sharding
from xmodal import step as step_lib
from xmodal.errors import UserError
from xmodal.state import TrainState, create_sharded
from xmodal.step import apply_update
from xmodal.writer import log

__all__ = [
    "Data",
    "build_model",
    "compute_loss",
    "create_train_state",
    "jit_train_step",
    "load_data",
    "make_init",
    "model_rngs",
    "save_vocab",
    "summarize_seeds",
    "train_and_evaluate",
    "train_seed",
    "train_step",
]


# =====================================================================================
# Data
# =====================================================================================


# The run's splits, sources and training transform: cdds_jax/data/inputs.py (stored
# features, or image files decoded and augmented in the input pipeline).
Data, load_data, save_vocab = inputs.Data, inputs.load_data, inputs.save_vocab


# =====================================================================================
# Model and state
# =====================================================================================


# The model of a config with the backbones its data resolved (``Data.backbones``;
# ablation switches): cdds_jax/encoders.py; the PRNG streams it draws are the model's
# own.
build_model, model_rngs = encoders.build_model, model_lib.model_rngs


def make_init(
    config: ml_collections.ConfigDict,
    model: CDDSModel,
    example: Mapping[str, np.ndarray],
    *,
    steps_per_epoch: int,
) -> Callable[..., TrainState]:
    """``init(pretrained=None) -> TrainState``: a fresh state; ``pretrained``
    (:func:`cdds_jax.encoders.pretrained_params`) replaces the random backbones."""
    images = jnp.zeros((1, *example["image"].shape[1:]), jnp.float32)
    text = inputs.text_input(example)
    text = jnp.zeros((1, *text.shape[1:]), text.dtype)
    text_mask = jnp.ones((1, example["text_mask"].shape[1]), bool)

    def init(weights: Mapping[str, Any] | None = None) -> TrainState:
        rng = jax.random.PRNGKey(config.seed)
        params_rng, noise_rng, state_rng = jax.random.split(rng, 3)
        variables = model.init(
            {"params": params_rng, **model_rngs(noise_rng)},
            images,
            text,
            text_mask,
            train=True,
        )
        params = variables["params"]
        if weights:
            params = encoders.merge_pretrained(params, dict(weights))
        tx = optim.make_optimizer(config.optim, params, steps_per_epoch=steps_per_epoch)
        return TrainState.create(
            params=params,
            tx=tx,
            rng=state_rng,
            extra=kl_statistics.init_from_config(config),
        )

    return init


def create_train_state(
    config: ml_collections.ConfigDict,
    model: CDDSModel,
    example: Mapping[str, np.ndarray],
    mesh: jax.sharding.Mesh,
    *,
    steps_per_epoch: int,
    pretrained: Mapping[str, Any] | None = None,
) -> tuple[TrainState, Any]:
    """A fresh state created directly with its shardings; returns (state, shardings).

    ``pretrained`` is an argument of the jitted init, not a constant in the program.
    """
    init = make_init(config, model, example, steps_per_epoch=steps_per_epoch)
    args = (dict(pretrained),) if pretrained else ()
    return create_sharded(init, mesh, config.sharding_rules, args=args)


# =====================================================================================
# Loss and train step
# =====================================================================================


# The loss of a global batch (the model applied, the S statistics, the scores and the
# objective's terms): cdds_jax/objective.py.


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: CDDSModel,
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW update on a global batch; returns the new state and device scalars:
    loss parts, score statistics (``score_std``, the spread the collapse guard
    watches; ``score_margin``, ``score_pos``, ``score_mean``), norms, lr, scalars."""
    rng = jax.random.fold_in(state.rng, state.step)
    epoch = state.step.astype(jnp.float32) / steps_per_epoch
    grad_fn = jax.value_and_grad(
        functools.partial(compute_loss, model=model, config=config, epoch=epoch),
        has_aux=True,
    )
    (loss, aux), grads = grad_fn(state.params, state.extra, batch, rng)
    new_state, update_metrics = apply_update(
        state,
        grads,
        optim_config=config.optim,
        steps_per_epoch=steps_per_epoch,
        extra=aux.pop("stats"),
    )
    del aux["weights"]  # for tests of the W sources; not a metric
    metrics = {
        "loss": loss,
        **aux,
        **update_metrics,
        "alpha_v": jnp.mean(state.params["alpha_v"]),
        "w_s": state.params["w_s"],
        "w_m": state.params["w_m"],
    }
    if "log_tau" in state.params:
        metrics["tau"] = jnp.exp(
            jnp.clip(state.params["log_tau"], *semantics.LOG_TAU_RANGE)
        )
    return new_state, metrics


def jit_train_step(
    config: ml_collections.ConfigDict,
    model: CDDSModel,
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
    *,
    steps_per_epoch: int,
) -> Any:
    """``train_step`` jitted as the driver (and the benchmark) runs it."""
    step = functools.partial(
        train_step, model=model, config=config, steps_per_epoch=steps_per_epoch
    )
    return step_lib.jit_train_step(step, state_shardings, mesh)


# =====================================================================================
# The run
# =====================================================================================


def summarize_seeds(
    per_seed: Sequence[Mapping[str, Any]], seeds: Sequence[int]
) -> dict[str, Any]:
    """The workdir results of several seeds: mean and std per protocol and metric."""
    summary, table = retrieval.summarize_runs([r["test"] for r in per_seed])
    log(f"\nCDDS test, {len(seeds)} seeds {list(seeds)}:\n{table}")
    return {
        "method": "CDDS",
        "seeds": list(seeds),
        "test_mean_std": summary,
        "per_seed": list(per_seed),
    }


def train_seed(
    config: ml_collections.ConfigDict,
    path: pathlib.Path,
    results_name: str,
    *,
    data: Data,
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """One CDDS run (one seed) in ``path``: the method's pieces for the harness."""
    assert data.train is not None and data.dev is not None and data.test is not None
    model = build_model(config, data.backbones, len(data.vocab) if data.vocab else 0)
    source = data.pair_source(data.train)
    example = data.example(data.train)
    evaluator = Evaluator(config, model, mesh, data)
    on_test = bool(config.eval.select_on_test)
    select_split = data.test if on_test else data.dev
    if on_test:
        log("WARNING: eval.select_on_test=True selects on the TEST split (LAPS)")
    c = config.collapse  # the guard watches the training score spread
    collapse = loop_lib.CollapseGuard(
        "score_std",
        float(c.floor),
        int(c.patience_steps),
        relative_floor=float(c.get("relative_floor", 0.0)),
        dev_metric="score_std",
    )
    method = run.Method(
        name="CDDS" if not config.get("seeds") else f"CDDS seed {config.seed}",
        train_source=source,
        # Fresh runs start from the checkpoint weights of the backbones; a resumed run
        # overwrites them with its own checkpoint.
        init_state=lambda spe: create_train_state(
            config,
            model,
            example,
            mesh,
            steps_per_epoch=spe,
            pretrained=encoders.pretrained_params(data.backbones),
        ),
        make_step=lambda shardings, spe: jit_train_step(
            config, model, shardings, mesh, steps_per_epoch=spe
        ),
        evaluate=lambda s: evaluator(s, select_split, ("full",))["full"],
        test=lambda s: evaluator(s, data.test, config.data.test_protocols),
        describe_dev=lambda d: (
            f"rsum {d['rsum']:.2f} | i2t R@1 {d['i2t_r1']:.2f} | "
            f"t2i R@1 {d['t2i_r1']:.2f}"
        ),
        format_test=retrieval.format_table,
        select_metric="rsum",
        results_fields={
            "method": "CDDS",
            "reading": reading.record(config),
            "selected_on": "test (LAPS protocol)" if on_test else "dev",
            "test_split": config.data.test_split,
        },
        curve_keys=("loss", "l_s", "l_m", "l_f", "l_x"),
        collapse=collapse,
        worker_count=int(config.data.worker_count),
        train_transform=data.train_transform(),
        # The dataset sources of W recompute S over the training pairs each epoch.
        on_epoch_start=dataset_statistics.make_refresh(
            config, model, data.pair_eval_source(data.train), mesh, log=log
        ),
    )
    return run.train(config, path, method, mesh, results_name=results_name)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    accept_config_changes: bool = False,
    break_lock: bool = False,
) -> dict[str, Any]:
    """Trains CDDS, selects on dev, evaluates the test protocols; returns the results.

    ``config.seeds`` (if set) trains one run per seed in ``workdir/seed_<s>/`` and
    reports mean ± std.
    """
    if config.eval.get("zeroshot", False):  # configs/*.py:clip_zeroshot
        raise UserError(
            "a zero-shot config evaluates pretrained CLIP without training: "
            "python -m cdds_jax.zeroshot (docs/cdds.md §3.5)"
        )
    workdir = pathlib.Path(workdir)
    # The reading's values are written into the config, so config.json records what
    # the run trains with (docs/cdds.md §10.18).
    config = reading.fill(config)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_sizes(config, mesh)
    data = load_data(config, workdir, splits=("train", "dev", "test"))
    assert data.train is not None
    log(
        f"CDDS | {len(jax.devices())} devices, mesh {dict(mesh.shape)} | train "
        f"{data.train.num_images} images / {data.train.num_captions} captions"
    )
    log(f"CDDS {reading.describe(config)}")
    return run.run_seeds(
        config,
        workdir,
        functools.partial(train_seed, data=data, mesh=mesh),
        summarize_seeds,
        always_subdirs=False,
        accept_config_changes=accept_config_changes,
        break_lock=break_lock,
        on_open=lambda wd: save_vocab(data, wd.path),
    )


if __name__ == "__main__":
    from xmodal import cli

    cli.run_train(train_and_evaluate, "cdds_jax.train")
