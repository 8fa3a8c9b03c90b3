"""Shared numerics of the DecAlign losses: dtypes, safe norms, checks, masked means.

Masking convention (every loss of :mod:`decalign_jax.losses`): an optional ``valid``
``[B]`` bool marks real samples (False for the padding of a short last batch, see
``docs/decalign.md`` section 9.4). Masked means are
``sum(valid * l) / max(#valid, 1)``, i.e. 0 when nothing is valid. Padded rows must
hold finite values (zeros or copies of a real row): they are excluded from values
with ``where`` / zero weights, but a NaN there would still reach the gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import jax
import jax.numpy as jnp

__all__ = [
    "COSINE_EPS",
    "HIGHEST",
    "MASKED_LOGIT",
    "NORMALIZE_EPS",
    "ORDERED_DST",
    "ORDERED_SRC",
    "PAIR_I",
    "PAIR_J",
    "SKEW_VAR_FLOOR",
    "as_float",
    "check_positive",
    "check_triple",
    "check_valid",
    "masked_mean",
    "row_weights",
    "safe_norm",
]

HIGHEST: Final = jax.lax.Precision.HIGHEST
"""GEMM precision for distances / covariances (no TF32 cancellation on GPU / TPU)."""

COSINE_EPS: Final = 1e-8
"""Norm floor of ``decoupling_loss`` (torch ``cosine_similarity`` default)."""

NORMALIZE_EPS: Final = 1e-12
"""Norm floor of the L2 normalisation in ``supcon_loss`` (torch ``F.normalize``)."""

SKEW_VAR_FLOOR: Final = 1e-6
"""Floor on the biased variance in the skewness denominator of ``moment_matching``."""

MASKED_LOGIT: Final = -1e30
"""Finite "minus infinity" for excluded logits."""

# Unordered modality pairs (l, a), (l, v), (a, v) and the 6 ordered pairs (m, m').
PAIR_I: Final = (0, 0, 1)
PAIR_J: Final = (1, 2, 2)
ORDERED_SRC: Final = (0, 0, 1, 1, 2, 2)
ORDERED_DST: Final = (1, 2, 0, 2, 0, 1)


def as_float(x: jax.Array) -> jax.Array:
    """Casts to a float dtype of at least float32 precision."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def safe_norm(x: jax.Array, eps: float, axis: int = -1) -> jax.Array:
    """``max(||x||_2, eps)`` along ``axis`` with a finite gradient at ``x = 0``."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis), eps * eps))


def check_triple(name: str, xs: Sequence[jax.Array], ndim: int) -> None:
    """Three arrays (text, audio, vision) of rank ``ndim`` sharing the batch size."""
    if len(xs) != 3:
        raise ValueError(
            f"{name} must hold 3 arrays (text, audio, vision); got {len(xs)}"
        )
    shapes = [jnp.shape(x) for x in xs]
    for m, s in enumerate(shapes):
        if len(s) != ndim:
            raise ValueError(f"{name}[{m}] must have rank {ndim}; got shape {s}")
    if len({s[0] for s in shapes}) != 1:
        raise ValueError(f"{name} arrays must share the batch size; got {shapes}")


def check_valid(valid: jax.Array | None, batch: int) -> None:
    """``valid`` is None or ``[batch]``."""
    if valid is not None and jnp.shape(valid) != (batch,):
        raise ValueError(
            f"valid must be [B={batch}]; got valid.shape={jnp.shape(valid)}"
        )


def check_positive(name: str, value: Any) -> None:
    """A Python number must be > 0 (traced values are not checked)."""
    if isinstance(value, int | float) and not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")


def masked_mean(values: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Mean of ``values`` ``[B]`` over ``valid`` ``[B]`` (0 if none valid)."""
    if valid is None:
        return jnp.mean(values)
    valid = jnp.asarray(valid, dtype=bool)
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid).astype(values.dtype), 1.0)


def row_weights(
    valid: jax.Array | None, batch: int, dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """``(w [B], n [])``: 1.0 for valid rows and 0.0 for padding, and their count.

    Without a mask every row weighs 1 and ``n = B``.
    """
    if valid is None:
        return jnp.ones((batch,), dtype), jnp.asarray(batch, dtype)
    w = jnp.asarray(valid, dtype=bool).astype(dtype)
    return w, jnp.sum(w)
