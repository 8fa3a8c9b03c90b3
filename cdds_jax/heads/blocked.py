"""All-pairs scores of a head over a whole split, in memory-bounded blocks.

A cross-attention head has no per-item embedding: its score of image ``i`` and caption
``t`` needs both token sets, and the per-pair tensors (``[Bi, Bt, L, P]`` attention,
``[Bi, Bt, L, d]`` attended vectors, ...) cannot be formed for COCO 5K x 25K at once.
`head_score_matrix` scores one ``[image_block, caption_block]`` block at a time under
ONE jitted kernel (the last blocks are padded with all-padding rows, whose scores are
dropped), so the device memory of the per-pair work is that of one block whatever the
split's size (docs/cdds.md §15.6). The image tokens of the split stay on the device
(one padded block each); caption blocks are streamed, and the scores of one caption
block are copied to the host while the next one is computed, as the authors'
``shard_xattn`` / ``shard_attn_scores`` loops do block by block.

`evaluate_head` feeds the blocks to the same rank counting and protocols as the
embedding heads (``cdds_jax.retrieval.evaluate_score_protocols``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cdds_jax import retrieval
from cdds_jax.score_matrix import is_floating, positive_int

__all__ = ["block_kernel", "block_memory_bytes", "evaluate_head", "head_score_matrix"]


def _apply_block(
    head: nn.Module,
    variables: Any,
    img: jax.Array,
    img_mask: jax.Array,
    cap: jax.Array,
    cap_mask: jax.Array,
) -> jax.Array:
    """One block's ``[Bi, Bt]`` float32 scores, in evaluation mode."""
    out = head.apply(variables, img, img_mask, cap, cap_mask, train=False)
    return out.astype(jnp.float32)


#: The jitted block kernel: one compile per (head configuration, block shapes), the
#: module itself a static argument (Flax modules hash by their fields).
block_kernel = jax.jit(_apply_block, static_argnums=0)


def _host_tokens(name: str, x: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    arr, m = np.asarray(x), np.asarray(mask)
    if arr.ndim != 3 or not is_floating(arr.dtype):
        raise ValueError(
            f"`{name}` must be a floating [n, N, d] array; got shape {arr.shape} and "
            f"dtype {arr.dtype}."
        )
    if m.shape != arr.shape[:2]:
        raise ValueError(
            f"the mask of `{name}` must be [n, N] = {arr.shape[:2]}; got shape "
            f"{m.shape}."
        )
    return arr, m


def _padded(x: np.ndarray, start: int, size: int) -> np.ndarray:
    """Rows ``x[start:start + size]``, zero-padded (mask False) to ``size`` rows."""
    rows = np.asarray(x[start : start + size])
    if rows.shape[0] == size:
        return rows
    out = np.zeros((size, *x.shape[1:]), dtype=rows.dtype)
    out[: rows.shape[0]] = rows
    return out


def head_score_matrix(
    head: nn.Module,
    variables: Any,
    images: Any,
    image_mask: Any,
    captions: Any,
    caption_mask: Any,
    *,
    image_block: int = 64,
    caption_block: int = 128,
) -> np.ndarray:
    """Scores of every image-caption pair of a split, block by block.

    Args:
      head: a head module (``cdds_jax.heads.HEADS``), called with ``train=False``.
      variables: its variables (``{"params": ..., "batch_stats": ...}``).
      images: ``[n_img, P, d]`` floating host array of image tokens (memmaps are read
        block by block); image_mask: ``[n_img, P]``.
      captions: ``[n_cap, L, d]`` caption tokens; caption_mask: ``[n_cap, L]``.
      image_block, caption_block: rows of each side per block (keyword-only). The
        device memory of the per-pair work is that of one block (`block_memory_bytes`);
        one kernel is compiled for any split size.

    Returns:
      ``[n_img, n_cap]`` float32 NumPy array.
    """
    imgs, im = _host_tokens("images", images, image_mask)
    caps, cm = _host_tokens("captions", captions, caption_mask)
    if imgs.shape[2] != caps.shape[2]:
        raise ValueError(
            f"images {imgs.shape} and captions {caps.shape} must share the width d."
        )
    bi = positive_int("image_block", image_block)
    bt = positive_int("caption_block", caption_block)
    n_img, n_cap = imgs.shape[0], caps.shape[0]
    out = np.empty((n_img, n_cap), np.float32)
    if n_img == 0 or n_cap == 0:
        return out

    image_starts = range(0, n_img, bi)
    image_blocks = [
        (jax.device_put(_padded(imgs, s, bi)), jax.device_put(_padded(im, s, bi)))
        for s in image_starts
    ]

    def write(start: int, results: list[jax.Array]) -> None:
        stop = min(start + bt, n_cap)
        for i_start, host in zip(image_starts, jax.device_get(results), strict=True):
            i_stop = min(i_start + bi, n_img)
            out[i_start:i_stop, start:stop] = host[: i_stop - i_start, : stop - start]

    pending: tuple[int, list[jax.Array]] | None = None
    for start in range(0, n_cap, bt):
        cap_block = jax.device_put(_padded(caps, start, bt))
        mask_block = jax.device_put(_padded(cm, start, bt))
        results = [
            block_kernel(head, variables, img, mask, cap_block, mask_block)
            for img, mask in image_blocks
        ]
        if pending is not None:  # fetch the previous block while this one computes
            write(*pending)
        pending = (start, results)
    assert pending is not None
    write(*pending)
    return out


def block_memory_bytes(
    head: nn.Module,
    variables: Any,
    *,
    num_image_tokens: int,
    num_words: int,
    dim: int,
    image_block: int = 64,
    caption_block: int = 128,
) -> int:
    """Device bytes one block of `head_score_matrix` needs beyond its inputs.

    The compiled kernel's temporary and output buffers (XLA's memory analysis) for
    ``[image_block, P, d]`` images and ``[caption_block, L, d]`` captions: it depends
    on the block sizes and the token shapes, never on the split's size.
    """
    f32 = jax.ShapeDtypeStruct
    compiled = block_kernel.lower(
        head,
        variables,
        f32((image_block, num_image_tokens, dim), jnp.float32),
        f32((image_block, num_image_tokens), jnp.bool_),
        f32((caption_block, num_words, dim), jnp.float32),
        f32((caption_block, num_words), jnp.bool_),
    ).compile()
    stats = compiled.memory_analysis()
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes)


def evaluate_head(
    head: nn.Module,
    variables: Any,
    images: Any,
    image_mask: Any,
    captions: Any,
    caption_mask: Any,
    caption_to_image: Any,
    *,
    protocols: Sequence[str],
    image_block: int = 64,
    caption_block: int = 128,
    collapse_floor: float | None = None,
) -> dict[str, dict[str, float]]:
    """Retrieval metrics of a head's scores under the named protocols.

    `head_score_matrix` on the rows each protocol needs (all pairs for ``"full"``,
    each COCO 1K fold's own pairs otherwise), ranked by ``cdds_jax.retrieval``.

    Args:
      head, variables: the head and its variables.
      images, image_mask, captions, caption_mask: the split's tokens, as in
        `head_score_matrix`.
      caption_to_image: ``[n_cap]`` integer image id of each caption.
      protocols: names from ``retrieval.PROTOCOLS``.
      image_block, caption_block: block sizes.
      collapse_floor: as in ``retrieval.evaluate_protocols``.

    Returns:
      ``{protocol: metrics}`` as ``retrieval.evaluate_protocols`` returns them.
    """
    imgs, im = _host_tokens("images", images, image_mask)
    caps, cm = _host_tokens("captions", captions, caption_mask)

    def scores(rows: slice, cols: slice | np.ndarray) -> np.ndarray:
        return head_score_matrix(
            head,
            variables,
            imgs[rows],
            im[rows],
            caps[cols],
            cm[cols],
            image_block=image_block,
            caption_block=caption_block,
        )

    return retrieval.evaluate_score_protocols(
        scores,
        caption_to_image,
        num_images=imgs.shape[0],
        num_captions=caps.shape[0],
        protocols=protocols,
        collapse_floor=collapse_floor,
    )
