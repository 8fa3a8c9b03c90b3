"""DecAlign's text encoder: stored BERT features, or BERT fine-tuned on token ids.

The backbone wiring of the method (the data side is :mod:`decalign_jax.data.inputs`).
``model.text_encoder`` (docs/decalign.md §3.1, §3.8):

* ``features``: the pickle's ``text`` key, MMSA's stored BERT features ``[T_l, 768]``.
* ``bert``: a BERT read from the local Hugging Face folder ``model.bert_path``
  (``bert-base-uncased`` for MOSI / MOSEI, ``bert-base-chinese`` for SIMS), fine-tuned
  on the pickle's ``text_bert`` ids ``[3, T_l]`` (input ids, attention mask, segment
  ids). Its last hidden state is the text sequence; its parameters live under
  ``bert/``, learn at ``optim.bert_lr`` (0 = the main lr, MOSI's single group;
  :func:`make_optimizer`), and are covered by the L2 decay and the global-norm clip
  like every other parameter, as in the official trainer. Its dropout is on in
  training.

The weights enter the train state when it is created (:func:`pretrained_params`), and
are checkpointed with it from then on. Demo configs with an empty ``model.bert_path``
get a tiny random BERT written in Hugging Face's layout into the cache folder
(:func:`ensure_demo_bert`; no ``transformers`` needed). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import tempfile
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import optax

from xmodal import backbones, optim
from xmodal.errors import UserError
from xmodal.files import cache_dir

__all__ = [
    "BERT_CHECKPOINTS",
    "BERT_PARAMS",
    "DEMO_BERT",
    "TEXT_ENCODERS",
    "bert_folder",
    "build_bert",
    "ensure_demo_bert",
    "make_optimizer",
    "optimizer_config",
    "pretrained_params",
    "uses_bert",
]

TEXT_ENCODERS: tuple[str, ...] = ("features", "bert")
#: Dataset -> the Hugging Face checkpoint the official configs fine-tune.
BERT_CHECKPOINTS: dict[str, str] = {
    "mosi": "google-bert/bert-base-uncased",
    "mosei": "google-bert/bert-base-uncased",
    "sims": "google-bert/bert-base-chinese",
}
#: The model's parameter subtree of the BERT (``DecAlignModel.bert``).
BERT_PARAMS = "bert"
#: The demo's tiny random BERT: BERT-base's vocabulary size (the synthetic ids are in
#: its range), 2 layers of width 32.
DEMO_BERT: dict[str, int] = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
_DEMO_BERT_SEED = 0


def uses_bert(config: ml_collections.ConfigDict) -> bool:
    """``model.text_encoder == "bert"`` (checked against :data:`TEXT_ENCODERS`)."""
    kind = config.model.text_encoder
    if kind not in TEXT_ENCODERS:
        raise ValueError(
            f"config.model.text_encoder: expected one of {list(TEXT_ENCODERS)}, "
            f"got {kind!r}"
        )
    return kind == "bert"


def ensure_demo_bert(folder: str | pathlib.Path) -> pathlib.Path:
    """The demo's tiny random BERT in ``folder/bert-demo-<hash>``, written once.

    Written by :func:`xmodal.backbones.write_random_checkpoint` into a temporary folder
    renamed into place, so concurrent callers never see a partial checkpoint.
    """
    spec = json.dumps({"seed": _DEMO_BERT_SEED, **DEMO_BERT}, sort_keys=True)
    key = hashlib.sha256(spec.encode()).hexdigest()[:12]
    out = pathlib.Path(folder) / f"bert-demo-{key}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=".bert-demo-"))
    try:
        backbones.write_random_checkpoint(
            tmp, "bert", seed=_DEMO_BERT_SEED, **DEMO_BERT
        )
        tmp.rename(out)
    except OSError:
        if not (out / "config.json").is_file():  # not a concurrent writer's win
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def bert_folder(config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """The BERT checkpoint folder of ``config`` (None for ``features``).

    Raises:
      UserError: one line naming the checkpoint to put where (no folder, no
        ``config.json``, a dataset without BERT ids).
      ValueError: the folder holds another architecture.
    """
    if not uses_bert(config):
        return None
    dataset = config.data.dataset
    if dataset not in BERT_CHECKPOINTS:
        raise UserError(
            f"config.model.text_encoder=bert: {dataset} has no token ids (the official "
            "config runs it on stored features); use model.text_encoder=features"
        )
    path = config.model.bert_path
    if not path and config.data.synthetic.enabled:
        return ensure_demo_bert(cache_dir() / "decalign")
    return backbones.check_folder(
        path, "model.bert_path", "bert", checkpoint=BERT_CHECKPOINTS[dataset]
    )


def build_bert(config: ml_collections.ConfigDict) -> nn.Module | None:
    """The BERT module of ``config`` (None for ``features``); no weights are read."""
    folder = bert_folder(config)
    if folder is None:
        return None
    return backbones.from_config(
        backbones.load_config(folder),
        dtype=jnp.dtype(config.model.dtype),
        remat=bool(config.model.remat),
    )


def pretrained_params(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{"bert": params}`` from the checkpoint (host float32 arrays), or ``{}``."""
    folder = bert_folder(config)
    if folder is None:
        return {}
    _, variables = backbones.from_pretrained(folder)
    return {BERT_PARAMS: variables["params"]}


def optimizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.optim`` with BERT's learning-rate group first in ``lr_groups``.

    ``optim.bert_lr`` > 0 gives ``bert/`` the multiplier ``bert_lr / lr`` (the official
    MOSEI / SIMS parameter groups); 0 keeps BERT in the main group (official MOSI).
    """
    cfg = ml_collections.ConfigDict(config.optim.to_dict())
    bert_lr = float(config.optim.bert_lr)
    if uses_bert(config) and bert_lr > 0:
        group = (f"^{BERT_PARAMS}/", bert_lr / float(config.optim.lr))
        cfg.lr_groups = (group, *tuple(cfg.lr_groups))
    return cfg


def make_optimizer(
    config: ml_collections.ConfigDict, params: Any, *, steps_per_epoch: int
) -> optax.GradientTransformation:
    """:func:`xmodal.optim.make_optimizer` of :func:`optimizer_config`."""
    return optim.make_optimizer(
        optimizer_config(config), params, steps_per_epoch=steps_per_epoch
    )
