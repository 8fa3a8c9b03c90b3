"""The calling convention every retrieval head shares (docs/cdds.md §15).

``PairHead.__call__(img, img_mask, cap, cap_mask, *, train=False) -> [Bi, Bt]`` checks
the shapes, zeroes the padding, ``l2norm``-s the tokens when the head has
``normalize=True`` (the last step of the authors' encoders) and hands the result to the
head's `PairHead.scores`.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cdds_jax.heads import ops

__all__ = ["PairHead"]


class PairHead(nn.Module):
    """Base of the heads: the calling convention, once.

    A subclass defines `scores` (inline submodules allowed: it runs inside the compact
    ``__call__``) and, when its authors' encoders end with ``l2norm``, a ``normalize:
    bool`` field.
    """

    @nn.compact
    def __call__(
        self,
        img: jax.Array,
        img_mask: jax.Array,
        cap: jax.Array,
        cap_mask: jax.Array,
        *,
        train: bool = False,
    ) -> jax.Array:
        """All-pairs scores of two token sets.

        Args:
          img: ``[Bi, P, d]`` image tokens; img_mask: ``[Bi, P]`` (non-zero = valid).
          cap: ``[Bt, L, d]`` caption tokens, right padded; cap_mask: ``[Bt, L]``.
          train: batch statistics and dropout where the published head has them.

        Returns:
          ``[Bi, Bt]`` float32 scores of every image with every caption.
        """
        img, im, cap, cm = ops.prepare_pair(
            img, img_mask, cap, cap_mask, normalize=getattr(self, "normalize", False)
        )
        return self.scores(img, im, cap, cm, train=train)

    def scores(
        self,
        img: jax.Array,
        img_mask: jax.Array,
        cap: jax.Array,
        cap_mask: jax.Array,
        *,
        train: bool,
    ) -> jax.Array:
        """``[Bi, Bt]`` scores from float32 tokens with zeroed padding and bool masks."""
        raise NotImplementedError
