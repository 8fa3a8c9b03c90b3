"""Raw image-text splits: image files + caption text, and their grain sources.

:class:`RawSplit` is what the ``karpathy`` and ``laps`` readers return (docs/cdds.md
§12.7): one file path per UNIQUE image, the caption strings and an explicit caption ->
image index. It is the sibling of :class:`~cdds_jax.data.split.RetrievalSplit` (stored
token features) for the image backbones: the same caption side (``captions``,
``caption_to_image``; no caption features), images as files instead of arrays.

Sources (picklable, for grain workers; docs/cdds.md §12.8):

* :class:`RawPairSource` (training, one item per caption): the JPEG bytes of the
  caption's image (``jpeg`` uint8 [n_bytes], variable length) + the text fields; the
  pipeline's training transform (:class:`~cdds_jax.data.images.TrainImageTransform`)
  decodes and augments it into ``image`` uint8 [S, S, 3] before batching, so the
  decoding runs in the worker processes.
* :class:`RawImageSource` (evaluation, one item per unique image): ``image`` uint8
  [S, S, 3] resized for evaluation; each image is decoded once per evaluation.

Captions reach the model as token ids: a :class:`~cdds_jax.data.text.TokenTable`
(tokenised once by the backbone's tokenizer) or the BiGRU vocabulary; the text fields
are those of :mod:`cdds_jax.data.sources` (``CaptionSource`` serves raw splits as is).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cdds_jax.data import images as images_lib
from cdds_jax.data.sources import CaptionItems, checked_index
from cdds_jax.data.split import check_caption_to_image
from xmodal import files

__all__ = [
    "MISSING_SHOWN",
    "RawImageSource",
    "RawPairSource",
    "RawSplit",
    "check_captions",
    "check_image_files",
    "unique_in_order",
]

#: Missing image files named in the error (the count is always given).
MISSING_SHOWN = 5


@dataclasses.dataclass(frozen=True, eq=False)
class RawSplit:
    """One split as image files and caption text.

    Attributes:
      root: the annotation the split was read from (Karpathy JSON file, LAPS folder).
      split: split name as asked for (``train``, ``dev``, ``test``, ``testall`` ...).
      image_paths: [N_img] path of each unique image file (checked to exist).
      caption_to_image: int64 [N_cap]: the image row of each caption.
      captions: [N_cap] caption text.
      meta: counts and the reader's notes (JSON-able).
      files: field name -> file it comes from (for error messages).
      format: the reader format that produced the split.
      caption_features, caption_lengths: always None (no stored caption features;
        the text-field code reads them to say so).
    """

    root: pathlib.Path
    split: str
    image_paths: tuple[str, ...]
    caption_to_image: np.ndarray
    captions: list[str]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    format: str = "karpathy"
    caption_features: None = None
    caption_lengths: None = None

    @property
    def num_images(self) -> int:
        """N_img, the number of unique images."""
        return len(self.image_paths)

    @property
    def num_captions(self) -> int:
        """N_cap, the number of captions."""
        return int(self.caption_to_image.shape[0])

    @property
    def max_caption_tokens(self) -> None:
        """No stored caption features (see :class:`RetrievalSplit`)."""
        return None

    def __repr__(self) -> str:
        return (
            f"RawSplit(format={self.format!r}, root={str(self.root)!r}, "
            f"split={self.split!r}, num_images={self.num_images}, "
            f"num_captions={self.num_captions})"
        )

    def read_image(self, i: int) -> bytes:
        """The encoded bytes of image ``i`` (one clear error if the file went away)."""
        path = self.image_paths[i]
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise FileNotFoundError(
                files.field_error(path, "images", "a readable image file", str(e))
            ) from None


# ---------------------------------------------------------------------------------------
# Checks the readers share
# ---------------------------------------------------------------------------------------


def check_image_files(
    paths: Sequence[str], image_root: pathlib.Path, source: os.PathLike | str
) -> None:
    """Every path names an existing file; else ONE error with the count and the first
    :data:`MISSING_SHOWN` missing names (relative to ``image_root``).

    Raises:
      FileNotFoundError: ``image_root`` is not a folder, or files are missing.
    """
    if not image_root.is_dir():
        raise FileNotFoundError(
            f"{image_root} [data.image_root]: image folder not found (the images "
            f"named by {source} are read from it); pass --config.data.image_root=..."
        )
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = [os.path.relpath(p, image_root) for p in missing[:MISSING_SHOWN]]
        raise FileNotFoundError(
            files.field_error(
                image_root,
                "images",
                f"the {len(paths)} image files named by {source}",
                f"{len(missing)} missing, first {shown}",
            )
        )


def check_captions(captions: Sequence[str], source: os.PathLike | str) -> None:
    """At least one caption and no empty one (naming the first empty caption)."""
    if not captions:
        raise ValueError(
            files.field_error(source, "captions", "at least 1 caption", "0")
        )
    empty = [i for i, c in enumerate(captions) if not c.strip()]
    if empty:
        raise ValueError(
            files.field_error(
                source,
                "captions",
                "non-empty captions",
                f"{len(empty)} empty, first at caption {empty[0]}",
            )
        )


def unique_in_order(keys: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """The distinct ``keys`` in first-seen order and each key's row in that list.

    LAPS's dev / test id files repeat an image id once per caption; its image is
    encoded once (docs/cdds.md §9.1).
    """
    rows: dict[Any, int] = {}
    index = np.fromiter(
        (rows.setdefault(k, len(rows)) for k in keys), np.int64, count=len(keys)
    )
    return list(rows), index


def make_split(
    *,
    root: pathlib.Path,
    split: str,
    image_paths: Sequence[str],
    caption_to_image: np.ndarray,
    captions: list[str],
    format: str,
    files_: Mapping[str, str],
    meta: Mapping[str, Any],
) -> RawSplit:
    """A validated :class:`RawSplit` (caption index in range, every image captioned)."""
    check_captions(captions, files_.get("captions", root))
    c2i = check_caption_to_image(
        np.asarray(caption_to_image),
        files_.get("caption_to_image", root),
        len(image_paths),
        len(captions),
    )
    counts = np.bincount(c2i, minlength=len(image_paths))
    return RawSplit(
        root=root,
        split=split,
        image_paths=tuple(image_paths),
        caption_to_image=c2i,
        captions=captions,
        meta={
            "format": format,
            "split": split,
            "num_images": len(image_paths),
            "num_captions": len(captions),
            "captions_per_image": [int(counts.min()), int(counts.max())],
            **meta,
        },
        files=dict(files_),
        format=format,
    )


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------


class RawPairSource(CaptionItems):
    """Training source: one item per CAPTION (one epoch = one pass over captions).

    Item i: ``jpeg`` uint8 [n_bytes] (the encoded file of caption i's image) and its
    ``path`` (for messages), both replaced by ``image`` in the training transform;
    ``image_id`` int64 [] (= ``caption_to_image[i]``),
    ``index`` int64 [] (= i), ``tokens`` int32 [L] + ``text_mask`` bool [L].

    Args:
      split: the raw split.
      text: ``"ids"`` (``tokens``: a :class:`TokenTable`, the backbone tokenizer's) or
        ``"tokens"`` (the BiGRU ``vocab`` with ``max_words``).
    """

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = checked_index(i, len(self))
        image_id = int(self.split.caption_to_image[i])
        return {
            "jpeg": np.frombuffer(self.split.read_image(image_id), np.uint8),
            "path": np.str_(self.split.image_paths[image_id]),
            "image_id": np.int64(image_id),
            "index": np.int64(i),
            **self._text(i),
        }

    def __repr__(self) -> str:
        return f"RawPairSource({self.split.split}, n={len(self)})"


class RawImageSource:
    """Evaluation source: one item per unique image, ``image`` uint8 [S, S, 3] (resized
    as ``spec`` says for evaluation) and ``index`` int64 []."""

    def __init__(self, split: RawSplit, spec: images_lib.ImageSpec):
        self.split, self.spec = split, spec

    def __len__(self) -> int:
        return self.split.num_images

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = checked_index(i, len(self))
        data = self.split.read_image(i)
        image = images_lib.eval_image(data, self.spec, self.split.image_paths[i])
        return {"image": image, "index": np.int64(i)}

    def __repr__(self) -> str:
        return f"RawImageSource({self.split.split}, n={len(self)}, {self.spec})"
