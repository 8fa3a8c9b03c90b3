"""The ``features`` store: our own on-disk layout, one folder per split ``root/split/``.

The fast path, and what every other format can be converted to (docs/cdds.md, 'Data')::

    images.npy            float16/float32 [N_img, P, D_v]   token features per unique image
    captions.npy          float16/float32 [N_cap, L_max, D_t] zero-padded token features
    caption_lengths.npy   int [N_cap], each in [1, L_max]    (only with captions.npy)
    captions.txt          N_cap lines of UTF-8 text           (trained text encoders)
    caption_to_image.npy  int [N_cap], each in [0, N_img)     explicit caption -> image row
    meta.json             JSON object: dataset, split, backbone, dims, counts

``captions.npy`` + ``caption_lengths.npy`` and/or ``captions.txt`` must be present. Known
``meta.json`` keys are cross-checked against the arrays when present: ``num_images``,
``num_captions``, ``num_tokens`` (P), ``image_dim`` (D_v), ``max_words`` (L_max) and
``text_dim`` (D_t). Every array is opened memory-mapped (COCO train at 36 x 2048 is
~33 GB), so opening a split is cheap.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from cdds_jax.data.split import (
    RetrievalSplit,
    check_caption_lengths,
    check_caption_to_image,
    check_float,
    check_images,
    check_int_1d,
    load_npy,
    read_lines,
    scan_features,
)
from xmodal import files

__all__ = ["STORE_FILES", "read_features"]

#: Field -> file name in a split folder.
STORE_FILES: dict[str, str] = {
    "images": "images.npy",
    "caption_to_image": "caption_to_image.npy",
    "caption_features": "captions.npy",
    "caption_lengths": "caption_lengths.npy",
    "captions": "captions.txt",
    "meta": "meta.json",
}

# meta.json keys cross-checked against the arrays.
_META_CHECKS = {
    "num_images": lambda s: s.num_images,
    "num_captions": lambda s: s.num_captions,
    "num_tokens": lambda s: s.num_tokens,
    "image_dim": lambda s: s.image_dim,
    "max_words": lambda s: s.max_caption_tokens,
    "text_dim": lambda s: s.text_dim,
}

_msg = files.field_error


def _read_caption_features(
    paths: dict[str, pathlib.Path], num_captions: int
) -> tuple[np.ndarray, np.ndarray]:
    """``captions.npy`` [N_cap, L_max, D_t] (memory-mapped) and int32 lengths [N_cap]."""
    feats = load_npy(paths["caption_features"], "caption_features")
    check_float(feats, paths["caption_features"], "caption_features", 3)
    if feats.shape[0] != num_captions:
        raise ValueError(
            _msg(
                paths["caption_features"],
                "caption_features",
                f"{num_captions} rows (caption_to_image.npy)",
                f"{feats.shape[0]} rows, shape {feats.shape}",
            )
        )
    lengths = load_npy(paths["caption_lengths"], "caption_lengths")
    check_int_1d(lengths, paths["caption_lengths"], "caption_lengths")
    lengths = check_caption_lengths(
        lengths, paths["caption_lengths"], num_captions, feats.shape[1]
    )
    return feats, lengths


def _check_caption_files(paths: dict[str, pathlib.Path]) -> tuple[bool, bool]:
    """Which caption forms the folder has: (features + lengths, text)."""
    folder = paths["meta"].parent
    has_feat = paths["caption_features"].is_file()
    has_len = paths["caption_lengths"].is_file()
    has_text = paths["captions"].is_file()
    if has_feat != has_len:
        missing = "caption_lengths" if has_feat else "caption_features"
        raise FileNotFoundError(
            f"{paths[missing]} [{missing}]: file not found (captions.npy and "
            f"caption_lengths.npy come together); {folder} holds: "
            f"{files.listing(folder)}"
        )
    if not (has_feat or has_text):
        raise FileNotFoundError(
            f"{folder} [captions]: expected captions.npy + caption_lengths.npy and/or "
            f"captions.txt, found neither; {folder} holds: {files.listing(folder)}"
        )
    return has_feat, has_text


def _check_meta(split: RetrievalSplit, path: pathlib.Path) -> None:
    for key, get in _META_CHECKS.items():
        meta = split.meta
        if key in meta and get(split) is not None and meta[key] != get(split):
            raise ValueError(
                _msg(
                    path,
                    f"meta.{key}",
                    f"{get(split)} (from the arrays)",
                    repr(meta[key]),
                )
            )


def read_features(root: str | os.PathLike, split: str) -> RetrievalSplit:
    """Opens ``root/split/`` of our feature store (layout in the module docstring).

    Args:
      root: dataset root holding one folder per split.
      split: split name, e.g. ``"train"``.

    Returns:
      A :class:`RetrievalSplit` with ``images`` [N_img, P, D_v] and
      ``caption_features`` [N_cap, L_max, D_t] memory-mapped.

    Raises:
      FileNotFoundError: the split folder or a required file is missing (the message
        lists what is there).
      ValueError: any shape, dtype, range, count or finiteness problem, or an empty
        split, naming the file and field.
    """
    root = pathlib.Path(root)
    folder = root / split
    if not folder.is_dir():
        where = files.listing(root) if root.is_dir() else "(root does not exist)"
        raise FileNotFoundError(
            f"{folder} [split folder]: not found; {root} holds: {where}"
        )
    paths = {k: folder / name for k, name in STORE_FILES.items()}
    meta = files.read_json_object(paths["meta"], "meta")

    images = load_npy(paths["images"], "images")
    check_images(images, paths["images"])
    c2i_raw = load_npy(paths["caption_to_image"], "caption_to_image")
    check_int_1d(c2i_raw, paths["caption_to_image"], "caption_to_image")
    num_captions = c2i_raw.shape[0]
    if num_captions == 0:
        raise ValueError(
            _msg(
                paths["caption_to_image"],
                "caption_to_image",
                "at least 1 caption (empty split)",
                "0 captions",
            )
        )

    has_feat, has_text = _check_caption_files(paths)
    caption_features = caption_lengths = captions = None
    if has_feat:
        caption_features, caption_lengths = _read_caption_features(paths, num_captions)
    if has_text:
        captions = read_lines(paths["captions"], "captions")
        if len(captions) != num_captions:
            raise ValueError(
                _msg(
                    paths["captions"],
                    "captions",
                    f"{num_captions} lines (caption_to_image.npy)",
                    f"{len(captions)} lines",
                )
            )
    c2i = check_caption_to_image(
        c2i_raw, paths["caption_to_image"], images.shape[0], num_captions
    )
    checked = {
        key
        for key, arr in (("images", images), ("caption_features", caption_features))
        if arr is not None and scan_features(arr, paths[key], key)
    }
    out = RetrievalSplit(
        root=root,
        split=split,
        images=images,
        caption_to_image=c2i,
        caption_features=caption_features,
        caption_lengths=caption_lengths,
        captions=captions,
        meta=meta,
        files={k: str(v) for k, v in paths.items() if v.is_file()},
        format="features",
        finite_checked=frozenset(checked),
        memmapped=frozenset({"images"} | ({"caption_features"} if has_feat else set())),
    )
    _check_meta(out, paths["meta"])
    return out
