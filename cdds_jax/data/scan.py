"""The ``scan_precomp`` layout of SCAN / VSE++ / VSE-infinity (docs/cdds.md, 'Data').

``root/{split}_ims.npy`` float [N_img, P, D_v] (bottom-up regions: P = 36, D_v = 2048)
and ``root/{split}_caps.txt``, one caption per line; caption i belongs to image
``i // (N_cap // N_img)`` (identity when the counts are equal; the caption count must be
an exact multiple of the image count). F30K has the splits train / dev / test, COCO
train / dev / test (1K) / testall (5K). ``{split}_ids.txt`` is not needed and not read.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from cdds_jax.data.split import (
    RetrievalSplit,
    check_images,
    load_npy,
    read_lines,
    scan_features,
)
from xmodal import files

__all__ = ["read_scan_precomp"]


def read_scan_precomp(root: str | os.PathLike, split: str) -> RetrievalSplit:
    """Opens the SCAN / VSE precomp layout: ``root/{split}_ims.npy`` + ``{split}_caps.txt``.

    No caption features: ``captions`` holds the text, for a trained encoder.

    Returns:
      A :class:`RetrievalSplit` with ``images`` [N_img, P, D_v] memory-mapped and
      ``meta`` = {format, split, counts, dims}.

    Raises:
      FileNotFoundError: the root or a file is missing (the message lists what is
        there).
      ValueError: a bad shape or dtype, NaN/Inf images, an empty split, or a caption
        count that is not a multiple of the image count, naming the file.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} [scan_precomp root]: folder not found")
    ims_path = root / f"{split}_ims.npy"
    caps_path = root / f"{split}_caps.txt"
    images = load_npy(ims_path, "images")
    check_images(images, ims_path)
    captions = read_lines(caps_path, "captions")
    n_img, n_cap = images.shape[0], len(captions)
    if n_cap == 0:
        raise ValueError(
            files.field_error(
                caps_path, "captions", "at least 1 caption (empty split)", "0 lines"
            )
        )
    if n_cap % n_img != 0:
        raise ValueError(
            files.field_error(
                caps_path,
                "captions",
                f"a multiple of the {n_img} images in {ims_path.name} (caption i -> image i // k)",
                f"{n_cap} lines",
            )
        )
    per_image = n_cap // n_img
    c2i = np.arange(n_cap, dtype=np.int64) // per_image
    checked = {"images"} if scan_features(images, ims_path, "images") else set()
    meta = {
        "format": "scan_precomp",
        "split": split,
        "num_images": n_img,
        "num_captions": n_cap,
        "captions_per_image": per_image,
        "num_tokens": int(images.shape[1]),
        "image_dim": int(images.shape[2]),
    }
    return RetrievalSplit(
        root=root,
        split=split,
        images=images,
        caption_to_image=c2i,
        captions=captions,
        meta=meta,
        files={
            "images": str(ims_path),
            "captions": str(caps_path),
            "caption_to_image": f"{caps_path} (caption i -> image i // {per_image})",
        },
        format="scan_precomp",
        finite_checked=frozenset(checked),
        memmapped=frozenset({"images"}),
    )
