"""ViT (Dosovitskiy et al., 2021) as Hugging Face's ``ViTModel``.

``ViT(config).apply(variables, images)`` with ``images [B, H, W, C]`` (normalised,
``(H, W) == config.image_size``) returns ``ViTModel``'s ``last_hidden_state``
``[B, 1 + (H / p) * (W / p), D]``: the CLS token then the patch tokens in row-major
order, after the final layer norm. With ``add_pooling_layer=True`` it returns
``(last_hidden_state, pooler_output)``, ``pooler_output = tanh(dense(h[:, 0]))
[B, D]`` (the checkpoint then needs ``pooler.dense``).

Checkpoints: ``google/vit-base-patch16-224-in21k`` (a ``ViTModel`` file with the
pooler) and ``google/vit-base-patch16-384`` (``ViTForImageClassification``: names
under ``vit.``, a ``classifier`` head that is ignored).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.blocks import (
    PatchEmbed,
    activation,
    check_images,
    encoder_layers,
)
from xmodal.backbones.hf_config import as_pair, fields_from_hf, to_hf_dict
from xmodal.layers import Dropout

__all__ = ["ViT", "ViTConfig", "vit_name_map"]

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """The fields of Hugging Face's ``ViTConfig`` (``model_type: "vit"``) that the
    encoder reads, with Hugging Face's defaults (ViT-B/16 at 224)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (16, 16)
    num_channels: int = 3
    qkv_bias: bool = True
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"

    model_type: ClassVar[str] = "vit"
    architecture: ClassVar[str] = "ViTModel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", as_pair(self.image_size))
        object.__setattr__(self, "patch_size", as_pair(self.patch_size))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> ViTConfig:
        """From a ``config.json`` dict of ``model_type`` "vit"."""
        return fields_from_hf(cls, d)

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers' ``ViTModel`` reads."""
        out = to_hf_dict(self)
        out["pooler_output_size"] = self.pooler_size
        return {
            "model_type": self.model_type,
            "architectures": [self.architecture],
            **out,
        }

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along height and width."""
        return (
            self.image_size[0] // self.patch_size[0],
            self.image_size[1] // self.patch_size[1],
        )

    @property
    def pooler_size(self) -> int:
        """Width of the pooler output (``hidden_size`` unless set)."""
        return self.pooler_output_size or self.hidden_size


class ViT(nn.Module):
    """ViT encoder; parameters in float32, compute in ``dtype``.

    Attributes:
      config: the architecture.
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision).
      param_dtype: parameter dtype.
      remat: rematerialise each encoder layer in the backward pass (``nn.remat``).
      add_pooling_layer: also return the pooled CLS output (see the module doc).
      attention_implementation: ``jax.nn.dot_product_attention``'s implementation.
    """

    config: ViTConfig
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

        ``deterministic=False`` turns dropout on (rng collection ``"dropout"``).
        """
        cfg = self.config
        check_images(images, "ViT", cfg.num_channels, cfg.image_size)
        init = nn.initializers.normal(cfg.initializer_range)
        d = cfg.hidden_size
        b = images.shape[0]
        x = PatchEmbed(
            d,
            cfg.patch_size,
            kernel_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="patch_embed",
        )(images)
        x = x.reshape(b, -1, d)
        cls = self.param("cls_token", init, (1, 1, d), self.param_dtype)
        pos = self.param(
            "position_embeddings", init, (1, x.shape[1] + 1, d), self.param_dtype
        )
        cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d))
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype)
        x = Dropout(cfg.hidden_dropout_prob, deterministic=deterministic)(x)
        x = encoder_layers(
            self,
            x,
            pre_norm=True,
            deterministic=deterministic,
            hidden_dropout=cfg.hidden_dropout_prob,
            attention_dropout=cfg.attention_probs_dropout_prob,
            qkv_bias=cfg.qkv_bias,
        )
        x = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="layernorm",
        )(x)
        if not self.add_pooling_layer:
            return x
        pooled = nn.Dense(
            cfg.pooler_size,
            kernel_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="pooler",
        )(x[:, 0])
        return x, activation(cfg.pooler_act)(pooled)


def vit_name_map(config: ViTConfig, add_pooling_layer: bool) -> list[hc.TensorMap]:
    """Flax parameter <- ``ViTModel`` tensor names (without the ``vit.`` prefix)."""
    m = [
        hc.TensorMap(
            ("patch_embed", "kernel"),
            ("embeddings.patch_embeddings.projection.weight",),
            "conv",
        ),
        hc.TensorMap(
            ("patch_embed", "bias"), ("embeddings.patch_embeddings.projection.bias",)
        ),
        hc.TensorMap(("cls_token",), ("embeddings.cls_token",)),
        hc.TensorMap(("position_embeddings",), ("embeddings.position_embeddings",)),
    ]
    for i in range(config.num_hidden_layers):
        hf, fx = f"encoder.layer.{i}.", f"layer_{i}"
        qkv = [f"{hf}attention.attention.{n}" for n in ("query", "key", "value")]
        m += hc.fused_linear((fx, "attention", "qkv"), qkv, bias=config.qkv_bias)
        m += hc.linear((fx, "attention", "out"), f"{hf}attention.output.dense")
        m += hc.layer_norm((fx, "norm1"), f"{hf}layernorm_before")
        m += hc.layer_norm((fx, "norm2"), f"{hf}layernorm_after")
        m += hc.linear((fx, "mlp", "fc1"), f"{hf}intermediate.dense")
        m += hc.linear((fx, "mlp", "fc2"), f"{hf}output.dense")
    m += hc.layer_norm(("layernorm",), "layernorm")
    if add_pooling_layer:
        m += hc.linear(("pooler",), "pooler.dense")
    return m
