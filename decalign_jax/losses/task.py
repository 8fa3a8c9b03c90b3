"""Task losses (MSE, cross-entropy, the SIMS sign BCE) and the total objective (docs/decalign.md §4.9-4.10)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from decalign_jax.losses.numerics import as_float, check_valid, masked_mean

__all__ = ["cross_entropy_loss", "mse_loss", "sims_binary_loss", "total_loss"]


def _flat_regression(pred: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
    ps, ys = jnp.shape(pred), jnp.shape(label)
    if len(ps) not in (1, 2) or (len(ps) == 2 and ps[1] != 1):
        raise ValueError(f"pred must be [B] or [B, 1]; got pred.shape={ps}")
    if len(ys) not in (1, 2) or (len(ys) == 2 and ys[1] != 1) or ys[0] != ps[0]:
        raise ValueError(
            f"label must be [B] or [B, 1] with B={ps[0]}; got label.shape={ys}"
        )
    return as_float(pred).reshape(-1), as_float(label).reshape(-1)


def mse_loss(
    pred: jax.Array, label: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """Mean squared error over valid samples (torch ``MSELoss`` on flattened inputs).

    Args:
      pred: ``[B]`` or ``[B, 1]`` predictions.
      label: ``[B]`` or ``[B, 1]`` targets.
      valid: optional ``[B]`` bool mask.

    Returns:
      Scalar ``mean_valid (pred - label)^2`` (0 when no sample is valid).
    """
    p, y = _flat_regression(pred, label)
    check_valid(valid, p.shape[0])
    return masked_mean(jnp.square(p - y), valid)


def cross_entropy_loss(
    logits: jax.Array, label: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """Unweighted softmax cross-entropy averaged over valid samples.

    Args:
      logits: ``[B, C]`` class scores.
      label: ``[B]`` integer class ids in ``[0, C)`` (floats are truncated to int,
        as the official ``.long()``); out-of-range ids give an undefined value.
      valid: optional ``[B]`` bool mask.

    Returns:
      Scalar ``mean_valid -log softmax(logits)[label]`` (0 when no sample is valid).
    """
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits must be [B, C]; got logits.shape={jnp.shape(logits)}")
    batch = jnp.shape(logits)[0]
    if jnp.shape(label) != (batch,):
        raise ValueError(
            f"label must be [B={batch}]; got label.shape={jnp.shape(label)}"
        )
    check_valid(valid, batch)
    logp = jax.nn.log_softmax(as_float(logits), axis=-1)
    idx = jnp.asarray(label).astype(jnp.int32)
    nll = -jnp.take_along_axis(logp, idx[:, None], axis=-1)[:, 0]
    return masked_mean(nll, valid)


def sims_binary_loss(
    pred: jax.Array, label: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """CH-SIMS auxiliary BCE-with-logits of ``pred`` vs ``1[label > 0]`` (docs/decalign.md §4.9).

    Only samples with ``label != 0`` (and valid) count; the loss is their mean of
    ``softplus(pred) - pred * t`` (the stable BCE-with-logits), and 0 when none.

    Args:
      pred: ``[B]`` or ``[B, 1]`` regression outputs used as logits.
      label: ``[B]`` or ``[B, 1]`` sentiment scores.
      valid: optional ``[B]`` bool mask.

    Returns:
      Scalar loss.
    """
    p, y = _flat_regression(pred, label)
    check_valid(valid, p.shape[0])
    mask = y != 0
    if valid is not None:
        mask = mask & jnp.asarray(valid, dtype=bool)
    target = (y > 0).astype(p.dtype)
    bce = jax.nn.softplus(p) - p * target
    return masked_mean(bce, mask)


def total_loss(
    task: jax.Array,
    dec: jax.Array,
    hete: jax.Array,
    homo: jax.Array,
    ct: jax.Array,
    *,
    dec_weight: float = 1.0,
    alpha: float,
    beta: float,
    ct_weight: float,
) -> jax.Array:
    """``L = task + dec_weight L_dec + alpha L_hete + beta L_homo + ct_weight L_CT``.

    A term whose weight is the Python number 0 is dropped (not multiplied), so an
    unused term (e.g. MOSEI's beta = 0) can never inject NaN/inf into the loss. The
    SIMS BCE term is part of ``task`` (add ``0.01 * sims_binary_loss`` to it).

    Args:
      task, dec, hete, homo, ct: scalar loss terms.
      dec_weight, alpha, beta, ct_weight: their weights.

    Returns:
      Scalar total loss.
    """
    out = jnp.asarray(task)
    for weight, term in (
        (dec_weight, dec),
        (alpha, hete),
        (beta, homo),
        (ct_weight, ct),
    ):
        if isinstance(weight, int | float) and weight == 0:
            continue
        out = out + weight * term
    return out
