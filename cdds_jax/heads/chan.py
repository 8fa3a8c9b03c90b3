"""CHAN (Pan et al., CVPR 2023): coding by hard assignment, then pooling.

The authors' code (ppanzx/CHAN, ``lib/coding.py``, ``lib/modules.py``) computes the
fine-grained similarities ``s[i, t, p, l] = <v_p, w_l>`` of l2norm-ed region and word
embeddings (``get_fgsims``), masks the padded entries (``get_fgmask``) and then
(docs/cdds.md §15.4):

* ``VHACoding`` (the published coding): each word keeps its best region,
  ``c_l = max_p s[p, l]``; ``THACoding``: each region keeps its best word;
* pooling over the coded entries: ``MeanPooling`` (their BERT runs) or
  ``LSEPooling`` with temperature ``beta = 0.1`` (their BiGRU runs):
  ``log sum exp(c / beta)``, NOT rescaled by ``beta``; ``MaxPooling``, ``SumPooling``.

The authors mark padding with the value ``-1`` and recognise it by value in the pooling
(a valid similarity of exactly -1 would be dropped too); here the masks are explicit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from cdds_jax.heads import ops
from cdds_jax.heads.base import PairHead

__all__ = ["CODINGS", "POOLINGS", "CHANHead", "chan_scores"]

#: ``coding`` values: ``"vha"`` (VHACoding: max over regions per word), ``"tha"``.
CODINGS = ("vha", "tha")
#: ``pooling`` values: Mean / LSE / Max / Sum pooling.
POOLINGS = ("mean", "lse", "max", "sum")


def chan_scores(
    img: jax.typing.ArrayLike,
    img_mask: jax.typing.ArrayLike,
    cap: jax.typing.ArrayLike,
    cap_mask: jax.typing.ArrayLike,
    *,
    coding: str = "vha",
    pooling: str = "mean",
    beta: float = 0.1,
    precision: Any = None,
) -> jax.Array:
    """CHAN scores of all pairs from tokens as CHAN's similarity sees them.

    Args:
      img, img_mask, cap, cap_mask: ``[Bi, P, d]``, ``[Bi, P]``, ``[Bt, L, d]``,
        ``[Bt, L]`` (l2norm-ed tokens in CHAN; not normalised here).
      coding: one of ``CODINGS``.
      pooling: one of ``POOLINGS``.
      beta: LSE pooling temperature (``--belta``).
      precision: of the similarity einsum.

    Returns:
      ``[Bi, Bt]`` float32.
    """
    if coding not in CODINGS:
        raise ValueError(f"`coding` must be one of {CODINGS}; got {coding!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}; got {pooling!r}.")
    img, im, cap, cm = ops.prepare_pair(img, img_mask, cap, cap_mask, normalize=False)
    sims = jnp.einsum("ipd,tld->itpl", img, cap, precision=precision)
    # A word (region) of a pair whose other side has no valid token has nothing to code.
    if coding == "vha":  # best region of each word, then pool the words
        coded = ops.masked_max(sims, im[:, None, :, None], axis=2)  # [Bi, Bt, L]
        valid = cm[None] & jnp.any(im, axis=1)[:, None, None]
    else:  # best word of each region, then pool the regions
        coded = ops.masked_max(sims, cm[None, :, None, :], axis=3)  # [Bi, Bt, P]
        valid = im[:, None] & jnp.any(cm, axis=1)[None, :, None]
    if pooling == "mean":
        return ops.masked_mean(coded, valid, axis=-1)
    if pooling == "lse":
        return ops.masked_logsumexp(coded / beta, valid, axis=-1)
    if pooling == "max":
        return ops.masked_max(coded, valid, axis=-1)
    return jnp.sum(jnp.where(valid, coded, 0.0), axis=-1)


class CHANHead(PairHead):
    """CHAN's hard-assignment score for all pairs (no parameters of its own).

    Attributes:
      coding: ``"vha"`` (the published VHACoding) or ``"tha"``.
      pooling: ``"mean"`` (the published BERT setting) or ``"lse"`` (BiGRU, with
        ``beta = 0.1``), ``"max"``, ``"sum"``.
      beta: LSE pooling temperature.
      normalize: l2norm the tokens first (CHAN's encoders end with it).
      precision: of the similarity einsum (None: the backend default).
    """

    coding: str = "vha"
    pooling: str = "mean"
    beta: float = 0.1
    normalize: bool = True
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
        return chan_scores(
            img,
            img_mask,
            cap,
            cap_mask,
            coding=self.coding,
            pooling=self.pooling,
            beta=self.beta,
            precision=self.precision,
        )
