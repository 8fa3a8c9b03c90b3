"""The CLIP text tower (Radford et al., 2021) as Hugging Face's ``CLIPTextModel``.

``CLIPText(config).apply(variables, input_ids, attention_mask)`` with int arrays
``[B, L]`` returns ``CLIPTextModel``'s ``last_hidden_state`` ``[B, L, D]``: the output
of the last encoder layer passed through ``final_layer_norm`` (unlike the vision tower,
Hugging Face's text ``last_hidden_state`` IS normalised). With
``add_pooling_layer=True`` the module returns ``(last_hidden_state, pooler_output)``,
``pooler_output [B, D]`` = the row of each caption's end-of-text token
(:func:`eos_positions`); CLIP's text embedding is ``text_projection(pooler_output)``
(``cdds_jax.zeroshot``; docs/cdds.md §3.5).

The tower: token embeddings plus learned position embeddings (positions ``0 .. L -
1``, at most ``max_position_embeddings`` = 77), pre-LN encoder layers with quick-GELU
MLPs (the vision tower's layers, :func:`~xmodal.backbones.clip.clip_encoder_name_map`),
and a final LayerNorm. Attention is causal: position ``q`` reads keys ``k <= q`` only;
``attention_mask`` (1 = token, 0 = padding; None = all tokens) removes padded keys as
well, as ``CLIPTextModel`` combines the two masks. With right padding (the tokenizer's)
every real token therefore sees exactly what it sees unpadded, and padded positions
get finite outputs computed from the real tokens. The token table has no padding row
(``nn.Embedding`` without ``padding_idx``): every row it looks up gets a gradient.

Pooling follows ``CLIPTextModel``: with ``eos_token_id == 2`` (the value of the
original OpenAI configs, kept by transformers as the legacy rule) the pooled row is
the arg-max of the ids (the end-of-text token has the highest id of the original
vocabulary, and arg-max returns its first occurrence, so end-of-text padding is
harmless); otherwise it is the first position holding ``eos_token_id``.

Checkpoints: a full ``CLIPModel`` folder (``openai/clip-vit-large-patch14``;
``config.json`` with ``model_type: "clip"`` and a ``text_config``, tensors under
``text_model.``, the vision tower and the projections ignored here) or a
``CLIPTextModel`` folder (``model_type: "clip_text_model"``; transformers 5 saves its
tensors without a prefix, earlier versions under ``text_model.``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.blocks import check_ids, encoder_layers
from xmodal.backbones.clip import clip_encoder_name_map
from xmodal.backbones.hf_config import fields_from_hf, to_hf_dict

__all__ = [
    "LEGACY_EOS_TOKEN_ID",
    "CLIPText",
    "CLIPTextConfig",
    "clip_text_name_map",
    "eos_positions",
]

Dtype = Any

#: ``eos_token_id`` of the original OpenAI configs: pool at the arg-max id instead.
LEGACY_EOS_TOKEN_ID = 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The fields of Hugging Face's ``CLIPTextConfig`` (``model_type:
    "clip_text_model"``) that the tower reads, with Hugging Face's defaults
    (ViT-B/32's text tower; ViT-L/14's is 768 wide with 12 heads)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int = 49406
    eos_token_id: int = 49407  # the pooled token (LEGACY_EOS_TOKEN_ID: arg-max)

    model_type: ClassVar[str] = "clip_text_model"
    architecture: ClassVar[str] = "CLIPTextModel"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if not isinstance(self.eos_token_id, int):
            raise ValueError(
                f"eos_token_id {self.eos_token_id!r}: expected one id (the pooled "
                "end-of-text token)"
            )

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> CLIPTextConfig:
        """From a ``config.json`` dict of ``model_type`` "clip_text_model", or of
        "clip" (its ``text_config``, updated by a legacy ``text_config_dict``)."""
        if d.get("model_type") == "clip":
            text = dict(d.get("text_config") or {})
            text.update(d.get("text_config_dict") or {})
            d = text
        return fields_from_hf(cls, d)

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers' ``CLIPTextModel`` reads."""
        return {
            "model_type": self.model_type,
            "architectures": [self.architecture],
            **to_hf_dict(self),
        }


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """``[B]`` int: the position of each row's pooled end-of-text token.

    ``eos_token_id == 2`` (:data:`LEGACY_EOS_TOKEN_ID`): the first arg-max of the ids;
    otherwise the first position holding ``eos_token_id`` (0 for a row without one,
    as ``CLIPTextModel``'s arg-max of an all-False row).
    """
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class CLIPText(nn.Module):
    """CLIP text tower; parameters in float32, compute in ``dtype``.

    Attributes:
      config: the architecture.
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision).
      param_dtype: parameter dtype.
      remat: rematerialise each encoder layer in the backward pass (``nn.remat``).
      add_pooling_layer: also return the end-of-text row (no parameters of its own).
      attention_implementation: ``jax.nn.dot_product_attention``'s implementation.
    """

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    add_pooling_layer: bool = False
    attention_implementation: str | None = None

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``input_ids``, ``attention_mask`` ``[B, L]`` -> last hidden state
        ``[B, L, D]`` (and the pooled ``[B, D]`` with ``add_pooling_layer``).

        ``deterministic=False`` turns attention dropout on (rng collection
        ``"dropout"``; CLIP has no other dropout).
        """
        cfg = self.config
        check_ids(
            input_ids,
            "CLIP text",
            cfg.max_position_embeddings,
            attention_mask=attention_mask,
        )
        length = input_ids.shape[1]
        init = nn.initializers.normal(cfg.initializer_range)
        d = cfg.hidden_size
        x = nn.Embed(
            cfg.vocab_size,
            d,
            embedding_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="token_embedding",
        )(input_ids)
        pos = self.param(
            "position_embedding",
            init,
            (cfg.max_position_embeddings, d),
            self.param_dtype,
        )
        x = x + pos[:length].astype(self.dtype)
        # [1, 1, L, L] causal, and [B, 1, 1, L] padded keys removed (CLIPTextModel's
        # combined mask).
        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if attention_mask is not None:
            mask = mask & (attention_mask != 0)[:, None, None, :]
        x = encoder_layers(
            self,
            x,
            mask,
            pre_norm=True,
            deterministic=deterministic,
            attention_dropout=cfg.attention_dropout,
        )
        x = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="final_layer_norm",
        )(x)
        if not self.add_pooling_layer:
            return x
        where = eos_positions(input_ids, cfg.eos_token_id)
        pooled = jnp.take_along_axis(x, where[:, None, None], axis=1)[:, 0]
        return x, pooled


def clip_text_name_map(
    config: CLIPTextConfig, add_pooling_layer: bool
) -> list[hc.TensorMap]:
    """Flax parameter <- ``CLIPTextModel`` tensor names (without ``text_model.``).

    The pooled output has no parameters, so ``add_pooling_layer`` changes nothing.
    """
    del add_pooling_layer
    return [
        hc.TensorMap(
            ("token_embedding", "embedding"), ("embeddings.token_embedding.weight",)
        ),
        hc.TensorMap(
            ("position_embedding",), ("embeddings.position_embedding.weight",)
        ),
        *clip_encoder_name_map(config.num_hidden_layers),
        *hc.layer_norm(("final_layer_norm",), "final_layer_norm"),
    ]
