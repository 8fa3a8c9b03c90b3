"""DecAlign model (docs/decalign.md §3, the official HEAD model).

Inputs are batch-first: text ``[B, T_l, D_l]`` (stored BERT features, or the last
hidden state of a BERT fine-tuned on the ``text_bert`` ids ``[B, 3, T_l]``), audio
``[B, T_a, D_a]``, vision ``[B, T_v, D_v]``. Per modality m:

    proj_m  = Conv1d_m(D_m -> d, kernel k_m, VALID, no bias)       [B, T'_m, d]
    s_m     = Dense_m(d -> d, no bias)(proj_m)     modality-unique (heterogeneous)
    c_m     = Dense_com(d -> d, no bias)(proj_m)   modality-common (one shared map)
    h_m     = mean_t CrossModalTransformer_m(query s_m, context [s_m'; s_m''])
    z_m     = PDE_m(mean_t c_m)                    used by the homogeneity loss only
    output  = Dense(6d -> out)(Dropout([h_l, h_a, h_v, c̄_l, c̄_a, c̄_v]))

The cross-modal transformers are post-LN (x = LN(x + Drop(MHA(x, ctx))); x = LN(x +
Drop(FFN(x)))), FFN width 4d, ReLU, no final LN; inputs and contexts are scaled by
sqrt(d) with independent embed-dropout draws for the keys and the values; the same
context feeds every layer. The official model has neither positional embeddings nor
padding masks; both are options here (off by default). Initialisation follows
PyTorch's defaults where they differ from Flax's (uniform ``1/sqrt(fan_in)`` kernels,
LayerNorm eps 1e-5, and the attention of :mod:`decalign_jax.attention`: Xavier over
the packed Q/K/V in-projection, ``nn.Linear``'s default for the output projection);
Dense biases start at 0.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from decalign_jax.attention import TorchMultiheadAttention, torch_linear_init
from xmodal.layers import Dropout

__all__ = [
    "MODALITIES",
    "CrossModalTransformer",
    "DecAlignModel",
    "sinusoidal_positions",
]

Array = jax.Array
MODALITIES = ("text", "audio", "vision")

torch_kernel_init = torch_linear_init  # U(+-1/sqrt(fan_in)), torch.nn.Linear / Conv1d
LN_EPS = 1e-5  # torch.nn.LayerNorm default


def sinusoidal_positions(length: int, dim: int) -> Array:
    """Fairseq/MulT-style sinusoidal position table ``[length, dim]`` (positions 1..L)."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half) * -(math.log(10000.0) / max(half - 1, 1)))
    pos = jnp.arange(1, length + 1)[:, None] * freqs[None]
    table = jnp.concatenate([jnp.sin(pos), jnp.cos(pos)], axis=1)
    if dim % 2:
        table = jnp.pad(table, ((0, 0), (0, 1)))
    return table


class _Layer(nn.Module):
    """One post-LN cross-modal encoder layer."""

    dim: int
    num_heads: int
    attn_dropout: float
    relu_dropout: float
    res_dropout: float
    dropout_impl: str = "hash"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: Array, ctx_k: Array, ctx_v: Array, mask: Array | None, train: bool
    ) -> Array:
        drop = lambda rate: Dropout(rate, self.dropout_impl, deterministic=not train)
        attn = TorchMultiheadAttention(
            self.dim,
            self.num_heads,
            self.attn_dropout,
            self.dropout_impl,
            self.dtype,
            name="attn",
        )(x, ctx_k, ctx_v, mask, deterministic=not train)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_attn")(
            x + drop(self.res_dropout)(attn)
        )
        dense = lambda n, name: nn.Dense(
            n, kernel_init=torch_kernel_init, dtype=self.dtype, name=name
        )
        h = dense(4 * self.dim, "fc1")(x)
        h = drop(self.relu_dropout)(nn.relu(h))
        h = dense(self.dim, "fc2")(h)
        return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_ffn")(
            x + drop(self.res_dropout)(h)
        )


class CrossModalTransformer(nn.Module):
    """``query [B, T, d]`` attending to ``context [B, S, d]`` through L layers.

    Returns ``[B, T, d]``. ``context_mask [B, S]`` (optional) masks padded context
    frames as keys; without it every frame attends everywhere (official).
    """

    dim: int
    num_heads: int
    num_layers: int
    attn_dropout: float
    relu_dropout: float
    res_dropout: float
    embed_dropout: float
    positional: bool = False
    dropout_impl: str = "hash"
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        query: Array,
        context: Array,
        context_mask: Array | None = None,
        *,
        train: bool,
    ) -> Array:
        scale = math.sqrt(self.dim)
        x, ctx = scale * query, scale * context
        if self.positional:
            x = x + sinusoidal_positions(x.shape[1], self.dim)[None]
            ctx = ctx + sinusoidal_positions(ctx.shape[1], self.dim)[None]
        drop = Dropout(self.embed_dropout, self.dropout_impl, deterministic=not train)
        x = drop(x)
        ctx_k, ctx_v = drop(ctx), drop(ctx)  # two independent draws, as the reference
        mask = None if context_mask is None else context_mask[:, None, None, :]
        # Rematerialisation recomputes each layer's activations in the backward pass
        # instead of storing them (memory for compute); ``train`` is static.
        layer_cls = nn.remat(_Layer, static_argnums=(5,)) if self.remat else _Layer
        for i in range(self.num_layers):
            x = layer_cls(
                self.dim,
                self.num_heads,
                self.attn_dropout,
                self.relu_dropout,
                self.res_dropout,
                self.dropout_impl,
                self.dtype,
                name=f"layer{i}",
            )(x, ctx_k, ctx_v, mask, train)
        return x


def _masked_time_mean(x: Array, mask: Array | None) -> Array:
    """Mean over time ``[B, T, d] -> [B, d]`` (over valid frames when masked)."""
    if mask is None:
        return jnp.mean(x, axis=1)
    w = mask.astype(x.dtype)[..., None]
    return jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class DecAlignModel(nn.Module):
    """The DecAlign network; returns a dict of the prediction and loss inputs.

    Attributes:
      dim, num_heads, num_layers: d, H, L (per transformer).
      kernel_sizes: temporal conv kernel per modality (text, audio, vision).
      pde_dim: output width of the probability distribution encoders.
      out_dim: 1 (regression) or the number of classes.
      attn_dropout: per modality (text, audio, vision).
      relu_dropout, res_dropout, embed_dropout, output_dropout, text_dropout: rates.
      positional: add sinusoidal position embeddings in the transformers (off).
      padding_mask: mask padded frames (from ``*_lengths``) in attention and pooling
        (off; the official model uses neither).
      dropout_impl: ``hash`` (counter-based masks, :mod:`xmodal.layers`) or
        ``threefry`` (``jax.random.bernoulli``).
      remat: rematerialise the transformer layers in the backward pass.
      dtype: compute dtype of the transformers (parameters stay float32); the
        convolutions, pooled features and losses stay float32.
      bert: a BERT module (:mod:`xmodal.backbones`) fine-tuned on ``text_bert``
        ``[B, 3, T_l]``; its last hidden state replaces the stored ``text`` features
        (None: ``text`` is read). Parameters under ``bert/``.
    """

    dim: int = 64
    num_heads: int = 8
    num_layers: int = 5
    kernel_sizes: tuple[int, int, int] = (1, 1, 1)
    pde_dim: int = 64
    out_dim: int = 1
    attn_dropout: tuple[float, float, float] = (0.1, 0.0, 0.0)
    relu_dropout: float = 0.1
    res_dropout: float = 0.05
    embed_dropout: float = 0.1
    output_dropout: float = 0.0
    text_dropout: float = 0.0
    positional: bool = False
    padding_mask: bool = False
    dropout_impl: str = "hash"
    remat: bool = False
    dtype: Any = jnp.float32
    bert: nn.Module | None = None

    def _frame_masks(self, batch: dict[str, Array], lengths_in: list[int]) -> list[Any]:
        if not self.padding_mask:
            return [None, None, None]
        masks = []
        for m, k, t_in in zip(MODALITIES, self.kernel_sizes, lengths_in, strict=True):
            length = batch.get(f"{m}_lengths")
            if m == "text" and length is None and self.bert is not None:
                length = jnp.sum(batch["text_bert"][:, 1] != 0, axis=1)  # BERT mask
            if length is None:
                length = jnp.full((batch["audio"].shape[0],), t_in)
            # A VALID conv of kernel k turns n valid frames into n - k + 1 outputs.
            valid = jnp.maximum(length - k + 1, 1)
            masks.append(jnp.arange(t_in - k + 1)[None, :] < valid[:, None])
        return masks

    @nn.compact
    def __call__(self, batch: dict[str, Array], *, train: bool) -> dict[str, Any]:
        inputs = [batch[m].astype(jnp.float32) for m in MODALITIES[1:]]
        if self.bert is None:
            inputs.insert(0, batch["text"].astype(jnp.float32))
        else:
            # MMSA's text_bert rows: input ids, attention mask, segment ids. The text
            # sequence is BERT's last hidden state at every position, padding included
            # (docs/decalign.md §3.8); BERT's own dropout is on in training.
            ids = batch["text_bert"].astype(jnp.int32)
            hidden = self.bert(ids[:, 0], ids[:, 1], ids[:, 2], deterministic=not train)
            inputs.insert(0, hidden.astype(jnp.float32))
        for m, k, x in zip(MODALITIES, self.kernel_sizes, inputs, strict=True):
            if x.shape[1] < k:
                raise ValueError(
                    f"{m}: sequence length {x.shape[1]} shorter than its conv kernel {k}"
                )
        masks = self._frame_masks(batch, [x.shape[1] for x in inputs])
        drop = lambda rate: Dropout(rate, self.dropout_impl, deterministic=not train)
        inputs[0] = drop(self.text_dropout)(inputs[0])

        common = nn.Dense(
            self.dim, use_bias=False, kernel_init=torch_kernel_init, name="common"
        )
        unique, commons = [], []
        for m, k, x in zip(MODALITIES, self.kernel_sizes, inputs, strict=True):
            proj = nn.Conv(
                self.dim,
                kernel_size=(k,),
                padding="VALID",
                use_bias=False,
                kernel_init=torch_kernel_init,
                name=f"conv_{m}",
            )(x)
            unique.append(
                nn.Dense(
                    self.dim,
                    use_bias=False,
                    kernel_init=torch_kernel_init,
                    name=f"unique_{m}",
                )(proj)
            )
            commons.append(common(proj))

        pooled_unique = [
            _masked_time_mean(s, mk) for s, mk in zip(unique, masks, strict=True)
        ]
        pooled_common = [
            _masked_time_mean(c, mk) for c, mk in zip(commons, masks, strict=True)
        ]

        hidden = []
        for i, m in enumerate(MODALITIES):
            others = [j for j in range(3) if j != i]
            context = jnp.concatenate([unique[j] for j in others], axis=1)
            context_mask = (
                None
                if masks[0] is None
                else jnp.concatenate([masks[j] for j in others], axis=1)
            )
            out = CrossModalTransformer(
                self.dim,
                self.num_heads,
                self.num_layers,
                self.attn_dropout[i],
                self.relu_dropout,
                self.res_dropout,
                self.embed_dropout,
                self.positional,
                self.dropout_impl,
                self.remat,
                self.dtype,
                name=f"trans_{m}",
            )(unique[i], context, context_mask, train=train)
            hidden.append(_masked_time_mean(out, masks[i]))

        pde_out = []
        for m, c in zip(MODALITIES, pooled_common, strict=True):
            h = nn.Dense(self.dim, kernel_init=torch_kernel_init, name=f"pde_{m}_fc1")(
                c
            )
            h = drop(self.output_dropout)(nn.relu(h))
            pde_out.append(
                nn.Dense(
                    self.pde_dim, kernel_init=torch_kernel_init, name=f"pde_{m}_fc2"
                )(h)
            )

        final_rep = jnp.concatenate(hidden + pooled_common, axis=-1)  # [B, 6d]
        logits = nn.Dense(self.out_dim, kernel_init=torch_kernel_init, name="head")(
            drop(self.output_dropout)(final_rep)
        )
        return {
            "output": logits[:, 0] if self.out_dim == 1 else logits,
            "unique": tuple(unique),
            "common": tuple(commons),
            "pooled_unique": tuple(pooled_unique),
            "z": tuple(pde_out),
            "final_rep": final_rep,
        }
