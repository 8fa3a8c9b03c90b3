"""The MMSA pickle reader (CMU-MOSI, CMU-MOSEI, CH-SIMS; IEMOCAP after conversion).

The MMSA pickle (``aligned_50.pkl``, ``unaligned_50.pkl``, ``unaligned_39.pkl``; docs/decalign.md,
'Data') is a dict ``{"train", "valid", "test"}`` of dicts of arrays with ``text`` (BERT
features ``[N, T_l, 768]``), ``text_bert`` (``[N, 3, T_l]`` token ids / mask / segment ids,
often stored as float), ``audio`` ``[N, T_a, D_a]``, ``vision`` ``[N, T_v, D_v]``,
``audio_lengths`` / ``vision_lengths`` (unaligned files, right padded),
``regression_labels`` (MOSI/MOSEI ``[-3, 3]``, SIMS ``[-1, 1]``) or
``classification_labels`` (IEMOCAP), ``id`` and ``raw_text``. The same reader reads the
utterance-level IEMOCAP pickle written by :func:`decalign_jax.data.iemocap.convert_iemocap`.

Every problem in a file raises ONE error (``FileNotFoundError`` or
:class:`~decalign_jax.data.split.MMSAFormatError`, a ``ValueError``) whose message names
the file, split, key, what was expected and what was found. Empty splits are refused;
all-zero text / audio / vision features of a split draw a
:class:`xmodal.files.ZeroFeaturesWarning` (MOSI, MOSEI, SIMS) or are refused (IEMOCAP:
placeholder features are what DecAlign's own IEMOCAP script writes).

Sanitising: audio and vision are read in float64; NaN, +-inf and values whose magnitude
exceeds the float32 maximum (about 3.4e38, they would become inf when cast) are set to 0,
then the arrays are cast to float32. The counts are returned in ``MMSASplit.sanitised``
(MOSEI audio holds -inf and float32-overflowing values); a run prints them
(:func:`decalign_jax.data.inputs.load_data`). Text features are
not sanitised: NaN/inf there is an error. Standardisation: :mod:`~decalign_jax.data.standardize`.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    BLOCK_ELEMS,
    Standardizer,
    apply_standardizer,
    check_percentiles,
    fit_standardizer,
)
from xmodal import files

__all__ = ["describe", "load_pickle", "read_mmsa"]

logger = logging.getLogger(__name__)

_F32_MAX = float(np.finfo(np.float32).max)
# Tolerance on label ranges (labels are stored as float32 in some releases).
_LABEL_TOL = 1e-5


def load_pickle(path: Path, what: str) -> Any:
    """Unpickles ``path``; one clear error when it is missing or unreadable.

    Unpickling can run code stored in the file: read only files you trust.
    """
    files.require_file(path, what)
    try:
        with open(path, "rb") as f:
            # latin1 lets Python-2 era pickles (DialogueRNN/GCNet releases) load; it is
            # irrelevant for Python-3 pickles.
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # unpickling can raise nearly anything
        raise MMSAFormatError(
            f"{path}: cannot unpickle {what}: {type(e).__name__}: {e}"
        ) from e


def describe(value: Any) -> str:
    """A short description of a value found in a file, for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__}"


# --------------------------------------------------------------------------------------
# One key of one split
# --------------------------------------------------------------------------------------


class _Where:
    """Formats ``file: split 's', key 'k': ...`` error prefixes."""

    def __init__(self, path: Path, split: str) -> None:
        self.path, self.split = path, split

    def __call__(self, key: str, msg: str) -> MMSAFormatError:
        return MMSAFormatError(f"{self.path}: split {self.split!r}, key {key!r}: {msg}")


def _numeric(value: Any, key: str, where: _Where) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged lists
        raise where(key, f"cannot convert to an array ({e})") from e
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise where(key, f"expected a numeric array, got {describe(arr)}") from e
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise where(key, f"expected a numeric array, got {describe(arr)}")
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
    scan = files.scan_values(out)
    if scan.nonfinite:
        raise where(
            "text",
            f"expected finite BERT features, found {scan.nonfinite} NaN/inf values "
            f"(first in sample {scan.first_nonfinite_row}); text features are not "
            "sanitised",
        )
    return out


def _sanitise(arr: np.ndarray) -> tuple[np.ndarray, int, int]:
    """float64 -> zero NaN/inf and |x| > float32 max -> float32. Returns counts."""
    out = np.empty(arr.shape, np.float32)
    rows = max(1, BLOCK_ELEMS // max(1, arr.shape[1] * arr.shape[2]))
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
            key, f"expected a sequence of strings, got {describe(value)}"
        ) from e


# --------------------------------------------------------------------------------------
# One split
# --------------------------------------------------------------------------------------


def _check_required(raw: Any, where: _Where, spec: DatasetSpec) -> None:
    if not isinstance(raw, Mapping):
        raise MMSAFormatError(
            f"{where.path}: split {where.split!r}: expected a dict of arrays, got "
            f"{describe(raw)}"
        )
    present = sorted(str(k) for k in raw)
    for key in [*MODALITIES, spec.label_key]:
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


def _read_modalities(raw: Mapping[str, Any], where: _Where) -> dict[str, Any]:
    """``text`` (finite) and ``audio`` / ``vision`` (sanitised) as float32, + counts."""
    out: dict[str, Any] = {
        "text": _finite_text(_rank3(raw["text"], "text", where), where),
        "sanitised": {},
    }
    for key in ("audio", "vision"):
        clean, n_nonfinite, n_overflow = _sanitise(_rank3(raw[key], key, where))
        out[key] = clean
        if n_nonfinite or n_overflow:
            out["sanitised"][f"{key}_nonfinite"] = n_nonfinite
            out["sanitised"][f"{key}_overflow"] = n_overflow
            logger.info(
                "%s: split %r key %r: replaced %d non-finite and %d float32-overflow "
                "values with 0",
                where.path,
                where.split,
                key,
                n_nonfinite,
                n_overflow,
            )
    return out


def _read_labels(
    raw: Mapping[str, Any],
    where: _Where,
    spec: DatasetSpec,
    num_classes: int | None,
    out: dict[str, Any],
) -> None:
    key = spec.label_key
    if spec.task == "regression":
        out["label"] = _regression_labels(raw[key], key, where, spec)
    else:
        assert num_classes is not None
        out["label"] = _class_labels(raw[key], key, where, num_classes)
    out["label_TAV"] = {
        short: _regression_labels(raw[k], k, where, spec)
        for short, k in spec.unimodal_label_keys.items()
        if k in raw and raw[k] is not None
    }


def _read_optional(raw: Mapping[str, Any], where: _Where, out: dict[str, Any]) -> None:
    """Lengths (clipped to the padded length), ``text_bert``, ``raw_text``, ``id``."""
    for key, arr_key in (("audio_lengths", "audio"), ("vision_lengths", "vision")):
        if key in raw and raw[key] is not None:
            out[key], n_clipped = _lengths(raw[key], key, where, out[arr_key].shape[1])
            if n_clipped:
                out["sanitised"][f"{key}_clipped"] = n_clipped
        else:
            out[key] = None
    out["text_bert"] = (
        _text_bert(raw["text_bert"], where, out["text"].shape[1])
        if raw.get("text_bert") is not None
        else None
    )
    out["raw_text"] = (
        _strings(raw["raw_text"], "raw_text", where)
        if raw.get("raw_text") is not None
        else None
    )
    out["ids"] = _strings(raw["id"], "id", where) if raw.get("id") is not None else None


def _check_samples(out: dict[str, Any], where: _Where, spec: DatasetSpec) -> None:
    """One N for every key, N > 0, and no modality that is all zero."""
    counts = {k: out[k].shape[0] for k in (*MODALITIES, "label")}
    counts[spec.label_key] = counts.pop("label")
    for key in ("audio_lengths", "vision_lengths", "text_bert", "raw_text", "ids"):
        if out[key] is not None:
            counts["id" if key == "ids" else key] = len(out[key])
    for short, arr in out["label_TAV"].items():
        counts[spec.unimodal_label_keys[short]] = len(arr)
    prefix = f"{where.path}: split {where.split!r}"
    if len(set(counts.values())) != 1:
        raise MMSAFormatError(
            f"{prefix}: sample counts N differ between keys: {counts}"
        )
    if counts["text"] == 0:
        raise MMSAFormatError(
            f"{prefix}: expected at least 1 sample, got 0 (empty split: every key has "
            "N = 0)"
        )
    for key in MODALITIES:
        if np.any(out[key]):
            continue
        what = f"{key} features are ALL ZERO (shape {out[key].shape})"
        if spec.name == "iemocap":  # the converter refuses them too
            raise where(
                key,
                f"{what}; refusing placeholder features (DecAlign's "
                "scripts/prepare_iemocap.py writes such files; use real features)",
            )
        warnings.warn(
            f"{prefix}, key {key!r}: {what}: placeholder features? Nothing can be "
            "learnt from this modality",
            files.ZeroFeaturesWarning,
            stacklevel=4,
        )


def _read_split(
    raw: Any,
    *,
    path: Path,
    split: str,
    spec: DatasetSpec,
    num_classes: int | None,
) -> dict[str, Any]:
    where = _Where(path, split)
    _check_required(raw, where, spec)
    out = _read_modalities(raw, where)
    _read_labels(raw, where, spec, num_classes, out)
    _read_optional(raw, where, out)
    _check_samples(out, where, spec)
    if out["ids"] is None:
        logger.info(
            "%s: split %r has no 'id' key; using '%s_<index>'", path, split, split
        )
        out["ids"] = [f"{split}_{i}" for i in range(out["text"].shape[0])]
    return out


# --------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------


def _num_classes(
    spec: DatasetSpec, file_meta: Mapping[str, Any], num_classes: int | None, path: Path
) -> int | None:
    """The class count (classification): the argument, else the file's, else the dataset table's."""
    if spec.task != "classification":
        return num_classes
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
    return num_classes


def _check_splits_agree(parts: Mapping[str, dict[str, Any]], path: Path) -> None:
    """Shapes must agree across splits (the model is built from the train shapes)."""
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


def _standardize(
    parts: Mapping[str, dict[str, Any]],
    percentiles: tuple[float, float],
    path: Path,
) -> dict[str, Standardizer]:
    """Clips and z-scores audio / vision of every split with train statistics."""
    stats: dict[str, Standardizer] = {}
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
    return stats


def read_mmsa(
    path: str | os.PathLike[str],
    *,
    dataset: str,
    standardize: bool | None = None,
    clip_percentiles: Sequence[float] | None = None,
    num_classes: int | None = None,
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
      MMSAFormatError: (a ``ValueError``) any layout problem, an empty split, or
        all-zero IEMOCAP features, in one line naming the file, split, key, the
        expectation and what was found.
    """
    spec = DATASET_SPECS[canonical_dataset(dataset)]
    path = Path(path)
    raw = load_pickle(path, f"MMSA pickle for dataset {spec.name!r}")
    if not isinstance(raw, Mapping):
        raise MMSAFormatError(
            f"{path}: expected a dict with keys {list(SPLITS)}, got {describe(raw)}"
        )
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise MMSAFormatError(
            f"{path}: missing split(s) {missing}; keys present: "
            f"{sorted(str(k) for k in raw)} (expected {list(SPLITS)})"
        )
    file_meta = dict(raw["meta"]) if isinstance(raw.get("meta"), Mapping) else {}
    num_classes = _num_classes(spec, file_meta, num_classes, path)
    parts = {
        s: _read_split(raw[s], path=path, split=s, spec=spec, num_classes=num_classes)
        for s in SPLITS
    }
    _check_splits_agree(parts, path)

    if standardize is None:
        standardize = spec.clip_percentiles is not None
    stats: dict[str, Standardizer] = {}
    if standardize:
        percentiles = check_percentiles(
            clip_percentiles
            if clip_percentiles is not None
            else (spec.clip_percentiles or (0.5, 99.5))
        )
        stats = _standardize(parts, percentiles, path)

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
