"""Masked primitives shared by the retrieval heads (docs/cdds.md §15).

Every head scores all pairs of an image set ``[Bi, P, d]`` and a caption set
``[Bt, L, d]``; per-pair arrays carry the pair axes first, ``[Bi, Bt, ...]``. The
authors' code slices each caption to its ``n_word`` valid words inside a Python loop;
here the padded positions stay in the arrays and every reduction over tokens is masked,
so a padded word (or region) never contributes a value or receives a gradient. The
padded inputs are zeroed first (`zero_padding`), so padding may hold anything, NaN
included.

Empty sets are defined, never NaN: a masked mean / max / log-sum-exp over no valid entry
is 0, a masked softmax over no valid entry is all zeros (its weighted sum is the zero
vector). Their gradients are finite as well.

The two normalisations of the authors' code are kept apart because they differ at small
norms: ``l2norm`` is SCAN's ``x / (||x|| + eps)`` (SCAN, SGRAF, CHAN, LAPS ``xttn``),
``normalize`` is ``torch.nn.functional.normalize``, ``x / max(||x||, eps)`` (LAPS
``cross_net``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cdds_jax.arrays import as_mask, f32, safe_sqrt

__all__ = [
    "AUTHORS_EPS",
    "NORMALIZE_EPS",
    "check_pair_inputs",
    "cosine",
    "l2norm",
    "masked_logsumexp",
    "masked_max",
    "masked_mean",
    "masked_softmax",
    "normalize",
    "prepare_pair",
    "zero_padding",
]

#: The ``eps`` of the authors' ``l2norm`` / ``l1norm`` / ``cosine_similarity`` (SCAN,
#: SGRAF, CHAN, LAPS): added to a norm, or the floor of a product of norms.
AUTHORS_EPS = 1e-8
#: The ``eps`` of ``torch.nn.functional.normalize`` (LAPS ``cross_net``).
NORMALIZE_EPS = 1e-12

# A finite stand-in for -inf: masked entries never produce inf - inf (NaN) in a
# gradient rule, and an all-masked row is detected and replaced by 0.
_LOW = float(jnp.finfo(jnp.float32).min)


def check_pair_inputs(
    img: jax.typing.ArrayLike,
    img_mask: jax.typing.ArrayLike,
    cap: jax.typing.ArrayLike,
    cap_mask: jax.typing.ArrayLike,
) -> tuple[int, int, int, int, int]:
    """Checks the heads' calling convention; returns ``(Bi, P, Bt, L, d)``.

    Args:
      img: ``[Bi, P, d]`` image tokens (regions or patches).
      img_mask: ``[Bi, P]`` validity of the image tokens.
      cap: ``[Bt, L, d]`` caption tokens (words), right padded.
      cap_mask: ``[Bt, L]`` validity of the words.

    Raises:
      ValueError: naming the argument and its shape.
    """
    shapes = {
        "img": jnp.shape(img),
        "img_mask": jnp.shape(img_mask),
        "cap": jnp.shape(cap),
        "cap_mask": jnp.shape(cap_mask),
    }
    for name, rank in (("img", 3), ("cap", 3), ("img_mask", 2), ("cap_mask", 2)):
        if len(shapes[name]) != rank:
            want = "[B, N, d]" if rank == 3 else "[B, N]"
            raise ValueError(f"`{name}` must be {want}; got shape {shapes[name]}.")
    bi, p, d = shapes["img"]
    bt, length, d_t = shapes["cap"]
    if shapes["img_mask"] != (bi, p):
        raise ValueError(
            f"`img_mask` must be [Bi, P] = {(bi, p)} to match `img` {shapes['img']}; "
            f"got shape {shapes['img_mask']}."
        )
    if shapes["cap_mask"] != (bt, length):
        raise ValueError(
            f"`cap_mask` must be [Bt, L] = {(bt, length)} to match `cap` "
            f"{shapes['cap']}; got shape {shapes['cap_mask']}."
        )
    if d != d_t:
        raise ValueError(
            f"`img` {shapes['img']} and `cap` {shapes['cap']} must share the width d."
        )
    if p < 1 or length < 1:
        raise ValueError(
            f"`img` {shapes['img']} and `cap` {shapes['cap']} need at least one token."
        )
    return bi, p, bt, length, d


def zero_padding(
    x: jax.typing.ArrayLike, mask: jax.typing.ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """``(x, mask)`` as float32 ``[B, N, d]`` with padded tokens set to 0, and bool."""
    m = as_mask(mask)
    return jnp.where(m[..., None], f32(x), 0.0), m


def prepare_pair(
    img: jax.typing.ArrayLike,
    img_mask: jax.typing.ArrayLike,
    cap: jax.typing.ArrayLike,
    cap_mask: jax.typing.ArrayLike,
    *,
    normalize: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """A head's inputs checked, padding zeroed, optionally ``l2norm``-ed.

    Returns:
      ``(img [Bi, P, d], img_mask [Bi, P], cap [Bt, L, d], cap_mask [Bt, L])``:
      float32 tokens, bool masks.
    """
    check_pair_inputs(img, img_mask, cap, cap_mask)
    img, im = zero_padding(img, img_mask)
    cap, cm = zero_padding(cap, cap_mask)
    if normalize:
        img, cap = l2norm(img), l2norm(cap)
    return img, im, cap, cm


def l2norm(x: jax.Array, axis: int = -1, eps: float = AUTHORS_EPS) -> jax.Array:
    """SCAN's ``l2norm``: ``x / (||x|| + eps)`` over ``axis`` (0 at ``x = 0``)."""
    return x / (safe_sqrt(jnp.sum(x * x, axis=axis, keepdims=True)) + eps)


def normalize(x: jax.Array, axis: int = -1, eps: float = NORMALIZE_EPS) -> jax.Array:
    """``torch.nn.functional.normalize``: ``x / max(||x||, eps)`` over ``axis``."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(sq, eps * eps))


def cosine(
    x1: jax.Array, x2: jax.Array, axis: int = -1, eps: float = AUTHORS_EPS
) -> jax.Array:
    """SCAN's ``cosine_similarity``: ``<x1, x2> / max(||x1|| ||x2||, eps)``."""
    n1 = safe_sqrt(jnp.sum(x1 * x1, axis=axis))
    n2 = safe_sqrt(jnp.sum(x2 * x2, axis=axis))
    return jnp.sum(x1 * x2, axis=axis) / jnp.maximum(n1 * n2, eps)


def _count(mask: jax.Array, axis: int) -> jax.Array:
    return jnp.sum(mask, axis=axis, dtype=jnp.float32)


def _broadcast(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x`` and ``mask`` broadcast against each other."""
    shape = jnp.broadcast_shapes(jnp.shape(x), jnp.shape(mask))
    return jnp.broadcast_to(x, shape), jnp.broadcast_to(mask, shape)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """Mean of ``x`` over ``axis`` where ``mask`` (broadcast together); 0 if none."""
    x, mask = _broadcast(x, mask)
    total = jnp.sum(jnp.where(mask, x, 0.0), axis=axis)
    return total / jnp.maximum(_count(mask, axis), 1.0)


def masked_max(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """Max of ``x`` over ``axis`` where ``mask`` (broadcast together); 0 if none."""
    x, mask = _broadcast(x, mask)
    best = jnp.max(jnp.where(mask, x, _LOW), axis=axis)
    return jnp.where(jnp.any(mask, axis=axis), best, 0.0)


def masked_logsumexp(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """``log sum exp x`` over the entries of ``axis`` where ``mask``; 0 if none."""
    x, mask = _broadcast(x, mask)
    top = lax.stop_gradient(masked_max(x, mask, axis))
    shifted = jnp.where(mask, x - jnp.expand_dims(top, axis), 0.0)
    total = jnp.sum(jnp.where(mask, jnp.exp(shifted), 0.0), axis=axis)
    some = jnp.any(mask, axis=axis)
    return jnp.where(some, top + jnp.log(jnp.where(some, total, 1.0)), 0.0)


def masked_softmax(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """Softmax of ``x`` over ``axis`` restricted to ``mask``; masked entries are 0, and
    a row without valid entries is all zeros."""
    x, mask = _broadcast(x, mask)
    top = lax.stop_gradient(jnp.max(jnp.where(mask, x, _LOW), axis=axis, keepdims=True))
    e = jnp.where(mask, jnp.exp(jnp.where(mask, x - top, 0.0)), 0.0)
    total = jnp.sum(e, axis=axis, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)
