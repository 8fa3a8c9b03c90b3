"""SCAN (Lee et al., ECCV 2018): stacked cross attention, text-to-image and image-to-text.

The authors' code (kuanghuei/SCAN, ``model.py``: ``func_attention``,
``xattn_score_t2i``, ``xattn_score_i2t``) scores one caption against every image in a
Python loop. For all pairs ``(i, t)`` at once (docs/cdds.md §15.2):

* tokens are ``l2norm``-ed (the last step of SCAN's encoders; ``normalize``);
* t2i: ``a[p, l] = <v_p, w_l>`` (regions ``p`` of image ``i``, words ``l`` of caption
  ``t``), ``a = l2norm_l(LeakyReLU_0.1(a))`` (over the WORDS, the query axis:
  ``raw_feature_norm="clipped_l2norm"``), ``alpha = softmax_p(lambda_softmax * a)``,
  ``c_l = sum_p alpha[p, l] v_p``, ``r_l = cos(w_l, c_l)`` and the score aggregates
  ``r`` over the valid words: ``LogSumExp`` ``log(sum_l exp(lambda_lse r_l)) /
  lambda_lse``, ``Mean``, ``Max`` or ``Sum``;
* i2t: the same with the roles swapped (each region attends over the words,
  the norm runs over the regions, the aggregation over the regions).

The published settings (the README's tables) are in `SCAN_CONFIGS`. ``direction="both"``
averages the two directions of ONE model (LAPS ``xttn.xattn_score_two``); the SCAN paper's
"t-i + i-t" rows average two separately trained models, which is two heads here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from cdds_jax.heads import ops
from cdds_jax.heads.base import PairHead

__all__ = [
    "AGGREGATIONS",
    "DIRECTIONS",
    "RAW_FEATURE_NORMS",
    "SCAN_CONFIGS",
    "SCANHead",
    "aggregate",
    "attended_context",
    "scan_scores",
]

#: ``raw_feature_norm`` values (SCAN's options without the softmax / l1 variants).
RAW_FEATURE_NORMS = ("clipped_l2norm", "l2norm", "clipped", "no_norm")
#: ``agg`` values: SCAN's ``agg_func`` LogSumExp, Mean, Max, Sum.
AGGREGATIONS = ("lse", "mean", "max", "sum")
#: ``direction`` values.
DIRECTIONS = ("t2i", "i2t", "both")

#: The README's training arguments of each published SCAN model (Flickr30K, MS-COCO).
SCAN_CONFIGS: dict[str, dict[str, Any]] = {
    "f30k_t2i_lse": dict(direction="t2i", agg="lse", smooth_t2i=9.0, lambda_lse=6.0),
    "f30k_t2i_avg": dict(direction="t2i", agg="mean", smooth_t2i=9.0),
    "f30k_i2t_lse": dict(direction="i2t", agg="lse", smooth_i2t=4.0, lambda_lse=5.0),
    "f30k_i2t_avg": dict(direction="i2t", agg="mean", smooth_i2t=4.0),
    "coco_t2i_lse": dict(direction="t2i", agg="lse", smooth_t2i=9.0, lambda_lse=6.0),
    "coco_t2i_avg": dict(direction="t2i", agg="mean", smooth_t2i=9.0),
    "coco_i2t_lse": dict(direction="i2t", agg="lse", smooth_i2t=4.0, lambda_lse=20.0),
    "coco_i2t_avg": dict(direction="i2t", agg="mean", smooth_i2t=4.0),
}


def _raw_norm(a: jax.Array, query_mask: jax.Array, how: str) -> jax.Array:
    """SCAN's ``raw_feature_norm`` of ``a [..., context, query]`` over the query axis."""
    if how in ("clipped_l2norm", "clipped"):
        a = jax.nn.leaky_relu(a, negative_slope=0.1)
    a = jnp.where(query_mask, a, 0.0)
    if how in ("clipped_l2norm", "l2norm"):
        a = ops.l2norm(a, axis=-1)
    return a


def attended_context(
    img: jax.typing.ArrayLike,
    img_mask: jax.typing.ArrayLike,
    cap: jax.typing.ArrayLike,
    cap_mask: jax.typing.ArrayLike,
    *,
    query: str,
    smooth: float,
    raw_feature_norm: str = "clipped_l2norm",
    precision: Any = None,
) -> jax.Array:
    """SCAN's ``func_attention`` for every image-caption pair.

    ``query="words"`` (t2i): each word of caption ``t`` attends over the regions of
    image ``i``; ``query="regions"`` (i2t): each region attends over the words. The
    attention logits ``a[context, query]`` go through ``raw_feature_norm`` over the
    query axis, then a softmax over the valid context tokens at temperature
    ``1 / smooth`` weighs the context tokens.

    Args:
      img: ``[Bi, P, d]`` image tokens (as the head sees them, e.g. l2norm-ed).
      img_mask: ``[Bi, P]``.
      cap: ``[Bt, L, d]`` caption tokens; cap_mask: ``[Bt, L]``.
      query: ``"words"`` or ``"regions"``.
      smooth: SCAN's ``lambda_softmax``.
      raw_feature_norm: one of ``RAW_FEATURE_NORMS``.
      precision: of the two einsums.

    Returns:
      ``[Bi, Bt, L, d]`` attended regions per word (``"words"``) or ``[Bi, Bt, P, d]``
      attended words per region (``"regions"``), float32; rows of padded queries are
      zero.
    """
    if query not in ("words", "regions"):
        raise ValueError(f"`query` must be 'words' or 'regions'; got {query!r}.")
    if raw_feature_norm not in RAW_FEATURE_NORMS:
        raise ValueError(
            f"`raw_feature_norm` must be one of {RAW_FEATURE_NORMS}; got "
            f"{raw_feature_norm!r}."
        )
    img, im, cap, cm = ops.prepare_pair(img, img_mask, cap, cap_mask, normalize=False)
    if query == "words":  # context: regions [Bi, P]; queries: words [Bt, L]
        a = jnp.einsum("ipd,tld->itpl", img, cap, precision=precision)
        context_mask, query_mask = im[:, None, :, None], cm[None, :, None, :]
    else:  # context: words; queries: regions
        a = jnp.einsum("tld,ipd->itlp", cap, img, precision=precision)
        context_mask, query_mask = cm[None, :, :, None], im[:, None, None, :]
    a = _raw_norm(a, query_mask, raw_feature_norm)
    attn = ops.masked_softmax(smooth * a, context_mask, axis=2)
    attn = jnp.where(query_mask, attn, 0.0)
    if query == "words":
        return jnp.einsum("itpl,ipd->itld", attn, img, precision=precision)
    return jnp.einsum("itlp,tld->itpd", attn, cap, precision=precision)


def aggregate(
    sims: jax.Array, mask: jax.Array, how: str, lambda_lse: float = 6.0
) -> jax.Array:
    """SCAN's ``agg_func`` over the last axis of ``sims``, valid entries only.

    ``"lse"``: ``log(sum exp(lambda_lse * s)) / lambda_lse``; ``"mean"``, ``"max"``,
    ``"sum"``. An empty row gives 0.
    """
    if how == "lse":
        return ops.masked_logsumexp(lambda_lse * sims, mask, axis=-1) / lambda_lse
    if how == "mean":
        return ops.masked_mean(sims, mask, axis=-1)
    if how == "max":
        return ops.masked_max(sims, mask, axis=-1)
    if how == "sum":
        return jnp.sum(jnp.where(mask, sims, 0.0), axis=-1)
    raise ValueError(f"`agg` must be one of {AGGREGATIONS}; got {how!r}.")


def scan_scores(
    img: jax.typing.ArrayLike,
    img_mask: jax.typing.ArrayLike,
    cap: jax.typing.ArrayLike,
    cap_mask: jax.typing.ArrayLike,
    *,
    direction: str = "t2i",
    agg: str = "lse",
    smooth_t2i: float = 9.0,
    smooth_i2t: float = 4.0,
    lambda_lse: float = 6.0,
    raw_feature_norm: str = "clipped_l2norm",
    precision: Any = None,
) -> jax.Array:
    """SCAN scores of all pairs from tokens as SCAN's similarity sees them.

    Args:
      img, img_mask, cap, cap_mask: ``[Bi, P, d]``, ``[Bi, P]``, ``[Bt, L, d]``,
        ``[Bt, L]`` (l2norm-ed tokens in SCAN; not normalised here).
      direction: ``"t2i"``, ``"i2t"`` or ``"both"`` (their mean).
      agg: one of ``AGGREGATIONS``.
      smooth_t2i, smooth_i2t: ``lambda_softmax`` of each direction.
      lambda_lse: of ``agg="lse"``.
      raw_feature_norm: one of ``RAW_FEATURE_NORMS``.
      precision: of the einsums.

    Returns:
      ``[Bi, Bt]`` float32.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"`direction` must be one of {DIRECTIONS}; got {direction!r}.")
    if agg not in AGGREGATIONS:
        raise ValueError(f"`agg` must be one of {AGGREGATIONS}; got {agg!r}.")
    img, im, cap, cm = ops.prepare_pair(img, img_mask, cap, cap_mask, normalize=False)
    args = (img, im, cap, cm)
    kw = dict(raw_feature_norm=raw_feature_norm, precision=precision)
    out = []
    if direction in ("t2i", "both"):
        ctx = attended_context(*args, query="words", smooth=smooth_t2i, **kw)
        out.append(aggregate(ops.cosine(cap[None], ctx), cm[None], agg, lambda_lse))
    if direction in ("i2t", "both"):
        ctx = attended_context(*args, query="regions", smooth=smooth_i2t, **kw)
        out.append(
            aggregate(ops.cosine(img[:, None], ctx), im[:, None], agg, lambda_lse)
        )
    return out[0] if len(out) == 1 else 0.5 * (out[0] + out[1])


class SCANHead(PairHead):
    """SCAN's cross-attention score for all pairs (no parameters of its own).

    Attributes:
      direction: ``"t2i"`` (default), ``"i2t"`` or ``"both"``.
      agg: ``"lse"`` (default) or ``"mean"`` / ``"max"`` / ``"sum"``.
      smooth_t2i, smooth_i2t: ``lambda_softmax`` (9 and 4, the published values).
      lambda_lse: 6 (t2i); the published i2t models use 5 (F30K) / 20 (COCO).
      raw_feature_norm: ``"clipped_l2norm"`` (SCAN's default).
      normalize: l2norm the tokens first (SCAN's encoders end with it).
      precision: of the einsums (None: the backend default).
    """

    direction: str = "t2i"
    agg: str = "lse"
    smooth_t2i: float = 9.0
    smooth_i2t: float = 4.0
    lambda_lse: float = 6.0
    raw_feature_norm: str = "clipped_l2norm"
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
        return scan_scores(
            img,
            img_mask,
            cap,
            cap_mask,
            direction=self.direction,
            agg=self.agg,
            smooth_t2i=self.smooth_t2i,
            smooth_i2t=self.smooth_i2t,
            lambda_lse=self.lambda_lse,
            raw_feature_norm=self.raw_feature_norm,
            precision=self.precision,
        )
