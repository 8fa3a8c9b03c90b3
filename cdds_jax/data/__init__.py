"""Image-text retrieval data: one split type, readers per on-disk format, grain sources.

Modules (docs/cdds.md, 'Data'):

* :mod:`~cdds_jax.data.split` - :class:`RetrievalSplit` and the checks every reader
  applies (one-line errors naming file, field, expected and actual);
  :func:`check_compatible` across splits.
* readers, one per format: :mod:`~cdds_jax.data.store` (``features``, our store),
  :mod:`~cdds_jax.data.scan` (``scan_precomp``), :mod:`~cdds_jax.data.arrayrecord`
  (``arrayrecord``: a store converted to TFDS ArrayRecord files; imported on use, it
  imports ``tensorflow_datasets``).
* :mod:`~cdds_jax.data.text` - tokenizer and vocabulary (trained text encoders).
* :mod:`~cdds_jax.data.sources` - :class:`PairSource`, :class:`ImageSource`,
  :class:`CaptionSource` for ``grain``.
* :mod:`~cdds_jax.data.synthetic` - writes synthetic data in the real formats.

:func:`read_split` dispatches on the config's ``data.format``; the readers never import
this package's namespace, so there is no import cycle.
"""

from __future__ import annotations

import os

from cdds_jax.data.scan import read_scan_precomp
from cdds_jax.data.sources import CaptionSource, ImageSource, PairSource, TextMode
from cdds_jax.data.split import FINITE_SCAN_MAX_BYTES, RetrievalSplit, check_compatible
from cdds_jax.data.store import read_features
from cdds_jax.data.text import Vocabulary, tokenize

__all__ = [
    "FINITE_SCAN_MAX_BYTES",
    "FORMATS",
    "CaptionSource",
    "ImageSource",
    "PairSource",
    "RetrievalSplit",
    "TextMode",
    "Vocabulary",
    "check_compatible",
    "read_features",
    "read_scan_precomp",
    "read_split",
    "tokenize",
]

#: Formats :func:`read_split` knows, and those planned for later.
FORMATS: tuple[str, ...] = ("features", "scan_precomp", "arrayrecord")
_LATER_FORMATS = ("laps", "karpathy")


def read_split(format: str, root: str | os.PathLike, split: str) -> RetrievalSplit:
    """Opens ``split`` in the config's ``data.format``.

    Args:
      format: ``features`` (:func:`read_features`) | ``scan_precomp``
        (:func:`read_scan_precomp`) | ``arrayrecord``
        (:func:`cdds_jax.data.arrayrecord.read_arrayrecord`; ``root`` = the TFDS
        data_dir).
      root: the dataset root.
      split: the split name.
    """
    if format == "features":
        return read_features(root, split)
    if format == "scan_precomp":
        return read_scan_precomp(root, split)
    if format == "arrayrecord":
        from cdds_jax.data import arrayrecord  # imports tensorflow_datasets (not TF)

        return arrayrecord.read_arrayrecord(root, split)
    raise ValueError(
        f"data.format: expected one of {list(FORMATS)}, got {format!r} "
        f"({', '.join(_LATER_FORMATS)} are planned but not implemented yet; convert "
        f"them to the 'features' store with scripts/)"
    )
