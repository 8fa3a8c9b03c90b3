"""The CLIP vision tower (Radford et al., 2021) as Hugging Face's ``CLIPVisionModel``.

``CLIPVision(config).apply(variables, images)`` with ``images [B, H, W, C]``
(normalised with CLIP's mean / std, ``H = W = config.image_size``) returns
``CLIPVisionModel``'s ``last_hidden_state`` ``[B, 1 + (H / p)^2, D]``: class token then
patch tokens, the output of the last encoder layer. Note that Hugging Face's
``last_hidden_state`` is NOT passed through ``post_layernorm``: only
``pooler_output = post_layernorm(last_hidden_state[:, 0]) [B, D]`` is (and CLIP's
image embedding is ``visual_projection(pooler_output)``, not computed here). With
``add_pooling_layer=True`` the module returns ``(last_hidden_state, pooler_output)``.

The tower: patch embedding without bias, a learned class embedding, learned position
embeddings, ``pre_layrnorm`` (Hugging Face's spelling), pre-LN encoder layers with
quick-GELU MLPs.

Checkpoints: ``openai/clip-vit-large-patch14`` is a full ``CLIPModel`` folder
(``config.json`` with ``model_type: "clip"`` and a ``vision_config``; tensors under
``vision_model.``, the text tower and the projections ignored here); ``CLIPVisionModel``
folders (``model_type: "clip_vision_model"``) are read too, with or without the
prefix. The text tower of the same folder is :mod:`xmodal.backbones.clip_text`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.blocks import PatchEmbed, check_images, encoder_layers
from xmodal.backbones.hf_config import as_pair, fields_from_hf, to_hf_dict

__all__ = [
    "CLIPVision",
    "CLIPVisionConfig",
    "clip_encoder_name_map",
    "clip_vision_name_map",
]

Dtype = Any


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The fields of Hugging Face's ``CLIPVisionConfig`` (``model_type:
    "clip_vision_model"``) that the tower reads, with Hugging Face's defaults
    (ViT-B/32)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (32, 32)
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    model_type: ClassVar[str] = "clip_vision_model"
    architecture: ClassVar[str] = "CLIPVisionModel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", as_pair(self.image_size))
        object.__setattr__(self, "patch_size", as_pair(self.patch_size))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> CLIPVisionConfig:
        """From a ``config.json`` dict of ``model_type`` "clip_vision_model", or of
        "clip" (its ``vision_config``, updated by a legacy ``vision_config_dict``)."""
        if d.get("model_type") == "clip":
            vision = dict(d.get("vision_config") or {})
            vision.update(d.get("vision_config_dict") or {})
            d = vision
        return fields_from_hf(cls, d)

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers' ``CLIPVisionModel`` reads."""
        out = to_hf_dict(self)
        # CLIPVisionConfig takes square sizes as ints.
        if self.image_size[0] == self.image_size[1]:
            out["image_size"] = self.image_size[0]
        if self.patch_size[0] == self.patch_size[1]:
            out["patch_size"] = self.patch_size[0]
        return {
            "model_type": self.model_type,
            "architectures": [self.architecture],
            **out,
        }

    @property
    def num_positions(self) -> int:
        """Class token + patches."""
        gh = self.image_size[0] // self.patch_size[0]
        gw = self.image_size[1] // self.patch_size[1]
        return 1 + gh * gw


class CLIPVision(nn.Module):
    """CLIP vision tower; parameters in float32, compute in ``dtype``.

    Attributes:
      config: the architecture.
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision).
      param_dtype: parameter dtype.
      remat: rematerialise each encoder layer in the backward pass (``nn.remat``).
      add_pooling_layer: also return ``post_layernorm`` of the class token.
      attention_implementation: ``jax.nn.dot_product_attention``'s implementation.
    """

    config: CLIPVisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    add_pooling_layer: bool = False
    attention_implementation: str | None = None

    @nn.compact
    def __call__(
        self, images: jax.Array, *, deterministic: bool = True
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``images [B, H, W, C]`` -> last hidden state ``[B, 1 + N, D]``.

        ``deterministic=False`` turns attention dropout on (rng collection
        ``"dropout"``; CLIP has no other dropout).
        """
        cfg = self.config
        check_images(images, "CLIP vision", cfg.num_channels, cfg.image_size)
        init = nn.initializers.normal(cfg.initializer_range)
        d = cfg.hidden_size
        b = images.shape[0]
        x = PatchEmbed(
            d,
            cfg.patch_size,
            use_bias=False,
            kernel_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="patch_embed",
        )(images)
        x = x.reshape(b, -1, d)
        cls = self.param("class_embedding", init, (d,), self.param_dtype)
        pos = self.param(
            "position_embedding", init, (cfg.num_positions, d), self.param_dtype
        )
        cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d))
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype)
        norm = lambda name: nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        x = norm("pre_layrnorm")(x)
        x = encoder_layers(
            self,
            x,
            pre_norm=True,
            deterministic=deterministic,
            attention_dropout=cfg.attention_dropout,
        )
        if not self.add_pooling_layer:
            return x
        return x, norm("post_layernorm")(x[:, 0])


def clip_vision_name_map(
    config: CLIPVisionConfig, add_pooling_layer: bool
) -> list[hc.TensorMap]:
    """Flax parameter <- ``CLIPVisionModel`` tensor names (without ``vision_model.``)."""
    m = [
        hc.TensorMap(
            ("patch_embed", "kernel"), ("embeddings.patch_embedding.weight",), "conv"
        ),
        hc.TensorMap(("class_embedding",), ("embeddings.class_embedding",)),
        hc.TensorMap(
            ("position_embedding",), ("embeddings.position_embedding.weight",)
        ),
        *hc.layer_norm(("pre_layrnorm",), "pre_layrnorm"),
    ]
    m += clip_encoder_name_map(config.num_hidden_layers)
    if add_pooling_layer:
        m += hc.layer_norm(("post_layernorm",), "post_layernorm")
    return m


def clip_encoder_name_map(num_layers: int) -> list[hc.TensorMap]:
    """Flax ``layer_{i}`` <- ``encoder.layers.{i}`` of a CLIP tower (vision and text
    towers share the layer layout)."""
    m: list[hc.TensorMap] = []
    for i in range(num_layers):
        hf, fx = f"encoder.layers.{i}.", f"layer_{i}"
        qkv = [f"{hf}self_attn.{n}_proj" for n in ("q", "k", "v")]
        m += hc.fused_linear((fx, "attention", "qkv"), qkv)
        m += hc.linear((fx, "attention", "out"), f"{hf}self_attn.out_proj")
        m += hc.layer_norm((fx, "norm1"), f"{hf}layer_norm1")
        m += hc.layer_norm((fx, "norm2"), f"{hf}layer_norm2")
        m += hc.linear((fx, "mlp", "fc1"), f"{hf}mlp.fc1")
        m += hc.linear((fx, "mlp", "fc2"), f"{hf}mlp.fc2")
    return m
