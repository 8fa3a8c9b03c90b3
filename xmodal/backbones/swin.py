"""Swin Transformer (Liu et al., 2021) as Hugging Face's ``SwinModel``.

``Swin(config).apply(variables, images)`` with ``images [B, H, W, C]`` (normalised,
any size) returns ``SwinModel``'s ``last_hidden_state`` ``[B, h * w, D_last]``: the
tokens of the last stage (row-major), after the final layer norm; ``h, w`` are the
patch grid ``ceil(H / p), ceil(W / p)`` halved (rounding up) once per patch merging.
With ``add_pooling_layer=True`` it returns ``(last_hidden_state, pooler_output)``,
the pooler being the token mean ``[B, D_last]`` (no parameters).

As in ``SwinModel``: images are zero-padded (bottom / right) to a multiple of the
patch; in each block the normalised tokens are zero-padded to a multiple of the
window (the padding tokens take part in attention, unmasked, exactly as there);
odd blocks shift the windows by ``window // 2`` (``jnp.roll``) and add the -100
cyclic-shift mask; a stage whose resolution is at most the window uses one window
and no shift; patch merging pads odd sizes. Stochastic depth is applied to the
attention branch only, as ``SwinModel`` does. Window partition is a reshape /
transpose; the shift mask and the relative-position index are NumPy constants built
at trace time from the static shapes.

Checkpoints: ``microsoft/swin-base-patch4-window7-224`` and
``microsoft/swin-base-patch4-window12-384`` (``SwinForImageClassification`` files:
names under ``swin.``, the ``classifier`` head ignored).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.blocks import (
    DropPath,
    Mlp,
    PatchEmbed,
    SelfAttention,
    check_images,
)
from xmodal.backbones.hf_config import as_pair, fields_from_hf, to_hf_dict
from xmodal.layers import Dropout

__all__ = [
    "Swin",
    "SwinConfig",
    "relative_position_index",
    "shift_mask",
    "swin_name_map",
    "window_plan",
]

Dtype = Any

#: Layer-norm epsilon of ``SwinModel``'s patch-embedding and patch-merging norms
#: (PyTorch's default; ``layer_norm_eps`` applies to the blocks and the final norm).
TORCH_LAYER_NORM_EPS = 1e-5

#: Logit bias between tokens of different regions of a shifted window (``SwinModel``).
SHIFT_MASK_VALUE = -100.0


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    """The fields of Hugging Face's ``SwinConfig`` (``model_type: "swin"``) that the
    encoder reads, with Hugging Face's defaults (Swin-T at 224)."""

    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (4, 4)
    num_channels: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5

    model_type: ClassVar[str] = "swin"
    architecture: ClassVar[str] = "SwinModel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", as_pair(self.image_size))
        object.__setattr__(self, "patch_size", as_pair(self.patch_size))
        object.__setattr__(self, "depths", tuple(int(x) for x in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(x) for x in self.num_heads))
        if len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"depths {self.depths} and num_heads {self.num_heads} differ in length"
            )
        for s, heads in enumerate(self.num_heads):
            if self.stage_dim(s) % heads:
                raise ValueError(
                    f"stage {s} width {self.stage_dim(s)} is not divisible by {heads} heads"
                )

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> SwinConfig:
        """From a ``config.json`` dict of ``model_type`` "swin"."""
        return fields_from_hf(cls, d)

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers' ``SwinModel`` reads."""
        out = to_hf_dict(self)
        return {
            "model_type": self.model_type,
            "architectures": [self.architecture],
            **out,
        }

    def stage_dim(self, stage: int) -> int:
        """Token width in stage ``stage`` (``embed_dim * 2**stage``)."""
        return self.embed_dim * 2**stage

    @property
    def hidden_size(self) -> int:
        """Width of the output tokens (the last stage's)."""
        return self.stage_dim(len(self.depths) - 1)


# ----------------------------------------------------------------- static geometry


def window_plan(
    resolution: tuple[int, int],
    window_size: int,
    shift_size: int,
    always_partition: bool = False,
) -> tuple[int, int, tuple[int, int]]:
    """``(window, shift, padded resolution)`` of a block, as ``SwinLayer`` sets them.

    A stage no larger than the window is one unshifted window. ``SwinModel``'s
    relative-position table is sized for ``config.window_size``, so a stage smaller
    than the window fails there; it raises a ValueError here.
    """
    h, w = resolution
    if not always_partition and min(h, w) <= window_size:
        if min(h, w) < window_size:
            raise ValueError(
                f"Swin stage resolution {h}x{w} is smaller than the window "
                f"{window_size} (transformers' SwinModel fails on this too): use larger "
                "images or a smaller window_size"
            )
        shift_size = 0
    pad = (-h % window_size, -w % window_size)
    return window_size, shift_size, (h + pad[0], w + pad[1])


def _partition(x: np.ndarray | jax.Array, ws: int) -> Any:
    """``[B, H, W, C]`` -> ``[B * (H / ws) * (W / ws), ws * ws, C]`` (row-major windows)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // ws) * (w // ws), ws * ws, c)


def _merge(x: jax.Array, ws: int, h: int, w: int) -> jax.Array:
    """Inverse of :func:`_partition`: ``[B * nW, ws * ws, C]`` -> ``[B, h, w, C]``."""
    c = x.shape[-1]
    x = x.reshape(-1, h // ws, w // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


@functools.lru_cache(maxsize=64)
def shift_mask(padded: tuple[int, int], window: int, shift: int) -> np.ndarray:
    """Cyclic-shift logits bias ``[nW, ws * ws, ws * ws]`` (0 or -100), float32.

    After rolling by ``-shift``, each position belongs to one of 3 x 3 regions
    (``[0, H - ws)``, ``[H - ws, H - shift)``, ``[H - shift, H)`` per axis); tokens of
    a window attend only within their region.
    """
    h, w = padded
    rh = (np.arange(h) >= h - window).astype(int) + (np.arange(h) >= h - shift)
    rw = (np.arange(w) >= w - window).astype(int) + (np.arange(w) >= w - shift)
    region = (rh[:, None] * 3 + rw[None, :]).astype(np.float32)
    labels = _partition(region[None, :, :, None], window)[..., 0]  # [nW, N]
    differ = labels[:, None, :] != labels[:, :, None]
    return np.where(differ, np.float32(SHIFT_MASK_VALUE), np.float32(0.0))


@functools.lru_cache(maxsize=16)
def relative_position_index(window: int) -> np.ndarray:
    """``[N, N]`` index into the ``[(2ws - 1)^2, H]`` bias table (``N = ws^2``)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N]
    return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int32)


# ----------------------------------------------------------------- modules


class SwinBlock(nn.Module):
    """One Swin layer on ``[B, h * w, D]`` tokens of a static ``resolution``."""

    num_heads: int
    resolution: tuple[int, int]
    window_size: int
    shift_size: int
    mlp_ratio: float
    act: str
    layer_norm_eps: float
    qkv_bias: bool = True
    always_partition: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    deterministic: bool = True
    kernel_init: Any = nn.initializers.normal(0.02)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, h * w, D]`` -> ``[B, h * w, D]``."""
        b, _, d = x.shape
        h, w = self.resolution
        ws, shift, (hp, wp) = window_plan(
            self.resolution, self.window_size, self.shift_size, self.always_partition
        )
        norm = functools.partial(
            nn.LayerNorm,
            epsilon=self.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        drop = Dropout(self.hidden_dropout, deterministic=self.deterministic)
        x = x.astype(self.dtype)

        y = norm(name="norm1")(x).reshape(b, h, w, d)
        y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        windows = _partition(y, ws)  # [B * nW, N, D]

        table = self.param(
            "relative_position_bias_table",
            nn.initializers.normal(0.02),
            ((2 * ws - 1) ** 2, self.num_heads),
            self.param_dtype,
        )
        n = ws * ws
        bias = jnp.take(table, relative_position_index(ws).reshape(-1), axis=0)
        bias = bias.reshape(n, n, self.num_heads).transpose(2, 0, 1)[
            None
        ]  # [1, H, N, N]
        if shift:
            mask = shift_mask((hp, wp), ws, shift)  # [nW, N, N]
            bias = bias + mask[:, None]  # [nW, H, N, N]
            n_windows = mask.shape[0]
            bias = jnp.broadcast_to(bias[None], (b, *bias.shape))
            bias = bias.reshape(b * n_windows, self.num_heads, n, n)
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
        )(windows, bias=bias)

        y = _merge(attn, ws, hp, wp)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        y = y[:, :h, :w].reshape(b, h * w, d)
        y = DropPath(self.drop_path, deterministic=self.deterministic)(drop(y))
        x = x + y
        mlp = Mlp(
            int(self.mlp_ratio * d),
            self.act,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )
        return x + drop(mlp(norm(name="norm2")(x)))


class PatchMerging(nn.Module):
    """2 x 2 neighbours concatenated, normalised, projected: ``[B, h * w, D]`` ->
    ``[B, ceil(h / 2) * ceil(w / 2), 2D]`` (odd sizes zero-padded bottom / right).

    Channel order of the concatenation (``SwinPatchMerging``): (row 0, col 0),
    (row 1, col 0), (row 0, col 1), (row 1, col 1).
    """

    resolution: tuple[int, int]
    kernel_init: Any = nn.initializers.normal(0.02)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [B, h * w, D]`` -> ``[B, ceil(h / 2) * ceil(w / 2), 2D]``."""
        b, _, d = x.shape
        h, w = self.resolution
        y = x.reshape(b, h, w, d)
        y = jnp.pad(y, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        # [B, h2, row, w2, col, D] -> [B, h2, w2, col, row, D]
        y = y.reshape(b, h2, 2, w2, 2, d).transpose(0, 1, 3, 4, 2, 5)
        y = y.reshape(b, h2 * w2, 4 * d)
        y = nn.LayerNorm(
            epsilon=TORCH_LAYER_NORM_EPS,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="norm",
        )(y)
        return nn.Dense(
            2 * d,
            use_bias=False,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="reduction",
        )(y)


class Swin(nn.Module):
    """Swin encoder; parameters in float32, compute in ``dtype``.

    Attributes:
      config: the architecture.
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision).
      param_dtype: parameter dtype.
      remat: rematerialise each Swin block in the backward pass (``nn.remat``).
      add_pooling_layer: also return the mean-pooled output (see the module doc).
      always_partition: ``SwinModel``'s ``always_partition`` (pad small stages to a
        window and keep the shift instead of using one window).
      attention_implementation: ``jax.nn.dot_product_attention``'s implementation.
    """

    config: SwinConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    add_pooling_layer: bool = False
    always_partition: bool = False
    attention_implementation: str | None = None

    @nn.compact
    def __call__(
        self, images: jax.Array, *, deterministic: bool = True
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``images [B, H, W, C]`` -> last hidden state ``[B, h * w, D_last]``.

        ``deterministic=False`` turns dropout and stochastic depth on (rng
        collection ``"dropout"``).
        """
        cfg = self.config
        check_images(images, "Swin", cfg.num_channels)
        init = nn.initializers.normal(cfg.initializer_range)
        b, height, width, _ = images.shape
        ph, pw = cfg.patch_size
        images = jnp.pad(images, ((0, 0), (0, -height % ph), (0, -width % pw), (0, 0)))
        x = PatchEmbed(
            cfg.embed_dim,
            cfg.patch_size,
            kernel_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="patch_embed",
        )(images)
        h, w = x.shape[1:3]
        x = x.reshape(b, h * w, cfg.embed_dim)
        x = nn.LayerNorm(
            epsilon=TORCH_LAYER_NORM_EPS,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="embed_norm",
        )(x)
        if cfg.use_absolute_embeddings:
            n = (cfg.image_size[0] // ph) * (cfg.image_size[1] // pw)
            if h * w != n:
                raise ValueError(
                    f"Swin with absolute position embeddings expects {cfg.image_size} "
                    f"images, got {(height, width)}"
                )
            pos = self.param(
                "position_embeddings",
                nn.initializers.zeros,
                (1, n, cfg.embed_dim),
                self.param_dtype,
            )
            x = x + pos.astype(self.dtype)
        x = Dropout(cfg.hidden_dropout_prob, deterministic=deterministic)(x)

        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        block_cls = nn.remat(SwinBlock) if self.remat else SwinBlock
        k = 0
        for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
            for j in range(depth):
                x = block_cls(
                    num_heads=heads,
                    resolution=(h, w),
                    window_size=cfg.window_size,
                    shift_size=0 if j % 2 == 0 else cfg.window_size // 2,
                    mlp_ratio=cfg.mlp_ratio,
                    act=cfg.hidden_act,
                    layer_norm_eps=cfg.layer_norm_eps,
                    qkv_bias=cfg.qkv_bias,
                    always_partition=self.always_partition,
                    hidden_dropout=cfg.hidden_dropout_prob,
                    attention_dropout=cfg.attention_probs_dropout_prob,
                    drop_path=rates[k],
                    deterministic=deterministic,
                    kernel_init=init,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    implementation=self.attention_implementation,
                    name=f"stage_{s}_block_{j}",
                )(x)
                k += 1
            if s < len(cfg.depths) - 1:
                x = PatchMerging(
                    (h, w),
                    kernel_init=init,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"stage_{s}_merge",
                )(x)
                h, w = (h + 1) // 2, (w + 1) // 2
        x = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="layernorm",
        )(x)
        if not self.add_pooling_layer:
            return x
        return x, jnp.mean(x, axis=1)


def swin_name_map(config: SwinConfig, add_pooling_layer: bool) -> list[hc.TensorMap]:
    """Flax parameter <- ``SwinModel`` tensor names (without the ``swin.`` prefix)."""
    del add_pooling_layer  # the pooler has no parameters
    m = [
        hc.TensorMap(
            ("patch_embed", "kernel"),
            ("embeddings.patch_embeddings.projection.weight",),
            "conv",
        ),
        hc.TensorMap(
            ("patch_embed", "bias"), ("embeddings.patch_embeddings.projection.bias",)
        ),
        *hc.layer_norm(("embed_norm",), "embeddings.norm"),
    ]
    if config.use_absolute_embeddings:
        m.append(
            hc.TensorMap(("position_embeddings",), ("embeddings.position_embeddings",))
        )
    for s, depth in enumerate(config.depths):
        for j in range(depth):
            hf, fx = f"encoder.layers.{s}.blocks.{j}.", f"stage_{s}_block_{j}"
            qkv = [f"{hf}attention.self.{n}" for n in ("query", "key", "value")]
            m += hc.layer_norm((fx, "norm1"), f"{hf}layernorm_before")
            m += hc.fused_linear((fx, "attention", "qkv"), qkv, bias=config.qkv_bias)
            m += hc.linear((fx, "attention", "out"), f"{hf}attention.output.dense")
            m.append(
                hc.TensorMap(
                    (fx, "relative_position_bias_table"),
                    (f"{hf}attention.self.relative_position_bias_table",),
                )
            )
            m += hc.layer_norm((fx, "norm2"), f"{hf}layernorm_after")
            m += hc.linear((fx, "mlp", "fc1"), f"{hf}intermediate.dense")
            m += hc.linear((fx, "mlp", "fc2"), f"{hf}output.dense")
        if s < len(config.depths) - 1:
            hf, fx = f"encoder.layers.{s}.downsample.", f"stage_{s}_merge"
            m += hc.layer_norm((fx, "norm"), f"{hf}norm")
            m += hc.linear((fx, "reduction"), f"{hf}reduction", bias=False)
    m += hc.layer_norm(("layernorm",), "layernorm")
    return m
