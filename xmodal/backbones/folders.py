"""Checkpoint folders of the methods' backbones: checked, opened, merged into params.

A config names a local Hugging Face folder per backbone; nothing is downloaded. A folder
that is missing, has no ``config.json`` or holds another architecture stops the run with
ONE line saying which checkpoint to put where (:func:`check_folder`).
:func:`open_backbone` checks a folder and builds its module (a :class:`Backbone`; the
weights are read later, :meth:`Backbone.load_params`); :class:`Backbones` holds the two
towers a method resolved from its config, once. Pretrained weights replace the random
backbone subtrees of freshly initialised parameters (:func:`merge_pretrained`), inside
the jitted init, so they enter the train state already sharded.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.pretrained import (
    folder_model_type,
    from_config,
    from_pretrained,
    load_config,
)
from xmodal.backbones.registry import (
    IMAGENET_MEAN_STD,
    REGISTRY,
    Architecture,
    MeanStd,
)
from xmodal.errors import UserError

__all__ = [
    "KNOWN_CHECKPOINTS",
    "MODEL_TYPES",
    "Backbone",
    "Backbones",
    "MissingCheckpointError",
    "check_folder",
    "merge_pretrained",
    "open_backbone",
]

#: Backbone kind -> the ``model_type`` values of its ``config.json`` (the registry's).
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    kind: arch.model_types for kind, arch in REGISTRY.items()
}

#: Checkpoint folder name -> the Hugging Face checkpoint to put there (the papers'
#: rows; the registry's ``checkpoints``).
KNOWN_CHECKPOINTS: dict[str, str] = {
    name.rpartition("/")[2]: name
    for arch in REGISTRY.values()
    for name in arch.checkpoints
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
      kind: ``vit`` | ``swin`` | ``clip`` | ``bert`` | ``clip_text``
        (:data:`MODEL_TYPES`).
      checkpoint: the Hugging Face checkpoint to name in the message; default the
        one :data:`KNOWN_CHECKPOINTS` gives for the folder's name.

    Raises:
      MissingCheckpointError: no folder (or no ``config.json``) at ``path``.
      ValueError: its ``model_type`` is not a ``kind`` model.
    """
    folder = pathlib.Path(path).expanduser()
    if not str(path) or not (folder / "config.json").is_file():
        tokenizer = REGISTRY[kind].tokenizer
        files = (
            "config.json",
            "model.safetensors",
            *(tokenizer.names if tokenizer else ()),
        )
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
            f"config.{field}: {state}: put {what} there ({' + '.join(files)}; "
            f"nothing is downloaded), or pass --config.{field}=FOLDER"
        )
    model_type = folder_model_type(folder)
    if model_type not in MODEL_TYPES[kind]:
        raise ValueError(
            f"config.{field}: {str(folder)!r} holds a {model_type!r} model, expected "
            f"{' or '.join(MODEL_TYPES[kind])} for the {kind} encoder"
        )
    load_config(folder, kind)  # the tower's fields are valid
    return folder


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A checked checkpoint folder, its architecture and the module its ``config.json``
    builds (no weights read until :meth:`load_params`).

    Attributes:
      folder: the Hugging Face folder.
      architecture: its registry entry (kind, pixel statistics, crop, ...).
      module: the Flax module (float32 parameters; it returns tokens ``[B, N, D]``).
    """

    folder: pathlib.Path
    architecture: Architecture
    module: nn.Module

    def load_params(self, *, add_pooling_layer: bool = False) -> dict[str, Any]:
        """The folder's weights of this tower: a host float32 NumPy tree with the
        module's parameter names (``from_pretrained``; with ``add_pooling_layer``
        the pooler's too)."""
        _, variables = from_pretrained(
            self.folder,
            kind=self.architecture.kind,
            add_pooling_layer=add_pooling_layer,
        )
        return variables["params"]

    def load_projection(self) -> Any:
        """The composite folder's projection of this tower's pooled output as a
        ``nn.Dense`` kernel ``[D, E]`` (host float32; CLIP's ``visual_projection`` /
        ``text_projection``, docs/cdds.md §3.5).

        Raises:
          CheckpointError: the tower has no projection, or the folder lacks it (a
            ``CLIPVisionModel`` / ``CLIPTextModel`` folder): one line naming both.
        """
        composite = self.architecture.composite
        if composite is None or not composite.projection:
            raise hc.CheckpointError(
                f"{self.folder}: a {self.architecture.name} tower has no projection"
            )
        checkpoint = hc.open_checkpoint(self.folder)
        name = f"{composite.projection}.weight"
        if name not in checkpoint.shapes:
            raise hc.CheckpointError(
                f"{checkpoint.label}: no tensor {name!r}: the projection is part of a "
                f"full {composite.architecture} folder (config.json model_type "
                f"{composite.model_type!r}), not of a single-tower one"
            )
        weight = checkpoint.read(name)
        width = self.module.config.hidden_size
        if weight.ndim != 2 or weight.shape[1] != width:
            raise hc.CheckpointError(
                f"{checkpoint.label}: tensor {name!r} has shape {weight.shape}, "
                f"expected (projection_dim, {width})"
            )
        return weight.T.copy()


def open_backbone(
    path: str | pathlib.Path,
    field: str,
    kind: str,
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
) -> Backbone:
    """:func:`check_folder`, then the module of the folder's ``config.json``, computing
    in ``dtype`` and rematerialising its blocks with ``remat``."""
    folder = check_folder(path, field, kind)
    module = from_config(load_config(folder, kind), dtype=dtype, remat=remat)
    return Backbone(folder, REGISTRY[kind], module)


@dataclasses.dataclass(frozen=True)
class Backbones:
    """The towers of an image-text model as resolved from its config, once.

    Attributes:
      image_kind, text_kind: each tower's encoder as the config names it: a registry
        kind where a backbone is resolved, else the method's own encoder (stored
        features, a trained GRU, ...).
      image, text: the resolved backbones (None where the encoder has none).
    """

    image_kind: str
    text_kind: str
    image: Backbone | None = None
    text: Backbone | None = None

    @property
    def pixel_mean_std(self) -> MeanStd:
        """The image backbone's pixel normalisation (ImageNet's without one)."""
        if self.image is None or self.image.architecture.pixel_mean_std is None:
            return IMAGENET_MEAN_STD
        return self.image.architecture.pixel_mean_std


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
