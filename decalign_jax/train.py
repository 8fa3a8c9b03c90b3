r"""DecAlign training driver.

    python -m decalign_jax.train --config configs/mosi.py --workdir runs/mosi \
        --config.data.path=data/MOSI/aligned_50.pkl
    python -m decalign_jax.train --config configs/mosi.py:demo --workdir runs/mosi_demo
    python -m decalign_jax.train --config configs/mosi.py --workdir runs/mosi \
        --config.seeds=1111,1112,1113       # mean and std over seeds

Flat, in sections: data -> model & state -> loss & step -> evaluation -> one seed ->
several seeds. Each seed trains in ``workdir/seed_<s>/`` (config.json, metrics.jsonl,
TensorBoard events, checkpoints/, best/, results.json), is selected on the valid split
by the dataset's metric (MOSI: valid MSE; MOSEI: Acc_2; SIMS: F1; IEMOCAP: WAF1), and
its best checkpoint is evaluated once on test. ``workdir/results.json`` gathers the
seeds (mean and std per metric). Rerunning the command resumes every unfinished seed.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from decalign_jax import data as data_lib
from decalign_jax import losses, metrics
from decalign_jax.model import DecAlignModel
from xmodal import config as config_lib
from xmodal import layers, optim, pipeline, sharding
from xmodal import loop as loop_lib
from xmodal.checkpoint import Checkpointer, restore_for_eval
from xmodal.files import cache_dir
from xmodal.inference import map_source
from xmodal.state import TrainState
from xmodal.writer import MetricWriter

__all__ = [
    "build_model",
    "compute_loss",
    "create_train_state",
    "evaluate_split",
    "jit_train_step",
    "load_data",
    "reference_baselines",
    "summarize_seeds",
    "train_and_evaluate",
    "train_one_seed",
    "train_step",
]


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


# =====================================================================================
# Data
# =====================================================================================


def data_path(config: ml_collections.ConfigDict) -> pathlib.Path:
    """``data.path``, or the synthetic pickle (written on first use) for demo configs."""
    syn = config.data.synthetic
    if syn.enabled:
        from decalign_jax.data import synthetic

        kwargs: dict[str, Any] = dict(
            seed=syn.seed,
            dataset=config.data.dataset,
            sizes={
                "train": syn.num_train,
                "valid": syn.num_valid,
                "test": syn.num_test,
            },
        )
        if config.data.dataset == "iemocap":
            kwargs = dict(
                seed=syn.seed, dataset="iemocap", num_classes=config.data.num_classes
            )
        return synthetic.ensure_demo_pickle(cache_dir() / "decalign", **kwargs)
    path = pathlib.Path(config.data.path).expanduser()
    if not (path.is_dir() if config.data.format == "arrayrecord" else path.is_file()):
        raise FileNotFoundError(
            f"config.data.path: {config.data.dataset} pickle {str(path)!r} not found. Put "
            "the MMSA file there or pass --config.data.path=... (README 'Real data'), or "
            "use a :demo config"
        )
    return path


def load_data(config: ml_collections.ConfigDict) -> dict[str, data_lib.MMSASplit]:
    """Reads, validates and sanitises the pickle; ``{train, valid, test}`` splits."""
    standardize = {"auto": None, "on": True, "off": False}[config.data.standardize]
    return data_lib.read_dataset(
        data_path(config),
        format=config.data.format,
        dataset=config.data.dataset,
        standardize=standardize,
        num_classes=config.data.num_classes if config.loss.task == "ce" else None,
    )


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
        out_dim=config.data.num_classes if config.loss.task == "ce" else 1,
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
    """A fresh state created directly with its shardings; returns (state, shardings)."""
    dummy = {
        k: np.zeros((1, *np.shape(v)[1:]), np.asarray(v).dtype)
        for k, v in example.items()
    }

    def init() -> TrainState:
        rng = jax.random.PRNGKey(seed)
        params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
        params = model.init(
            {"params": params_rng, "dropout": dropout_rng}, dummy, train=False
        )["params"]
        tx = optim.make_optimizer(config.optim, params, steps_per_epoch=steps_per_epoch)
        return TrainState.create(params=params, tx=tx, rng=state_rng)

    abstract = jax.eval_shape(init)
    shardings = sharding.param_shardings(abstract, mesh, config.sharding_rules)
    return jax.jit(init, out_shardings=shardings)(), shardings


# =====================================================================================
# Loss and train step
# =====================================================================================


def task_loss(
    output: jax.Array, label: jax.Array, config: ml_collections.ConfigDict, valid=None
) -> jax.Array:
    """MSE (regression; + SIMS's sign BCE) or cross-entropy (classification)."""
    if config.loss.task == "ce":
        return losses.cross_entropy_loss(output, label, valid=valid)
    loss = losses.mse_loss(output, label, valid=valid)
    if config.loss.binary_weight:
        loss = loss + config.loss.binary_weight * losses.sims_binary_loss(
            output, label, valid=valid
        )
    return loss


def compute_loss(
    params: Any,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    model: DecAlignModel,
    config: ml_collections.ConfigDict,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L = L_task + w_dec L_dec + alpha L_hete + beta L_homo + w_ct L_CT (spec 3)."""
    lc = config.loss
    out = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
    label = batch["label"]
    task = task_loss(out["output"], label, config)
    dec = losses.decoupling_loss(out["unique"], out["common"])
    zero = jnp.zeros((), jnp.float32)
    hete = ot = local = zero
    if lc.alpha:
        hete, aux = losses.hetero_loss(
            out["pooled_unique"],
            num_prototypes=lc.num_prototypes,
            em_iters=lc.em_iters,
            var_floor=lc.var_floor,
            ot_epsilon=lc.ot_epsilon,
            ot_iters=lc.ot_iters,
            cost_reduction=lc.cost_reduction,
            local_mahalanobis=lc.local_mahalanobis,
            log_domain=lc.ot_log_domain,
        )
        ot, local = aux["ot"], aux["local"]
    homo = losses.homo_loss(out["z"], bandwidth=lc.mmd_bandwidth) if lc.beta else zero
    ct = zero
    if lc.ct_weight:
        bins = (
            label.astype(jnp.int32)
            if lc.task == "ce"
            else losses.regression_bins(label)
        )
        ct = losses.supcon_loss(out["final_rep"], bins, temperature=lc.ct_temperature)
    total = losses.total_loss(
        task,
        dec,
        hete,
        homo,
        ct,
        dec_weight=lc.dec_weight,
        alpha=lc.alpha,
        beta=lc.beta,
        ct_weight=lc.ct_weight,
    )
    return total, {
        "task": task,
        "dec": dec,
        "hete": hete,
        "ot": ot,
        "local": local,
        "homo": homo,
        "ct": ct,
    }


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
    new_state, updates = state.apply_gradients(grads)
    metrics_out = {
        "loss": loss,
        **parts,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(state.params),
        "update_norm": optax.tree.norm(updates),
        "lr": config.optim.lr * optax.tree_utils.tree_get(state.opt_state, "lr_factor"),
    }
    return new_state, metrics_out


def jit_train_step(
    config: ml_collections.ConfigDict,
    model: DecAlignModel,
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Any:
    """``train_step`` jitted as the driver runs it: explicit in/out shardings (batch
    split over the mesh, metrics replicated) and the state donated.

    The benchmark times this same function, so its numbers are the driver's.
    """
    return jax.jit(
        functools.partial(train_step, model=model, config=config),
        in_shardings=(state_shardings, sharding.data_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


# =====================================================================================
# Evaluation
# =====================================================================================


def _predict(params, batch, *, model, config):
    out = model.apply({"params": params}, batch, train=False)
    if config.loss.task == "ce":
        per_sample = -jnp.take_along_axis(
            jax.nn.log_softmax(out["output"]),
            batch["label"][:, None].astype(jnp.int32),
            1,
        )[:, 0]
    else:
        per_sample = (out["output"] - batch["label"]) ** 2
    return {"output": out["output"], "loss": per_sample}


def split_metrics(
    dataset: str, output: np.ndarray, label: np.ndarray, *, num_classes: int
) -> dict[str, float]:
    """The dataset's metrics (fractions; see decalign_jax.metrics)."""
    if dataset == "sims":
        return metrics.sims_metrics(output, label)
    if dataset == "iemocap":
        return metrics.iemocap_metrics(output, label, num_classes=num_classes)
    return metrics.mosi_metrics(output, label)


class Evaluator:
    """A jitted prediction function + the dataset's metrics, for one config."""

    def __init__(
        self, config: ml_collections.ConfigDict, model: DecAlignModel, mesh
    ) -> None:
        self.config, self.mesh = config, mesh
        self.predict = jax.jit(
            functools.partial(_predict, model=model, config=config),
            out_shardings=sharding.data_sharding(mesh),
        )

    def __call__(
        self, state: TrainState, split: data_lib.MMSASplit
    ) -> dict[str, float]:
        out = map_source(
            functools.partial(self.predict, state.params),
            data_lib.MMSASource(split),
            mesh=self.mesh,
            batch_size=self.config.eval.batch_size,
            num_threads=self.config.data.num_threads,
        )
        result = split_metrics(
            self.config.data.dataset,
            out["output"],
            np.asarray(split.label),
            num_classes=self.config.data.num_classes,
        )
        result["loss"] = float(np.mean(out["loss"]))  # mean task loss (MOSI selection)
        return result


def evaluate_split(
    config: ml_collections.ConfigDict,
    model: DecAlignModel,
    mesh: jax.sharding.Mesh,
    state: TrainState,
    split: data_lib.MMSASplit,
) -> dict[str, float]:
    """Metrics of ``state`` on ``split``."""
    return Evaluator(config, model, mesh)(state, split)


# =====================================================================================
# One seed
# =====================================================================================


def train_one_seed(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    seed: int,
    splits: dict[str, data_lib.MMSASplit],
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """Trains one seed in ``workdir``, selects on valid, evaluates the best on test."""
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        config_lib.save_config(config, workdir)
    train_source = data_lib.MMSASource(splits["train"])
    batch_size = int(config.train.batch_size)
    steps_per_epoch = len(train_source) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"train split has {len(train_source)} samples < batch {batch_size}"
        )
    total_steps = (
        int(config.train.num_steps)
        if config.train.num_steps > 0
        else int(config.train.num_epochs * steps_per_epoch)
    )

    # ---------------------------------------------------------------- model & state
    model = build_model(config)
    example = {k: np.asarray(v)[None] for k, v in train_source[0].items()}
    state, state_shardings = create_train_state(
        config, model, example, mesh, seed=seed, steps_per_epoch=steps_per_epoch
    )

    # ---------------------------------------------------------------- input
    train_iter = pipeline.train_iterator(
        train_source,
        global_batch_size=batch_size,
        seed=seed,
        num_threads=config.data.num_threads,
    )

    # ---------------------------------------------------------------- checkpoints
    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=2)
    best_checkpointer = Checkpointer(workdir / "best", max_to_keep=1)
    meta: dict[str, Any] = {}
    latest = checkpointer.latest_step()
    if latest is not None:
        state, meta = checkpointer.restore(latest, state, data_iter=train_iter)
        _log(f"seed {seed}: resumed from {checkpointer.directory}/{latest}")

    # ---------------------------------------------------------------- step & eval
    step_fn = jit_train_step(config, model, state_shardings, mesh)
    evaluator = Evaluator(config, model, mesh)
    select, mode = config.eval.select_metric, config.eval.select_mode

    def valid_metrics(s: TrainState) -> dict[str, float]:
        result = evaluator(s, splits["valid"])
        _log(
            f"seed {seed} valid: "
            + " ".join(
                f"{k} {v:.4f}"
                for k, v in result.items()
                if k in (select, "MAE", "Corr")
            )
        )
        return result

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
            _log(f"seed {seed}: learning rate x{factor:g} (plateau)")
            s = s.replace(opt_state=optim.set_lr_factor(s.opt_state, factor))
        return s

    writer = MetricWriter(workdir)
    eval_every = int(config.train.eval_every_steps) or steps_per_epoch
    try:
        result = loop_lib.train_loop(
            state=state,
            train_step=step_fn,
            next_batch=lambda: sharding.global_batch(next(train_iter), mesh),
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            writer=writer,
            checkpointer=checkpointer,
            data_iter=train_iter,
            best_checkpointer=best_checkpointer,
            evaluate=valid_metrics,
            select_metric=select,
            select_mode=mode,
            early_stop_patience=config.train.early_stop_patience,
            on_eval=plateau,
            log_every_steps=config.train.log_every_steps,
            eval_every_steps=eval_every,
            checkpoint_every_steps=eval_every,
            meta=meta,
        )
    finally:
        checkpointer.close()
        best_checkpointer.close()
    if result.reason == "preempted":
        writer.close()
        return {"preempted_at_step": int(result.state.step)}

    best_state, best_meta, which = restore_for_eval(workdir, result.state)
    test = evaluator(best_state, splits["test"])
    writer.write(int(result.state.step), test, split="test")
    writer.close()
    out = {
        "seed": seed,
        "checkpoint": which,
        "selected_step": best_meta.get("best_step"),
        "selection": f"valid {select} ({mode})",
        "valid": best_meta.get("dev"),
        "test": test,
        "stopped": result.reason,
        "steps": int(result.state.step),
    }
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(out, indent=2))
    return out


# =====================================================================================
# Several seeds and the report
# =====================================================================================

# Display: accuracies / F1 in percent as in the paper, MAE / Corr / loss as is.
_PERCENT = ("Acc", "F1", "WA")


def summarize_seeds(
    per_seed: Sequence[Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std"}}`` over seeds (population std; display units)."""
    keys = per_seed[0].keys()
    out = {}
    for k in keys:
        scale = 100.0 if k.startswith(_PERCENT) else 1.0
        values = np.asarray([float(r[k]) * scale for r in per_seed])
        out[k] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out


def reference_baselines(
    dataset: str, splits: Mapping[str, data_lib.MMSASplit]
) -> dict[str, float]:
    """Trivial test-set references: predict the training mean (regression) or the
    training majority class (classification)."""
    train_label = np.asarray(splits["train"].label)
    test_label = np.asarray(splits["test"].label)
    if dataset == "iemocap":
        majority = np.bincount(train_label.astype(np.int64)).argmax()
        return {"majority_class_WAcc": float(np.mean(test_label == majority) * 100)}
    return {"train_mean_MAE": float(np.mean(np.abs(test_label - train_label.mean())))}


def format_table(
    dataset: str, summary: Mapping[str, Mapping[str, float]], n: int
) -> str:
    """A paper-shaped table: one row, mean ± std over ``n`` seeds."""
    if dataset == "iemocap":
        cols = ["WAcc", "WAF1"]
    elif dataset == "sims":
        cols = ["MAE", "Corr", "Acc_2", "Acc_3", "Acc_5", "F1"]
    else:
        cols = ["MAE", "Corr", "Acc_2", "F1", "Acc_7", "Acc_5", "Acc_2_has0", "F1_has0"]
    head = f"{'dataset':<10}" + "".join(f"{c:>16}" for c in cols)
    row = f"{dataset:<10}"
    for c in cols:
        s = summary[c]
        fmt = "{:.3f}" if s["mean"] < 10 and not c.startswith(_PERCENT) else "{:.2f}"
        cell = fmt.format(s["mean"]) + (f" ± {fmt.format(s['std'])}" if n > 1 else "")
        row += f"{cell:>16}"
    note = (
        f"({n} seed{'s' if n > 1 else ''}; Acc/F1 in %, Acc_2/F1 exclude zero labels)"
    )
    return "\n".join([head, "-" * len(head), row, note])


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> dict[str, Any]:
    """Trains every seed of ``config.seeds``; returns (and writes) results.json."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh)
    splits = load_data(config)
    sizes = {k: v.num_samples for k, v in splits.items()}
    _log(
        f"DecAlign | {config.data.dataset} | {len(jax.devices())} devices | splits {sizes} "
        f"| seq lens {splits['train'].seq_lens} dims {splits['train'].feature_dims}"
    )
    seeds = [int(s) for s in (config.seeds or (config.seed,))]
    per_seed = []
    for seed in seeds:
        seed_config = ml_collections.ConfigDict(config.to_dict())
        seed_config.seed = seed
        result = train_one_seed(
            seed_config, workdir / f"seed_{seed}", seed, splits, mesh
        )
        if "preempted_at_step" in result:
            _log(f"preempted (seed {seed}); rerun the command to resume")
            return result
        per_seed.append(result)
    summary = summarize_seeds([r["test"] for r in per_seed])
    results = {
        "method": "DecAlign",
        "dataset": config.data.dataset,
        "variant": splits["train"].meta.get("file_meta", {}).get("variant"),
        "seeds": seeds,
        "test_mean_std": summary,
        "baseline": reference_baselines(config.data.dataset, splits),
        "per_seed": per_seed,
    }
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
        _log(f"\nTest split, best-on-valid checkpoints ({config.eval.select_metric}):")
        _log(format_table(config.data.dataset, summary, len(seeds)))
        _log(
            "reference: "
            + ", ".join(f"{k} {v:.4g}" for k, v in results["baseline"].items())
        )
        _log(f"results written to {workdir / 'results.json'}")
    return results


if __name__ == "__main__":
    from xmodal import cli

    cli.run_train(train_and_evaluate)
