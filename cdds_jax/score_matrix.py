"""Dense retrieval scores ``image_emb @ caption_emb.T`` built block by block.

`score_matrix` streams the larger side through one jitted ``[B, d] x [B, d]`` kernel
(`block_scores_kernel`), so one compile serves any number of images and captions
(docs/cdds.md, 'Evaluation'). The input checks beside it (`host_embeddings`,
`positive_int`, `is_floating`) are shared with `cdds_jax.retrieval`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "block_scores_kernel",
    "host_embeddings",
    "is_floating",
    "positive_int",
    "score_matrix",
]


def positive_int(name: str, value: Any) -> int:
    """`value` as an int; a ValueError naming `name` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def is_floating(dtype: Any) -> bool:
    """Whether `dtype` is a floating dtype (ml_dtypes floats included)."""
    # jnp.issubdtype also knows the ml_dtypes floats (bfloat16, float8_*).
    return bool(jnp.issubdtype(dtype, jnp.floating))


def host_embeddings(name: str, x: Any) -> np.ndarray:
    """`x` as a 2-D floating host array without copying (memmaps stay lazy)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [n, d], got shape {arr.shape} (ndim {arr.ndim})"
        )
    if not is_floating(arr.dtype):
        raise ValueError(
            f"{name} must have a floating dtype, got {arr.dtype} (shape {arr.shape})"
        )
    return arr


def block_scores_kernel(
    image_block: jax.Array,
    caption_block: jax.Array,
    *,
    compute_dtype: np.dtype,
    precision: lax.Precision,
) -> jax.Array:
    """``[B, d] x [B, d] -> [B, B]`` float32 scores, inputs cast to `compute_dtype`."""
    accumulate = jnp.promote_types(compute_dtype, jnp.float32)
    out = lax.dot_general(
        image_block.astype(compute_dtype),
        caption_block.astype(compute_dtype),
        dimension_numbers=(((1,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=accumulate,
    )
    return out.astype(jnp.float32)


# Module-level so that it compiles once per (d, dtypes) and tests can count its traces.
_block_scores = jax.jit(
    block_scores_kernel, static_argnames=("compute_dtype", "precision")
)


def _padded_block(x: np.ndarray, start: int, size: int, dtype: np.dtype) -> np.ndarray:
    """Rows ``x[start:start + size]`` as `dtype`, zero-padded to `size` rows."""
    rows = x[start : start + size]
    if rows.shape[0] == size:
        return np.asarray(rows, dtype=dtype)  # a view when the dtype already matches
    out = np.zeros((size, x.shape[1]), dtype=dtype)
    out[: rows.shape[0]] = rows
    return out


def score_matrix(
    image_emb: Any,
    caption_emb: Any,
    *,
    block_size: int = 1024,
    dtype: Any = None,
) -> np.ndarray:
    """Dense retrieval scores ``image_emb @ caption_emb.T``, built block by block.

    The rows of the smaller side are put on the device once (block by block, so it
    needs ``min(n_img, n_cap) * d`` device memory); the larger side is streamed one
    ``[block_size, d]`` block at a time, and the ``[block_size, block_size]`` results
    are copied into a host float32 array while the next block is computed. The last
    block of each side is zero-padded to `block_size` and the padding sliced off, so
    one compiled kernel serves every ``n_img`` / ``n_cap`` (one compile per width
    ``d`` and dtypes).

    Args:
      image_emb: ``[n_img, d]`` floating host array (``np.memmap`` is read lazily).
      caption_emb: ``[n_cap, d]`` floating host array.
      block_size: rows per block on both sides (keyword-only, positive).
      dtype: compute dtype of the inputs (e.g. ``jnp.bfloat16``); products are always
        accumulated in (at least) float32 via ``preferred_element_type``. ``None``
        means float32. Float32 compute uses ``Precision.HIGHEST`` (no TF32 on GPUs),
        lower dtypes the default precision.

    Returns:
      ``[n_img, n_cap]`` float32 NumPy array on the host.
    """
    images = host_embeddings("image_emb", image_emb)
    captions = host_embeddings("caption_emb", caption_emb)
    if images.shape[1] != captions.shape[1]:
        raise ValueError(
            "image_emb and caption_emb must have the same width d, got "
            f"image_emb {images.shape} and caption_emb {captions.shape}"
        )
    block = positive_int("block_size", block_size)
    compute_dtype = jnp.dtype(jnp.float32 if dtype is None else dtype)
    if not is_floating(compute_dtype):
        raise ValueError(f"dtype must be a floating dtype or None, got {dtype!r}")
    compute_dtype = jax.dtypes.canonicalize_dtype(compute_dtype)
    precision = (
        lax.Precision.HIGHEST if compute_dtype.itemsize >= 4 else lax.Precision.DEFAULT
    )

    n_img, n_cap = images.shape[0], captions.shape[0]
    out = np.empty((n_img, n_cap), dtype=np.float32)
    if n_img == 0 or n_cap == 0:
        return out

    # Cache the smaller side on the device, stream the larger one: every block of the
    # larger side crosses to the device once, the smaller side once in total.
    cache_images = n_img <= n_cap
    cached, streamed = (images, captions) if cache_images else (captions, images)
    cached_dtype = jax.dtypes.canonicalize_dtype(cached.dtype)
    streamed_dtype = jax.dtypes.canonicalize_dtype(streamed.dtype)
    cached_starts = range(0, cached.shape[0], block)
    cached_blocks = [
        jax.device_put(_padded_block(cached, s, block, cached_dtype))
        for s in cached_starts
    ]

    def write(start: int, results: list[jax.Array]) -> None:
        stop = min(start + block, streamed.shape[0])
        for c_start, host in zip(cached_starts, jax.device_get(results), strict=True):
            c_stop = min(c_start + block, cached.shape[0])
            if cache_images:
                out[c_start:c_stop, start:stop] = host[
                    : c_stop - c_start, : stop - start
                ]
            else:
                out[start:stop, c_start:c_stop] = host[
                    : stop - start, : c_stop - c_start
                ]

    kw = {"compute_dtype": compute_dtype, "precision": precision}
    pending: tuple[int, list[jax.Array]] | None = None
    for start in range(0, streamed.shape[0], block):
        dev = jax.device_put(_padded_block(streamed, start, block, streamed_dtype))
        if cache_images:
            results = [_block_scores(c, dev, **kw) for c in cached_blocks]
        else:
            results = [_block_scores(dev, c, **kw) for c in cached_blocks]
        if pending is not None:  # fetch the previous block while this one computes
            write(*pending)
        pending = (start, results)
    assert pending is not None
    write(*pending)
    return out
