"""Multimodal sentiment data for DecAlign: MMSA pickles, an IEMOCAP adapter, a grain source.

Formats (see ``spec/data.md``, "Multimodal sentiment", and ``spec/decalign.md`` section 1):

* ``read_mmsa`` reads the MMSA pickle (``aligned_50.pkl``, ``unaligned_50.pkl``,
  ``unaligned_39.pkl``): a dict ``{"train", "valid", "test"}`` of dicts of arrays with
  ``text`` (BERT features ``[N, T_l, 768]``), ``text_bert`` (``[N, 3, T_l]`` token ids /
  mask / segment ids, often stored as float), ``audio`` ``[N, T_a, D_a]``, ``vision``
  ``[N, T_v, D_v]``, ``audio_lengths`` / ``vision_lengths`` (unaligned files, right
  padded), ``regression_labels`` (MOSI/MOSEI ``[-3, 3]``, SIMS ``[-1, 1]``) or
  ``classification_labels`` (IEMOCAP), ``id`` and ``raw_text``. The same reader reads the
  utterance-level IEMOCAP pickle written by ``convert_iemocap``.
* ``convert_iemocap`` turns the GCNet / MoMKE ``IEMOCAP_features_raw_{4,6}way.pkl`` label
  file plus its per-utterance feature folders (or a DialogueRNN-style pickle that embeds
  the features) into that MMSA-style layout, refusing all-zero feature arrays.
* ``MMSASource`` is a picklable random-access source for ``grain.MapDataset.source``.
* ``read_dataset`` dispatches on the config's ``data.format``: ``"mmsa"`` (the pickle,
  ``read_mmsa``) or ``"arrayrecord"`` (a TFDS ArrayRecord folder written by
  ``decalign_jax.tfds_builder`` / ``scripts/convert_to_arrayrecord.py``; lazy columns,
  no TensorFlow).

Every problem in a file raises ONE error (``FileNotFoundError`` or ``MMSAFormatError``, a
``ValueError``) whose message names the file, split, key, what was expected and what was
found. Nothing here downloads anything.

Numerical conventions (``spec/decalign.md`` 1.3):

* Sanitising: audio and vision are read in float64; NaN, +-inf and values whose magnitude
  exceeds the float32 maximum (about 3.4e38, they would become inf when cast) are set to 0,
  then the arrays are cast to float32. The counts are returned in ``MMSASplit.sanitised``
  and logged (MOSEI audio holds -inf and float32-overflowing values).
* Standardisation (MOSEI, SIMS; audio and vision only): per feature dim, percentiles over
  (samples x time) of the TRAIN split (padded frames included), clip, mean and population
  std (ddof 0) of the clipped train data, std floored at ``STD_FLOOR = 1e-6`` (so constant
  columns map to 0 instead of dividing by zero); every split is then clipped and z-scored
  with the train statistics. Statistics are computed in float64.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import operator
import os
import pickle
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASET_SPECS",
    "FORMATS",
    "GCNET_FEATURE_NAMES",
    "KNOWN_SHA256",
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
    "sha256_file",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Formats :func:`read_dataset` reads (config ``data.format``).
FORMATS: tuple[str, ...] = ("mmsa", "arrayrecord")
MODALITIES: tuple[str, ...] = ("text", "audio", "vision")

#: Floor on the per-dim standard deviation used by the standardisation (spec 1.3).
STD_FLOOR = 1e-6

#: SHA-256 sums of known MMSA files, keyed ``"<dataset>/<file name>"`` (e.g.
#: ``"mosi/aligned_50.pkl"``), lowercase hex. MMSA publishes sums in its README; none are
#: copied here because we could not read them, so this table is EMPTY: with
#: ``verify_checksum=True`` an unknown file only warns. Add entries you have checked.
KNOWN_SHA256: dict[str, str] = {}

#: Feature folders of the GCNet / MoMKE IEMOCAP release (utterance-level, "UTT").
GCNET_FEATURE_NAMES: dict[str, str] = {
    "text": "deberta-large-4-UTT",  # 1024-d
    "audio": "wav2vec-large-c-UTT",  # 512-d
    "vision": "manet_UTT",  # 1024-d
}

_F32_MAX = float(np.finfo(np.float32).max)
# Elements per float64 working block (128 MB) so MOSEI-sized arrays never need a full
# float64 copy.
_BLOCK_ELEMS = 1 << 24
# Tolerance on label ranges (labels are stored as float32 in some releases).
_LABEL_TOL = 1e-5


class MMSAFormatError(ValueError):
    """A data file does not have the expected layout; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset name implies for reading.

    Attributes:
      name: canonical name (``mosi``, ``mosei``, ``sims``, ``iemocap``).
      task: ``"regression"`` or ``"classification"``.
      label_key: the split key holding the labels.
      label_range: inclusive ``(low, high)`` for regression labels, else ``None``.
      clip_percentiles: default standardisation percentiles, ``None`` = no
        standardisation by default.
      unimodal_label_keys: optional per-modality label keys (SIMS), short name -> key.
      num_classes: default class count for classification.
    """

    name: str
    task: str
    label_key: str
    label_range: tuple[float, float] | None
    clip_percentiles: tuple[float, float] | None
    unimodal_label_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    num_classes: int | None = None


DATASET_SPECS: dict[str, DatasetSpec] = {
    "mosi": DatasetSpec("mosi", "regression", "regression_labels", (-3.0, 3.0), None),
    "mosei": DatasetSpec(
        "mosei", "regression", "regression_labels", (-3.0, 3.0), (0.5, 99.5)
    ),
    "sims": DatasetSpec(
        "sims",
        "regression",
        "regression_labels",
        (-1.0, 1.0),
        (0.1, 99.9),
        {
            "T": "regression_labels_T",
            "A": "regression_labels_A",
            "V": "regression_labels_V",
        },
    ),
    "iemocap": DatasetSpec(
        "iemocap", "classification", "classification_labels", None, None, {}, 6
    ),
}

_ALIASES = {
    "ch-sims": "sims",
    "ch_sims": "sims",
    "chsims": "sims",
    "ch-sims-v1": "sims",
    "cmu-mosi": "mosi",
    "cmu-mosei": "mosei",
}


def canonical_dataset(name: str) -> str:
    """Canonical dataset name (``mosi``, ``mosei``, ``sims``, ``iemocap``).

    Accepts DecAlign's aliases (``ch-sims``, ``chsims``, ...), case-insensitive.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_SPECS:
        raise ValueError(
            f"dataset={name!r}: expected one of {sorted(DATASET_SPECS)} "
            f"(or an alias {sorted(_ALIASES)})"
        )
    return key


# --------------------------------------------------------------------------------------
# The split container
# --------------------------------------------------------------------------------------


def _is_array_like(value: Any) -> bool:
    """A NumPy array, or a lazy array-like with shape / dtype / len / item access."""
    return isinstance(value, np.ndarray) or all(
        hasattr(value, a) for a in ("shape", "dtype", "__len__", "__getitem__")
    )


@dataclasses.dataclass(frozen=True, eq=False)
class MMSASplit:
    """One split of a multimodal sentiment dataset, validated and sanitised.

    ``text`` / ``audio`` / ``vision`` / ``text_bert`` are NumPy arrays, or lazy
    random-access array-likes with ``shape``, ``ndim``, ``dtype``, ``len`` and
    ``__getitem__(int)`` (the ``arrayrecord`` format's
    :class:`xmodal.arrayrecord.ArrayColumn`, which pickles as paths); ``raw_text`` may be
    a lazy sequence of ``str``.

    Attributes:
      text: ``[N, T_l, D_l]`` float32 text features (BERT last hidden states in MMSA).
      audio: ``[N, T_a, D_a]`` float32.
      vision: ``[N, T_v, D_v]`` float32.
      label: ``[N]`` float32 regression targets, or int32 class ids.
      ids: ``N`` sample ids (``"video$_$clip"`` / ``"dialogue$_$utterance"``).
      audio_lengths: ``[N]`` int32 valid audio frames (right padded) or ``None``
        (aligned files: every frame counts).
      vision_lengths: ``[N]`` int32 or ``None``.
      text_bert: ``[N, 3, T_l]`` int32 (input ids, attention mask, segment ids) or
        ``None``.
      raw_text: ``N`` strings or ``None``.
      label_TAV: optional unimodal regression labels (SIMS), ``{"T"|"A"|"V": [N]}``.
      sanitised: counts of values replaced while reading, e.g. ``{"audio_nonfinite":
        12, "audio_overflow": 3}`` (only non-zero entries).
      meta: provenance: file, dataset, split, variant, standardisation statistics.
      name: split name.
    """

    text: np.ndarray
    audio: np.ndarray
    vision: np.ndarray
    label: np.ndarray
    ids: list[str]
    audio_lengths: np.ndarray | None = None
    vision_lengths: np.ndarray | None = None
    text_bert: np.ndarray | None = None
    raw_text: list[str] | None = None
    label_TAV: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    sanitised: dict[str, int] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        for key in MODALITIES:
            arr = getattr(self, key)
            if not _is_array_like(arr) or len(arr.shape) != 3:
                raise ValueError(
                    f"MMSASplit.{key}: expected a rank-3 array [N, T, D], got "
                    f"{type(arr).__name__} with shape {getattr(arr, 'shape', None)}"
                )
        n = self.text.shape[0]
        sizes = {
            "text": n,
            "audio": self.audio.shape[0],
            "vision": self.vision.shape[0],
            "label": int(np.shape(self.label)[0]) if np.ndim(self.label) == 1 else -1,
            "ids": len(self.ids),
        }
        for key in ("audio_lengths", "vision_lengths", "text_bert", "raw_text"):
            value = getattr(self, key)
            if value is not None:
                sizes[key] = len(value)
        for key, value in self.label_TAV.items():
            sizes[f"label_TAV[{key}]"] = len(value)
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f"MMSASplit {self.name!r}: sample counts differ between fields: {sizes} "
                "(label must be rank 1)"
            )
        if self.text_bert is not None and (
            self.text_bert.ndim != 3
            or self.text_bert.shape[1] != 3
            or self.text_bert.shape[2] != self.text.shape[1]
        ):
            raise ValueError(
                f"MMSASplit.text_bert: expected [N, 3, T_l={self.text.shape[1]}], got "
                f"{self.text_bert.shape}"
            )

    @property
    def num_samples(self) -> int:
        """N."""
        return int(self.text.shape[0])

    def __len__(self) -> int:
        return self.num_samples

    @property
    def seq_lens(self) -> tuple[int, int, int]:
        """``(T_l, T_a, T_v)`` taken from the arrays."""
        return (
            int(self.text.shape[1]),
            int(self.audio.shape[1]),
            int(self.vision.shape[1]),
        )

    @property
    def feature_dims(self) -> tuple[int, int, int]:
        """``(D_l, D_a, D_v)`` taken from the arrays."""
        return (
            int(self.text.shape[2]),
            int(self.audio.shape[2]),
            int(self.vision.shape[2]),
        )

    @property
    def is_classification(self) -> bool:
        """True when ``label`` holds integer class ids."""
        return bool(np.issubdtype(self.label.dtype, np.integer))

    @property
    def num_classes(self) -> int | None:
        """Class count recorded at read time (classification only)."""
        value = self.meta.get("num_classes")
        return None if value is None else int(value)


# --------------------------------------------------------------------------------------
# Standardisation (spec 1.3)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature-dim clip + z-score statistics fitted on a train split.

    Attributes:
      low, high: ``[D]`` float64 clip bounds (the requested percentiles).
      mean, std: ``[D]`` float64 statistics of the clipped train data; ``std`` is
        already floored at ``STD_FLOOR``.
      percentiles: the ``(low, high)`` percentiles used.
    """

    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    percentiles: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (for ``MMSASplit.meta``)."""
        return {
            "low": self.low,
            "high": self.high,
            "mean": self.mean,
            "std": self.std,
            "percentiles": self.percentiles,
        }


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    if len(percentiles) != 2:
        raise ValueError(f"clip_percentiles: expected (low, high), got {percentiles!r}")
    lo, hi = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(
            f"clip_percentiles: expected 0 <= low < high <= 100, got ({lo}, {hi})"
        )
    return lo, hi


def fit_standardizer(x: np.ndarray, percentiles: Sequence[float]) -> Standardizer:
    """Fit clip + z-score statistics per feature dim over samples x time.

    Args:
      x: ``[N, T, D]`` finite train features (padded frames included, as in the spec).
      percentiles: ``(low, high)`` in ``[0, 100]``, NumPy's default (linear)
        interpolation.

    Returns:
      A ``Standardizer``; statistics in float64, ``std = max(std, STD_FLOOR)``.
    """
    lo_p, hi_p = _check_percentiles(percentiles)
    if x.ndim != 3:
        raise ValueError(f"x: expected [N, T, D], got shape {x.shape}")
    n, t, d = x.shape
    if n * t == 0:
        raise ValueError(f"x: cannot fit statistics on an empty train split {x.shape}")
    flat = x.reshape(n * t, d)
    low, high, mean, std = (np.empty(d, np.float64) for _ in range(4))
    # Blocks of feature dims keep the float64 working copy bounded (MOSEI unaligned
    # audio is 16326 x 500 x 74).
    cols = max(1, _BLOCK_ELEMS // (n * t))
    for c0 in range(0, d, cols):
        block = np.asarray(flat[:, c0 : c0 + cols], dtype=np.float64)
        b_lo, b_hi = np.percentile(block, [lo_p, hi_p], axis=0)
        clipped = np.clip(block, b_lo, b_hi)
        low[c0 : c0 + cols], high[c0 : c0 + cols] = b_lo, b_hi
        mean[c0 : c0 + cols] = clipped.mean(axis=0)
        std[c0 : c0 + cols] = clipped.std(axis=0)
    return Standardizer(low, high, mean, np.maximum(std, STD_FLOOR), (lo_p, hi_p))


def apply_standardizer(x: np.ndarray, stats: Standardizer) -> np.ndarray:
    """``(clip(x, low, high) - mean) / std`` in float64, returned as float32.

    Args:
      x: ``[N, T, D]`` finite features.
      stats: from ``fit_standardizer`` (``D`` must match).

    Returns:
      ``[N, T, D]`` float32.
    """
    if x.ndim != 3 or x.shape[2] != stats.mean.shape[0]:
        raise ValueError(
            f"x: expected [N, T, D={stats.mean.shape[0]}], got shape {x.shape}"
        )
    out = np.empty(x.shape, np.float32)
    rows = max(1, _BLOCK_ELEMS // max(1, x.shape[1] * x.shape[2]))
    for r0 in range(0, x.shape[0], rows):
        block = np.asarray(x[r0 : r0 + rows], dtype=np.float64)
        block = (np.clip(block, stats.low, stats.high) - stats.mean) / stats.std
        out[r0 : r0 + rows] = block
    return out


# --------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file, streamed (a 4 GB MOSEI pickle takes tens of seconds)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _verify_checksum(path: Path, dataset: str) -> None:
    digest = sha256_file(path)
    key = f"{dataset}/{path.name}"
    matches = [k for k, v in KNOWN_SHA256.items() if v.lower() == digest]
    if key in matches:
        logger.info("%s: SHA-256 matches the known sum for %s", path, key)
        return
    if matches:
        raise MMSAFormatError(
            f"{path}: SHA-256 {digest} is the known sum of {matches}, not of {key!r}: "
            "wrong dataset argument or wrong file"
        )
    if key in KNOWN_SHA256:
        raise MMSAFormatError(
            f"{path}: SHA-256 mismatch for {key!r}: expected {KNOWN_SHA256[key]}, "
            f"got {digest} (corrupt or different release)"
        )
    warnings.warn(
        f"{path}: no known SHA-256 for {key!r} (got {digest}); the file was not "
        "verified. Add the sum to decalign_jax.data.KNOWN_SHA256 once checked.",
        stacklevel=3,
    )


# --------------------------------------------------------------------------------------
# Reading helpers
# --------------------------------------------------------------------------------------


def _check_file(path: Path, what: str) -> None:
    if path.is_dir():
        listing = sorted(p.name for p in path.iterdir())[:20]
        raise FileNotFoundError(
            f"{what}: {path} is a directory; pass the pickle file itself (found {listing})"
        )
    if not path.is_file():
        parent = path.parent
        if parent.is_dir():
            near = sorted(p.name for p in parent.iterdir() if p.suffix == ".pkl")[:20]
            hint = f"; .pkl files in {parent}: {near}"
        else:
            hint = f"; folder {parent} does not exist either"
        raise FileNotFoundError(f"{what} not found: {path}{hint}")


def _load_pickle(path: Path, what: str) -> Any:
    _check_file(path, what)
    try:
        with open(path, "rb") as f:
            # latin1 lets Python-2 era pickles (DialogueRNN/GCNet releases) load; it is
            # irrelevant for Python-3 pickles.
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # unpickling can raise nearly anything
        raise MMSAFormatError(
            f"{path}: cannot unpickle {what}: {type(e).__name__}: {e}"
        ) from e


class _Where:
    """Formats ``file: split 's', key 'k': ...`` error prefixes."""

    def __init__(self, path: Path, split: str) -> None:
        self.path, self.split = path, split

    def __call__(self, key: str, msg: str) -> MMSAFormatError:
        return MMSAFormatError(f"{self.path}: split {self.split!r}, key {key!r}: {msg}")


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__}"


def _numeric(value: Any, key: str, where: _Where) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged lists
        raise where(key, f"cannot convert to an array ({e})") from e
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise where(key, f"expected a numeric array, got {_describe(arr)}") from e
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise where(key, f"expected a numeric array, got {_describe(arr)}")
    return arr


def _rank3(value: Any, key: str, where: _Where) -> np.ndarray:
    arr = _numeric(value, key, where)
    if arr.ndim != 3:
        hint = (
            " (utterance-level features must be stored as [N, 1, D])"
            if arr.ndim == 2
            else ""
        )
        raise where(key, f"expected rank 3 [N, T, D], got shape {arr.shape}{hint}")
    return arr


def _finite_text(arr: np.ndarray, where: _Where) -> np.ndarray:
    """Text features as float32, NaN/inf rejected (checked in blocks)."""
    out = arr.astype(np.float32, copy=False)
    rows = max(1, _BLOCK_ELEMS // max(1, out.shape[1] * out.shape[2]))
    bad_total, first_bad = 0, -1
    for r0 in range(0, out.shape[0], rows):
        bad = ~np.isfinite(out[r0 : r0 + rows])
        if bad.any():
            per_sample = bad.reshape(bad.shape[0], -1).any(axis=1)
            if first_bad < 0:
                first_bad = r0 + int(np.argmax(per_sample))
            bad_total += int(bad.sum())
    if bad_total:
        raise where(
            "text",
            f"expected finite BERT features, found {bad_total} NaN/inf values "
            f"(first in sample {first_bad}); text features are not sanitised",
        )
    return out


def _sanitise(arr: np.ndarray) -> tuple[np.ndarray, int, int]:
    """float64 -> zero NaN/inf and |x| > float32 max -> float32. Returns counts."""
    out = np.empty(arr.shape, np.float32)
    rows = max(1, _BLOCK_ELEMS // max(1, arr.shape[1] * arr.shape[2]))
    n_nonfinite = n_overflow = 0
    for r0 in range(0, arr.shape[0], rows):
        block = np.asarray(arr[r0 : r0 + rows], dtype=np.float64)
        nonfinite = ~np.isfinite(block)
        with np.errstate(invalid="ignore"):
            overflow = np.abs(block) > _F32_MAX
        overflow &= ~nonfinite
        bad = nonfinite | overflow
        if bad.any():
            n_nonfinite += int(nonfinite.sum())
            n_overflow += int(overflow.sum())
            block = np.where(bad, 0.0, block)
        out[r0 : r0 + rows] = block
    return out, n_nonfinite, n_overflow


def _vector(value: Any, key: str, where: _Where) -> np.ndarray:
    arr = _numeric(value, key, where)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise where(key, f"expected rank 1 [N] (or [N, 1]), got shape {arr.shape}")
    return arr


def _regression_labels(
    value: Any, key: str, where: _Where, spec: DatasetSpec
) -> np.ndarray:
    arr = _vector(value, key, where).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise where(key, f"found {int((~np.isfinite(arr)).sum())} NaN/inf labels")
    assert spec.label_range is not None
    lo, hi = spec.label_range
    if arr.size and (arr.min() < lo - _LABEL_TOL or arr.max() > hi + _LABEL_TOL):
        n_out = int(((arr < lo - _LABEL_TOL) | (arr > hi + _LABEL_TOL)).sum())
        hint = ""
        if spec.name == "sims" and arr.min() >= -3 - _LABEL_TOL and arr.max() <= 3:
            hint = " (a MOSI/MOSEI file read with dataset='sims'?)"
        raise where(
            key,
            f"expected values in [{lo:g}, {hi:g}] for dataset {spec.name!r}, found "
            f"min {arr.min():.6g} max {arr.max():.6g} ({n_out} of {arr.size} out of "
            f"range){hint}",
        )
    return arr.astype(np.float32)


def _class_labels(value: Any, key: str, where: _Where, num_classes: int) -> np.ndarray:
    arr = _vector(value, key, where)
    if not np.issubdtype(arr.dtype, np.integer):
        as_float = arr.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise where(key, "expected integer class ids, found non-integral values")
        arr = as_float
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise where(
            key,
            f"expected class ids in [0, {num_classes}), found min {arr.min()} max "
            f"{arr.max()} (pass num_classes= if the file has more classes)",
        )
    return arr.astype(np.int32)


def _lengths(value: Any, key: str, where: _Where, t_max: int) -> tuple[np.ndarray, int]:
    arr = _vector(value, key, where)
    as_float = arr.astype(np.float64)
    if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
        raise where(key, "expected integer lengths, found non-integral values")
    arr = as_float.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise where(key, f"expected lengths >= 0, found min {arr.min()}")
    n_clipped = int((arr > t_max).sum())
    if n_clipped:
        logger.warning(
            "%s: split %r key %r: %d lengths exceed the padded length %d; clipped",
            where.path,
            where.split,
            key,
            n_clipped,
            t_max,
        )
    return np.minimum(arr, t_max).astype(np.int32), n_clipped


def _text_bert(value: Any, where: _Where, t_l: int) -> np.ndarray:
    arr = _numeric(value, "text_bert", where)
    if arr.ndim != 3 or arr.shape[1] != 3 or arr.shape[2] != t_l:
        raise where(
            "text_bert",
            f"expected [N, 3, T_l={t_l}] (input ids, mask, segment ids), got shape "
            f"{arr.shape}",
        )
    if not np.issubdtype(arr.dtype, np.integer):
        as_float = arr.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise where("text_bert", "expected integral token ids, found fractions")
        arr = as_float
    return arr.astype(np.int32)


def _strings(value: Any, key: str, where: _Where) -> list[str]:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist() if value.ndim else [value.item()]
    try:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    except TypeError as e:
        raise where(
            key, f"expected a sequence of strings, got {_describe(value)}"
        ) from e


def _read_split(
    raw: Any,
    *,
    path: Path,
    split: str,
    spec: DatasetSpec,
    num_classes: int | None,
) -> dict[str, Any]:
    where = _Where(path, split)
    if not isinstance(raw, Mapping):
        raise MMSAFormatError(
            f"{path}: split {split!r}: expected a dict of arrays, got {_describe(raw)}"
        )
    present = sorted(str(k) for k in raw)
    required = [*MODALITIES, spec.label_key]
    for key in required:
        if key not in raw:
            hint = ""
            if key == spec.label_key and "labels" in raw:
                hint = (
                    " (key 'labels' suggests a CMU-SDK / MulT pickle, a different "
                    "protocol that read_mmsa does not read)"
                )
            elif key == "regression_labels" and "classification_labels" in raw:
                hint = " (only classification labels: dataset='iemocap'?)"
            raise where(key, f"missing key; keys present: {present}{hint}")

    text = _finite_text(_rank3(raw["text"], "text", where), where)
    out: dict[str, Any] = {"text": text, "sanitised": {}}
    for key in ("audio", "vision"):
        arr = _rank3(raw[key], key, where)
        clean, n_nonfinite, n_overflow = _sanitise(arr)
        out[key] = clean
        if n_nonfinite or n_overflow:
            out["sanitised"][f"{key}_nonfinite"] = n_nonfinite
            out["sanitised"][f"{key}_overflow"] = n_overflow
            logger.info(
                "%s: split %r key %r: replaced %d non-finite and %d float32-overflow "
                "values with 0",
                path,
                split,
                key,
                n_nonfinite,
                n_overflow,
            )

    if spec.task == "regression":
        out["label"] = _regression_labels(
            raw[spec.label_key], spec.label_key, where, spec
        )
    else:
        assert num_classes is not None
        out["label"] = _class_labels(
            raw[spec.label_key], spec.label_key, where, num_classes
        )
    out["label_TAV"] = {
        short: _regression_labels(raw[key], key, where, spec)
        for short, key in spec.unimodal_label_keys.items()
        if key in raw and raw[key] is not None
    }

    for key, arr_key in (("audio_lengths", "audio"), ("vision_lengths", "vision")):
        if key in raw and raw[key] is not None:
            out[key], n_clipped = _lengths(raw[key], key, where, out[arr_key].shape[1])
            if n_clipped:
                out["sanitised"][f"{key}_clipped"] = n_clipped
        else:
            out[key] = None
    out["text_bert"] = (
        _text_bert(raw["text_bert"], where, text.shape[1])
        if raw.get("text_bert") is not None
        else None
    )
    out["raw_text"] = (
        _strings(raw["raw_text"], "raw_text", where)
        if raw.get("raw_text") is not None
        else None
    )
    out["ids"] = _strings(raw["id"], "id", where) if raw.get("id") is not None else None

    counts = {k: out[k].shape[0] for k in (*MODALITIES, "label")}
    counts[spec.label_key] = counts.pop("label")
    for key in ("audio_lengths", "vision_lengths", "text_bert", "raw_text", "ids"):
        if out[key] is not None:
            counts["id" if key == "ids" else key] = len(out[key])
    for short, arr in out["label_TAV"].items():
        counts[spec.unimodal_label_keys[short]] = len(arr)
    if len(set(counts.values())) != 1:
        raise MMSAFormatError(
            f"{path}: split {split!r}: sample counts N differ between keys: {counts}"
        )
    if out["ids"] is None:
        logger.info(
            "%s: split %r has no 'id' key; using '%s_<index>'", path, split, split
        )
        out["ids"] = [f"{split}_{i}" for i in range(text.shape[0])]
    return out


def read_mmsa(
    path: str | os.PathLike[str],
    *,
    dataset: str,
    standardize: bool | None = None,
    clip_percentiles: Sequence[float] | None = None,
    num_classes: int | None = None,
    verify_checksum: bool = False,
) -> dict[str, MMSASplit]:
    """Read, validate, sanitise and (optionally) standardise an MMSA-layout pickle.

    Args:
      path: the pickle (``aligned_50.pkl``, ``unaligned_50.pkl``, ``unaligned_39.pkl``,
        or an IEMOCAP file from ``convert_iemocap``).
      dataset: ``"mosi"``, ``"mosei"``, ``"sims"`` (aliases ``ch-sims``, ...) or
        ``"iemocap"``: selects the label key (``regression_labels`` /
        ``classification_labels``), the label range check and the default
        standardisation.
      standardize: ``None`` = the dataset default (MOSEI, SIMS: on; MOSI, IEMOCAP: off);
        ``True`` / ``False`` forces it. Applies to audio and vision only.
      clip_percentiles: overrides the percentiles (default MOSEI ``(0.5, 99.5)``, SIMS
        ``(0.1, 99.9)``, otherwise ``(0.5, 99.5)`` when forced on).
      num_classes: IEMOCAP class count; default the file's ``meta["num_classes"]``, else
        6 (DecAlign's config).
      verify_checksum: hash the file with SHA-256 and compare with ``KNOWN_SHA256``
        (error on a known mismatch, warning when the sum is unknown). Off by default:
        hashing a 4 GB MOSEI pickle takes tens of seconds.

    Returns:
      ``{"train", "valid", "test"}`` -> ``MMSASplit``. Sequence lengths and feature dims
      come from the arrays, never from a config. Non-essential keys are optional:
      without ``id`` the ids are ``"<split>_<row>"``; ``audio_lengths`` /
      ``vision_lengths`` above the padded length are clipped to it (warning, counted in
      ``sanitised``); a top-level ``meta`` dict (IEMOCAP files) is kept in
      ``MMSASplit.meta["file_meta"]``.

    Unpickling can run code stored in the file: read only files you trust.

    Raises:
      FileNotFoundError: the file does not exist.
      MMSAFormatError: (a ``ValueError``) any layout problem, in one line naming the file,
        split, key, the expectation and what was found.
    """
    spec = DATASET_SPECS[canonical_dataset(dataset)]
    path = Path(path)
    what = f"MMSA pickle for dataset {spec.name!r}"
    _check_file(path, what)
    if verify_checksum:
        _verify_checksum(path, spec.name)
    raw = _load_pickle(path, what)
    if not isinstance(raw, Mapping):
        raise MMSAFormatError(
            f"{path}: expected a dict with keys {list(SPLITS)}, got {_describe(raw)}"
        )
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise MMSAFormatError(
            f"{path}: missing split(s) {missing}; keys present: "
            f"{sorted(str(k) for k in raw)} (expected {list(SPLITS)})"
        )
    file_meta = dict(raw["meta"]) if isinstance(raw.get("meta"), Mapping) else {}

    if spec.task == "classification":
        meta_classes = file_meta.get("num_classes")
        if num_classes is None:
            num_classes = (
                int(meta_classes) if meta_classes is not None else spec.num_classes
            )
        elif meta_classes is not None and int(meta_classes) != num_classes:
            raise MMSAFormatError(
                f"{path}: num_classes={num_classes} but the file's meta says "
                f"{meta_classes} ({file_meta.get('variant')})"
            )
        assert num_classes is not None
        if num_classes < 2:
            raise ValueError(f"num_classes: expected >= 2, got {num_classes}")

    parts = {
        s: _read_split(raw[s], path=path, split=s, spec=spec, num_classes=num_classes)
        for s in SPLITS
    }

    # Shapes must agree across splits (the model is built from the train shapes).
    for key in MODALITIES:
        shapes = {s: parts[s][key].shape[1:] for s in SPLITS}
        dims = {s: shp[1] for s, shp in shapes.items()}
        if len(set(dims.values())) != 1:
            raise MMSAFormatError(
                f"{path}: key {key!r}: feature dim D differs between splits: {dims} "
                "(expected one D for train/valid/test)"
            )
        lens = {s: shp[0] for s, shp in shapes.items()}
        if len(set(lens.values())) != 1:
            raise MMSAFormatError(
                f"{path}: key {key!r}: padded length T differs between splits: {lens}"
            )

    if standardize is None:
        standardize = spec.clip_percentiles is not None
    stats: dict[str, Standardizer] = {}
    if standardize:
        percentiles = _check_percentiles(
            clip_percentiles
            if clip_percentiles is not None
            else (spec.clip_percentiles or (0.5, 99.5))
        )
        for key in ("audio", "vision"):
            stats[key] = fit_standardizer(parts["train"][key], percentiles)
            for s in SPLITS:
                parts[s][key] = apply_standardizer(parts[s][key], stats[key])
        logger.info(
            "%s: audio/vision clipped to train percentiles %s and z-scored with train "
            "statistics",
            path,
            percentiles,
        )

    variant = file_meta.get("variant") or f"mmsa-{spec.name}-{path.stem}"
    result: dict[str, MMSASplit] = {}
    for s in SPLITS:
        p = parts[s]
        meta: dict[str, Any] = {
            "file": str(path),
            "dataset": spec.name,
            "split": s,
            "variant": variant,
            "standardization": {k: v.as_dict() for k, v in stats.items()},
            "file_meta": file_meta,
        }
        if num_classes is not None:
            meta["num_classes"] = num_classes
        result[s] = MMSASplit(
            text=p["text"],
            audio=p["audio"],
            vision=p["vision"],
            label=p["label"],
            ids=p["ids"],
            audio_lengths=p["audio_lengths"],
            vision_lengths=p["vision_lengths"],
            text_bert=p["text_bert"],
            raw_text=p["raw_text"],
            label_TAV=p["label_TAV"],
            sanitised=p["sanitised"],
            meta=meta,
            name=s,
        )
    return result


def read_dataset(
    path: str | os.PathLike[str],
    *,
    dataset: str,
    format: str = "mmsa",
    standardize: bool | None = None,
    clip_percentiles: Sequence[float] | None = None,
    num_classes: int | None = None,
    verify_checksum: bool = False,
) -> dict[str, MMSASplit]:
    """Reads ``{train, valid, test}`` in the config's ``data.format``.

    Args:
      path: the MMSA pickle (``format="mmsa"``) or the TFDS data folder written by
        ``scripts/convert_to_arrayrecord.py`` (``format="arrayrecord"``).
      dataset: ``mosi`` | ``mosei`` | ``sims`` | ``iemocap`` (aliases accepted).
      format: ``"mmsa"`` or ``"arrayrecord"``.
      standardize, clip_percentiles, num_classes: as in :func:`read_mmsa`. For
        ``arrayrecord`` the data were sanitised and standardised when converted:
        ``None`` accepts what is stored, other values must match it.
      verify_checksum: ``mmsa`` only (the conversion recorded its input).

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
            verify_checksum=verify_checksum,
        )
    if format == "arrayrecord":
        from decalign_jax import tfds_builder  # imports tensorflow_datasets (not TF)

        return tfds_builder.read_mmsa_arrayrecord(
            path,
            dataset=dataset,
            standardize=standardize,
            clip_percentiles=clip_percentiles,
            num_classes=num_classes,
        )
    raise ValueError(f"data.format: expected one of {list(FORMATS)}, got {format!r}")


# --------------------------------------------------------------------------------------
# IEMOCAP adapter
# --------------------------------------------------------------------------------------

# Field names as used by the GCNet / DialogueRNN releases.
_IEMO_NAMES = {
    "ids": ("videoIDs",),
    "labels": ("videoLabels",),
    "speakers": ("videoSpeakers",),
    "sentences": ("videoSentences", "videoSentence"),
    "train": ("trainVid",),
    "test": ("testVid",),
    "text": ("videoText",),
    "audio": ("videoAudio",),
    "vision": ("videoVisual", "videoVision", "videoVideo"),
}


def _first_item(d: Mapping[Any, Any]) -> Any:
    for value in d.values():
        seq = list(value) if not isinstance(value, str) else [value]
        if seq:
            return seq[0]
    return None


def _is_speaker_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and isinstance(_first_item(d), str)


def _parse_iemocap_raw(obj: Any, path: Path) -> dict[str, Any]:
    """Normalise the known raw IEMOCAP layouts into one dict of named fields."""
    fields: dict[str, Any]
    if isinstance(obj, Mapping):
        lowered = {str(k).lower(): k for k in obj}
        fields = {}
        for name, candidates in _IEMO_NAMES.items():
            for cand in candidates:
                if cand.lower() in lowered:
                    fields[name] = obj[lowered[cand.lower()]]
                    break
        layout = "dict"
    elif isinstance(obj, (tuple, list)) and len(obj) == 6:
        # GCNet / MoMKE: (videoIDs, videoLabels, videoSpeakers, videoSentences,
        # trainVid, testVid); the features live in separate per-utterance folders.
        keys = ("ids", "labels", "speakers", "sentences", "train", "test")
        fields = dict(zip(keys, obj, strict=True))
        layout = "gcnet"
    elif isinstance(obj, (tuple, list)) and len(obj) == 9:
        # DialogueRNN / MMGCN: (videoIDs, videoSpeakers, videoLabels, videoText,
        # videoAudio, videoVisual, videoSentence, trainVid, testVid), features inline.
        keys = (
            "ids",
            "speakers",
            "labels",
            "text",
            "audio",
            "vision",
            "sentences",
            "train",
            "test",
        )
        fields = dict(zip(keys, obj, strict=True))
        layout = "dialoguernn"
    elif isinstance(obj, (tuple, list)) and len(obj) == 7:
        raise MMSAFormatError(
            f"{path}: a 7-item tuple looks like a GCNet CMU-MOSI/MOSEI label file "
            "(videoIDs, videoLabels, videoSpeakers, videoSentence, trainVid, valVid, "
            "testVid); convert_iemocap reads IEMOCAP files only"
        )
    else:
        size = len(obj) if isinstance(obj, (tuple, list)) else None
        raise MMSAFormatError(
            f"{path}: unknown IEMOCAP layout: got {type(obj).__name__}"
            + (f" of {size} items" if size is not None else "")
            + "; expected the GCNet 6-tuple (videoIDs, videoLabels, videoSpeakers, "
            "videoSentences, trainVid, testVid), the DialogueRNN 9-tuple (videoIDs, "
            "videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, "
            "videoSentence, trainVid, testVid) or a dict with those names"
        )

    missing = [
        n for n in ("ids", "labels", "speakers", "train", "test") if n not in fields
    ]
    if missing:
        raise MMSAFormatError(
            f"{path}: IEMOCAP file lacks {[_IEMO_NAMES[m][0] for m in missing]}"
        )
    # Some re-shares swap labels and speakers; the content decides.
    if _is_speaker_dict(fields["labels"]) and not _is_speaker_dict(fields["speakers"]):
        fields["labels"], fields["speakers"] = fields["speakers"], fields["labels"]
    for name in ("ids", "labels", "speakers"):
        if not isinstance(fields[name], Mapping):
            raise MMSAFormatError(
                f"{path}: {_IEMO_NAMES[name][0]}: expected a dict keyed by dialogue id, "
                f"got {type(fields[name]).__name__}"
            )
    fields["layout"] = layout
    return fields


def _utterance_vector(file_or_dir: Path) -> np.ndarray | None:
    """One utterance feature ``[D]`` from a GCNet ``.npy`` file or a face folder.

    Files hold ``[D]``, ``[1, D]`` or ``[T, D]`` (averaged over T). A folder holds one
    ``.npy`` per detected face / frame, averaged; an empty folder (no face found)
    returns ``None``.
    """
    if file_or_dir.is_dir():
        paths = sorted(file_or_dir.glob("*.npy"))
        if not paths:
            return None
    else:
        paths = [file_or_dir]
    rows = []
    for p in paths:
        arr = np.asarray(np.load(p), np.float64)
        if arr.ndim == 0:
            raise MMSAFormatError(
                f"{p}: expected a feature [D], [1, D] or [T, D], got a scalar"
            )
        rows.append(arr.reshape(-1, arr.shape[-1]))
    if len({r.shape[1] for r in rows}) != 1:
        raise MMSAFormatError(f"{file_or_dir}: files with different feature dims")
    return np.concatenate(rows).mean(axis=0)


def _features_from_folder(
    root: Path, modality: str, folder_name: str, utterances: Sequence[str]
) -> tuple[np.ndarray, int]:
    folder = root / folder_name
    if not folder.is_dir():
        found = (
            sorted(p.name for p in root.iterdir() if p.is_dir())
            if root.is_dir()
            else []
        )
        raise FileNotFoundError(
            f"IEMOCAP {modality} feature folder not found: {folder} "
            f"(folders in {root}: {found}); pass feature_names= to name it"
        )
    vectors: list[np.ndarray | None] = []
    for utt in utterances:  # one file per utterance: I/O bound, a loop is unavoidable
        candidate = folder / f"{utt}.npy"
        if not candidate.exists():
            candidate = folder / utt
        if not candidate.exists():
            sample = sorted(p.name for p in folder.iterdir())[:5]
            raise FileNotFoundError(
                f"IEMOCAP {modality} feature for utterance {utt!r} not found in {folder} "
                f"(looked for {utt}.npy and {utt}/; the folder holds e.g. {sample})"
            )
        vectors.append(_utterance_vector(candidate))
    dims = {v.shape[0] for v in vectors if v is not None}
    if not dims:
        raise MMSAFormatError(f"{folder}: every {modality} feature folder is empty")
    if len(dims) != 1:
        raise MMSAFormatError(
            f"{folder}: {modality} features have different dims {sorted(dims)}"
        )
    (dim,) = dims
    n_empty = sum(v is None for v in vectors)
    out = np.stack([np.zeros(dim) if v is None else v for v in vectors])
    return out, n_empty


def _features_inline(
    table: Any,
    modality: str,
    dialogues: Sequence[str],
    counts: Sequence[int],
    path: Path,
) -> np.ndarray:
    if not isinstance(table, Mapping):
        raise MMSAFormatError(
            f"{path}: {modality} features: expected a dict keyed by dialogue id, got "
            f"{type(table).__name__}"
        )
    blocks = []
    for vid, n in zip(dialogues, counts, strict=True):
        if vid not in table:
            raise MMSAFormatError(f"{path}: {modality} features lack dialogue {vid!r}")
        arr = np.asarray(table[vid], dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise MMSAFormatError(
                f"{path}: {modality} features of dialogue {vid!r}: expected "
                f"[{n} utterances, D], got shape {arr.shape}"
            )
        blocks.append(arr)
    dims = {b.shape[1] for b in blocks}
    if len(dims) != 1:
        raise MMSAFormatError(f"{path}: {modality} features have different dims {dims}")
    return np.concatenate(blocks)


def _write_pickle_atomic(obj: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(obj, f, protocol=4)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_iemocap(
    src_pkl: str | os.PathLike[str],
    out_pkl: str | os.PathLike[str],
    *,
    num_classes: int,
    feature_root: str | os.PathLike[str] | None = None,
    feature_names: Mapping[str, str] | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    test_session: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Convert a raw IEMOCAP release into our utterance-level MMSA-style pickle.

    Source layouts (detected from the file):

    * GCNet / MoMKE ``IEMOCAP_features_raw_{4,6}way.pkl`` (the files behind DecAlign's
      Google-Drive link): a pickled 6-tuple ``(videoIDs, videoLabels, videoSpeakers,
      videoSentences, trainVid, testVid)``: dicts keyed by dialogue id (utterance ids,
      class ids, "M"/"F" speakers, sentences) and two SETS of dialogue ids. It holds
      NO features: GCNet reads them from per-utterance files under
      ``features/<extractor>/``: ``deberta-large-4-UTT`` (text, 1024-d),
      ``wav2vec-large-c-UTT`` (audio, 512-d), ``manet_UTT`` (vision, 1024-d); each
      ``<utterance>.npy`` holds ``[D]``, ``[1, D]`` or ``[T, D]`` (averaged over T) or
      is a folder of per-face ``.npy`` files (averaged; an empty folder, no face found,
      gives a zero row, as in GCNet). Pass that ``features`` folder as
      ``feature_root``. (DecAlign's ``scripts/prepare_iemocap.py`` reads only the label
      file, which is why it writes all-zero features.)
    * DialogueRNN / MMGCN ``IEMOCAP_features*.pkl``: a 9-tuple ``(videoIDs,
      videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence,
      trainVid, testVid)`` with per-dialogue feature arrays ``[n_utt, D]`` inline
      (other extractors and dims than GCNet's).
    * a dict with those field names.

    Splits: sessions (two actors each) are the speaker-independent unit of IEMOCAP.
    By default ``trainVid`` / ``testVid`` come from the file (in the DialogueRNN release
    120 dialogues of Sessions 1-4 vs 31 of Session 5); ``test_session=k`` instead tests
    on every dialogue of Session ``k`` (parsed from ids ``Ses0k...``) and trains on the
    other four, one fold of the leave-one-session-out protocol GCNet's baselines use.
    ``valid`` is a seeded random ``valid_fraction`` of the TRAINING DIALOGUES (whole
    dialogues, never single utterances), so valid shares speakers with train.

    Output (``read_mmsa(out, dataset="iemocap")`` reads it): ``{"train", "valid",
    "test", "meta"}``; each split has ``text``/``audio``/``vision`` float32
    ``[N, 1, D]``, ``classification_labels`` int32 ``[N]``, ``id``
    (``"dialogue$_$utterance"``), ``raw_text``, ``speaker``. ``meta`` records the
    variant (``"iemocap-4way"`` / ``"iemocap-6way"``), source file and SHA-256, layout,
    feature folders, dims, seed, valid dialogues, per-split counts and zero rows, so
    reports can say which IEMOCAP variant a number uses.

    Args:
      src_pkl: the raw IEMOCAP pickle.
      out_pkl: where to write (atomically: temp file, then rename).
      num_classes: 4 or 6 for the GCNet files (any >= 2 accepted); every label must be
        in ``[0, num_classes)``.
      feature_root: GCNet ``features`` folder (required for the 6-tuple layout).
      feature_names: modality -> folder name under ``feature_root``; default
        ``GCNET_FEATURE_NAMES``.
      valid_fraction: share of training dialogues moved to ``valid``, in ``(0, 1)``.
      seed: seed of the valid split.
      test_session: ``None`` (the file's split) or a session number 1-5.
      class_names: optional names recorded in ``meta`` (index order of the file).

    Returns:
      The ``meta`` dict written into the output.

    Raises:
      FileNotFoundError: missing source file, feature folder or utterance feature.
      MMSAFormatError: unknown layout, inconsistent dialogue tables, labels out of
        range, non-finite features, or an ALL-ZERO feature array (named by modality).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction: expected in (0, 1), got {valid_fraction}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"class_names: expected {num_classes} names, got {len(class_names)}"
        )
    src = Path(src_pkl)
    fields = _parse_iemocap_raw(_load_pickle(src, "raw IEMOCAP pickle"), src)
    layout = fields["layout"]

    def vid_list(name: str) -> list[str]:
        value = fields[name]
        if isinstance(value, (Mapping, str)):
            raise MMSAFormatError(
                f"{src}: {_IEMO_NAMES[name][0]}: expected a set/list of dialogue ids, "
                f"got {type(value).__name__}"
            )
        return sorted(str(v) for v in value)

    train_vids, test_vids = vid_list("train"), vid_list("test")
    protocol = "file trainVid/testVid"
    if test_session is not None:
        everything = sorted(set(train_vids) | set(test_vids))

        def session(vid: str) -> int:
            if not (vid.startswith("Ses") and vid[3:5].isdigit()):
                raise MMSAFormatError(
                    f"{src}: cannot read a session number from dialogue id {vid!r} "
                    "(expected 'Ses0<k>...'); test_session needs IEMOCAP ids"
                )
            return int(vid[3:5])

        sessions = {v: session(v) for v in everything}
        if test_session not in set(sessions.values()):
            raise ValueError(
                f"test_session: expected one of {sorted(set(sessions.values()))}, "
                f"got {test_session}"
            )
        test_vids = [v for v in everything if sessions[v] == test_session]
        train_vids = [v for v in everything if sessions[v] != test_session]
        protocol = f"leave-session-{test_session}-out"
    if not train_vids or not test_vids:
        raise MMSAFormatError(
            f"{src}: trainVid has {len(train_vids)} and testVid {len(test_vids)} "
            "dialogues; both must be non-empty"
        )
    overlap = sorted(set(train_vids) & set(test_vids))
    if overlap:
        raise MMSAFormatError(
            f"{src}: dialogues in both trainVid and testVid: {overlap[:5]}"
        )
    if len(train_vids) < 2:
        raise MMSAFormatError(f"{src}: need >= 2 training dialogues to carve out valid")

    dialogues = sorted(train_vids + test_vids)
    utt_ids: list[str] = []
    labels: list[int] = []
    speakers: list[str] = []
    sentences: list[str] = []
    counts: list[int] = []
    for vid in dialogues:  # ragged per-dialogue tables: a loop over dialogues
        for name in ("ids", "labels", "speakers"):
            if vid not in fields[name]:
                raise MMSAFormatError(
                    f"{src}: {_IEMO_NAMES[name][0]} lacks dialogue {vid!r}"
                )
        ids = [str(u) for u in fields["ids"][vid]]
        labs = list(fields["labels"][vid])
        spk = [str(s) for s in fields["speakers"][vid]]
        sents = (
            [str(s) for s in fields["sentences"][vid]]
            if "sentences" in fields and vid in fields["sentences"]
            else [""] * len(ids)
        )
        if not len(ids) == len(labs) == len(spk) == len(sents):
            raise MMSAFormatError(
                f"{src}: dialogue {vid!r}: {len(ids)} utterance ids, {len(labs)} labels, "
                f"{len(spk)} speakers, {len(sents)} sentences (must match)"
            )
        utt_ids += ids
        labels += labs
        speakers += spk
        sentences += sents
        counts.append(len(ids))

    try:
        label_arr = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MMSAFormatError(
            f"{src}: videoLabels: expected integer class ids, got e.g. {labels[:3]!r}"
        ) from e
    if label_arr.size == 0:
        raise MMSAFormatError(f"{src}: no utterances")
    if not np.all(label_arr == np.round(label_arr)):
        raise MMSAFormatError(f"{src}: videoLabels: expected integer class ids")
    if label_arr.min() < 0 or label_arr.max() >= num_classes:
        raise MMSAFormatError(
            f"{src}: videoLabels: expected class ids in [0, {num_classes}) for "
            f"num_classes={num_classes}, found min {label_arr.min():g} max "
            f"{label_arr.max():g} (a {int(label_arr.max()) + 1}-way file?)"
        )
    n_used = len(np.unique(label_arr))
    if n_used < num_classes:
        warnings.warn(
            f"{src}: only {n_used} of num_classes={num_classes} classes occur",
            stacklevel=2,
        )

    names = dict(GCNET_FEATURE_NAMES)
    if feature_names is not None:
        unknown = set(feature_names) - set(MODALITIES)
        if unknown:
            raise ValueError(f"feature_names: unknown modalities {sorted(unknown)}")
        names.update(feature_names)
    feats: dict[str, np.ndarray] = {}
    empty_rows: dict[str, int] = {}
    if layout == "gcnet" or not all(m in fields for m in MODALITIES):
        if feature_root is None:
            raise MMSAFormatError(
                f"{src}: this IEMOCAP file holds labels only ({layout} layout: videoIDs, "
                "videoLabels, videoSpeakers, videoSentences, trainVid, testVid); pass "
                "feature_root= the GCNet 'features' folder with "
                f"{sorted(names.values())} (DecAlign's prepare_iemocap.py ignores it and "
                "writes all-zero features)"
            )
        root = Path(feature_root)
        for m in MODALITIES:
            feats[m], empty_rows[m] = _features_from_folder(root, m, names[m], utt_ids)
        feature_source: dict[str, str] | str = {m: names[m] for m in MODALITIES}
    else:
        for m in MODALITIES:
            feats[m] = _features_inline(fields[m], m, dialogues, counts, src)
            empty_rows[m] = 0
        feature_source = "inline"

    for m in MODALITIES:
        x = feats[m]
        n_bad = int((~np.isfinite(x)).sum())
        if n_bad:
            raise MMSAFormatError(f"{src}: {m} features hold {n_bad} NaN/inf values")
        if not np.any(x):
            raise MMSAFormatError(
                f"{src}: {m} features are ALL ZERO ({x.shape[0]} utterances x "
                f"{x.shape[1]} dims); refusing to convert (DecAlign's "
                "scripts/prepare_iemocap.py writes such placeholders; use real features)"
            )

    # Seeded valid split over whole training dialogues.
    rng = np.random.default_rng(seed)
    n_valid = min(len(train_vids) - 1, max(1, round(valid_fraction * len(train_vids))))
    valid_vids = sorted(
        train_vids[i] for i in rng.permutation(len(train_vids))[:n_valid]
    )
    split_of_dialogue = {v: "train" for v in train_vids}
    split_of_dialogue.update({v: "valid" for v in valid_vids})
    split_of_dialogue.update({v: "test" for v in test_vids})
    utt_split = np.repeat(
        np.asarray([split_of_dialogue[v] for v in dialogues]), np.asarray(counts)
    )
    utt_dialogue = np.repeat(np.asarray(dialogues, dtype=object), np.asarray(counts))

    out: dict[str, Any] = {}
    zero_rows: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        idx = np.flatnonzero(utt_split == s)
        part: dict[str, Any] = {
            m: feats[m][idx][:, None, :].astype(np.float32) for m in MODALITIES
        }
        for m in MODALITIES:
            if idx.size and not np.any(part[m]):
                raise MMSAFormatError(
                    f"{src}: {m} features are ALL ZERO in the {s} split "
                    f"({idx.size} utterances); refusing to convert"
                )
            zero_rows.setdefault(s, {})[m] = int((~part[m].any(axis=(1, 2))).sum())
        part["classification_labels"] = label_arr[idx].astype(np.int32)
        part["id"] = np.asarray(
            [f"{utt_dialogue[i]}$_${utt_ids[i]}" for i in idx], dtype=object
        )
        part["raw_text"] = [sentences[i] for i in idx]
        part["speaker"] = [speakers[i] for i in idx]
        out[s] = part

    meta: dict[str, Any] = {
        "dataset": "iemocap",
        "variant": f"iemocap-{num_classes}way",
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "source_file": src.name,
        "source_sha256": sha256_file(src),
        "source_layout": layout,
        "features": feature_source,
        "feature_dims": {m: int(feats[m].shape[1]) for m in MODALITIES},
        "split_unit": "dialogue",
        "protocol": protocol,
        "test_session": test_session,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "train_dialogues": sorted(set(train_vids) - set(valid_vids)),
        "valid_dialogues": valid_vids,
        "test_dialogues": test_vids,
        "counts": {s: int(out[s]["classification_labels"].shape[0]) for s in SPLITS},
        "empty_feature_folders": empty_rows,
        "zero_rows": zero_rows,
        "converter": "decalign_jax.data.convert_iemocap",
    }
    out["meta"] = meta
    _write_pickle_atomic(out, Path(out_pkl))
    logger.info(
        "Wrote %s (%s from %s): train/valid/test = %s utterances",
        out_pkl,
        meta["variant"],
        src.name,
        meta["counts"],
    )
    return meta


# --------------------------------------------------------------------------------------
# grain source
# --------------------------------------------------------------------------------------


class MMSASource:
    """Random-access source over one ``MMSASplit`` for ``grain.MapDataset.source``.

    Items (static shapes, numpy):
      ``text`` ``[T_l, D_l]`` float32, ``audio`` ``[T_a, D_a]`` float32, ``vision``
      ``[T_v, D_v]`` float32, ``audio_lengths`` / ``vision_lengths`` int32 scalars (the
      full padded length when the file has none), ``label`` float32 scalar (regression)
      or int32 scalar (classification), ``index`` int64 scalar (row in the split); with
      ``with_text_bert=True`` also ``text_bert`` ``[3, T_l]`` int32.

    The source holds the split's arrays; it is picklable (grain workers receive a
    copy of the arrays, so large splits cost memory per worker process).
    """

    def __init__(self, split: MMSASplit, *, with_text_bert: bool = False) -> None:
        if not isinstance(split, MMSASplit):
            raise TypeError(f"split: expected an MMSASplit, got {type(split).__name__}")
        if with_text_bert and split.text_bert is None:
            raise ValueError(
                f"with_text_bert=True but split {split.name!r} has no text_bert"
            )
        n = split.num_samples
        _, t_a, t_v = split.seq_lens
        self._n = n
        self._text = split.text
        self._audio = split.audio
        self._vision = split.vision
        self._label = split.label
        self._audio_lengths = (
            split.audio_lengths.astype(np.int32)
            if split.audio_lengths is not None
            else np.full(n, t_a, np.int32)
        )
        self._vision_lengths = (
            split.vision_lengths.astype(np.int32)
            if split.vision_lengths is not None
            else np.full(n, t_v, np.int32)
        )
        self._text_bert = split.text_bert if with_text_bert else None
        self._name = split.name

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        i = operator.index(index)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"index {index} out of range for {self._n} samples")
        item = {
            "text": self._text[i],
            "audio": self._audio[i],
            "vision": self._vision[i],
            "audio_lengths": self._audio_lengths[i],
            "vision_lengths": self._vision_lengths[i],
            "label": self._label[i],
            "index": np.int64(i),
        }
        if self._text_bert is not None:
            item["text_bert"] = self._text_bert[i]
        return item

    def __repr__(self) -> str:
        return (
            f"MMSASource(split={self._name!r}, n={self._n}, text={self._text.shape[1:]}, "
            f"audio={self._audio.shape[1:]}, vision={self._vision.shape[1:]})"
        )
