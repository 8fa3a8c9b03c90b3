"""VSE++ (Faghri et al., BMVC 2018): the cosine of two pooled embeddings.

In the authors' code (fartashf/vsepp, ``model.py``) an image is ONE vector (the CNN's
pooled feature, or one precomputed feature, through ``fc`` and ``l2norm``) and a caption
is the GRU's hidden state at its last word, ``l2norm``-ed; the score is their dot
product (``cosine_sim``) and the loss the hinge with the hardest negative
(``ContrastiveLoss(max_violation=True)``, ``cdds_jax.losses.hinge_loss``).

Here both sides arrive as tokens from our encoders (docs/cdds.md §15.1), so the head
pools them: the image by the masked mean of its tokens (the AvgPool reading of the
shared-backbone baselines, docs/cdds.md §15.1), the caption by the masked mean of its
words (``text_pool="mean"``), its last valid word (``"last"``: the GRU's final state
when the text encoder is a unidirectional GRU) or its first token (``"first"``: BERT's
[CLS]). The encoders' projection is the authors' ``fc``; the head has no parameters.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from cdds_jax.heads import ops
from cdds_jax.heads.base import PairHead

__all__ = ["TEXT_POOLS", "VSEHead", "pooled_embeddings"]

#: ``VSEHead.text_pool`` values.
TEXT_POOLS = ("mean", "last", "first")


def pooled_embeddings(
    x: jax.typing.ArrayLike, mask: jax.typing.ArrayLike, pool: str = "mean"
) -> jax.Array:
    """``[B, N, d] -> [B, d]``: pooled tokens, ``l2norm``-ed (VSE++'s ``l2norm``).

    Args:
      x: ``[B, N, d]`` tokens; mask: ``[B, N]`` validity (right padded).
      pool: ``"mean"`` (masked mean), ``"last"`` (the last valid token) or
        ``"first"`` (token 0).

    Returns:
      ``[B, d]`` float32; a sample without valid tokens gives the zero vector.
    """
    if pool not in TEXT_POOLS:
        raise ValueError(f"`pool` must be one of {TEXT_POOLS}; got {pool!r}.")
    x, m = ops.zero_padding(x, mask)
    if pool == "mean":
        pooled = ops.masked_mean(x, m[..., None], axis=1)
    else:
        if pool == "last":
            index = jnp.maximum(jnp.sum(m, axis=1, dtype=jnp.int32) - 1, 0)
        else:
            index = jnp.zeros(x.shape[:1], jnp.int32)
        pooled = jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
    return ops.l2norm(pooled)


class VSEHead(PairHead):
    """VSE++ score ``<l2norm(pool(img)), l2norm(pool(cap))>`` for all pairs.

    Attributes:
      text_pool: how a caption's words become one vector (``TEXT_POOLS``).
      precision: of the score GEMM (None: the backend default).
    """

    text_pool: str = "mean"
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
        del train  # no parameters, no dropout
        return jnp.einsum(
            "id,td->it",
            self.embed_images(img, img_mask),
            self.embed_captions(cap, cap_mask),
            precision=self.precision,
        )

    def embed_images(self, img: jax.Array, img_mask: jax.Array) -> jax.Array:
        """``[Bi, P, d] -> [Bi, d]``: the image embeddings (masked mean, l2norm)."""
        return pooled_embeddings(img, img_mask, "mean")

    def embed_captions(self, cap: jax.Array, cap_mask: jax.Array) -> jax.Array:
        """``[Bt, L, d] -> [Bt, d]``: the caption embeddings (``text_pool``, l2norm)."""
        return pooled_embeddings(cap, cap_mask, self.text_pool)
