"""CDDS model: token encoders and the dual-path UNet decoupler (docs/cdds.md §3).

Shapes: images ``[B, P, D_v]`` (stored features) or ``[B, S, S, 3]`` uint8 pixels
(``vit`` / ``swin`` / ``clip`` backbones, which give the ``[B, P, D_v]`` tokens) ->
tokens ``[B, P, d]``; captions ``[B, L, D_t]`` (stored features), ``[B, L]`` word ids
(``bigru``) or ``[B, L]`` tokenizer ids of a text backbone (``bert`` WordPiece,
``clip_text`` BPE) -> ``[B, L, d]`` with a ``[B, L]`` mask. Backbone tokens go through the same projections as stored features
(``image_proj``, ``text_proj``; docs/cdds.md §3.4). Each modality has its own decoupler
(separate weights):

    h0 = x, h1 = Enc1(h0), h2 = Enc2(h1)
    h^(k) = LN(h2) + sigma * eps^(k),  k = 1..z    (training; sigma = 0, z = 1 at eval)
    for p in {s, m}:  g1 = Dec1_p(h^(k)),  g2 = Dec2_p(Dense([g1; h1])),
                      out_p = Dense([g2; h0])
    x^s = mean_k out_s(k),  x^m = mean_k out_m(k)

Blocks are pre-LN transformer blocks (d, H heads, MLP ratio 4, GELU, no dropout); text
blocks mask padded keys. The z noisy copies are a batch axis. ``Dense([a; b])`` is
computed as ``Dense(a) + Dense_nobias(b)``, which is the same linear map without
materialising the concatenation or tiling the skip over the z copies.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmodal.backbones import registry

__all__ = [
    "Block",
    "CDDSModel",
    "Decoupler",
    "TextGRU",
    "model_rngs",
    "normalise_pixels",
]

Array = jax.Array


class Block(nn.Module):
    """Pre-LN transformer block over ``[N, L, d]`` with a key mask ``[N, L]``."""

    dim: int
    num_heads: int
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        h = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
        attn_mask = mask[:, None, None, :]  # [N, 1, 1, L]: every query sees valid keys
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            qkv_features=self.dim,
            out_features=self.dim,
            dtype=self.dtype,
            deterministic=True,
            name="attn",
        )(h, h, mask=attn_mask)
        x = x + h
        h = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
        h = nn.Dense(self.dim * self.mlp_ratio, dtype=self.dtype, name="mlp_in")(h)
        h = nn.gelu(h)
        h = nn.Dense(self.dim, dtype=self.dtype, name="mlp_out")(h)
        return x + h


class _SkipMerge(nn.Module):
    """``Dense([a; b])`` for ``a [z, N, L, d]`` and a skip ``b [N, L, d]`` shared by z."""

    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, a: Array, skip: Array) -> Array:
        from_a = nn.Dense(self.dim, dtype=self.dtype, name="from_path")(a)
        from_skip = nn.Dense(
            self.dim, use_bias=False, dtype=self.dtype, name="from_skip"
        )(skip)
        return from_a + from_skip[None]


class Decoupler(nn.Module):
    """Dual-path UNet decoupler: ``x [N, L, d] -> (x^s, x^m)``, each ``[N, L, d]``.

    Attributes:
      dim, num_heads, mlp_ratio: block sizes.
      num_samples: z, the number of noisy bottleneck copies in training.
      sigma: noise scale at the bottleneck in training (0 disables the noise).
    """

    dim: int
    num_heads: int
    mlp_ratio: int = 4
    num_samples: int = 4
    sigma: float = 0.1
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool) -> tuple[Array, Array]:
        # Rematerialised blocks recompute their activations in the backward pass.
        block_cls = nn.remat(Block) if self.remat else Block
        block = lambda name: block_cls(
            self.dim, self.num_heads, self.mlp_ratio, self.dtype, name=name
        )
        n, length, d = x.shape
        h0 = x
        h1 = block("enc1")(h0, mask)
        h2 = block("enc2")(h1, mask)
        bottleneck = nn.LayerNorm(dtype=self.dtype, name="bottleneck_ln")(h2)
        if train and self.sigma > 0 and self.num_samples > 0:
            z = self.num_samples
            eps = jax.random.normal(self.make_rng("noise"), (z, *bottleneck.shape))
            noisy = bottleneck[None] + self.sigma * eps.astype(bottleneck.dtype)
        else:
            z = 1
            noisy = bottleneck[None]
        mask_z = jnp.broadcast_to(mask[None], (z, n, length)).reshape(z * n, length)

        outputs = []
        for path in ("s", "m"):
            g1 = block(f"dec1_{path}")(noisy.reshape(z * n, length, d), mask_z)
            g1 = g1.reshape(z, n, length, d)
            g2_in = _SkipMerge(self.dim, self.dtype, name=f"skip1_{path}")(g1, h1)
            g2 = block(f"dec2_{path}")(g2_in.reshape(z * n, length, d), mask_z)
            g2 = g2.reshape(z, n, length, d)
            out = _SkipMerge(self.dim, self.dtype, name=f"skip0_{path}")(g2, h0)
            outputs.append(jnp.mean(out, axis=0))
        return outputs[0], outputs[1]


class TextGRU(nn.Module):
    """Word embeddings + bidirectional GRU (SCAN/VSE style, trained from scratch).

    ``tokens [N, L]`` int32 with ``mask [N, L]`` -> ``[N, L, dim]``, the mean of the
    forward and backward hidden states (each direction only reads valid words).
    """

    vocab_size: int
    word_dim: int
    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: Array, mask: Array) -> Array:
        emb = nn.Embed(self.vocab_size, self.word_dim, dtype=self.dtype, name="embed")(
            tokens
        )
        lengths = jnp.sum(mask.astype(jnp.int32), axis=-1)
        forward = nn.RNN(nn.GRUCell(self.dim, dtype=self.dtype, name="gru_forward"))
        backward = nn.RNN(nn.GRUCell(self.dim, dtype=self.dtype, name="gru_backward"))
        out = nn.Bidirectional(forward, backward, merge_fn=lambda a, b: (a + b) / 2)(
            emb, seq_lengths=lengths
        )
        return out * mask[..., None].astype(out.dtype)


class CDDSModel(nn.Module):
    """Encoders and projections, one decoupler per modality, learned CDDS scalars.

    Parameters outside the encoders: ``alpha_v``, ``alpha_t`` ``[d]`` (soft-threshold
    rows, init ``alpha_init``), ``w_s``, ``w_m`` (reconstruction weights, init 1) and,
    with ``log_tau_init`` set (``semantics.tau_mode="learned"``), the scalar ``log_tau``.
    Backbone parameters live under ``image_backbone/`` and ``text_backbone/`` (the
    names the 0.1x learning-rate group matches).

    Attributes:
      dim: d. num_heads, mlp_ratio: decoupler blocks.
      image_encoder: ``features`` (Dense on stored features) or the backbone kind
        (``vit``, ``swin``, ``clip``) of ``image_backbone``.
      text_encoder: ``features`` (Dense on stored features; ``precomputed`` is read as
        ``features``), ``bigru``, or a text kind of the backbone registry (``bert``,
        ``clip_text``: ``text_backbone``).
      image_backbone, text_backbone: the backbone modules (:mod:`cdds_jax.encoders`).
      pixel_mean, pixel_std: per-channel normalisation of [0, 1] pixels (the image
        backbone's: ImageNet or CLIP).
      backbone_dropout: the backbones' own dropout (their checkpoint's rates) in
        training, as LAPS fine-tunes them in train mode (rng stream ``dropout``).
      vocab_size, word_dim: for ``bigru``.
      decouple: False = ablation "w/o Dec." (x^s = x, no UNet, no x^m).
      num_samples, sigma: decoupler noise (z, sigma).
      log_tau_init: initial learnable log-temperature of the soft threshold; None =
        no such parameter (the temperature is not learned).
    """

    dim: int = 512
    num_heads: int = 8
    mlp_ratio: int = 4
    image_encoder: str = "features"
    text_encoder: str = "features"
    image_backbone: nn.Module | None = None
    text_backbone: nn.Module | None = None
    pixel_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    backbone_dropout: bool = False
    vocab_size: int = 0
    word_dim: int = 300
    decouple: bool = True
    num_samples: int = 4
    sigma: float = 0.1
    alpha_init: float = 1.0
    log_tau_init: float | None = None
    remat: bool = False
    dtype: Any = jnp.float32

    def setup(self) -> None:
        if (self.image_encoder == "features") != (self.image_backbone is None):
            raise ValueError(
                f"model.image_encoder={self.image_encoder!r} needs "
                f"{'no' if self.image_encoder == 'features' else 'an'} image backbone"
            )
        backbones = registry.kinds("text")
        if (self.text_encoder in backbones) != (self.text_backbone is not None):
            raise ValueError(
                f"model.text_encoder={self.text_encoder!r}: a text backbone goes with "
                f"{' / '.join(backbones)} only"
            )
        self.image_proj = nn.Dense(self.dim, dtype=self.dtype)
        if self.text_encoder in ("features", "precomputed", *backbones):
            self.text_proj = nn.Dense(self.dim, dtype=self.dtype)
        elif self.text_encoder == "bigru":
            if self.vocab_size <= 0:
                raise ValueError("model.text_encoder='bigru' needs vocab_size > 0")
            self.text_gru = TextGRU(
                self.vocab_size, self.word_dim, self.dim, self.dtype
            )
        else:
            raise ValueError(
                f"model.text_encoder: unknown {self.text_encoder!r} "
                f"(known: features, bigru, {', '.join(backbones)})"
            )
        if self.decouple:
            kwargs = dict(
                dim=self.dim,
                num_heads=self.num_heads,
                mlp_ratio=self.mlp_ratio,
                num_samples=self.num_samples,
                sigma=self.sigma,
                remat=self.remat,
                dtype=self.dtype,
            )
            self.image_decoupler = Decoupler(**kwargs)
            self.text_decoupler = Decoupler(**kwargs)
        init = nn.initializers.constant(self.alpha_init)
        self.alpha_v = self.param("alpha_v", init, (self.dim,), jnp.float32)
        self.alpha_t = self.param("alpha_t", init, (self.dim,), jnp.float32)
        self.w_s = self.param("w_s", nn.initializers.ones, (), jnp.float32)
        self.w_m = self.param("w_m", nn.initializers.ones, (), jnp.float32)
        if self.log_tau_init is not None:
            tau0 = nn.initializers.constant(self.log_tau_init)
            self.log_tau = self.param("log_tau", tau0, (), jnp.float32)

    def _decouple(
        self, decoupler: Any, x: Array, mask: Array, train: bool
    ) -> dict[str, Array]:
        if not self.decouple:
            return {"x": x, "s": x, "m": jnp.zeros_like(x), "mask": mask}
        s, m = decoupler(x, mask, train=train)
        return {"x": x, "s": s, "m": m, "mask": mask}

    def _dropout(self, train: bool) -> bool:
        """``deterministic`` for the backbones."""
        return not (train and self.backbone_dropout)

    def encode_image(self, images: Array, *, train: bool) -> dict[str, Array]:
        """``images [B, P, D_v]`` features or ``[B, S, S, 3]`` pixels (0-255) -> dict
        of ``x``, ``s``, ``m`` ``[B, P, d]``, ``mask``."""
        if self.image_backbone is not None:
            pixels = normalise_pixels(images, self.pixel_mean, self.pixel_std)
            images = self.image_backbone(
                pixels.astype(self.dtype), deterministic=self._dropout(train)
            )
        x = self.image_proj(images.astype(self.dtype))
        mask = jnp.ones(x.shape[:2], bool)
        return self._decouple(
            self.image_decoupler if self.decouple else None, x, mask, train
        )

    def encode_text(self, text: Array, mask: Array, *, train: bool) -> dict[str, Array]:
        """Features ``[B, L, D_t]`` or ids ``[B, L]`` + ``mask [B, L]`` -> token dict."""
        mask = mask.astype(bool)
        if self.text_encoder == "bigru":
            x = self.text_gru(text, mask)
        else:
            if self.text_backbone is not None:
                text = self.text_backbone(
                    text.astype(jnp.int32),
                    mask.astype(jnp.int32),
                    deterministic=self._dropout(train),
                )
            x = self.text_proj(text.astype(self.dtype))
        x = x * mask[..., None].astype(x.dtype)
        return self._decouple(
            self.text_decoupler if self.decouple else None, x, mask, train
        )

    def scalars(self) -> dict[str, Array]:
        """The learned CDDS scalars: ``alpha_v``, ``alpha_t`` ``[d]``, ``w_s``, ``w_m``
        (and ``log_tau`` when the temperature is learned)."""
        out = {
            "alpha_v": self.alpha_v,
            "alpha_t": self.alpha_t,
            "w_s": self.w_s,
            "w_m": self.w_m,
        }
        if self.log_tau_init is not None:
            out["log_tau"] = self.log_tau
        return out

    def __call__(
        self, images: Array, text: Array, text_mask: Array, *, train: bool
    ) -> tuple[dict[str, Array], dict[str, Array], dict[str, Array]]:
        """Both modalities and the scalars (used by ``init`` and the train step)."""
        img = self.encode_image(images, train=train)
        txt = self.encode_text(text, text_mask, train=train)
        return img, txt, self.scalars()


def normalise_pixels(
    images: Array, mean: tuple[float, ...], std: tuple[float, ...]
) -> Array:
    """uint8 (0-255) ``images [B, S, S, 3]`` -> float32 ``(x / 255 - mean) / std``
    per channel (the image backbone's normalisation, docs/cdds.md §3.4)."""
    m = jnp.asarray(mean, jnp.float32) * 255.0
    s = jnp.asarray(std, jnp.float32) * 255.0
    return (images.astype(jnp.float32) - m) / s


def model_rngs(rng: jax.Array) -> dict[str, jax.Array]:
    """The model's PRNG streams: bottleneck ``noise``, backbone ``dropout``."""
    return {"noise": rng, "dropout": jax.random.fold_in(rng, 1)}
