r"""CDDS training driver.

    python -m cdds_jax.train --config configs/flickr.py --workdir runs/f30k
    python -m cdds_jax.train --config configs/flickr.py:demo --workdir runs/demo

Flat, in sections: data -> model & state -> loss & step -> evaluation -> the run.
Resume order (automatic): a checkpoint in ``workdir/checkpoints`` -> scratch. The run
writes ``config.json``, ``vocab.json`` (bigru), ``metrics.jsonl``, TensorBoard events,
``checkpoints/``, ``best/`` and ``results.json``.
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

from cdds_jax import data as data_lib
from cdds_jax import encoders, kl_statistics, losses, retrieval, scores, semantics
from cdds_jax.data import inputs
from cdds_jax.model import CDDSModel
from xmodal import layers, optim, run, sharding
from xmodal import loop as loop_lib
from xmodal import step as step_lib
from xmodal.inference import map_source
from xmodal.state import TrainState, create_sharded
from xmodal.step import apply_update

__all__ = [
    "Data",
    "build_model",
    "compute_loss",
    "create_train_state",
    "jit_train_step",
    "load_data",
    "make_init",
    "model_rngs",
    "objective_options",
    "save_vocab",
    "score_options",
    "summarize_seeds",
    "train_and_evaluate",
    "train_seed",
    "train_step",
]


# =====================================================================================
# Data
# =====================================================================================


# The run's splits, sources and training transform come from cdds_jax/data/inputs.py
# (stored features, or image files decoded and augmented in the input pipeline);
# re-exported here because the driver is what tests and scripts reach for.
Data = inputs.Data
data_root = inputs.data_root
load_data = inputs.load_data
save_vocab = inputs.save_vocab


# =====================================================================================
# Model and state
# =====================================================================================


def build_model(config: ml_collections.ConfigDict, vocab_size: int = 0) -> CDDSModel:
    """The CDDS model of ``config`` (ablation switches applied; backbones built from
    their checkpoint folders' ``config.json``, docs/cdds.md §3.4)."""
    m = config.model
    sigma = m.sigma if config.ablate.noise else 0.0
    layers.warn_if_remat_ineffective(m.remat)
    image_kind, text_kind = encoders.encoder_kinds(config)
    found = encoders.load_backbones(config)
    mean, std = found.pixel_mean_std
    return CDDSModel(
        dim=m.dim,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        image_encoder=image_kind,
        text_encoder=text_kind,
        image_backbone=found.image_module,
        text_backbone=found.text_module,
        pixel_mean=mean,
        pixel_std=std,
        backbone_dropout=bool(m.backbone_dropout),
        vocab_size=vocab_size,
        word_dim=m.word_dim,
        decouple=config.ablate.decouple,
        num_samples=m.num_samples if sigma > 0 else 1,
        sigma=sigma,
        alpha_init=config.semantics.alpha_init,
        log_tau_init=(
            float(np.log(config.semantics.tau))
            if config.semantics.tau_mode == "learned"
            else None
        ),
        remat=m.remat,
        dtype=jnp.dtype(m.dtype),
    )


def model_rngs(rng: jax.Array) -> dict[str, jax.Array]:
    """The model's PRNG streams: bottleneck ``noise``, backbone ``dropout``."""
    return {"noise": rng, "dropout": jax.random.fold_in(rng, 1)}


def text_input(batch: Mapping[str, jax.Array]) -> jax.Array:
    """The caption input of a batch: stored features or word ids."""
    return batch["text"] if "text" in batch else batch["tokens"]


def init_extra(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """Method statistics kept in the state: EMAs of S^v and S^t, their count and (for
    ``semantics.w_source="window"``) the window of the last batches' matrices."""
    sc = config.semantics
    window = int(sc.window_steps) if sc.w_source == "window" else 0
    return kl_statistics.init_statistics(config.model.dim, window_steps=window)


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
    text = text_input(example)
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
            params=params, tx=tx, rng=state_rng, extra=init_extra(config)
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


def score_options(config: ml_collections.ConfigDict) -> scores.ScoreOptions:
    """The score function of ``config``, shared by the train step and the evaluation."""
    sc = config.semantics
    return scores.ScoreOptions(
        sampling=bool(config.ablate.sampling),
        num_levels=int(sc.num_levels),
        table_compare=sc.table_compare,
        table_scale=bool(sc.table_scale),
        tau_mode=sc.tau_mode,
        tau=float(sc.tau),
    ).validate()


def objective_options(config: ml_collections.ConfigDict) -> losses.ObjectiveOptions:
    """The loss weights and Table 3 switches of ``config``."""
    lc, ab = config.loss, config.ablate
    return losses.ObjectiveOptions(
        contrastive=lc.contrastive,
        margin=float(lc.margin),
        temperature=float(lc.temperature),
        max_violation_after_epochs=float(lc.max_violation_after_epochs),
        ramp_epochs=float(lc.ramp_epochs),
        a_s=float(lc.a_s),
        a_m=float(lc.a_m),
        a_f=float(lc.a_f),
        decouple=bool(ab.decouple),
        modality=bool(ab.modality),
        integrity=bool(ab.integrity),
        sampling=bool(ab.sampling),
    )


def _weights(
    scalars: Mapping[str, jax.Array],
    s_v: jax.Array,
    s_t: jax.Array,
    options: scores.ScoreOptions,
) -> tuple[jax.Array, jax.Array] | None:
    """(W^v, W^t) from S and the learned scalars; None without sampling."""
    if not options.sampling:
        return None
    return scores.correlation_weights(
        s_v,
        s_t,
        scalars["alpha_v"],
        scalars["alpha_t"],
        options=options,
        log_tau=scalars.get("log_tau"),
    )


def compute_loss(
    params: Any,
    extra: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    model: CDDSModel,
    config: ml_collections.ConfigDict,
    epoch: jax.Array,
) -> tuple[jax.Array, dict[str, Any]]:
    """The CDDS objective on a global batch of B (image, caption) pairs.

    ``extra`` holds the S statistics of the state (``init_extra``); ``epoch`` is the
    fractional epoch (step / steps_per_epoch), for the L_s ramp and the hinge switch.
    Returns ``(loss, aux)``: aux holds the loss parts, the training score statistics
    and the updated S statistics (``"stats"``, for the state).
    """
    sc = config.semantics
    options = score_options(config)
    img, txt, scalars = model.apply(
        {"params": params},
        batch["image"],
        text_input(batch),
        batch["text_mask"],
        train=True,
        rngs=model_rngs(rng),
    )
    if options.sampling:
        kl = functools.partial(
            semantics.kl_correlation,
            estimator=sc.kl,
            num_bins=sc.num_bins,
            chunk_size=int(sc.kl_chunk_size) or None,
        )
        s_v = kl(img["s"], img["mask"], txt["s"], txt["mask"])
        s_t = kl(txt["s"], txt["mask"], img["s"], img["mask"])
    else:
        d = img["s"].shape[-1]
        s_v = s_t = jnp.zeros((d, d), jnp.float32)
    stats = kl_statistics.update_statistics(extra, s_v, s_t, momentum=sc.ema_momentum)
    w_s_v, w_s_t = kl_statistics.training_correlation(
        stats, s_v, s_t, source=sc.w_source
    )
    weights = _weights(scalars, w_s_v, w_s_t, options)
    emb = scores.retrieval_embeddings(
        img["s"], img["mask"], txt["s"], txt["mask"], weights, options=options
    )
    score = scores.score_gemm(emb.image, emb.caption)
    tables = (
        None if weights is None else losses.SampledTables(emb.q_v, emb.q_t, *weights)
    )
    obj = losses.objective(
        score,
        batch["image_id"],
        img,
        txt,
        w_s=scalars["w_s"],
        w_m=scalars["w_m"],
        epoch=epoch,
        options=objective_options(config),
        tables=tables,
    )
    aux = {
        "l_s": obj.l_s,
        "l_m": obj.l_m,
        "l_f": obj.l_f,
        "l_x": obj.l_x,
        **scores.score_statistics(score),
        "stats": stats,
    }
    return obj.total, aux


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: CDDSModel,
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW update on a global batch; returns the new state and device scalars.

    Metrics: the loss and its parts; ``score_std`` (std of the B x B score matrix: the
    collapse guard compares it with ``collapse.floor``), ``score_margin`` (mean
    positive minus mean of all scores), ``score_pos``, ``score_mean``; norms, lr and the
    learned scalars (``tau`` when learned).
    """
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
# Evaluation
# =====================================================================================


def _eval_weights(
    params: Any,
    extra: Mapping[str, jax.Array],
    model: CDDSModel,
    config: ml_collections.ConfigDict,
) -> tuple[jax.Array, jax.Array] | None:
    """(W^v, W^t) at evaluation: from the stored S statistics, never from test pairs."""
    scalars = model.apply({"params": params}, method="scalars")
    s_v, s_t = kl_statistics.evaluation_correlation(
        extra, source=config.semantics.w_source
    )
    return _weights(scalars, s_v, s_t, score_options(config))


def _embed_images(params, extra, batch, *, model, config):
    img = model.apply(
        {"params": params}, batch["image"], train=False, method="encode_image"
    )
    weights = _eval_weights(params, extra, model, config)
    return scores.retrieval_embeddings(
        img["s"], img["mask"], None, None, weights, options=score_options(config)
    ).image


def _embed_captions(params, extra, batch, *, model, config):
    txt = model.apply(
        {"params": params},
        text_input(batch),
        batch["text_mask"],
        train=False,
        method="encode_text",
    )
    weights = _eval_weights(params, extra, model, config)
    return scores.retrieval_embeddings(
        None, None, txt["s"], txt["mask"], weights, options=score_options(config)
    ).caption


class Evaluator:
    """Jitted embedding functions + the retrieval protocols, for one config."""

    def __init__(
        self, config: ml_collections.ConfigDict, model: CDDSModel, mesh, data: Data
    ):
        self.config, self.mesh, self.data = config, mesh, data
        kw = dict(model=model, config=config)
        out = sharding.data_sharding(mesh)
        self.embed_images = jax.jit(
            functools.partial(_embed_images, **kw), out_shardings=out
        )
        self.embed_captions = jax.jit(
            functools.partial(_embed_captions, **kw), out_shardings=out
        )

    def __call__(
        self,
        state: TrainState,
        split: data_lib.RetrievalSplit,
        protocols: Sequence[str],
    ) -> dict[str, dict[str, float]]:
        ec = self.config.eval
        threads = self.config.data.num_threads
        kw = dict(mesh=self.mesh, batch_size=ec.batch_size, num_threads=threads)
        img = map_source(
            functools.partial(self.embed_images, state.params, state.extra),
            self.data.image_source(split),
            **kw,
        )
        cap = map_source(
            functools.partial(self.embed_captions, state.params, state.extra),
            self.data.caption_source(split),
            **kw,
        )
        # Every protocol also reports score_std / tie_fraction / degenerate: the loop
        # refuses to select a checkpoint whose dev scores are degenerate.
        return retrieval.evaluate_protocols(
            img,
            cap,
            np.asarray(split.caption_to_image),
            protocols=tuple(protocols),
            block_size=ec.block_size,
            collapse_floor=float(self.config.collapse.floor),
        )


# =====================================================================================
# The run
# =====================================================================================


def summarize_seeds(
    per_seed: Sequence[Mapping[str, Any]], seeds: Sequence[int]
) -> dict[str, Any]:
    """The workdir results of several seeds: mean and std per protocol and metric."""
    protocols = per_seed[0]["test"].keys()
    summary = {p: run.mean_std([r["test"][p] for r in per_seed]) for p in protocols}
    rows = {}
    for p, metrics in summary.items():
        rows[f"{p} mean"] = {k: v["mean"] for k, v in metrics.items()}
        rows[f"{p} std"] = {k: v["std"] for k, v in metrics.items()}
    run.log(f"\nCDDS test, {len(seeds)} seeds {list(seeds)}:")
    run.log(retrieval.format_table(rows))
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
    model = build_model(config, len(data.vocab) if data.vocab else 0)
    source = data.pair_source(data.train)
    example = data.example(data.train)
    evaluator = Evaluator(config, model, mesh, data)
    on_test = bool(config.eval.select_on_test)
    select_split = data.test if on_test else data.dev
    if on_test:
        run.log("WARNING: eval.select_on_test=True selects on the TEST split (LAPS)")
    collapse = None
    if "collapse" in config:
        collapse = loop_lib.CollapseGuard(
            "score_std",
            float(config.collapse.floor),
            int(config.collapse.patience_steps),
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
            pretrained=encoders.pretrained_params(encoders.load_backbones(config)),
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
            "selected_on": "test (LAPS protocol)" if on_test else "dev",
            "test_split": config.data.test_split,
        },
        curve_keys=("loss", "l_s", "l_m", "l_f", "l_x"),
        collapse=collapse,
        worker_count=int(config.data.worker_count),
        train_transform=data.train_transform(),
    )
    return run.train(config, path, method, mesh, results_name=results_name)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    accept_config_changes: bool = False,
) -> dict[str, Any]:
    """Trains CDDS, selects on dev, evaluates the test protocols; returns the results.

    ``config.seeds`` (if set) trains one run per seed in ``workdir/seed_<s>/`` and
    reports mean ± std.
    """
    workdir = pathlib.Path(workdir)
    mesh = sharding.make_mesh(config.mesh)
    run.check_batch_sizes(config, mesh)
    data = load_data(config, workdir, splits=("train", "dev", "test"))
    assert data.train is not None
    run.log(
        f"CDDS | {len(jax.devices())} devices, mesh {dict(mesh.shape)} | train "
        f"{data.train.num_images} images / {data.train.num_captions} captions"
    )
    return run.run_seeds(
        config,
        workdir,
        functools.partial(train_seed, data=data, mesh=mesh),
        summarize_seeds,
        always_subdirs=False,
        accept_config_changes=accept_config_changes,
        on_open=lambda wd: save_vocab(data, wd.path),
    )


if __name__ == "__main__":
    from xmodal import cli

    cli.run_train(train_and_evaluate, "cdds_jax.train")
