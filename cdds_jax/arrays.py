"""Array helpers shared by the CDDS math modules: masks, shape checks, safe roots.

Token arrays are ``[B, N, d]`` with a validity mask ``[B, N]`` (right padded). Masks
may be bool, int or float; any non-zero entry counts as valid. All statistics of the
math modules are float32, whatever the input dtype (bfloat16 inputs are upcast first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "NORM_EPS",
    "as_mask",
    "check_tokens",
    "f32",
    "safe_norm",
    "safe_sqrt",
]

#: Norm clamp of the cosines: ``||x|| -> max(||x||, NORM_EPS)`` (like ``torch`` cosine),
#: so a zero vector (an untrained or collapsed tower) gives a zero embedding and finite
#: gradients instead of NaN.
NORM_EPS = 1e-8


def as_mask(mask: jax.typing.ArrayLike) -> jax.Array:
    """Bool mask from a bool / int / float mask (non-zero = valid)."""
    mask = jnp.asarray(mask)
    return mask if mask.dtype == jnp.bool_ else mask != 0


def check_tokens(
    x: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    x_name: str,
    mask_name: str = "mask",
) -> tuple[int, int, int]:
    """Checks ``x [B, N, d]`` (N >= 1) and ``mask [B, N]``; returns ``(B, N, d)``.

    Raises:
      ValueError: naming the argument and its shape.
    """
    xs, ms = jnp.shape(x), jnp.shape(mask)
    if len(xs) != 3:
        raise ValueError(f"`{x_name}` must be [B, N, d]; got shape {xs}.")
    if ms != xs[:2]:
        raise ValueError(
            f"`{mask_name}` must be [B, N] = {xs[:2]} to match `{x_name}` {xs}; "
            f"got shape {ms}."
        )
    if xs[1] < 1:
        raise ValueError(f"`{x_name}` needs at least one token; got shape {xs}.")
    return xs


def f32(x: jax.typing.ArrayLike) -> jax.Array:
    """``x`` as float32."""
    return jnp.asarray(x).astype(jnp.float32)


def safe_norm(x: jax.Array, axis: int | tuple[int, ...]) -> jax.Array:
    """``max(||x||, NORM_EPS)`` over ``axis`` with finite gradients at ``x = 0``."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis), NORM_EPS**2))


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf / NaN) at ``x <= 0``."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)
