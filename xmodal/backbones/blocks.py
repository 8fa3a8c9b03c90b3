"""Flax Linen building blocks shared by the backbones.

Shape letters: ``B`` batch, ``T`` query tokens, ``S`` key tokens, ``D`` width,
``H`` heads, ``K = D / H`` head width, ``F`` MLP width.

Every block computes in ``dtype`` (e.g. ``jnp.bfloat16``) and keeps its parameters in
``param_dtype`` (float32); layer-norm statistics and the attention softmax always run
in float32 (Flax's ``LayerNorm`` and ``jax.nn.dot_product_attention`` do so). The
query / key / value projections are one fused GEMM (``qkv``, kernel ``[D, 3D]``); the
checkpoint loader concatenates Hugging Face's separate ``query`` / ``key`` / ``value``
matrices into it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmodal.layers import Dropout, keep_mask

__all__ = [
    "ACTIVATIONS",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "SelfAttention",
    "TransformerBlock",
    "activation",
    "attention",
    "check_ids",
    "check_images",
    "encoder_layers",
]

Dtype = Any


def _quick_gelu(x: jax.Array) -> jax.Array:
    # CLIP's activation (Radford et al., 2021): x * sigmoid(1.702 x).
    return x * jax.nn.sigmoid(1.702 * x)


#: ``hidden_act`` values of Hugging Face configs -> JAX functions ("gelu" is the exact
#: erf form; "gelu_new" / "gelu_pytorch_tanh" the tanh approximation).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name`` in a Hugging Face config (``hidden_act``)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation {name!r} is not supported (known: {sorted(ACTIVATIONS)})"
        ) from None


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """Scaled dot-product attention, ``softmax(q k^T / sqrt(K) + bias) v``.

    Args:
      query: ``[B, T, H, K]``.
      key, value: ``[B, S, H, K]``.
      bias: additive logits bias, 4-D and broadcastable to ``[B, H, T, S]``.
      mask: boolean, broadcastable to ``[B, H, T, S]``; False keys are excluded.
        A query row whose keys are all masked gets uniform weights (finite, never
        NaN).
      dropout_rate: dropout on the attention probabilities (as Hugging Face's
        models apply it); used only when ``dropout_rng`` is given.
      dropout_rng: key of the dropout mask; None = no dropout.
      implementation: ``jax.nn.dot_product_attention``'s (None, "xla", "cudnn").

    Returns:
      ``[B, T, H, K]`` in ``value``'s dtype.
    """
    if dropout_rng is None or dropout_rate == 0.0:
        if bias is not None:
            bias = bias.astype(query.dtype)
        return jax.nn.dot_product_attention(
            query, key, value, bias=bias, mask=mask, implementation=implementation
        )
    # Dropout on the probabilities is not part of jax.nn.dot_product_attention: the
    # same computation written out (float32 logits and softmax).
    scale = np.float32(query.shape[-1] ** -0.5)
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32
    )
    logits = logits * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, np.float32(-0.7 * np.finfo(np.float32).max))
    probs = jax.nn.softmax(logits, axis=-1)
    keep = keep_mask(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / np.float32(1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(value.dtype), value)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection.

    Parameters: ``qkv`` (kernel ``[D, 3D]`` laid out ``[q | k | v]``, each head-major
    ``[H, K]`` as in Hugging Face's models) and ``out`` (kernel ``[D, D]``).
    """

    num_heads: int
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    deterministic: bool = True
    kernel_init: Callable[..., jax.Array] = nn.initializers.normal(0.02)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """``x [B, T, D]``, ``bias`` / ``mask`` as in :func:`attention` -> ``[B, T, D]``."""
        b, t, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
        dense = functools.partial(
            nn.Dense,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        qkv = dense(3 * d, use_bias=self.qkv_bias, name="qkv")(x)
        qkv = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads)
        rng = None
        if not self.deterministic and self.dropout_rate > 0.0:
            rng = self.make_rng("dropout")
        y = attention(
            qkv[:, :, 0],
            qkv[:, :, 1],
            qkv[:, :, 2],
            bias=bias,
            mask=mask,
            dropout_rate=self.dropout_rate,
            dropout_rng=rng,
            implementation=self.implementation,
        )
        return dense(d, name="out")(y.reshape(b, t, d))


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))``: ``[..., D] -> [..., F] -> [..., D]``."""

    hidden_dim: int
    act: str = "gelu"
    kernel_init: Callable[..., jax.Array] = nn.initializers.normal(0.02)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., D]`` -> ``[..., D]``."""
        dense = functools.partial(
            nn.Dense,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        y = dense(self.hidden_dim, name="fc1")(x)
        y = activation(self.act)(y)
        return dense(x.shape[-1], name="fc2")(y)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drops a whole residual branch per example.

    Identity when ``deterministic`` or ``rate == 0`` (no random draw then).
    """

    rate: float
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, ...]`` -> same shape, rows zeroed with probability ``rate``."""
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = keep_mask(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class TransformerBlock(nn.Module):
    """One encoder layer: self-attention and MLP, each a residual branch.

    ``pre_norm=True`` (ViT, CLIP): ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.
    ``pre_norm=False`` (BERT): ``norm1(x + attn(x))``, then ``norm2(x + mlp(x))``.
    Dropout of ``hidden_dropout`` follows each branch, as in Hugging Face's models.
    Parameters: ``attention`` (:class:`SelfAttention`), ``norm1``, ``norm2``, ``mlp``.
    """

    num_heads: int
    mlp_dim: int
    act: str
    layer_norm_eps: float
    pre_norm: bool = True
    qkv_bias: bool = True
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    deterministic: bool = True
    kernel_init: Callable[..., jax.Array] = nn.initializers.normal(0.02)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``x [B, T, D]``, ``mask`` broadcastable to ``[B, H, T, T]`` -> ``[B, T, D]``."""
        norm = functools.partial(
            nn.LayerNorm,
            epsilon=self.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        attn = SelfAttention(
            self.num_heads,
            qkv_bias=self.qkv_bias,
            dropout_rate=self.attention_dropout,
            deterministic=self.deterministic,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            implementation=self.implementation,
            name="attention",
        )
        mlp = Mlp(
            self.mlp_dim,
            self.act,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )
        drop = Dropout(self.hidden_dropout, deterministic=self.deterministic)
        x = x.astype(self.dtype)
        if self.pre_norm:
            x = x + drop(attn(norm(name="norm1")(x), mask=mask))
            return x + drop(mlp(norm(name="norm2")(x)))
        x = norm(name="norm1")(x + drop(attn(x, mask=mask)))
        return norm(name="norm2")(x + drop(mlp(x)))


def encoder_layers(
    tower: nn.Module,
    x: jax.Array,
    mask: jax.Array | None = None,
    *,
    pre_norm: bool,
    deterministic: bool,
    hidden_dropout: float = 0.0,
    attention_dropout: float = 0.0,
    qkv_bias: bool = True,
) -> jax.Array:
    """The ``config.num_hidden_layers`` :class:`TransformerBlock` layers ``layer_{i}``
    of a backbone ``tower`` over ``x [B, T, D]`` (``mask`` as the block's).

    Call it inside the tower's compact ``__call__``: the layers become the tower's
    submodules, sized by its ``config`` (``num_attention_heads``,
    ``intermediate_size``, ``hidden_act``, ``layer_norm_eps``, ``initializer_range``)
    and computing as the tower does (``dtype``, ``param_dtype``, ``remat``,
    ``attention_implementation``).
    """
    cfg = tower.config
    block = nn.remat(TransformerBlock) if tower.remat else TransformerBlock
    for i in range(cfg.num_hidden_layers):
        x = block(
            num_heads=cfg.num_attention_heads,
            mlp_dim=cfg.intermediate_size,
            act=cfg.hidden_act,
            layer_norm_eps=cfg.layer_norm_eps,
            pre_norm=pre_norm,
            qkv_bias=qkv_bias,
            hidden_dropout=hidden_dropout,
            attention_dropout=attention_dropout,
            deterministic=deterministic,
            kernel_init=nn.initializers.normal(cfg.initializer_range),
            dtype=tower.dtype,
            param_dtype=tower.param_dtype,
            implementation=tower.attention_implementation,
            name=f"layer_{i}",
        )(x, mask)
    return x


def check_ids(
    input_ids: jax.Array,
    model: str,
    max_positions: int,
    **aligned: jax.Array | None,
) -> None:
    """Raises a ValueError naming ``model`` unless ``input_ids`` is ``[B, L]`` with
    ``L <= max_positions`` and each given ``aligned`` array (``attention_mask``,
    ``token_type_ids``) has its shape (the text towers' input contract)."""
    if input_ids.ndim != 2:
        raise ValueError(
            f"{model} expects input_ids [B, L], got {tuple(input_ids.shape)}"
        )
    b, length = input_ids.shape
    if length > max_positions:
        raise ValueError(
            f"sequence length {length} exceeds max_position_embeddings {max_positions}"
        )
    for name, arr in aligned.items():
        if arr is not None and tuple(arr.shape) != (b, length):
            raise ValueError(
                f"{name} has shape {tuple(arr.shape)}, expected input_ids' {(b, length)}"
            )


def check_images(
    images: jax.Array,
    model: str,
    num_channels: int,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Raises a ValueError naming ``model`` unless ``images`` is NHWC ``[B, H, W, C]``
    with ``C = num_channels`` and, when ``image_size`` is given, ``(H, W) =
    image_size`` (the backbones' input contract, checked before any arithmetic)."""
    shape = tuple(images.shape)
    if (
        len(shape) == 4
        and shape[-1] == num_channels
        and (image_size is None or shape[1:3] == tuple(image_size))
    ):
        return
    if image_size is None:
        want, layout = f"[B, H, W, {num_channels}]", "NHWC"
    else:
        height, width = image_size
        want = f"[B, {height}, {width}, {num_channels}]"
        layout = "NHWC, the config's image_size"
    raise ValueError(f"{model} expects images {want} ({layout}), got {shape}")


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: a stride-``p`` ``p x p`` convolution as one GEMM.

    ``images [B, H, W, C]`` (H, W multiples of the patch) -> ``[B, H/p, W/p, D]``.
    Parameters: ``kernel`` in HWIO layout ``[p_h, p_w, C, D]`` (a PyTorch ``Conv2d``
    weight ``[D, C, p_h, p_w]`` transposed) and, if ``use_bias``, ``bias [D]``.
    """

    features: int
    patch_size: tuple[int, int]
    use_bias: bool = True
    kernel_init: Callable[..., jax.Array] = nn.initializers.normal(0.02)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """``images [B, H, W, C]`` -> ``[B, H/p_h, W/p_w, D]``."""
        b, h, w, c = images.shape
        ph, pw = self.patch_size
        if h % ph or w % pw:
            raise ValueError(
                f"image size {(h, w)} is not a multiple of the patch {(ph, pw)}"
            )
        kernel = self.param(
            "kernel", self.kernel_init, (ph, pw, c, self.features), self.param_dtype
        )
        # [B, h, ph, w, pw, C] -> [B, h, w, ph, pw, C]: rows in the kernel's HWI order.
        x = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, h // ph, w // pw, ph * pw * c).astype(self.dtype)
        y = jnp.dot(x, kernel.reshape(ph * pw * c, self.features).astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias", nn.initializers.zeros, (self.features,), self.param_dtype
            )
            y = y + bias.astype(self.dtype)
        return y
