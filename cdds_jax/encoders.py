"""The CDDS encoders' backbones: checkpoint folders, modules and weights (docs/cdds.md §3.4).

``model.image_encoder`` is ``features`` (stored token features) or a backbone kind,
``vit`` | ``swin`` | ``clip``, read from the Hugging Face folder
``model.image_backbone_path``; ``model.text_encoder`` is ``features`` | ``bigru`` |
``bert`` (``model.text_backbone_path``). The folder decides the architecture and the
image size; its ``model_type`` must match the kind. The modules compute in
``model.dtype`` and rematerialise their blocks with ``model.remat``. Their pretrained
weights enter the train state when it is created (:func:`pretrained_params`) and are
checkpointed with it from then on.

Nothing is downloaded: a config naming a folder that is not there stops with one line
saying which checkpoint to put where (:func:`xmodal.backbones.folders.check_folder`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from cdds_jax.data import images as images_lib
from cdds_jax.model import CDDSModel
from xmodal import backbones, layers
from xmodal.backbones.folders import KNOWN_CHECKPOINTS, check_folder, merge_pretrained

__all__ = [
    "CLIP_MEAN_STD",
    "IMAGENET_MEAN_STD",
    "IMAGE_ENCODERS",
    "KNOWN_CHECKPOINTS",
    "TEXT_ENCODERS",
    "Backbones",
    "build_model",
    "check_folder",
    "encoder_kinds",
    "image_spec",
    "load_backbones",
    "merge_pretrained",
    "pretrained_params",
]

IMAGE_ENCODERS: tuple[str, ...] = ("features", "vit", "swin", "clip")
TEXT_ENCODERS: tuple[str, ...] = ("features", "bigru", "bert")
#: Old names still read (configs written before the backbones).
_ALIASES = {"precomputed": "features"}
#: Pixel mean / std of [0, 1] RGB: ImageNet's (ViT and Swin, as LAPS) and CLIP's.
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_MEAN_STD = (
    (0.48145466, 0.4578275, 0.40821073),
    (0.26862954, 0.26130258, 0.27577711),
)


def encoder_kinds(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """``(model.image_encoder, model.text_encoder)``, checked, old names mapped."""
    image = _ALIASES.get(config.model.image_encoder, config.model.image_encoder)
    text = _ALIASES.get(config.model.text_encoder, config.model.text_encoder)
    if image not in IMAGE_ENCODERS:
        raise ValueError(
            f"config.model.image_encoder: expected one of {list(IMAGE_ENCODERS)}, "
            f"got {config.model.image_encoder!r}"
        )
    if text not in TEXT_ENCODERS:
        raise ValueError(
            f"config.model.text_encoder: expected one of {list(TEXT_ENCODERS)}, "
            f"got {config.model.text_encoder!r}"
        )
    return image, text


@dataclasses.dataclass(frozen=True)
class Backbones:
    """The backbones of a config (None where the encoder has none).

    Attributes:
      image, text: checkpoint folders.
      image_module, text_module: Flax modules (float32 params, ``model.dtype`` compute,
        ``model.remat``).
      image_kind: ``vit`` | ``swin`` | ``clip`` | ``features``.
    """

    image: pathlib.Path | None = None
    text: pathlib.Path | None = None
    image_module: nn.Module | None = None
    text_module: nn.Module | None = None
    image_kind: str = "features"

    @property
    def pixel_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The image backbone's normalisation (CLIP's for ``clip``, else ImageNet)."""
        return CLIP_MEAN_STD if self.image_kind == "clip" else IMAGENET_MEAN_STD


def _folders(
    config: ml_collections.ConfigDict,
) -> tuple[str | pathlib.Path, str | pathlib.Path]:
    """The configured folders, or the synthetic demo's (written on first use)."""
    from cdds_jax.data import inputs

    demo = inputs.demo_raw(config)
    if demo is not None:
        return demo.image_backbone, demo.text_backbone
    return config.model.image_backbone_path, config.model.text_backbone_path


def load_backbones(config: ml_collections.ConfigDict) -> Backbones:
    """Checks the folders and builds the modules of ``config`` (no weights read)."""
    image_kind, text_kind = encoder_kinds(config)
    if image_kind == "features" and text_kind != "bert":
        return Backbones()
    image_path, text_path = _folders(config)
    dtype, remat = jnp.dtype(config.model.dtype), bool(config.model.remat)

    def build(folder: pathlib.Path) -> nn.Module:
        return backbones.from_config(
            backbones.load_config(folder), dtype=dtype, remat=remat
        )

    out: dict[str, Any] = {"image_kind": image_kind}
    if image_kind != "features":
        out["image"] = check_folder(image_path, "model.image_backbone_path", image_kind)
        out["image_module"] = build(out["image"])
    if text_kind == "bert":
        out["text"] = check_folder(text_path, "model.text_backbone_path", "bert")
        out["text_module"] = build(out["text"])
    return Backbones(**out)


def image_spec(found: Backbones) -> images_lib.ImageSpec | None:
    """How images are prepared for the image backbone (None without one): its size,
    and CLIP's resize + centre crop at evaluation."""
    if found.image_module is None:
        return None
    height, width = found.image_module.config.image_size
    if height != width:
        raise ValueError(
            f"{found.image}: image_size {(height, width)}: only square inputs are "
            "supported"
        )
    return images_lib.ImageSpec(
        size=int(height), center_crop=found.image_kind == "clip"
    )


def pretrained_params(found: Backbones) -> dict[str, Any]:
    """The backbones' checkpoint weights as ``{"image_backbone": ..., "text_backbone":
    ...}`` (host float32 NumPy trees, the model's parameter names)."""
    out = {}
    for name, folder in (
        ("image_backbone", found.image),
        ("text_backbone", found.text),
    ):
        if folder is not None:
            _, variables = backbones.from_pretrained(folder)
            out[name] = variables["params"]
    return out


def build_model(config: ml_collections.ConfigDict, vocab_size: int = 0) -> CDDSModel:
    """The CDDS model of ``config`` (ablation switches applied; backbones built from
    their checkpoint folders' ``config.json``, docs/cdds.md §3.4)."""
    m = config.model
    sigma = m.sigma if config.ablate.noise else 0.0
    layers.warn_if_remat_ineffective(m.remat)
    image_kind, text_kind = encoder_kinds(config)
    found = load_backbones(config)
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
