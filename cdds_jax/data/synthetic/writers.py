"""Writing synthetic draws in the real on-disk formats, and the demo cache.

:func:`write_feature_store` writes the ``features`` store, :func:`write_scan_precomp`
the SCAN precomp layout; :func:`ensure_demo_store` writes a store once into a cache
folder keyed by its arguments (:func:`ensure_cached`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cdds_jax.data.synthetic.draw import draw_split, draw_world
from cdds_jax.data.synthetic.spec import MIXED_ONLY, SyntheticSpec, check_num_images

__all__ = [
    "GENERATOR_VERSION",
    "ensure_cached",
    "ensure_demo_store",
    "write_feature_store",
    "write_scan_precomp",
]

#: Bumped whenever an existing generator's output changes (it keys
#: :func:`ensure_demo_store`); a new generator gets a new name instead.
GENERATOR_VERSION = 1

_DEFAULT_IMAGES = {"train": 1000, "dev": 100, "test": 100}


def write_feature_store(
    root: str | os.PathLike,
    *,
    seed: int,
    num_images: Mapping[str, int] | None = None,
    **spec: Any,
) -> pathlib.Path:
    """Writes a synthetic ``features`` store ``root/{split}/`` for each split.

    Each split folder gets ``images.npy`` [N_img, num_tokens, image_dim],
    ``captions.npy`` [N_cap, max_words, text_dim] (zero-padded), ``caption_lengths.npy``
    int32, ``captions.txt`` (the matching words), ``caption_to_image.npy`` int64 and
    ``meta.json`` (dataset "synthetic", counts, dims and every generator argument).

    Args:
      root: output folder (created; existing files of the same names are overwritten).
      seed: the seed; the same arguments give byte-identical files.
      num_images: {split: number of images}; default {"train": 1000, "dev": 100,
        "test": 100}.
      **spec: the fields of :class:`SyntheticSpec` (defaults there).

    Returns:
      ``root`` as a :class:`pathlib.Path`.
    """
    num_images = check_num_images(_DEFAULT_IMAGES if num_images is None else num_images)
    s = SyntheticSpec(**spec)
    args = {"seed": seed, "num_images": num_images, **s.record()}
    root = pathlib.Path(root)
    world = draw_world(seed, s, s.text_dim)
    for split, n_img in num_images.items():
        data = draw_split(split, n_img, seed=seed, world=world, spec=s)
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "images.npy", data["images"].astype(s.dtype))
        np.save(folder / "captions.npy", data["captions"].astype(s.dtype))
        np.save(
            folder / "caption_lengths.npy", data["caption_lengths"].astype(np.int32)
        )
        np.save(
            folder / "caption_to_image.npy", data["caption_to_image"].astype(np.int64)
        )
        (folder / "captions.txt").write_text(
            "".join(line + "\n" for line in data["text"]), encoding="utf-8"
        )
        meta = {
            "dataset": "synthetic",
            "split": split,
            "format": "features",
            "image_backbone": "synthetic",
            "text_encoder": "synthetic",
            "num_images": n_img,
            "num_captions": len(data["text"]),
            "num_tokens": s.num_tokens,
            "image_dim": s.image_dim,
            "max_words": s.max_words,
            "text_dim": s.text_dim,
            "generator": {
                "name": "cdds_jax.data.synthetic",
                "version": GENERATOR_VERSION,
                **args,
            },
        }
        (folder / "meta.json").write_text(
            json.dumps(meta, indent=2, sort_keys=True) + "\n"
        )
    return root


def write_scan_precomp(
    root: str | os.PathLike,
    *,
    seed: int,
    num_images: Mapping[str, int] | None = None,
    num_tokens: int = 36,
    **spec: Any,
) -> pathlib.Path:
    """Writes the SCAN precomp layout ``root/{split}_ims.npy`` (float32) + ``{split}_caps.txt``.

    Same world and planted structure as :func:`write_feature_store` (caption i belongs to
    image i // captions_per_image; no caption features, the text only). Arguments as
    there (``num_tokens`` defaults to the 36 regions of the layout; ``uneven``,
    ``text_dim`` and ``dtype`` do not apply). Returns ``root``.
    """
    num_images = check_num_images(_DEFAULT_IMAGES if num_images is None else num_images)
    for name in ("uneven", "text_dim", "dtype"):
        if name in spec:
            raise TypeError(f"write_scan_precomp: {name!r} does not apply")
    # Text features are not written; a small table keeps the draw cheap ('mixed'
    # needs a column for every latent dimension).
    text_dim = 8 if spec.get("generator", "offsets") == "offsets" else None
    s = SyntheticSpec(num_tokens=num_tokens, dtype="float32", **spec)
    s = dataclasses.replace(s, text_dim=text_dim or s.latent_dim)
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    world = draw_world(seed, s, s.text_dim)
    for split, n_img in num_images.items():
        data = draw_split(split, n_img, seed=seed, world=world, spec=s)
        np.save(root / f"{split}_ims.npy", data["images"].astype(np.float32))
        (root / f"{split}_caps.txt").write_text(
            "".join(line + "\n" for line in data["text"]), encoding="utf-8"
        )
    return root


def ensure_cached(
    cache_dir: str | os.PathLike,
    name: str,
    spec: Mapping[str, Any],
    write: Callable[[pathlib.Path], Any],
) -> pathlib.Path:
    """``cache_dir/<name>-<hash of spec>``, written once by ``write(folder)``.

    The folder is written into a temporary folder beside it and renamed into place, so
    a killed run never leaves a half-written one; later calls (and concurrent writers,
    whichever renames first) reuse it. ``spec`` (JSON-able) must hold everything the
    output depends on, its generator version included.
    """
    cache_dir = pathlib.Path(cache_dir)
    key_src = json.dumps(dict(spec), sort_keys=True, default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    final = cache_dir / f"{name}-{key}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{key}-", dir=cache_dir))
    try:
        write(tmp)
        (tmp / "generator.json").write_text(key_src + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_demo_store(cache_dir: str | os.PathLike, **kwargs: Any) -> pathlib.Path:
    """Writes :func:`write_feature_store` ``(**kwargs)`` once and returns its root.

    The store lives in ``cache_dir/synthetic-<hash>``, keyed by a hash of the arguments
    and :data:`GENERATOR_VERSION` (:func:`ensure_cached`); for the ``offsets``
    generator the ``mixed``-only arguments are left out of the key, so a store
    written before they existed is still found.

    Args:
      cache_dir: folder for cached stores (created).
      **kwargs: keyword arguments of :func:`write_feature_store` (``seed`` required).
    """
    if "seed" not in kwargs:
        raise ValueError("seed: ensure_demo_store needs seed=..., got none")
    spec = dict(kwargs)
    if spec.get("num_images") is not None:
        spec["num_images"] = {str(k): int(v) for k, v in spec["num_images"].items()}
    if spec.get("generator", "offsets") == "offsets":
        for name in MIXED_ONLY:
            spec.pop(name, None)
    return ensure_cached(
        cache_dir,
        "synthetic",
        {"version": GENERATOR_VERSION, **spec},
        lambda folder: write_feature_store(folder, **kwargs),
    )
