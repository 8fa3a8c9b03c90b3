"""The supervised contrastive ("CT") term and its regression label bins (docs/decalign.md §4.8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from decalign_jax.losses.numerics import (
    HIGHEST,
    MASKED_LOGIT,
    NORMALIZE_EPS,
    as_float,
    check_positive,
    check_valid,
    safe_norm,
)

__all__ = ["regression_bins", "supcon_loss"]


def regression_bins(y: jax.Array) -> jax.Array:
    """SupCon label bins for regression: ``round(clip(y, -3, 3)) + 3`` in 0..6.

    Rounding is half-to-even (``jnp.round``, as torch). Returns int32 of y's shape.
    """
    y = as_float(y)
    return (jnp.round(jnp.clip(y, -3.0, 3.0)) + 3.0).astype(jnp.int32)


def supcon_loss(
    features: jax.Array,
    bins: jax.Array,
    *,
    temperature: float,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Supervised contrastive loss on L2-normalised features (docs/decalign.md §4.8, "CT").

    ``f = features / max(||features||, 1e-12)`` (torch ``F.normalize``), logits
    ``f f^T / temperature``; for anchor i the softmax runs over j != i (and valid j);
    positives are j != i with ``bins[j] == bins[i]``. Per anchor the loss is
    ``-mean_{j in P(i)} log_softmax_i(j)``; the result is the mean over (valid)
    anchors with at least one positive, and 0 when no anchor has a positive (e.g.
    B = 1). No ``temperature / base_temperature`` rescaling is applied.

    Excluded logits are set to -1e30 (a finite "-inf", so fully masked rows stay
    NaN-free in value and gradient).

    Args:
      features: ``[B, D]`` representations (``final_rep`` before dropout).
      bins: ``[B]`` integer labels (bins for regression, class ids otherwise).
      temperature: softmax temperature tau (> 0).
      valid: optional ``[B]`` bool, False for padded samples (neither anchors nor
        candidates).

    Returns:
      Scalar loss (>= 0).
    """
    if jnp.ndim(features) != 2:
        raise ValueError(
            f"features must be [B, D]; got features.shape={jnp.shape(features)}"
        )
    batch = jnp.shape(features)[0]
    if jnp.shape(bins) != (batch,):
        raise ValueError(f"bins must be [B={batch}]; got bins.shape={jnp.shape(bins)}")
    check_valid(valid, batch)
    check_positive("temperature", temperature)

    f = as_float(features)
    f = f / safe_norm(f, NORMALIZE_EPS)[:, None]
    logits = jnp.matmul(f, f.T, precision=HIGHEST) / temperature

    not_self = ~jnp.eye(batch, dtype=bool)
    if valid is None:
        cand = not_self
        anchor_ok = jnp.ones((batch,), dtype=bool)
    else:
        v = jnp.asarray(valid, dtype=bool)
        cand = not_self & v[None, :] & v[:, None]
        anchor_ok = v
    logits = jnp.where(cand, logits, MASKED_LOGIT)
    log_prob = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)

    pos = cand & (bins[:, None] == bins[None, :])
    num_pos = jnp.sum(pos, axis=-1)
    mean_log_prob = jnp.sum(jnp.where(pos, log_prob, 0.0), axis=-1) / jnp.maximum(
        num_pos, 1
    ).astype(log_prob.dtype)
    has_pos = anchor_ok & (num_pos > 0)
    total = -jnp.sum(jnp.where(has_pos, mean_log_prob, 0.0))
    return total / jnp.maximum(jnp.sum(has_pos), 1).astype(total.dtype)
