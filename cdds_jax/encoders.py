"""The CDDS encoders: the backbones the data layer resolved, wired to the projections
(docs/cdds.md §3.4).

``model.image_encoder`` is ``features`` (stored token features) or an image kind of
the backbone registry (``vit`` | ``swin`` | ``clip``, :mod:`xmodal.backbones.registry`);
``model.text_encoder`` is ``features`` | ``bigru`` or a text kind (``bert`` |
``clip_text``; CLIP's text tower, docs/cdds.md §3.5). The data layer
(:func:`cdds_jax.data.inputs.load_data`) checks the checkpoint folders and builds the
backbone modules once per run (``Data.backbones``); this module takes them: the model
(:func:`build_model`: the backbones' pixel normalisation, the ablation switches) and
the weights that enter the train state when it is created (:func:`pretrained_params`),
checkpointed with it from then on.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from cdds_jax import reading
from cdds_jax.model import CDDSModel
from xmodal import layers
from xmodal.backbones.folders import Backbones, merge_pretrained

__all__ = ["build_model", "merge_pretrained", "pretrained_params"]


def pretrained_params(backbones: Backbones) -> dict[str, Any]:
    """The backbones' checkpoint weights as ``{"image_backbone": ..., "text_backbone":
    ...}`` (host float32 NumPy trees, the model's parameter names)."""
    out = {}
    for name, backbone in (
        ("image_backbone", backbones.image),
        ("text_backbone", backbones.text),
    ):
        if backbone is not None:
            out[name] = backbone.load_params()
    return out


def build_model(
    config: ml_collections.ConfigDict, backbones: Backbones, vocab_size: int = 0
) -> CDDSModel:
    """The CDDS model of ``config`` with the ``backbones`` its data resolved
    (``Data.backbones``; ablation switches applied, docs/cdds.md §3.4)."""
    m = config.model
    sigma = m.sigma if config.ablate.noise else 0.0
    layers.warn_if_remat_ineffective(m.remat)
    mean, std = backbones.pixel_mean_std
    return CDDSModel(
        dim=m.dim,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        image_encoder=backbones.image_kind,
        text_encoder=backbones.text_kind,
        image_backbone=None if backbones.image is None else backbones.image.module,
        text_backbone=None if backbones.text is None else backbones.text.module,
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
            if reading.of(config).tau_mode == "learned"
            else None
        ),
        remat=m.remat,
        dtype=jnp.dtype(m.dtype),
    )
