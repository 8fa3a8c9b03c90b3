"""Image-text retrieval data: one split type, readers per on-disk format, grain sources.

Modules (docs/cdds.md, 'Data'):

* :mod:`~cdds_jax.data.split` - :class:`RetrievalSplit` and the checks every reader
  applies (one-line errors naming file, field, expected and actual);
  :func:`check_compatible` across splits.
* :mod:`~cdds_jax.data.raw` - :class:`RawSplit` (image files + caption text, for the
  image backbones) and its sources; :mod:`~cdds_jax.data.images` - decoding and
  augmentation.
* readers, one per format: :mod:`~cdds_jax.data.store` (``features``, our store),
  :mod:`~cdds_jax.data.scan` (``scan_precomp``), :mod:`~cdds_jax.data.arrayrecord`
  (``arrayrecord``: a store converted to TFDS ArrayRecord files; imported on use, it
  imports ``tensorflow_datasets``), :mod:`~cdds_jax.data.karpathy` (``karpathy``) and
  :mod:`~cdds_jax.data.laps` (``laps``), both raw.
* :mod:`~cdds_jax.data.text` - tokenizer and vocabulary (trained text encoders), the
  backbone tokenizer's ids (:class:`TokenTable`, :class:`WordPieces`);
  :mod:`~cdds_jax.data.captions` - LAPS's caption augmentation in training.
* :mod:`~cdds_jax.data.sources` - :class:`PairSource`, :class:`ImageSource`,
  :class:`CaptionSource` for ``grain``.
* :mod:`~cdds_jax.data.synthetic` - writes synthetic data in the real formats;
  :mod:`~cdds_jax.data.synthetic_images` - JPEG files with a Karpathy JSON and tiny
  backbones.
* :mod:`~cdds_jax.data.inputs` - from a config to the splits, sources and transforms
  of a run.

:func:`read_split` dispatches on the config's ``data.format``; the readers never import
this package's namespace, so there is no import cycle.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cdds_jax.data.captions import CaptionAugment
from cdds_jax.data.images import ImageSpec, TrainImageTransform
from cdds_jax.data.karpathy import read_karpathy
from cdds_jax.data.laps import read_laps
from cdds_jax.data.raw import RawImageSource, RawPairSource, RawSplit
from cdds_jax.data.scan import read_scan_precomp
from cdds_jax.data.sources import CaptionSource, ImageSource, PairSource, TextMode
from cdds_jax.data.split import FINITE_SCAN_MAX_BYTES, RetrievalSplit, check_compatible
from cdds_jax.data.store import read_features
from cdds_jax.data.text import TokenTable, Vocabulary, WordPieces, tokenize

__all__ = [
    "FINITE_SCAN_MAX_BYTES",
    "FORMATS",
    "RAW_FORMATS",
    "CaptionAugment",
    "CaptionSource",
    "ImageSource",
    "ImageSpec",
    "PairSource",
    "RawImageSource",
    "RawPairSource",
    "RawSplit",
    "RetrievalSplit",
    "TextMode",
    "TokenTable",
    "TrainImageTransform",
    "Vocabulary",
    "WordPieces",
    "check_compatible",
    "read_features",
    "read_karpathy",
    "read_laps",
    "read_scan_precomp",
    "read_split",
    "tokenize",
]


def _read_arrayrecord(root: str | os.PathLike, split: str) -> RetrievalSplit:
    from cdds_jax.data import arrayrecord  # imports tensorflow_datasets (not TF)

    return arrayrecord.read_arrayrecord(root, split)


#: The reader of each ``data.format`` (:func:`read_split`'s dispatch).
_READERS: dict[str, Callable[..., RetrievalSplit | RawSplit]] = {
    "features": read_features,
    "scan_precomp": read_scan_precomp,
    "arrayrecord": _read_arrayrecord,
    "karpathy": read_karpathy,
    "laps": read_laps,
}
#: Formats :func:`read_split` knows.
FORMATS: tuple[str, ...] = tuple(_READERS)
#: Formats whose splits are image files (:class:`RawSplit`), for the image backbones;
#: their readers also take the image folder.
RAW_FORMATS: tuple[str, ...] = ("karpathy", "laps")


def read_split(
    format: str,
    root: str | os.PathLike,
    split: str,
    *,
    image_root: str | os.PathLike | None = None,
) -> RetrievalSplit | RawSplit:
    """Opens ``split`` in the config's ``data.format``.

    Args:
      format: ``features`` (:func:`read_features`) | ``scan_precomp``
        (:func:`read_scan_precomp`) | ``arrayrecord``
        (:func:`cdds_jax.data.arrayrecord.read_arrayrecord`; ``root`` = the TFDS
        data_dir) | ``karpathy`` (:func:`read_karpathy`) | ``laps``
        (:func:`read_laps`); the last two return a :class:`RawSplit`.
      root: the dataset root.
      split: the split name.
      image_root: the image folder of the raw formats (``data.image_root``).
    """
    if format not in _READERS:
        raise ValueError(
            f"data.format: expected one of {list(FORMATS)}, got {format!r}"
        )
    if format in RAW_FORMATS:
        return _READERS[format](root, split, image_root=image_root)
    return _READERS[format](root, split)
