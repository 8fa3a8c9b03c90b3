"""Multi-head cross-attention laid out and initialised as PyTorch's ``nn.MultiheadAttention``.

The official DecAlign transformer (``docs/decalign.md`` section 3.4) projects the query
with the first third of one packed in-projection ``W_in [3D, D]``, the keys with the
second and the values with the last, then attends per head and applies ``out_proj``.
This module keeps that packing as one parameter ``in_proj/kernel [D, 3D]`` (Q | K | V
columns; ``[D_in, D_out]`` as every Flax kernel) and initialises it as PyTorch does
(``docs/decalign.md`` section 3.7):

* ``in_proj``: Xavier-uniform over the packed matrix, fan_in = D, fan_out = 3D, so
  every entry of Q, K and V is ``U(-a, a)`` with ``a = sqrt(6 / (4 D))``; bias 0.
* ``out_proj``: PyTorch's ``nn.Linear`` default, kaiming-uniform with ``a = sqrt(5)``,
  i.e. ``U(-1/sqrt(D), 1/sqrt(D))``; bias 0 (the official ``_reset_parameters`` and
  PyTorch's both zero it).

Speed (CPU; attention is most of the train step): the ``[B, H, T, S]`` weights are
touched as few times as possible - the ``1/sqrt(hd)`` scale is applied to Q, and the
softmax's row normaliser to the ``[B, T, H, hd]`` output after the value contraction
(``softmax(s) V = (exp(s - max) V) / sum exp(s - max)``; inverted dropout commutes
with it); heads stay in the projections' ``[B, T, H, hd]`` layout; when the key and
value inputs are the same array (no embed dropout: evaluation, or rate 0) K and V
come from one GEMM with the ``[D, 2D]`` slice of ``in_proj``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmodal.layers import keep_mask

__all__ = ["TorchMultiheadAttention", "torch_linear_init"]

Array = jax.Array

torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""``torch.nn.Linear`` / ``Conv1d`` default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""

_MASKED = -1e30  # finite "minus infinity" for masked keys (no NaN on empty rows)


class TorchMultiheadAttention(nn.Module):
    """``query [B, T, D]`` attending to keys ``[B, S, D]`` / values ``[B, S, D]``.

    Attributes:
      dim: D (divisible by ``num_heads``).
      num_heads: H.
      dropout_rate: attention-weight dropout (after the softmax, as PyTorch).
      dropout_impl: ``hash`` | ``threefry`` (:func:`xmodal.layers.keep_mask`).
      dtype: compute dtype (parameters stay float32).
    """

    dim: int
    num_heads: int
    dropout_rate: float = 0.0
    dropout_impl: str = "hash"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        query: Array,
        key: Array,
        value: Array,
        mask: Array | None = None,
        *,
        deterministic: bool,
    ) -> Array:
        """Returns ``[B, T, D]``; ``mask`` ``[B, 1, 1, S]`` (True = attend) or None."""
        d, h = self.dim, self.num_heads
        if d % h:
            raise ValueError(f"dim {d} is not divisible by num_heads {h}")
        hd = d // h
        w_in = self.param(
            "in_proj_kernel", nn.initializers.xavier_uniform(), (d, 3 * d)
        )  # [D, 3D]: fan_in D, fan_out 3D
        b_in = self.param("in_proj_bias", nn.initializers.zeros_init(), (3 * d,))
        w_out = self.param("out_proj_kernel", torch_linear_init, (d, d))
        b_out = self.param("out_proj_bias", nn.initializers.zeros_init(), (d,))
        w = w_in.astype(self.dtype).reshape(d, 3, h, hd)
        b = b_in.astype(self.dtype).reshape(3, h, hd)
        query, key, value = (a.astype(self.dtype) for a in (query, key, value))

        # Heads stay in place ([B, T, H, hd]): the projections are plain GEMMs and
        # the two attention contractions take their batch dims (b, h) as they come.
        scale = jnp.asarray(1.0 / math.sqrt(hd), self.dtype)  # on q, not on [T, S]
        q = (jnp.einsum("btd,dhe->bthe", query, w[:, 0]) + b[0]) * scale
        if key is value:  # one GEMM for K and V
            kv = jnp.einsum("bsd,dnhe->nbshe", key, w[:, 1:]) + b[1:, None, None]
            k, v = kv[0], kv[1]  # [B, S, H, hd]
        else:
            k = jnp.einsum("bsd,dhe->bshe", key, w[:, 1]) + b[1]
            v = jnp.einsum("bsd,dhe->bshe", value, w[:, 2]) + b[2]
        scores = jnp.einsum("bthe,bshe->bhts", q, k).astype(jnp.float32)
        if mask is not None:
            scores = jnp.where(mask, scores, _MASKED)
        # softmax(s) V = (exp(s - max) V) / sum exp(s - max): the row normaliser is
        # applied to the [B, T, H, hd] output instead of the [B, H, T, S] weights;
        # dropout commutes with it (a per-row positive scalar).
        top = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
        unnorm = jnp.exp(scores - top)  # [B, H, T, S]
        norm = jnp.sum(unnorm, axis=-1)  # [B, H, T]
        unnorm = unnorm.astype(self.dtype)
        if not deterministic and self.dropout_rate > 0.0:
            keep_prob = 1.0 - self.dropout_rate
            keep = keep_mask(
                self.make_rng("dropout"),
                keep_prob,
                unnorm.shape,
                impl=self.dropout_impl,
            )
            unnorm = jnp.where(keep, unnorm, 0)
            norm = norm * keep_prob
        out = jnp.einsum("bhts,bshe->bthe", unnorm, v)
        out = out / jnp.transpose(norm, (0, 2, 1))[..., None].astype(self.dtype)
        out = out.reshape((*query.shape[:2], d))
        return out @ w_out.astype(self.dtype) + b_out.astype(self.dtype)
