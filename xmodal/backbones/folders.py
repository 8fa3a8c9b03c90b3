"""Checkpoint folders of the methods' backbones: checked before use, merged into params.

A config names a local Hugging Face folder per backbone; nothing is downloaded. A folder
that is missing, has no ``config.json`` or holds another architecture stops the run with
ONE line saying which checkpoint to put where (:func:`check_folder`). Pretrained weights
replace the random backbone subtrees of freshly initialised parameters
(:func:`merge_pretrained`), inside the jitted init, so they enter the train state
already sharded.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from xmodal.backbones.pretrained import load_config
from xmodal.errors import UserError

__all__ = [
    "KNOWN_CHECKPOINTS",
    "MODEL_TYPES",
    "MissingCheckpointError",
    "check_folder",
    "merge_pretrained",
]

#: Backbone kind -> the ``model_type`` values of its ``config.json``.
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "vit": ("vit",),
    "swin": ("swin",),
    "clip": ("clip", "clip_vision_model"),
    "bert": ("bert",),
}

#: Checkpoint folder name -> the Hugging Face checkpoint to put there (the papers' rows).
KNOWN_CHECKPOINTS: dict[str, str] = {
    "vit-base-patch16-224-in21k": "google/vit-base-patch16-224-in21k",
    "vit-base-patch16-384": "google/vit-base-patch16-384",
    "swin-base-patch4-window7-224": "microsoft/swin-base-patch4-window7-224",
    "swin-base-patch4-window12-384": "microsoft/swin-base-patch4-window12-384",
    "clip-vit-large-patch14": "openai/clip-vit-large-patch14",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "bert-base-chinese": "google-bert/bert-base-chinese",
}


class MissingCheckpointError(UserError, FileNotFoundError):
    """A backbone folder is not there (or has no ``config.json``)."""


def check_folder(
    path: str | pathlib.Path,
    field: str,
    kind: str,
    *,
    checkpoint: str | None = None,
) -> pathlib.Path:
    """The checkpoint folder of a backbone, or ONE line saying what to put where.

    Args:
      path: the configured folder.
      field: the config field that names it (``model.bert_path``), for the message.
      kind: ``vit`` | ``swin`` | ``clip`` | ``bert`` (:data:`MODEL_TYPES`).
      checkpoint: the Hugging Face checkpoint to name in the message; default the
        one :data:`KNOWN_CHECKPOINTS` gives for the folder's name.

    Raises:
      MissingCheckpointError: no folder (or no ``config.json``) at ``path``.
      ValueError: its ``model_type`` is not a ``kind`` model.
    """
    folder = pathlib.Path(path).expanduser()
    if not str(path) or not (folder / "config.json").is_file():
        name = checkpoint or KNOWN_CHECKPOINTS.get(folder.name)
        what = (
            f"the Hugging Face checkpoint {name}"
            if name
            else f"a Hugging Face {kind} checkpoint"
        )
        if not str(path):
            state = "not set"
        elif not folder.is_dir():
            state = f"folder {str(folder)!r} not found"
        else:
            state = f"{str(folder)!r} has no config.json"
        raise MissingCheckpointError(
            f"config.{field}: {state}: put {what} there (config.json + "
            f"model.safetensors{' + vocab.txt' if kind == 'bert' else ''}; nothing is "
            f"downloaded), or pass --config.{field}=FOLDER"
        )
    model_type = getattr(load_config(folder), "model_type", None)
    if model_type not in MODEL_TYPES[kind]:
        raise ValueError(
            f"config.{field}: {str(folder)!r} holds a {model_type!r} model, expected "
            f"{' or '.join(MODEL_TYPES[kind])} for the {kind} encoder"
        )
    return folder


def merge_pretrained(
    params: Mapping[str, Any], pretrained: Mapping[str, Any]
) -> dict[str, Any]:
    """``params`` with the backbone subtrees replaced by ``pretrained`` (same structure
    and shapes, checked while tracing; leaves cast to float32)."""
    out = dict(params)
    for name, tree in pretrained.items():
        want = jax.tree_util.tree_structure(params[name])
        got = jax.tree_util.tree_structure(tree)
        if want != got:
            raise ValueError(f"{name}: checkpoint tree {got} != model tree {want}")
        for a, b in zip(
            jax.tree_util.tree_leaves(params[name]),
            jax.tree_util.tree_leaves(tree),
            strict=True,
        ):
            if a.shape != b.shape:
                raise ValueError(f"{name}: checkpoint shape {b.shape} != {a.shape}")
        out[name] = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), tree)
    return out
