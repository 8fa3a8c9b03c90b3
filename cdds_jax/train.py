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

from cdds_jax import data as data_lib
from cdds_jax import losses, retrieval, semantics
from cdds_jax.model import CDDSModel
from xmodal import config as config_lib
from xmodal import layers, optim, pipeline, sharding
from xmodal import loop as loop_lib
from xmodal.checkpoint import Checkpointer, restore_for_eval
from xmodal.files import cache_dir
from xmodal.inference import map_source
from xmodal.state import TrainState
from xmodal.writer import MetricWriter

__all__ = [
    "Data",
    "build_model",
    "compute_loss",
    "create_train_state",
    "evaluate_split",
    "jit_train_step",
    "load_data",
    "train_and_evaluate",
    "train_step",
]


# =====================================================================================
# Data
# =====================================================================================


class Data:
    """The splits of a run, its text mode and (bigru) vocabulary."""

    def __init__(
        self,
        train: data_lib.RetrievalSplit | None,
        dev: data_lib.RetrievalSplit | None,
        test: data_lib.RetrievalSplit | None,
        text_mode: str,
        vocab: data_lib.Vocabulary | None,
        max_words: int | None,
    ) -> None:
        self.train, self.dev, self.test = train, dev, test
        self.text_mode, self.vocab, self.max_words = text_mode, vocab, max_words

    def pair_source(self, split: data_lib.RetrievalSplit) -> data_lib.PairSource:
        return data_lib.PairSource(
            split, text=self.text_mode, vocab=self.vocab, max_words=self.max_words
        )

    def caption_source(self, split: data_lib.RetrievalSplit) -> data_lib.CaptionSource:
        return data_lib.CaptionSource(
            split, text=self.text_mode, vocab=self.vocab, max_words=self.max_words
        )


def data_root(config: ml_collections.ConfigDict) -> pathlib.Path:
    """``data.root``, or the synthetic store (written on first use) for demo configs."""
    syn = config.data.synthetic
    if syn.enabled:
        from cdds_jax.data import synthetic

        return synthetic.ensure_demo_store(
            cache_dir() / "cdds",
            seed=syn.seed,
            num_images={
                "train": syn.num_train,
                "dev": syn.num_dev,
                "test": syn.num_test,
            },
            num_tokens=syn.num_tokens,
            image_dim=syn.image_dim,
            text_dim=syn.text_dim,
            max_words=syn.max_words,
            num_concepts=syn.num_concepts,
            concepts_per_image=syn.concepts_per_image,
            noise=syn.noise,
            colour_scale=syn.colour_scale,
            syntax_scale=syn.syntax_scale,
        )
    root = pathlib.Path(config.data.root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"config.data.root: data folder {str(root)!r} not found. Put the "
            f"{config.data.format!r} files there or pass --config.data.root=... (README "
            "'Real data'), or use a :demo config"
        )
    return root


def load_data(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, *, splits: Sequence[str]
) -> Data:
    """Opens the requested splits (``train``/``dev``/``test``) and the vocabulary.

    The bigru vocabulary is built from the training captions once and saved as
    ``workdir/vocab.json``; later runs (resume, evaluate) load that file.
    """
    root = data_root(config)
    opened: dict[str, data_lib.RetrievalSplit | None] = {}
    for role in ("train", "dev", "test"):
        name = config.data[f"{role}_split"]
        opened[role] = (
            data_lib.read_split(config.data.format, root, name)
            if role in splits
            else None
        )
    text_mode = "tokens" if config.model.text_encoder == "bigru" else "features"
    vocab = None
    max_words: int | None = None
    if text_mode == "tokens":
        max_words = int(config.data.max_words)
        vocab_path = workdir / "vocab.json"
        if vocab_path.exists():
            vocab = data_lib.Vocabulary.load(vocab_path)
        else:
            train = opened["train"] or data_lib.read_split(
                config.data.format, root, config.data.train_split
            )
            if train.captions is None:
                raise ValueError(
                    f"{train.root}: model.text_encoder='bigru' needs caption text "
                    "(captions.txt / {split}_caps.txt) in the training split"
                )
            vocab = data_lib.Vocabulary.build(
                train.captions, min_count=int(config.data.vocab_min_count)
            )
            if jax.process_index() == 0:
                workdir.mkdir(parents=True, exist_ok=True)
                # Written aside and renamed: the other processes of a multi-host
                # job may test for the file right now and must never read it half
                # written (they build the same table themselves when it is absent).
                partial = vocab_path.with_name(f".{vocab_path.name}.partial")
                vocab.save(partial)
                os.replace(partial, vocab_path)
    return Data(
        opened["train"], opened["dev"], opened["test"], text_mode, vocab, max_words
    )


# =====================================================================================
# Model and state
# =====================================================================================


def build_model(config: ml_collections.ConfigDict, vocab_size: int = 0) -> CDDSModel:
    """The CDDS model of ``config`` (ablation switches applied)."""
    m = config.model
    sigma = m.sigma if config.ablate.noise else 0.0
    layers.warn_if_remat_ineffective(m.remat)
    return CDDSModel(
        dim=m.dim,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        text_encoder=m.text_encoder,
        vocab_size=vocab_size,
        word_dim=m.word_dim,
        decouple=config.ablate.decouple,
        num_samples=m.num_samples if sigma > 0 else 1,
        sigma=sigma,
        alpha_init=config.semantics.alpha_init,
        remat=m.remat,
        dtype=jnp.dtype(m.dtype),
    )


def text_input(batch: Mapping[str, jax.Array]) -> jax.Array:
    """The caption input of a batch: stored features or word ids."""
    return batch["text"] if "text" in batch else batch["tokens"]


def init_extra(dim: int) -> dict[str, jax.Array]:
    """Method statistics kept in the state: EMAs of S^v and S^t and their count."""
    return {
        "S_v": jnp.zeros((dim, dim), jnp.float32),
        "S_t": jnp.zeros((dim, dim), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
    }


def create_train_state(
    config: ml_collections.ConfigDict,
    model: CDDSModel,
    example: Mapping[str, np.ndarray],
    mesh: jax.sharding.Mesh,
    *,
    steps_per_epoch: int,
) -> tuple[TrainState, Any]:
    """A fresh state created directly with its shardings; returns (state, shardings)."""
    images = jnp.zeros((1, *example["image"].shape[1:]), jnp.float32)
    text = text_input(example)
    text = jnp.zeros((1, *text.shape[1:]), text.dtype)
    text_mask = jnp.ones((1, example["text_mask"].shape[1]), bool)

    def init() -> TrainState:
        rng = jax.random.PRNGKey(config.seed)
        params_rng, noise_rng, state_rng = jax.random.split(rng, 3)
        variables = model.init(
            {"params": params_rng, "noise": noise_rng},
            images,
            text,
            text_mask,
            train=True,
        )
        params = variables["params"]
        tx = optim.make_optimizer(config.optim, params, steps_per_epoch=steps_per_epoch)
        return TrainState.create(
            params=params, tx=tx, rng=state_rng, extra=init_extra(config.model.dim)
        )

    abstract = jax.eval_shape(init)
    shardings = sharding.param_shardings(abstract, mesh, config.sharding_rules)
    state = jax.jit(init, out_shardings=shardings)()
    return state, shardings


# =====================================================================================
# Loss and train step
# =====================================================================================


def retrieval_embeddings(
    img: Mapping[str, jax.Array] | None,
    txt: Mapping[str, jax.Array] | None,
    scalars: Mapping[str, jax.Array],
    s_v: jax.Array,
    s_t: jax.Array,
    config: ml_collections.ConfigDict,
) -> tuple[jax.Array | None, jax.Array | None, dict[str, jax.Array]]:
    """Per-item embeddings whose dot products are the CDDS scores (spec 6).

    With ``ablate.sampling=False`` they are mean-pooled, normalised x^s (VSE++ cosine).
    Returns ``(image_emb [B, E] | None, caption_emb [B, E] | None, aux)`` where ``aux``
    holds the quantile tables and weights (needed for L_x in training).
    """
    if not config.ablate.sampling:
        ie = (
            None
            if img is None
            else semantics.pooled_cosine_embeddings(img["s"], img["mask"])
        )
        ce = (
            None
            if txt is None
            else semantics.pooled_cosine_embeddings(txt["s"], txt["mask"])
        )
        return ie, ce, {}
    w_v = semantics.soft_threshold(s_v, scalars["alpha_v"], tau=config.semantics.tau)
    w_t = semantics.soft_threshold(s_t, scalars["alpha_t"], tau=config.semantics.tau)
    g = config.semantics.num_levels
    aux: dict[str, jax.Array] = {"w_v": w_v, "w_t": w_t}
    ie = ce = None
    if img is not None:
        aux["q_v"] = semantics.quantile_table(img["s"], img["mask"], g)
        ie = semantics.image_embeddings(aux["q_v"], w_v, w_t)
    if txt is not None:
        aux["q_t"] = semantics.quantile_table(txt["s"], txt["mask"], g)
        ce = semantics.caption_embeddings(aux["q_t"], w_v, w_t)
    return ie, ce, aux


def compute_loss(
    params: Any,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    model: CDDSModel,
    config: ml_collections.ConfigDict,
    epoch: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The CDDS objective on a global batch of B (image, caption) pairs (spec 3-7).

    ``epoch`` is the fractional epoch (step / steps_per_epoch): it drives the L_s ramp
    and the switch from all violations to the hardest negative.
    Returns ``(loss, aux)`` with the loss parts and this batch's S^v, S^t.
    """
    sc, lc, ab = config.semantics, config.loss, config.ablate
    img, txt, scalars = model.apply(
        {"params": params},
        batch["image"],
        text_input(batch),
        batch["text_mask"],
        train=True,
        rngs={"noise": rng},
    )
    chunk = int(sc.kl_chunk_size) or None
    kl = functools.partial(
        semantics.kl_correlation,
        estimator=sc.kl,
        num_bins=sc.num_bins,
        chunk_size=chunk,
    )
    if ab.sampling:
        s_v = kl(img["s"], img["mask"], txt["s"], txt["mask"])
        s_t = kl(txt["s"], txt["mask"], img["s"], img["mask"])
    else:
        d = img["s"].shape[-1]
        s_v = s_t = jnp.zeros((d, d), jnp.float32)
    ie, ce, aux = retrieval_embeddings(img, txt, scalars, s_v, s_t, config)
    scores = jnp.einsum("ae,be->ab", ie, ce, precision=jax.lax.Precision.HIGHEST)

    if lc.contrastive == "hinge":
        # Hardest negatives after a warm-up of all violations (LAPS: 1 epoch); < 0 = never.
        after = lc.max_violation_after_epochs
        max_violation = (epoch >= after) if after >= 0 else jnp.zeros((), bool)
        l_s = losses.hinge_loss(
            scores, batch["image_id"], margin=lc.margin, max_violation=max_violation
        )
    elif lc.contrastive == "infonce":
        l_s = losses.infonce_loss(scores, batch["image_id"], temperature=lc.temperature)
    else:
        raise ValueError(
            f"loss.contrastive: unknown {lc.contrastive!r} (hinge, infonce)"
        )
    ramp = jnp.clip(epoch / lc.ramp_epochs, 0.0, 1.0) if lc.ramp_epochs > 0 else 1.0

    zero = jnp.zeros((), jnp.float32)
    l_m = l_f = l_x = zero
    if ab.decouple:
        if ab.modality:
            l_m = jnp.sum(losses.modality_loss(img["m"], img["mask"])) + jnp.sum(
                losses.modality_loss(txt["m"], txt["mask"])
            )
        if ab.integrity:
            w_s, w_m = scalars["w_s"], scalars["w_m"]
            l_f = jnp.sum(
                losses.completeness_loss(
                    img["x"], img["s"], img["m"], w_s, w_m, img["mask"]
                )
            ) + jnp.sum(
                losses.completeness_loss(
                    txt["x"], txt["s"], txt["m"], w_s, w_m, txt["mask"]
                )
            )
            if ab.sampling:
                v_x = semantics.x_semantic_tokens(
                    img["s"], img["mask"], aux["q_t"], aux["w_v"]
                )
                t_x = semantics.x_semantic_tokens(
                    txt["s"], txt["mask"], aux["q_v"], aux["w_t"]
                )
                l_x = jnp.sum(
                    losses.completeness_loss(
                        img["x"], v_x, img["m"], w_s, w_m, img["mask"]
                    )
                ) + jnp.sum(
                    losses.completeness_loss(
                        txt["x"], t_x, txt["m"], w_s, w_m, txt["mask"]
                    )
                )
    a_m = lc.a_m if ab.modality else 0.0
    total = losses.total_loss(
        ramp * l_s, l_m, l_f, l_x, a_s=lc.a_s, a_m=a_m, a_f=lc.a_f
    )
    if ab.decouple and ab.integrity and not ab.sampling:
        # Without sampling there is no x-semantic: L_f takes the whole completeness weight.
        total = total + (1.0 - lc.a_f) * l_f
    positive = jnp.mean(jnp.diagonal(scores))
    aux_out = {
        "l_s": l_s,
        "l_m": l_m,
        "l_f": l_f,
        "l_x": l_x,
        "score_pos": positive,
        "score_mean": jnp.mean(scores),
        "S_v": s_v,
        "S_t": s_t,
    }
    return total, aux_out


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: CDDSModel,
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    lr_fn: Any,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW update on a global batch; returns the new state and device scalars."""
    rng = jax.random.fold_in(state.rng, state.step)
    epoch = state.step.astype(jnp.float32) / steps_per_epoch
    grad_fn = jax.value_and_grad(
        functools.partial(compute_loss, model=model, config=config, epoch=epoch),
        has_aux=True,
    )
    (loss, aux), grads = grad_fn(state.params, batch, rng)
    # EMA of S for evaluation; the first batch initialises it (no zero bias).
    extra = state.extra
    m = config.semantics.ema_momentum
    first = extra["count"] == 0
    new_extra = {
        "S_v": jnp.where(first, aux["S_v"], m * extra["S_v"] + (1 - m) * aux["S_v"]),
        "S_t": jnp.where(first, aux["S_t"], m * extra["S_t"] + (1 - m) * aux["S_t"]),
        "count": extra["count"] + 1,
    }
    new_state, updates = state.apply_gradients(grads, extra=new_extra)
    metrics = {
        "loss": loss,
        **{k: aux[k] for k in ("l_s", "l_m", "l_f", "l_x", "score_pos", "score_mean")},
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(state.params),
        "update_norm": optax.tree.norm(updates),
        "lr": lr_fn(state.step)
        * optax.tree_utils.tree_get(state.opt_state, "lr_factor"),
        "alpha_v": jnp.mean(state.params["alpha_v"]),
        "w_s": state.params["w_s"],
        "w_m": state.params["w_m"],
    }
    return new_state, metrics


def jit_train_step(
    config: ml_collections.ConfigDict,
    model: CDDSModel,
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
    *,
    steps_per_epoch: int,
) -> Any:
    """``train_step`` jitted as the driver runs it: explicit in/out shardings (batch
    split over the mesh, metrics replicated) and the state donated.

    The benchmark times this same function, so its numbers are the driver's.
    """
    return jax.jit(
        functools.partial(
            train_step,
            model=model,
            config=config,
            steps_per_epoch=steps_per_epoch,
            lr_fn=optim.learning_rate_fn(config.optim, steps_per_epoch),
        ),
        in_shardings=(state_shardings, sharding.data_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


# =====================================================================================
# Evaluation
# =====================================================================================


def _embed_images(params, extra, batch, *, model, config):
    img = model.apply(
        {"params": params}, batch["image"], train=False, method="encode_image"
    )
    scalars = model.apply({"params": params}, method="scalars")
    emb, _, _ = retrieval_embeddings(
        img, None, scalars, extra["S_v"], extra["S_t"], config
    )
    return emb


def _embed_captions(params, extra, batch, *, model, config):
    txt = model.apply(
        {"params": params},
        text_input(batch),
        batch["text_mask"],
        train=False,
        method="encode_text",
    )
    scalars = model.apply({"params": params}, method="scalars")
    _, emb, _ = retrieval_embeddings(
        None, txt, scalars, extra["S_v"], extra["S_t"], config
    )
    return emb


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
            data_lib.ImageSource(split),
            **kw,
        )
        cap = map_source(
            functools.partial(self.embed_captions, state.params, state.extra),
            self.data.caption_source(split),
            **kw,
        )
        return retrieval.evaluate_protocols(
            img,
            cap,
            np.asarray(split.caption_to_image),
            protocols=tuple(protocols),
            block_size=ec.block_size,
        )


def evaluate_split(
    config: ml_collections.ConfigDict,
    model: CDDSModel,
    mesh: jax.sharding.Mesh,
    data: Data,
    state: TrainState,
    split: data_lib.RetrievalSplit,
    protocols: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Retrieval metrics of ``state`` on ``split`` for each protocol."""
    return Evaluator(config, model, mesh, data)(state, split, protocols)


# =====================================================================================
# The run
# =====================================================================================


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> dict[str, Any]:
    """Trains CDDS, selects on dev, evaluates the test protocols; returns results.json."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        config_lib.save_config(config, workdir)

    # ---------------------------------------------------------------- mesh & data
    mesh = sharding.make_mesh(config.mesh)
    data = load_data(config, workdir, splits=("train", "dev", "test"))
    assert data.train is not None and data.dev is not None and data.test is not None
    train_source = data.pair_source(data.train)
    batch_size = int(config.train.batch_size)
    steps_per_epoch = len(train_source) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"train split has {len(train_source)} captions < batch size {batch_size}"
        )
    total_steps = (
        int(config.train.num_steps)
        if config.train.num_steps > 0
        else int(config.train.num_epochs * steps_per_epoch)
    )
    _log(
        f"CDDS | {len(jax.devices())} devices, mesh {dict(mesh.shape)} | train "
        f"{data.train.num_images} images / {len(train_source)} captions | "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps"
    )

    # ---------------------------------------------------------------- model & state
    model = build_model(config, len(data.vocab) if data.vocab else 0)
    example = train_source[0]
    example = {k: np.asarray(v)[None] for k, v in example.items()}
    state, state_shardings = create_train_state(
        config, model, example, mesh, steps_per_epoch=steps_per_epoch
    )
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    _log(f"model: {n_params / 1e6:.2f}M parameters")

    # ---------------------------------------------------------------- input
    train_iter = pipeline.train_iterator(
        train_source,
        global_batch_size=batch_size,
        seed=config.seed,
        num_threads=config.data.num_threads,
        worker_count=config.data.worker_count,
    )

    # ---------------------------------------------------------------- checkpoints
    checkpointer = Checkpointer(
        workdir / "checkpoints", max_to_keep=config.train.keep_checkpoints
    )
    best_checkpointer = Checkpointer(workdir / "best", max_to_keep=1)
    meta: dict[str, Any] = {}
    latest = checkpointer.latest_step()
    if latest is not None:
        state, meta = checkpointer.restore(latest, state, data_iter=train_iter)
        _log(f"resumed from {checkpointer.directory}/{latest}")

    # ---------------------------------------------------------------- step
    step_fn = jit_train_step(
        config, model, state_shardings, mesh, steps_per_epoch=steps_per_epoch
    )
    evaluator = Evaluator(config, model, mesh, data)
    select_split = data.test if config.eval.select_on_test else data.dev
    if config.eval.select_on_test:
        _log(
            "WARNING: eval.select_on_test=True selects the model on the TEST split (LAPS)"
        )

    def dev_metrics(s: TrainState) -> dict[str, float]:
        results = evaluator(s, select_split, ("full",))["full"]
        _log(
            f"{'test' if config.eval.select_on_test else 'dev'}: rsum {results['rsum']:.2f} "
            f"| i2t R@1 {results['i2t_r1']:.2f} | t2i R@1 {results['t2i_r1']:.2f}"
        )
        return results

    def next_batch() -> Any:
        return sharding.global_batch(next(train_iter), mesh)

    # ---------------------------------------------------------------- loop
    writer = MetricWriter(workdir)
    eval_every = (
        int(config.train.eval_every_steps)
        if config.train.eval_every_steps > 0
        else int(config.train.eval_every_epochs * steps_per_epoch)
    )
    try:
        result = loop_lib.train_loop(
            state=state,
            train_step=step_fn,
            next_batch=next_batch,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            writer=writer,
            checkpointer=checkpointer,
            data_iter=train_iter,
            best_checkpointer=best_checkpointer,
            evaluate=dev_metrics,
            select_metric="rsum",
            select_mode="max",
            log_every_steps=config.train.log_every_steps,
            eval_every_steps=eval_every,
            checkpoint_every_steps=config.train.checkpoint_every_steps,
            meta=meta,
        )
    finally:
        checkpointer.close()
        best_checkpointer.close()
    if result.reason == "preempted":
        _log(f"preempted at step {int(result.state.step)}; rerun the command to resume")
        writer.close()
        return {"preempted_at_step": int(result.state.step)}

    # ---------------------------------------------------------------- final test
    best_state, best_meta, which = restore_for_eval(workdir, result.state)
    test = evaluator(best_state, data.test, config.data.test_protocols)
    for protocol, metrics in test.items():
        writer.write(int(result.state.step), metrics, split=f"test_{protocol}")
    writer.close()
    results = {
        "method": "CDDS",
        "checkpoint": which,
        "selected_on": "test (LAPS protocol)" if config.eval.select_on_test else "dev",
        "selected_step": best_meta.get("best_step"),
        "dev": best_meta.get("dev"),
        "test_split": config.data.test_split,
        "test": test,
        "steps": int(result.state.step),
    }
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
        _log(f"\nTest split '{config.data.test_split}', checkpoint {which}:")
        _log(retrieval.format_table(test))
        _log(f"results written to {workdir / 'results.json'}")
    return results


if __name__ == "__main__":
    from xmodal import cli

    cli.run_train(train_and_evaluate)
