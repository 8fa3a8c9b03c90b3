r"""DecAlign training driver.

    python -m decalign_jax.train --config configs/mosi.py --workdir runs/mosi \
        --config.data.path=data/MOSI/aligned_50.pkl
    python -m decalign_jax.train --config configs/mosi.py:demo --workdir runs/mosi_demo
    python -m decalign_jax.train --config configs/mosi.py --workdir runs/mosi \
        --config.seeds=1111,1112,1113       # mean and std over seeds

Flat, in sections: data -> model & state -> train step -> the run. The data is
:mod:`decalign_jax.data.inputs`, the text encoder (stored features or BERT)
:mod:`decalign_jax.encoders`, the objective (all five loss terms)
:mod:`decalign_jax.objective`, evaluation and the selection loss
:mod:`decalign_jax.evaluation`: the same roles, under the same names, as CDDS's.
Each seed trains in ``workdir/seed_<s>/`` (config.json, metrics.jsonl, TensorBoard
events, curves.png, checkpoints/, best/, results.json), is selected on the valid split
by the dataset's metric (``decalign_jax.metrics.SELECTION``), and its best checkpoint
is evaluated once on test. ``workdir/results.json`` gathers the seeds (mean and std
per metric). The run itself (resume, lock, checkpoints, the loop) is
:mod:`xmodal.run`'s; rerunning the command resumes every unfinished seed.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from decalign_jax import data as data_lib
from decalign_jax import encoders, metrics
from decalign_jax.data import inputs
from decalign_jax.evaluation import Evaluator, format_run
from decalign_jax.model import DecAlignModel
from decalign_jax.objective import compute_loss, is_classification
from xmodal import backbones, layers, optim, run, sharding
from xmodal import step as step_lib
from xmodal.state import TrainState, create_sharded
from xmodal.step import apply_update
from xmodal.writer import log, mean_std

__all__ = [
    "build_model",
    "compute_loss",
    "create_train_state",
    "jit_train_step",
    "load_data",
    "summarize_seeds",
    "train_and_evaluate",
    "train_seed",
    "train_step",
]


# =====================================================================================
# Data
# =====================================================================================


# The run's splits (the pickle, checked; the demo's written on first use) and the
# source of each: decalign_jax/data/inputs.py.
load_data = inputs.load_data


# =====================================================================================
# Model and state
# =====================================================================================


def build_model(config: ml_collections.ConfigDict) -> DecAlignModel:
    m = config.model
    layers.warn_if_remat_ineffective(m.remat)
    return DecAlignModel(
        dim=m.dim,
        num_heads=m.num_heads,
        num_layers=m.num_layers,
        kernel_sizes=tuple(m.kernel_sizes),
        pde_dim=m.pde_dim,
        out_dim=config.data.num_classes if is_classification(config) else 1,
        attn_dropout=tuple(m.attn_dropout),
        relu_dropout=m.relu_dropout,
        res_dropout=m.res_dropout,
        embed_dropout=m.embed_dropout,
        output_dropout=m.output_dropout,
        text_dropout=m.text_dropout,
        positional=m.positional,
        padding_mask=m.padding_mask,
        dropout_impl=m.dropout_impl,
        remat=m.remat,
        dtype=jnp.dtype(m.dtype),
        bert=encoders.build_bert(config),  # None: the stored text features
    )


def create_train_state(
    config: ml_collections.ConfigDict,
    model: DecAlignModel,
    example: Mapping[str, np.ndarray],
    mesh: jax.sharding.Mesh,
    *,
    seed: int,
    steps_per_epoch: int,
) -> tuple[TrainState, Any]:
    """A fresh sharded state (BERT from its checkpoint); returns (state, shardings)."""
    dummy = {
        k: np.zeros((1, *np.shape(v)[1:]), np.asarray(v).dtype)
        for k, v in example.items()
    }

    def init(pretrained: Mapping[str, Any]) -> TrainState:
        rng = jax.random.PRNGKey(seed)
        params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
        params = model.init(
            {"params": params_rng, "dropout": dropout_rng}, dummy, train=False
        )["params"]
        params = backbones.merge_pretrained(params, pretrained)
        tx = encoders.make_optimizer(config, params, steps_per_epoch=steps_per_epoch)
        return TrainState.create(params=params, tx=tx, rng=state_rng)

    args = (encoders.pretrained_params(config),)  # an argument, not a constant
    return create_sharded(init, mesh, config.sharding_rules, args=args)


# =====================================================================================
# Train step (the objective: decalign_jax.objective)
# =====================================================================================


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: DecAlignModel,
    config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One Adam update on a global batch; returns the new state and device scalars."""
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(
        functools.partial(compute_loss, model=model, config=config), has_aux=True
    )
    (loss, parts), grads = grad_fn(state.params, batch, rng)
    new_state, update_metrics = apply_update(
        state, grads, optim_config=config.optim, steps_per_epoch=1
    )
    metrics_out = {"loss": loss, **parts, **update_metrics}
    return new_state, metrics_out


def jit_train_step(
    config: ml_collections.ConfigDict,
    model: DecAlignModel,
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Any:
    """``train_step`` jitted as the driver (and the benchmark) runs it."""
    step = functools.partial(train_step, model=model, config=config)
    return step_lib.jit_train_step(step, state_shardings, mesh)


# =====================================================================================
# The run
# =====================================================================================


def summarize_seeds(
    per_seed: Sequence[Mapping[str, Any]], seeds: Sequence[int], *, config, splits
) -> dict[str, Any]:
    """The workdir results: mean ± std per metric over seeds (display units)."""
    dataset = config.data.dataset
    summary = mean_std([r["test"] for r in per_seed], metrics.display_scale)
    baseline = metrics.report(dataset).baseline(
        np.asarray(splits["train"].label), np.asarray(splits["test"].label)
    )
    log(f"\nTest split, best-on-valid checkpoints ({config.eval.select_metric}):")
    log(metrics.format_table(dataset, summary, len(seeds)))
    log("reference: " + ", ".join(f"{k} {v:.4g}" for k, v in baseline.items()))
    return {
        "method": "DecAlign",
        "dataset": dataset,
        "variant": splits["train"].meta.get("file_meta", {}).get("variant"),
        "seeds": list(seeds),
        "test_mean_std": summary,
        "baseline": baseline,
        "per_seed": list(per_seed),
    }


def train_seed(
    config: ml_collections.ConfigDict,
    path: pathlib.Path,
    results_name: str,
    *,
    splits: dict[str, data_lib.MMSASplit],
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """One DecAlign seed in ``path``: the method's pieces for the harness."""
    seed = int(config.seed)
    model = build_model(config)
    source = inputs.make_source(splits["train"], config)
    example = {k: np.asarray(v)[None] for k, v in source[0].items()}
    evaluator = Evaluator(config, model, mesh)
    select, mode = config.eval.select_metric, config.eval.select_mode
    dataset = config.data.dataset

    def plateau(s: TrainState, dev: Mapping[str, float], loop_meta: dict[str, Any]):
        # ReduceLROnPlateau on the selection metric, once per evaluation (epoch).
        loop_meta["plateau"] = optim.plateau_update(
            loop_meta.get("plateau"),
            float(dev[select]),
            mode=mode,
            patience=config.train.plateau_patience,
            factor=config.train.plateau_factor,
        )
        factor = loop_meta["plateau"]["lr_factor"]
        if factor != optim.get_lr_factor(s.opt_state):
            log(f"seed {seed}: learning rate x{factor:g} (plateau)")
            s = s.replace(opt_state=optim.set_lr_factor(s.opt_state, factor))
        return s

    method = run.Method(
        name=f"DecAlign seed {seed}",
        train_source=source,
        init_state=lambda spe: create_train_state(
            config, model, example, mesh, seed=seed, steps_per_epoch=spe
        ),
        make_step=lambda shardings, spe: jit_train_step(config, model, shardings, mesh),
        evaluate=lambda s: evaluator(s, splits["valid"]),
        test=lambda s: evaluator(s, splits["test"]),
        describe_dev=lambda d: " ".join(
            f"{k} {v:.4f}" for k, v in d.items() if k in (select, "MAE", "Corr")
        ),
        format_test=functools.partial(format_run, dataset),
        select_metric=select,
        select_mode=mode,
        results_fields={"seed": seed},
        pad_last_batch=config.train.epoch_mode == "official",
        on_eval=plateau,
        curve_keys=("loss", "task", "dec", "hete", "homo", "ct"),
    )
    return run.train(config, path, method, mesh, results_name=results_name)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    accept_config_changes: bool = False,
    break_lock: bool = False,
) -> dict[str, Any]:
    """Trains every seed of ``config.seeds``; returns (and writes) results.json."""
    workdir = pathlib.Path(workdir)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_sizes(config, mesh)
    if config.train.epoch_mode not in ("official", "continuous"):
        raise ValueError(
            "config train.epoch_mode: expected 'official' or 'continuous', got "
            f"{config.train.epoch_mode!r}"
        )
    splits = load_data(config)
    sizes = {k: v.num_samples for k, v in splits.items()}
    log(
        f"DecAlign | {config.data.dataset} | {len(jax.devices())} devices | splits "
        f"{sizes} | seq lens {splits['train'].seq_lens} dims "
        f"{splits['train'].feature_dims}"
    )
    return run.run_seeds(
        config,
        workdir,
        functools.partial(train_seed, splits=splits, mesh=mesh),
        functools.partial(summarize_seeds, config=config, splits=splits),
        always_subdirs=True,
        accept_config_changes=accept_config_changes,
        break_lock=break_lock,
    )


if __name__ == "__main__":
    from xmodal import cli

    cli.run_train(train_and_evaluate, "decalign_jax.train")
