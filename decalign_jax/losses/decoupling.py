"""L_dec: the decoupling loss between modality-unique and common features (docs/decalign.md §4.1)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from decalign_jax.losses.numerics import (
    COSINE_EPS,
    as_float,
    check_triple,
    check_valid,
    masked_mean,
    safe_norm,
)

__all__ = ["decoupling_loss"]


def decoupling_loss(
    unique: Sequence[jax.Array],
    common: Sequence[jax.Array],
    valid: jax.Array | None = None,
) -> jax.Array:
    """L_dec: mean over modalities of mean_b cos^2(vec(s_m[b]), vec(c_m[b])).

    Each sample's unique sequence ``s_m[b]`` and common sequence ``c_m[b]`` are
    flattened over (T_m x d) and compared with the cosine similarity of the current
    torch convention (``torch.nn.functional.cosine_similarity`` since torch 1.12)::

        cos(a, b) = a . b / (max(||a||, eps) * max(||b||, eps)),   eps = 1e-8

    (each norm is floored separately; the older torch docs' ``max(||a|| ||b||, eps)``
    differs only when a norm is below 1e-8). The cosine is squared, averaged over the
    (valid) batch, then averaged over the three modalities. For an all-zero vector the
    value and the gradient are 0 (torch's gradient differs there; it is irrelevant).

    Args:
      unique: ``(s_l, s_a, s_v)``, each ``[B, T_m, d]`` (modality-unique features).
      common: ``(c_l, c_a, c_v)``, each with the shape of the matching ``unique``.
      valid: optional ``[B]`` bool, False for padded samples.

    Returns:
      Scalar loss in [0, 1].
    """
    check_triple("unique", unique, 3)
    check_triple("common", common, 3)
    for m, (s, c) in enumerate(zip(unique, common, strict=True)):
        if jnp.shape(s) != jnp.shape(c):
            raise ValueError(
                f"unique[{m}] and common[{m}] must have the same shape; got "
                f"{jnp.shape(s)} and {jnp.shape(c)}"
            )
    check_valid(valid, jnp.shape(unique[0])[0])

    def per_modality(s: jax.Array, c: jax.Array) -> jax.Array:
        s = as_float(s).reshape(s.shape[0], -1)
        c = as_float(c).reshape(c.shape[0], -1)
        cos = jnp.sum(s * c, axis=-1) / (
            safe_norm(s, COSINE_EPS) * safe_norm(c, COSINE_EPS)
        )
        return masked_mean(cos * cos, valid)

    # A static loop over the 3 modalities: their sequence lengths differ.
    terms = [per_modality(s, c) for s, c in zip(unique, common, strict=True)]
    return sum(terms[1:], terms[0]) / 3.0
