"""The Karpathy split JSON (``dataset_flickr30k.json``, ``dataset_coco.json``) + images.

The file (Karpathy & Fei-Fei, 2015; docs/cdds.md §12.7) lists every image of the
dataset once: ``images[].filename``, ``images[].filepath`` (COCO: ``train2014`` /
``val2014``; absent for Flickr30K), ``images[].split`` (``train`` / ``val`` / ``test``
/ ``restval``) and ``images[].sentences[].raw``. The image file is
``image_root / filepath / filename``.

Split names: ``train`` is ``train`` + ``restval`` (COCO: 82,783 + 30,504 = 113,287
images, the training set of the LAPS numbers); ``dev`` (or ``val``) is ``val``;
``test`` (or ``testall``, the LAPS / SCAN name of COCO 5K) is ``test``. Images keep the
file's order; captions follow their image, so COCO's 5K test has its 25,010 Karpathy
captions (some images have 6 or 7).

Every entry must have one of the four ``split`` values: an entry without one (or with
another value) would belong to no split and silently shrink the data, so it is an
error naming how many there are and the first.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from cdds_jax.data.raw import RawSplit, check_image_files, make_split
from xmodal import files

__all__ = ["KARPATHY_SPLITS", "SPLITS", "find_annotation", "read_karpathy"]

#: Our split name -> the Karpathy ``split`` values it takes, in this order.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "dev": ("val",),
    "val": ("val",),
    "test": ("test",),
    "testall": ("test",),
    "restval": ("restval",),
}

_msg = files.field_error


def find_annotation(root: str | os.PathLike) -> pathlib.Path:
    """``root`` itself when it is a file, else the one ``dataset_*.json`` in it."""
    root = pathlib.Path(root)
    if root.is_file():
        return root
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} [data.root]: not found (expected a Karpathy split JSON such as "
            "dataset_flickr30k.json, or the folder holding it)"
        )
    found = sorted(root.glob("dataset_*.json"))
    if len(found) != 1:
        raise FileNotFoundError(
            _msg(
                root,
                "data.root",
                "exactly one Karpathy split file dataset_*.json (or data.root set "
                "to the file)",
                f"{len(found)}; the folder holds: {files.listing(root)}",
            )
        )
    return found[0]


def _load(path: pathlib.Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(_msg(path, "json", "valid UTF-8 JSON", str(e))) from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(
            _msg(path, "images", "a JSON object with an 'images' list", repr(data)[:80])
        )
    return images


def _captions(entry: dict[str, Any], path: pathlib.Path, row: int) -> list[str]:
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise ValueError(
            _msg(
                path,
                f"images[{row}].sentences",
                "at least one caption per image",
                f"{0 if not isinstance(sentences, list) else len(sentences)} for "
                f"{entry.get('filename')!r}",
            )
        )
    out = []
    for s in sentences:
        raw = s.get("raw") if isinstance(s, dict) else None
        if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
            raw = " ".join(s["tokens"])
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(
                _msg(
                    path,
                    f"images[{row}].sentences[].raw",
                    "non-empty caption text",
                    repr(raw),
                )
            )
        out.append(raw.strip())
    return out


#: The ``split`` values of the Karpathy files.
KARPATHY_SPLITS: tuple[str, ...] = ("train", "restval", "val", "test")


def _check_split_values(images: list[Any], path: pathlib.Path) -> None:
    """Every entry has a known ``split``; else ONE error with the count and the first."""
    bad = [
        row
        for row, entry in enumerate(images)
        if isinstance(entry, dict) and entry.get("split") not in KARPATHY_SPLITS
    ]
    if bad:
        first = images[bad[0]]
        raise ValueError(
            _msg(
                path,
                "images[].split",
                f"one of {list(KARPATHY_SPLITS)} for every image",
                f"{len(bad)} of {len(images)} images without one, first images"
                f"[{bad[0]}] ({first.get('filename')!r}, split "
                f"{first.get('split', '<absent>')!r})",
            )
        )


def read_karpathy(
    root: str | os.PathLike, split: str, *, image_root: str | os.PathLike | None = None
) -> RawSplit:
    """Opens ``split`` of a Karpathy split JSON.

    Args:
      root: the JSON file, or the folder holding exactly one ``dataset_*.json``.
      split: ``train`` (with ``restval``), ``dev`` / ``val``, ``test`` / ``testall``,
        ``restval``.
      image_root: the image folder (default: the JSON's folder).

    Raises:
      FileNotFoundError: no JSON, no image folder, or missing image files (the count
        and the first few).
      ValueError: malformed JSON, an unknown split, an entry without a known
        ``split`` value, a split with no image, or an image without captions
        (naming the file and the entry).
    """
    path = find_annotation(root)
    if split not in SPLITS:
        raise ValueError(_msg(path, "split", f"one of {sorted(SPLITS)}", repr(split)))
    images = _load(path)
    wanted = SPLITS[split]
    image_root = pathlib.Path(image_root) if image_root else path.parent
    _check_split_values(images, path)
    paths: list[str] = []
    captions: list[str] = []
    c2i: list[int] = []
    for row, entry in enumerate(images):
        if not isinstance(entry, dict) or "filename" not in entry:
            raise ValueError(
                _msg(
                    path,
                    f"images[{row}]",
                    "an object with 'filename'",
                    repr(entry)[:80],
                )
            )
        if entry.get("split") not in wanted:
            continue
        caps = _captions(entry, path, row)
        c2i += [len(paths)] * len(caps)
        captions += caps
        paths.append(str(image_root / entry.get("filepath", "") / entry["filename"]))
    if not paths:
        found: dict[str, int] = {}
        for entry in images:
            key = str(entry.get("split")) if isinstance(entry, dict) else "?"
            found[key] = found.get(key, 0) + 1
        raise ValueError(
            _msg(
                path,
                "split",
                f"images with split in {list(wanted)}",
                f"none; the file has {found}",
            )
        )
    check_image_files(paths, image_root, path)
    return make_split(
        root=path,
        split=split,
        image_paths=paths,
        caption_to_image=np.asarray(c2i, np.int64),
        captions=captions,
        format="karpathy",
        files_={
            "captions": f"{path} (images[].sentences[].raw)",
            "caption_to_image": f"{path} (captions follow their image)",
            "images": str(image_root),
        },
        meta={"karpathy_splits": list(wanted), "image_root": str(image_root)},
    )
