"""CDDS training losses, the pure terms (paper sec. 3.4).

* ``L_s``: ``hinge_loss`` (VSE++ / LAPS, default) or ``infonce_loss`` on a ``[B, B]``
  score matrix ``scores[a, b] = s(image a, caption b)``.
* ``L_m``: ``modality_loss`` (modality components made token-invariant).
* ``L_f`` / ``L_x``: ``completeness_loss`` (reconstruction of ``sg(V)`` from the
  semantic or x-semantic component plus the modality component).

:mod:`cdds_jax.objective` composes them with the weights and the ablation switches.

Every per-batch loss is SUMMED over the batch (LAPS convention); the per-sample losses
return ``[B]`` so the caller sums (or masks) them. All arithmetic is float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cdds_jax.arrays import as_mask as _as_mask
from cdds_jax.arrays import check_tokens as _check_tokens

__all__ = [
    "completeness_loss",
    "hinge_loss",
    "infonce_loss",
    "modality_loss",
]


def _check_scores(scores, image_ids, pair_mask) -> int:
    ss = jnp.shape(scores)
    if len(ss) != 2 or ss[0] != ss[1]:
        raise ValueError(f"`scores` must be square [B, B]; got shape {ss}.")
    b = ss[0]
    if jnp.shape(image_ids) != (b,):
        raise ValueError(
            f"`image_ids` must be [B] = ({b},) to match `scores` {ss}; "
            f"got shape {jnp.shape(image_ids)}."
        )
    if pair_mask is not None and jnp.shape(pair_mask) != (b,):
        raise ValueError(
            f"`pair_mask` must be [B] = ({b},) to match `scores` {ss}; "
            f"got shape {jnp.shape(pair_mask)}."
        )
    return b


def _valid_pairs(b: int, pair_mask) -> jax.Array:
    return jnp.ones((b,), jnp.bool_) if pair_mask is None else _as_mask(pair_mask)


def hinge_loss(
    scores: jax.typing.ArrayLike,
    image_ids: jax.typing.ArrayLike,
    *,
    margin: float = 0.2,
    max_violation: bool | jax.typing.ArrayLike,
    pair_mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """VSE++ hinge triplet loss with image-id-masked positives (LAPS ``ContrastiveLoss``).

    Pair ``a`` is (image a, caption a); ``scores[a, b] = s(image a, caption b)``. Entries
    with ``image_ids[a] == image_ids[b]`` are positives (several captions of one image can
    share a batch) and never count as negatives.

    * image->text, row ``a``: ``[margin + s_ab - s_aa]_+`` over negative columns ``b``;
    * text->image, column ``b``: ``[margin + s_ab - s_bb]_+`` over negative rows ``a``.

    ``max_violation`` False sums every violation; True keeps only the hardest negative of
    each row and each column (a row without negatives contributes 0). It may be a traced
    bool (epoch-dependent) without recompiling. Padded pairs (``pair_mask`` False) are
    dropped both as anchors and as negatives.

    Args:
      scores: ``[B, B]`` image-caption scores.
      image_ids: ``[B]`` int image id of each pair.
      margin: hinge margin.
      max_violation: hardest-negative mode (Python or traced bool), keyword-only.
      pair_mask: optional ``[B]`` validity of the pairs.

    Returns:
      Scalar float32, summed over the batch (both directions).
    """
    b = _check_scores(scores, image_ids, pair_mask)
    s = jnp.asarray(scores).astype(jnp.float32)
    ids = jnp.asarray(image_ids)
    valid = _valid_pairs(b, pair_mask)
    negative = (ids[:, None] != ids[None, :]) & valid[:, None] & valid[None, :]
    diag = jnp.diagonal(s)
    cost_i2t = jnp.where(negative, jax.nn.relu(margin + s - diag[:, None]), 0.0)
    cost_t2i = jnp.where(negative, jax.nn.relu(margin + s - diag[None, :]), 0.0)
    summed = jnp.sum(cost_i2t) + jnp.sum(cost_t2i)
    hardest = jnp.sum(jnp.max(cost_i2t, axis=1)) + jnp.sum(jnp.max(cost_t2i, axis=0))
    return jnp.where(jnp.asarray(max_violation, jnp.bool_), hardest, summed)


def infonce_loss(
    scores: jax.typing.ArrayLike,
    image_ids: jax.typing.ArrayLike,
    *,
    temperature: float = 0.05,
    pair_mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Symmetric InfoNCE on a score matrix (the ``loss.contrastive = infonce`` option).

    ``-log softmax`` of the diagonal over each row (image->text) and each column
    (text->image), with ``logits = scores / temperature``. Off-diagonal entries that
    share the image id are removed from the denominators; so are padded pairs
    (``pair_mask`` False), which also contribute no term. Log-domain throughout.

    Args:
      scores: ``[B, B]`` image-caption scores.
      image_ids: ``[B]`` int image id of each pair.
      temperature: softmax temperature (> 0).
      pair_mask: optional ``[B]`` validity of the pairs.

    Returns:
      Scalar float32, summed over the batch (both directions).
    """
    b = _check_scores(scores, image_ids, pair_mask)
    if isinstance(temperature, int | float) and temperature <= 0:
        raise ValueError(f"`temperature` must be > 0; got {temperature}.")
    logits = jnp.asarray(scores).astype(jnp.float32) / temperature
    ids = jnp.asarray(image_ids)
    valid = _valid_pairs(b, pair_mask)
    eye = jnp.eye(b, dtype=jnp.bool_)
    keep = (eye | (ids[:, None] != ids[None, :])) & valid[:, None] & valid[None, :]
    keep = keep | eye  # every row / column keeps its positive, so it is never empty
    masked = jnp.where(keep, logits, -jnp.inf)
    diag = jnp.diagonal(logits)
    i2t = jax.nn.logsumexp(masked, axis=1) - diag
    t2i = jax.nn.logsumexp(masked, axis=0) - diag
    return jnp.sum(jnp.where(valid, i2t + t2i, 0.0))


def modality_loss(m: jax.typing.ArrayLike, mask: jax.typing.ArrayLike) -> jax.Array:
    """Modality-consistency loss ``L_m`` of one modality (paper sec. 3.4).

    Each valid token's modality component is a distribution over dimensions,
    ``p = softmax_d(m[b, n])``; ``pbar`` is the mean of ``p`` over ALL valid tokens of
    the batch; the per-sample value is the mean over the sample's valid tokens of
    ``KL(p || pbar)``. ``log pbar`` is a masked log-sum-exp of the log-softmaxes (no
    underflow to ``log 0``). Gradients flow through both ``p`` and ``pbar``. Samples with
    no valid token give 0; a batch with no valid token gives zeros (finite gradients).

    Args:
      m: ``[B, N, d]`` modality components.
      mask: ``[B, N]`` validity.

    Returns:
      ``[B]`` float32 per-sample losses (sum them for the batch loss).
    """
    _check_tokens(m, mask, "m")
    valid = _as_mask(mask)
    x = jnp.where(valid[:, :, None], jnp.asarray(m).astype(jnp.float32), 0.0)
    log_p = jax.nn.log_softmax(x, axis=-1)  # [B, N, d]
    count = jnp.sum(valid).astype(jnp.float32)
    # If nothing is valid, pool over everything so log pbar stays finite; all terms are
    # masked out below anyway.
    pool = valid | (count == 0)
    log_pbar = jax.nn.logsumexp(log_p, axis=(0, 1), where=pool[:, :, None]) - jnp.log(
        jnp.maximum(count, 1.0)
    )  # [d]
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_pbar), axis=-1)  # [B, N]
    n = jnp.maximum(jnp.sum(valid, axis=1).astype(jnp.float32), 1.0)
    return jnp.sum(jnp.where(valid, kl, 0.0), axis=1) / n


def completeness_loss(
    x: jax.typing.ArrayLike,
    comp_s: jax.typing.ArrayLike,
    comp_m: jax.typing.ArrayLike,
    w_s: jax.typing.ArrayLike,
    w_m: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
) -> jax.Array:
    """Information-completeness loss: ``L_f`` (``comp_s = V^s``) or ``L_x`` (``V^x``).

    Per sample, the mean over valid tokens of ``||sg(x) - (w_s comp_s + w_m comp_m)||^2
    / d``. The target ``x`` is stop-gradient so the encoder cannot shrink it to make
    reconstruction trivial. Padded tokens are zeroed before any arithmetic (their
    content, even NaN, never reaches values or gradients).

    Args:
      x: ``[B, N, d]`` target tokens (the encoder output V or T).
      comp_s: ``[B, N, d]`` semantic (or x-semantic) component.
      comp_m: ``[B, N, d]`` modality component.
      w_s: scalar weight of ``comp_s``.
      w_m: scalar weight of ``comp_m``.
      mask: ``[B, N]`` validity.

    Returns:
      ``[B]`` float32 per-sample losses.
    """
    xs = _check_tokens(x, mask, "x")
    for name, c in (("comp_s", comp_s), ("comp_m", comp_m)):
        if jnp.shape(c) != xs:
            raise ValueError(f"`{name}` must match `x` {xs}; got shape {jnp.shape(c)}.")
    for name, w in (("w_s", w_s), ("w_m", w_m)):
        if jnp.size(w) != 1:
            raise ValueError(f"`{name}` must be a scalar; got shape {jnp.shape(w)}.")
    valid = _as_mask(mask)
    vm = valid[:, :, None]
    f32 = lambda a: jnp.where(vm, jnp.asarray(a).astype(jnp.float32), 0.0)
    target = lax.stop_gradient(f32(x))
    w_s = jnp.reshape(jnp.asarray(w_s).astype(jnp.float32), ())
    w_m = jnp.reshape(jnp.asarray(w_m).astype(jnp.float32), ())
    err = jnp.sum(jnp.square(target - (w_s * f32(comp_s) + w_m * f32(comp_m))), -1)
    n = jnp.maximum(jnp.sum(valid, axis=1).astype(jnp.float32), 1.0)
    return jnp.sum(jnp.where(valid, err, 0.0), axis=1) / (n * xs[2])
