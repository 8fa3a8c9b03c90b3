"""LAPS ``cross_net`` (Fu et al., CVPR 2024): patch slimming, aggregation, max-mean.

The authors' code (CrossmodalGroup/LAPS, ``lib/cross_net.py``:
``CrossSparseAggrNet_v2``, ``TokenSparse``, ``TokenAggregation``; ``lib/xttn.py``:
``mask_xattn_one_text``) scores one caption against every image in a Python loop. For
all pairs ``(i, t)`` (docs/cdds.md §15.5; docs/cdds.md §12.7 for the raw-image path):

1. Token 0 is a [CLS] token, kept aside, when the number of image tokens is not a
   perfect square (ViT: 197 / 577 tokens; Swin: 49 / 144 without one); ``N`` spatial
   tokens remain.
2. Without gradient: ``a_self[p] = <normalize(mean_p v_p), normalize(v_p)>`` and
   ``a_cap[t, p] = <normalize(mean_l w_l), normalize(v_p)>`` (the raw word mean of
   caption ``t``); ``score = a_self + a_cap``.
3. ``TokenSparse``: the ``k = ceil(N * sparse_ratio)`` best-scoring patches are kept;
   the others merge into one extra token ``sum softmax(score) v`` over them.
4. ``TokenAggregation``: an MLP (LayerNorm, Linear to ``int(0.2 d)``, GELU, Linear to
   ``N_s = int(num_patches * aggr_ratio * sparse_ratio)``) gives each kept patch
   ``N_s`` logits; times a learnt scale (init 1) and softmaxed over the kept patches
   they mix the kept patches into ``N_s`` tokens.
5. Token set ``[CLS] + N_s + extra``, normalised; words normalised; ``A =
   LeakyReLU_0.1(words . tokens^T)``; the score is ``mean_words max_tokens A +
   mean_tokens max_words A`` (in roughly ``[-0.2, 2]``).

Gradients reach the tokens' VALUES, the MLP and the scale; the selection and the merge
weights come from the scores, which carry none (``torch.no_grad`` and the sort in
theirs, ``stop_gradient`` here). Training and evaluation run the same forward: the
keep mask is a hard top-k, so LAPS's ratio loss ``(mean(mask) - sparse_ratio)^2`` is a
constant without gradient, and it is not computed here.

The MLP acts on each patch alone, so it runs once per image, not once per pair, and the
top-k is a mask over the patches (the k-th best score as a threshold) instead of a
gather: the same numbers, with per-pair work ``O(N_s N + (N_s + 2) (N + L) d)``. At an
exact tie with the k-th score every tied patch is kept (the authors' ``torch.sort``
keeps an unspecified subset).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cdds_jax.heads import ops
from cdds_jax.heads.base import PairHead

__all__ = ["LAPSHead", "has_cls_token", "laps_sizes"]


def has_cls_token(num_tokens: int) -> bool:
    """The authors' rule (``not is_sqr(L_v)``): a non-square token count has a [CLS]."""
    root = math.isqrt(num_tokens)
    return root * root != num_tokens


def laps_sizes(
    num_spatial: int,
    *,
    sparse_ratio: float,
    aggr_ratio: float,
    num_patches: int | None = None,
) -> tuple[int, int]:
    """``(k, N_s)``: kept patches ``ceil(N sparse_ratio)`` and aggregated tokens
    ``int(num_patches aggr_ratio sparse_ratio)`` (``num_patches`` defaults to the
    ``N`` spatial tokens; LAPS sets it to 196 / 49 by backbone)."""
    patches = num_spatial if num_patches is None else num_patches
    keep = math.ceil(num_spatial * sparse_ratio)
    aggregated = int(patches * aggr_ratio * sparse_ratio)  # the authors' float order
    if not 1 <= keep <= num_spatial or aggregated < 1:
        raise ValueError(
            f"LAPS sizes from {num_spatial} spatial tokens (num_patches {patches}), "
            f"sparse_ratio {sparse_ratio}, aggr_ratio {aggr_ratio}: keep {keep} of "
            f"{num_spatial} and {aggregated} aggregated tokens; both must be >= 1."
        )
    return keep, aggregated


def _torch_linear(features: int, fan_in: int, name: str, precision: Any) -> nn.Dense:
    """A Linear with torch's default init: weight and bias ``U(+-1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Dense(
        features,
        kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
            key, shape, dtype, -bound, bound
        ),
        precision=precision,
        name=name,
    )


class _TokenAggregation(nn.Module):
    """LAPS ``TokenAggregation``'s logits: ``[Bi, N, d] -> [Bi, N, N_s]`` (scaled)."""

    num_aggregated: int
    dim_ratio: float
    precision: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        hidden = int(d * self.dim_ratio)
        h = nn.LayerNorm(epsilon=1e-5, name="norm")(x)
        h = _torch_linear(hidden, d, "fc1", self.precision)(h)
        h = nn.gelu(h, approximate=False)
        h = _torch_linear(self.num_aggregated, hidden, "fc2", self.precision)(h)
        scale = self.param("scale", nn.initializers.ones, (), jnp.float32)
        return h * scale


class LAPSHead(PairHead):
    """LAPS ``cross_net`` score for all pairs, with its parameters.

    Attributes:
      sparse_ratio: fraction of spatial patches kept (0.5 ViT, 0.8 Swin in LAPS).
      aggr_ratio: aggregated tokens per kept patch (0.4 ViT, 0.6 Swin).
      dim_ratio: hidden width of the aggregation MLP relative to ``d`` (0.2).
      cls_token: whether token 0 is a [CLS] token; None: the authors' rule
        (`has_cls_token`).
      num_patches: the ``num_patches`` of ``N_s`` (LAPS: 196 / 49); None: the number
        of spatial tokens.
      precision: of the einsums and Linears (None: the backend default).
    """

    sparse_ratio: float = 0.5
    aggr_ratio: float = 0.4
    dim_ratio: float = 0.2
    cls_token: bool | None = None
    num_patches: int | None = None
    precision: Any = None

    def scores(
        self,
        img: jax.Array,
        img_mask: jax.Array,
        cap: jax.Array,
        cap_mask: jax.Array,
        *,
        train: bool,
    ) -> jax.Array:
        """``train`` changes nothing (the same forward in both modes). Image tokens are
        expected to fill the patch grid; padded patches (an all-padding image of an
        evaluation block, say) are never kept, merged or averaged."""
        del train
        im, cm = img_mask, cap_mask
        p = img.shape[1]
        cls = has_cls_token(p) if self.cls_token is None else self.cls_token
        if cls and p < 2:
            raise ValueError(f"a [CLS] token needs P >= 2 image tokens; got P = {p}.")
        hp = self.precision
        spatial, sm = (img[:, 1:], im[:, 1:]) if cls else (img, im)
        keep_k, num_aggr = laps_sizes(
            spatial.shape[1],
            sparse_ratio=self.sparse_ratio,
            aggr_ratio=self.aggr_ratio,
            num_patches=self.num_patches,
        )

        # Selection scores (no gradient): self attention + caption cross attention.
        spatial_n = lax.stop_gradient(ops.normalize(spatial))
        glo = ops.normalize(ops.masked_mean(spatial, sm[..., None], axis=1))
        cap_glo = ops.normalize(ops.masked_mean(cap, cm[..., None], axis=1))
        a_self = jnp.einsum("id,ind->in", glo, spatial_n, precision=hp)
        a_cap = jnp.einsum("td,ind->itn", cap_glo, spatial_n, precision=hp)
        score = lax.stop_gradient(a_self[:, None] + a_cap)  # [Bi, Bt, N]
        valid = jnp.broadcast_to(sm[:, None], score.shape)
        ranked = jnp.where(valid, score, -jnp.inf)
        kth = lax.top_k(ranked, keep_k)[0][..., -1:]
        keep = valid & (ranked >= kth)
        rest = valid & ~keep

        # TokenAggregation over the kept patches; TokenSparse's merged extra token.
        logits = _TokenAggregation(num_aggr, self.dim_ratio, hp, name="aggr_net")(
            spatial
        )  # [Bi, N, N_s]
        mix = ops.masked_softmax(
            jnp.swapaxes(logits, 1, 2)[:, None], keep[:, :, None, :], axis=-1
        )  # [Bi, Bt, N_s, N]
        aggregated = jnp.einsum("itsn,ind->itsd", mix, spatial, precision=hp)
        merge = ops.masked_softmax(score, rest, axis=-1)  # [Bi, Bt, N]
        extra = jnp.einsum("itn,ind->itd", merge, spatial, precision=hp)
        tokens = [aggregated, extra[:, :, None]]
        if cls:
            tokens.insert(
                0, jnp.broadcast_to(img[:, None, :1], extra[:, :, None].shape)
            )
        tokens = ops.normalize(jnp.concatenate(tokens, axis=2))  # [Bi, Bt, T, d]

        # mask_xattn_one_text: patch-word max-mean in both directions.
        words = ops.normalize(cap)
        a = jnp.einsum("tld,itkd->itlk", words, tokens, precision=hp)
        a = jax.nn.leaky_relu(a, negative_slope=0.1)  # [Bi, Bt, L, T]
        word_mask = cm[None, :, :]
        t2i = ops.masked_mean(jnp.max(a, axis=-1), word_mask, axis=-1)
        i2t = jnp.mean(ops.masked_max(a, word_mask[..., None], axis=2), axis=-1)
        return t2i + i2t
