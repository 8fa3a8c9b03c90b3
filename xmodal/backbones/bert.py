"""BERT (Devlin et al., 2019) as Hugging Face's ``BertModel``.

``Bert(config).apply(variables, input_ids, attention_mask, token_type_ids)`` with int
arrays ``[B, L]`` returns ``BertModel``'s ``last_hidden_state`` ``[B, L, D]``.
``attention_mask`` (1 = token, 0 = padding; None = all tokens) removes padded keys
from every query's attention; padded positions still get an output (as in
``BertModel``: computed from the real tokens; finite even for an all-padding row).
``token_type_ids`` defaults to zeros, positions are ``0 .. L - 1``. With
``add_pooling_layer=True`` the module returns ``(last_hidden_state, pooler_output)``,
``pooler_output = tanh(dense(h[:, 0])) [B, D]``.

Training as transformers trains it: ``BertEmbeddings`` builds its word table as
``nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)``, so the pad id's
row is looked up like any other but gets no gradient (every position holding the pad
id, attended or not), and a freshly initialised table has that row at zero. Both hold
here (``pad_token_id=None``: no such row, as in transformers). The position and
token-type tables have no padding row, in transformers as here. With a coupled L2
decay (DecAlign's optimiser, docs/decalign.md §3.8) the row still decays, exactly as
PyTorch's ``Adam(weight_decay=...)`` decays it.

Checkpoints: ``bert-base-uncased`` / ``bert-base-chinese`` (files saved from
``BertForPreTraining``: names under ``bert.``, TF-era ``LayerNorm.gamma / beta``,
``cls.*`` heads ignored) and ``BertModel`` files.
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
from xmodal.backbones.hf_config import fields_from_hf, to_hf_dict
from xmodal.layers import Dropout

__all__ = ["Bert", "BertConfig", "bert_name_map"]

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of Hugging Face's ``BertConfig`` (``model_type: "bert"``) that the
    encoder reads, with Hugging Face's defaults (BERT-base, uncased vocabulary)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0  # the word row without gradient (None: none)
    position_embedding_type: str = "absolute"

    model_type: ClassVar[str] = "bert"
    architecture: ClassVar[str] = "BertModel"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        pad = self.pad_token_id
        if pad is not None and not -self.vocab_size <= pad < self.vocab_size:
            raise ValueError(
                f"pad_token_id {pad} is outside the vocabulary ({self.vocab_size} ids)"
            )
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type {self.position_embedding_type!r} is not "
                "supported (only 'absolute', as in bert-base-*)"
            )

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> BertConfig:
        """From a ``config.json`` dict of ``model_type`` "bert"."""
        for key in ("is_decoder", "add_cross_attention"):
            if d.get(key):
                raise ValueError(f"{key}=true is not supported (encoder-only BERT)")
        return fields_from_hf(cls, d)

    @property
    def padding_idx(self) -> int | None:
        """The word-table row without gradient: ``pad_token_id`` in ``[0, vocab)``
        (negative ids count from the end, as ``nn.Embedding``'s ``padding_idx``)."""
        if self.pad_token_id is None:
            return None
        return self.pad_token_id % self.vocab_size

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers' ``BertModel`` reads."""
        out = to_hf_dict(self)
        del out["position_embedding_type"]  # not a field of transformers 5's config
        return {
            "model_type": self.model_type,
            "architectures": [self.architecture],
            **out,
        }


class Bert(nn.Module):
    """BERT encoder; parameters in float32, compute in ``dtype``.

    Attributes:
      config: the architecture.
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision).
      param_dtype: parameter dtype.
      remat: rematerialise each encoder layer in the backward pass (``nn.remat``).
      add_pooling_layer: also return the pooled CLS output (see the module doc).
      attention_implementation: ``jax.nn.dot_product_attention``'s implementation.
    """

    config: BertConfig
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
        token_type_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` ``[B, L]`` ->
        last hidden state ``[B, L, D]``.

        ``deterministic=False`` turns dropout on (rng collection ``"dropout"``).
        """
        cfg = self.config
        check_ids(
            input_ids,
            "BERT",
            cfg.max_position_embeddings,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
        )
        b, length = input_ids.shape
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, length), jnp.int32)
        init = nn.initializers.normal(cfg.initializer_range)
        embed = lambda n, name: nn.Embed(
            n,
            cfg.hidden_size,
            embedding_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        pad = cfg.padding_idx
        word_embeddings = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=init if pad is None else _zero_row(init, pad),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="word_embeddings",
        )
        x = word_embeddings(input_ids)
        if pad is not None:
            x = _without_gradient_where(x, input_ids == pad)
        x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        x = x + embed(cfg.max_position_embeddings, "position_embeddings")(
            jnp.arange(length)[None]
        )
        x = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="embed_norm",
        )(x)
        x = Dropout(cfg.hidden_dropout_prob, deterministic=deterministic)(x)
        mask = None
        if attention_mask is not None:
            mask = (attention_mask != 0)[:, None, None, :]  # [B, 1, 1, L]
        x = encoder_layers(
            self,
            x,
            mask,
            pre_norm=False,
            deterministic=deterministic,
            hidden_dropout=cfg.hidden_dropout_prob,
            attention_dropout=cfg.attention_probs_dropout_prob,
        )
        if not self.add_pooling_layer:
            return x
        pooled = nn.Dense(
            cfg.hidden_size,
            kernel_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="pooler",
        )(x[:, 0])
        return x, jnp.tanh(pooled)


def _zero_row(
    init: nn.initializers.Initializer, row: int
) -> nn.initializers.Initializer:
    """``init`` with ``row`` set to zero (``nn.Embedding``'s padding row at init)."""

    def zeroed(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32):
        return init(key, shape, dtype).at[row].set(0)

    return zeroed


def _without_gradient_where(x: jax.Array, where: jax.Array) -> jax.Array:
    """``x [B, L, D]`` unchanged; no gradient flows back through ``x[where]``.

    The lookup's backward is a scatter-add of the output cotangent into the table, so
    zeroing the cotangent of every position holding the pad id leaves that row's
    gradient exactly 0 (as ``nn.Embedding(padding_idx=...)``'s backward skips it); the
    values, and the gradient of every other row, are untouched.
    """
    return jnp.where(where[..., None], jax.lax.stop_gradient(x), x)


def bert_name_map(config: BertConfig, add_pooling_layer: bool) -> list[hc.TensorMap]:
    """Flax parameter <- ``BertModel`` tensor names (without the ``bert.`` prefix)."""
    m = [
        hc.TensorMap(
            ("word_embeddings", "embedding"), ("embeddings.word_embeddings.weight",)
        ),
        hc.TensorMap(
            ("token_type_embeddings", "embedding"),
            ("embeddings.token_type_embeddings.weight",),
        ),
        hc.TensorMap(
            ("position_embeddings", "embedding"),
            ("embeddings.position_embeddings.weight",),
        ),
        *hc.layer_norm(("embed_norm",), "embeddings.LayerNorm"),
    ]
    for i in range(config.num_hidden_layers):
        hf, fx = f"encoder.layer.{i}.", f"layer_{i}"
        qkv = [f"{hf}attention.self.{n}" for n in ("query", "key", "value")]
        m += hc.fused_linear((fx, "attention", "qkv"), qkv)
        m += hc.linear((fx, "attention", "out"), f"{hf}attention.output.dense")
        m += hc.layer_norm((fx, "norm1"), f"{hf}attention.output.LayerNorm")
        m += hc.linear((fx, "mlp", "fc1"), f"{hf}intermediate.dense")
        m += hc.linear((fx, "mlp", "fc2"), f"{hf}output.dense")
        m += hc.layer_norm((fx, "norm2"), f"{hf}output.LayerNorm")
    if add_pooling_layer:
        m += hc.linear(("pooler",), "pooler.dense")
    return m
