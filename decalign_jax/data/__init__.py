"""Multimodal sentiment data for DecAlign: readers, standardisation, IEMOCAP, a source.

Modules (docs/decalign.md, 'Data'):

* :mod:`~decalign_jax.data.split` - :class:`MMSASplit`, :class:`DatasetSpec` per
  dataset name, :class:`MMSAFormatError`.
* readers: :mod:`~decalign_jax.data.mmsa` (the MMSA pickle of MOSI / MOSEI / SIMS, and
  converted IEMOCAP files) and :mod:`~decalign_jax.data.arrayrecord` (a pickle converted
  to TFDS ArrayRecord files; imported on use, it imports ``tensorflow_datasets``).
* :mod:`~decalign_jax.data.standardize` - clip + z-score with train statistics.
* :mod:`~decalign_jax.data.iemocap` - the converter from raw IEMOCAP releases.
* :mod:`~decalign_jax.data.sources` - :class:`MMSASource` for ``grain``.
* :mod:`~decalign_jax.data.synthetic` - writes synthetic data in the real formats.

:func:`read_dataset` dispatches on the config's ``data.format``; the readers never import
this package's namespace, so there is no import cycle. Nothing here downloads anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from decalign_jax.data.iemocap import GCNET_FEATURE_NAMES, convert_iemocap
from decalign_jax.data.mmsa import read_mmsa
from decalign_jax.data.sources import MMSASource
from decalign_jax.data.split import (
    DATASET_SPECS,
    MODALITIES,
    SPLITS,
    DatasetSpec,
    MMSAFormatError,
    MMSASplit,
    canonical_dataset,
)
from decalign_jax.data.standardize import (
    STD_FLOOR,
    Standardizer,
    apply_standardizer,
    fit_standardizer,
)

__all__ = [
    "DATASET_SPECS",
    "FORMATS",
    "GCNET_FEATURE_NAMES",
    "MODALITIES",
    "SPLITS",
    "STD_FLOOR",
    "DatasetSpec",
    "MMSAFormatError",
    "MMSASource",
    "MMSASplit",
    "Standardizer",
    "apply_standardizer",
    "canonical_dataset",
    "convert_iemocap",
    "fit_standardizer",
    "read_dataset",
    "read_mmsa",
]

#: Formats :func:`read_dataset` reads (config ``data.format``).
FORMATS: tuple[str, ...] = ("mmsa", "arrayrecord")


def read_dataset(
    path: str | os.PathLike[str],
    *,
    dataset: str,
    format: str = "mmsa",
    standardize: bool | None = None,
    clip_percentiles: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> dict[str, MMSASplit]:
    """Reads ``{train, valid, test}`` in the config's ``data.format``.

    Args:
      path: the MMSA pickle (``format="mmsa"``) or the TFDS data folder written by
        ``scripts/convert_to_arrayrecord.py`` (``format="arrayrecord"``).
      dataset: ``mosi`` | ``mosei`` | ``sims`` | ``iemocap`` (aliases accepted).
      format: ``"mmsa"`` (:func:`read_mmsa`) or ``"arrayrecord"``
        (:func:`decalign_jax.data.arrayrecord.read_mmsa_arrayrecord`).
      standardize, clip_percentiles, num_classes: as in :func:`read_mmsa`. For
        ``arrayrecord`` the data were sanitised and standardised when converted:
        ``None`` accepts what is stored, other values must match it.

    Returns:
      ``{"train", "valid", "test"} -> MMSASplit``.
    """
    if format == "mmsa":
        return read_mmsa(
            path,
            dataset=dataset,
            standardize=standardize,
            clip_percentiles=clip_percentiles,
            num_classes=num_classes,
        )
    if format == "arrayrecord":
        from decalign_jax.data import (
            arrayrecord,
        )  # imports tensorflow_datasets (not TF)

        return arrayrecord.read_mmsa_arrayrecord(
            path,
            dataset=dataset,
            standardize=standardize,
            clip_percentiles=clip_percentiles,
            num_classes=num_classes,
        )
    raise ValueError(f"data.format: expected one of {list(FORMATS)}, got {format!r}")
