"""Every call the benchmark makes into the DecAlign driver, its configs and its losses.

The sections (``decalign``, ``kernels``) reach ``decalign_jax.train``,
``decalign_jax.encoders``, ``decalign_jax.losses.hetero_loss`` and
``configs/decalign_base.py`` only through this module, so a change of the driver's
signatures is followed here, in one place. The train step measured is the driver's own
(``build_model`` / ``create_train_state`` / ``jit_train_step``), on random inputs in
the driver's batch format: stored text features, or with ``model.text_encoder =
"bert"`` MMSA's ``text_bert`` ids read by a random BERT checkpoint in Hugging Face's
layout (:func:`write_bert`, the sizes of :data:`BERT_SIZES`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks.settings import DecAlignCase, Settings
from configs import decalign_base
from decalign_jax import encoders as decalign_encoders
from decalign_jax import losses as decalign_losses
from decalign_jax import train as decalign_train
from xmodal import backbones

__all__ = [
    "BERT",
    "BERT_PARAMS",
    "BERT_SIZES",
    "BUILT_BY",
    "CLS_ID",
    "SEP_ID",
    "SOLVER_FORMS",
    "STEPS_PER_EPOCH",
    "VARIANTS",
    "bert_folder",
    "bert_setup",
    "build_model",
    "config",
    "create_state",
    "hetero_loss",
    "jit_step",
    "random_batch",
    "random_bert_batch",
    "write_bert",
]

#: How the measured step is built, as BENCHMARKS.md says it (follows the calls below).
BUILT_BY = (
    "driver's `build_model` / `create_train_state` / `train_step` jitted with donation"
)
#: Steps per epoch given to the driver (its schedules only; a benchmark runs a few).
STEPS_PER_EPOCH = 100
#: The step variants measured: the HEAD config, alpha = 0 (no EM + Sinkhorn term) and
#: every dropout rate 0 (no dropout RNG).
VARIANTS: tuple[str, ...] = ("head", "alpha0", "no_dropout")
#: What each ``loss.ot_solver`` runs (``prototypes.multi_marginal_sinkhorn``), as
#: BENCHMARKS.md names it.
SOLVER_FORMS: dict[str, str] = {
    "ott": "ott-jax's multi-marginal Sinkhorn on log-domain potentials",
    "official": "the official plain-domain sweep in a `lax.fori_loop`",
}
#: The variant with BERT fine-tuned on token ids (``model.text_encoder = "bert"``).
BERT = "bert"
#: The train state's parameter subtree of the BERT.
BERT_PARAMS = decalign_encoders.BERT_PARAMS
#: The random BERT of the ``bert`` variant per mode (Hugging Face ``BertConfig``
#: fields): BERT-base in the full run, the quick mode's small backbone BERT (as
#: ``cdds_backbones``), a tiny one in smoke. Every mode keeps BERT-base's vocabulary.
BERT_SIZES: dict[str, dict[str, int]] = {
    "full": dict(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512,
    ),
    "quick": dict(
        vocab_size=30522, hidden_size=256, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=1024, max_position_embeddings=512,
    ),
    "smoke": dict(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
    ),
}  # fmt: skip
#: BERT's [CLS] and [SEP] ids (``bert-base-uncased``; 0 is [PAD]).
CLS_ID, SEP_ID = 101, 102


def config(
    case: DecAlignCase,
    settings: Settings,
    variant: str = "head",
    *,
    bert_path: str | pathlib.Path | None = None,
) -> ml_collections.ConfigDict:
    """The HEAD config of ``case.dataset``; ``alpha0`` / ``no_dropout`` variants, or
    ``bert``: the HEAD config with ``model.text_encoder = "bert"`` reading the
    checkpoint folder ``bert_path`` (its lr: the dataset's HEAD ``optim.bert_lr``)."""
    c = decalign_base.get_config(case.dataset, None)
    for key, value in case.model:
        c.model[key] = value
    if settings.em_iters is not None:
        c.loss.em_iters = settings.em_iters
    if settings.ot_iters is not None:
        c.loss.ot_iters = settings.ot_iters
    if variant == "alpha0":
        c.loss.alpha = 0.0
    elif variant == "no_dropout":
        c.model.attn_dropout = (0.0, 0.0, 0.0)
        for key in ("relu", "res", "embed", "output", "text"):
            c.model[f"{key}_dropout"] = 0.0
    elif variant == BERT:
        if bert_path is None:
            raise ValueError("variant 'bert' needs bert_path (a checkpoint folder)")
        c.model.text_encoder = "bert"
        c.model.bert_path = str(bert_path)
    elif variant != "head":
        raise ValueError(f"variant: unknown {variant!r}")
    c.train.batch_size = case.batch
    return c


def random_batch(case: DecAlignCase, seed: int = 0) -> dict[str, np.ndarray]:
    """Random (text, audio, vision) features and labels in [-3, 3]."""
    rng = np.random.default_rng(seed)
    batch = {
        m: rng.standard_normal((case.batch, t, d), dtype=np.float32)
        for m, t, d in zip(
            ("text", "audio", "vision"), case.lengths, case.dims, strict=True
        )
    }
    batch["label"] = rng.uniform(-3.0, 3.0, size=case.batch).astype(np.float32)
    return batch


def random_bert_batch(
    case: DecAlignCase, vocab_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """:func:`random_batch` with MMSA's ``text_bert`` ids ``[B, 3, T_l]`` (int32) in
    place of the text features (the audio, vision and labels are the same).

    Rows: input ids (``[CLS]`` first, ``[SEP]`` last, random word ids in ``[1000,
    vocab)`` between, 0 on padding), the attention mask (sequence lengths with both
    specials uniform in ``[max(3, T_l // 5), T_l]``) and segment ids (0: MMSA's
    single-sentence layout).
    """
    batch = random_batch(case, seed)
    del batch["text"]
    rng = np.random.default_rng(seed + 1)
    b, t = case.batch, case.lengths[0]
    lengths = rng.integers(min(max(3, t // 5), t), t + 1, size=b)
    mask = np.arange(t)[None, :] < lengths[:, None]
    ids = rng.integers(min(1000, vocab_size // 2), vocab_size, size=(b, t))
    ids[:, 0] = CLS_ID
    ids[np.arange(b), lengths - 1] = SEP_ID
    ids = np.where(mask, ids, 0)
    segments = np.zeros_like(ids)
    batch["text_bert"] = np.stack([ids, mask, segments], axis=1).astype(np.int32)
    return batch


def write_bert(folder: str | pathlib.Path, mode: str, seed: int = 0) -> pathlib.Path:
    """A random BERT of :data:`BERT_SIZES` ``[mode]`` in Hugging Face's layout
    (``config.json``, ``model.safetensors``, ``vocab.txt``) in ``folder``."""
    return backbones.write_random_checkpoint(
        folder, "bert", seed=seed, **BERT_SIZES[mode]
    )


def bert_folder(config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """The checkpoint folder ``config``'s BERT is read from (None: stored features)."""
    return decalign_encoders.bert_folder(config)


def bert_setup(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What ``config``'s BERT is and how it learns: its ``config.json`` fields, the
    main lr, ``optim.bert_lr``, the lr BERT gets and the driver's lr groups."""
    folder = bert_folder(config)
    if folder is None:
        raise ValueError("bert_setup: config.model.text_encoder is not 'bert'")
    lr, bert_lr = float(config.optim.lr), float(config.optim.bert_lr)
    groups = decalign_encoders.optimizer_config(config).lr_groups
    return {
        "bert_config": backbones.load_config(folder).to_hf(),
        "lr": lr,
        "bert_lr": bert_lr,
        "bert_lr_used": bert_lr if bert_lr > 0 else lr,
        "lr_groups": [list(g) for g in groups],
    }


def hetero_loss(
    config: ml_collections.ConfigDict,
) -> Callable[[tuple[jax.Array, ...]], jax.Array]:
    """``losses.hetero_loss`` with ``config.loss`` bound: pooled ``[B, d]`` x 3 -> scalar."""
    bound = decalign_losses.bind_hetero_loss(config.loss)

    def loss(pooled: tuple[jax.Array, ...]) -> jax.Array:
        return bound(pooled)[0]

    return loss


def build_model(config: ml_collections.ConfigDict) -> Any:
    """The driver's model for ``config``."""
    return decalign_train.build_model(config)


def create_state(
    config: ml_collections.ConfigDict,
    model: Any,
    example: Mapping[str, np.ndarray],
    mesh: jax.sharding.Mesh,
) -> tuple[Any, Any]:
    """The driver's sharded train state (seed 0): ``(state, shardings)``."""
    return decalign_train.create_train_state(
        config, model, example, mesh, seed=0, steps_per_epoch=STEPS_PER_EPOCH
    )


def jit_step(
    config: ml_collections.ConfigDict,
    model: Any,
    shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Any:
    """The driver's jitted train step (its shardings, the state donated)."""
    return decalign_train.jit_train_step(config, model, shardings, mesh)
