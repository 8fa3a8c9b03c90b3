"""MMSA pickles as TFDS ArrayRecord datasets, and a reader for them.

Building (no download; the input is an MMSA-layout pickle, docs/decalign.md, 'Data')::

    from decalign_jax.data import arrayrecord
    arrayrecord.build_arrayrecord("data/MOSI/aligned_50.pkl", "data/tfds", dataset="mosi")
    splits = arrayrecord.read_mmsa_arrayrecord("data/tfds", dataset="mosi")

or ``python scripts/convert_to_arrayrecord.py decalign --dataset mosi --src
data/MOSI/aligned_50.pkl --out data/tfds``.

The pickle is read through :func:`decalign_jax.data.mmsa.read_mmsa`, so validation,
sanitising (non-finite / float32-overflowing audio and vision set to 0) and the
train-statistics clip + z-score standardisation (MOSEI, SIMS by default) are applied
BEFORE writing; the dataset stores the result and records what was done: the
description says it in words, the metadata (``metadata.json``) holds the
``read_mmsa`` settings, the standardisation statistics, the sanitised counts and the
file's own ``meta``.

One builder, :class:`DecalignMmsa`, with one config per dataset (``mosi``, ``mosei``,
``sims``, ``iemocap``); splits ``train`` / ``valid`` / ``test``; one record per sample, in
row order (record ``i`` holds ``index = i``):

* ``text`` ``[T_l, D_l]``, ``audio`` ``[T_a, D_a]``, ``vision`` ``[T_v, D_v]`` float32 at
  their padded lengths (raw bytes, exact);
* ``audio_length`` / ``vision_length`` int32 (the padded length for aligned files);
* ``label`` float32 (regression) or int32 (classification), ``id`` (text);
* when every split has them: ``text_bert`` ``[3, T_l]`` int32, ``raw_text`` (text) and the
  SIMS unimodal labels ``label_T`` / ``label_A`` / ``label_V`` float32.

The small per-sample fields (labels, ids, lengths) are also in the metadata, so opening a
split decodes no record.

Reading: :func:`read_mmsa_arrayrecord` returns ``{"train", "valid", "test"} ->``
:class:`decalign_jax.data.split.MMSASplit` whose ``text`` / ``audio`` / ``vision`` (and
``text_bert``, ``raw_text``) are lazy columns over ``tfds`` data sources
(:mod:`xmodal.arrayrecord`); labels, ids and lengths are in memory. ``MMSASource`` and the
driver use it as any other split; pickling a source stores paths. TensorFlow is never imported.

One TFDS ``data_dir`` holds one conversion per dataset name (MOSI aligned and unaligned
need two folders): converting a different file or other settings into a folder that
already has one raises ``FileExistsError`` unless ``overwrite=True``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from decalign_jax.data.mmsa import read_mmsa
from decalign_jax.data.split import (
    DATASET_SPECS,
    MODALITIES,
    SPLITS,
    MMSASplit,
    canonical_dataset,
)
from decalign_jax.data.standardize import STD_FLOOR
from xmodal import arrayrecord as ar
from xmodal import files

__all__ = [
    "BUILDER_NAME",
    "VERSION",
    "DecalignMmsa",
    "build_arrayrecord",
    "dataset_dir",
    "read_mmsa_arrayrecord",
]


#: Version of the record layout (the dataset folder name).
VERSION = "1.0.0"

_BYTES = tfds.features.Encoding.BYTES
_TAV = ("T", "A", "V")


def _source_identity(
    path: pathlib.Path,
    dataset: str,
    standardize: bool | None,
    clip_percentiles: Sequence[float] | None,
    num_classes: int | None,
) -> dict[str, Any]:
    """What a conversion is made from (recorded; compared on re-conversion)."""
    return files.jsonable(
        {
            "format": "mmsa",
            "file": str(path.resolve()),
            "file_bytes": path.stat().st_size,
            "dataset": dataset,
            "standardize": standardize,
            "clip_percentiles": clip_percentiles,
            "num_classes": num_classes,
        }
    )


class DecalignMmsa(ar.RowBuilder):
    """TFDS builder: an MMSA pickle -> one ArrayRecord dataset (see the module doc).

    Args:
      mmsa_path: the pickle. Required to build; None to read a prepared dataset.
      standardize, clip_percentiles, num_classes: passed to
        :func:`decalign_jax.data.mmsa.read_mmsa` (the config name is its ``dataset``).
      **kwargs: ``data_dir``, ``config`` (``"mosi"`` | ``"mosei"`` | ``"sims"`` |
        ``"iemocap"``), ``file_format`` ... for ``GeneratorBasedBuilder``.
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        str(VERSION): (
            "MMSA splits (read_mmsa output) as ArrayRecord, one record per sample."
        )
    }
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name=name, description=f"{name} (MMSA layout)")
        for name in DATASET_SPECS
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the MMSA pickle (aligned_50.pkl, unaligned_50.pkl, unaligned_39.pkl, or an "
        "IEMOCAP file from decalign_jax.data.convert_iemocap) as mmsa_path= when "
        "constructing the builder."
    )
    INPUT_ARG = "mmsa_path"

    def __init__(
        self,
        *,
        mmsa_path: str | os.PathLike | None = None,
        standardize: bool | None = None,
        clip_percentiles: Sequence[float] | None = None,
        num_classes: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._path = None if mmsa_path is None else pathlib.Path(mmsa_path)
        self._read_kwargs = dict(
            standardize=standardize,
            clip_percentiles=clip_percentiles,
            num_classes=num_classes,
        )
        self._splits: dict[str, MMSASplit] | None = None
        super().__init__(
            input_state=dict(
                mmsa_path=None if mmsa_path is None else os.fspath(mmsa_path),
                **self._read_kwargs,
            ),
            **kwargs,
        )

    @property
    def input_path(self) -> pathlib.Path | None:
        """The pickle this builder converts (None: read-only)."""
        return self._path

    def _load(self) -> dict[str, MMSASplit]:
        if self._splits is None:
            assert self._path is not None
            self._splits = read_mmsa(
                self._path, dataset=self.builder_config.name, **self._read_kwargs
            )
        return self._splits

    def split_names(self) -> list[str]:
        return list(self._load())

    def source_identity(self) -> dict[str, Any]:
        assert self._path is not None
        return _source_identity(
            self._path, self.builder_config.name, **self._read_kwargs
        )

    # ----------------------------------------------------------------- feature spec

    def _present(self, key: str, get: Any) -> bool:
        """Whether every split has an optional field (all or none, one spec)."""
        has = {name: get(s) for name, s in self._load().items()}
        hint = "the field must be in every split or in none"
        return ar.agreed_value(self._path, key, has, hint)

    def feature_spec(self) -> tfds.features.FeaturesDict:
        train = self._load()["train"]
        t_l = train.seq_lens[0]
        feats: dict[str, Any] = {
            key: tfds.features.Tensor(
                shape=getattr(train, key).shape[1:], dtype=np.float32, encoding=_BYTES
            )
            for key in MODALITIES
        }
        feats["audio_length"] = tfds.features.Scalar(dtype=np.int32)
        feats["vision_length"] = tfds.features.Scalar(dtype=np.int32)
        feats["label"] = tfds.features.Scalar(
            dtype=np.int32 if train.is_classification else np.float32
        )
        feats["id"] = tfds.features.Text()
        feats["index"] = tfds.features.Scalar(dtype=np.int64)
        if self._present("text_bert", lambda s: s.text_bert is not None):
            feats["text_bert"] = tfds.features.Tensor(
                shape=(3, t_l), dtype=np.int32, encoding=_BYTES
            )
        if self._present("raw_text", lambda s: s.raw_text is not None):
            feats["raw_text"] = tfds.features.Text()
        for k in _TAV:
            if self._present(f"label_{k}", lambda s, k=k: k in s.label_TAV):
                feats[f"label_{k}"] = tfds.features.Scalar(dtype=np.float32)
        return tfds.features.FeaturesDict(feats)

    def description(self) -> str:
        splits = self._load()
        meta = splits["train"].meta
        stats = meta.get("standardization") or {}
        if stats:
            pct = next(iter(stats.values()))["percentiles"]
            std = (
                f"audio/vision clipped to the TRAIN percentiles {tuple(pct)} per feature "
                "dim and z-scored with train statistics (std floored at "
                f"{STD_FLOOR:g})"
            )
        else:
            std = "no standardisation"
        sanitised = {n: s.sanitised for n, s in splits.items() if s.sanitised}
        return (
            f"{meta['dataset']} ({meta['variant']}) from {self._path}, read with "
            f"decalign_jax.data.read_mmsa: non-finite and float32-overflowing "
            f"audio/vision values set to 0 (counts: {sanitised or 'none'}); {std}. "
            f"Samples: { {n: s.num_samples for n, s in splits.items()} }. Records in "
            "row order; record i holds index = i."
        )

    # ----------------------------------------------------------------- generation

    def split_metadata(self) -> dict[str, Any]:
        splits = self._load()
        train_meta = splits["train"].meta
        return {
            "read_mmsa": self._read_kwargs,
            "dataset": train_meta["dataset"],
            "variant": train_meta["variant"],
            "file": train_meta["file"],
            "file_meta": train_meta.get("file_meta") or {},
            "num_classes": train_meta.get("num_classes"),
            "standardization": train_meta.get("standardization") or {},
            "splits": {
                name: {
                    "num_samples": s.num_samples,
                    "label": s.label,
                    "ids": s.ids,
                    "audio_lengths": s.audio_lengths,
                    "vision_lengths": s.vision_lengths,
                    "label_TAV": s.label_TAV,
                    "sanitised": s.sanitised,
                }
                for name, s in splits.items()
            },
        }

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        s = self._load()[split]
        features = self.info.features
        n = s.num_samples
        _, t_a, t_v = s.seq_lens
        a_len = s.audio_lengths if s.audio_lengths is not None else np.full(n, t_a)
        v_len = s.vision_lengths if s.vision_lengths is not None else np.full(n, t_v)
        for i in range(n):
            rec: dict[str, Any] = {
                "text": s.text[i],
                "audio": s.audio[i],
                "vision": s.vision[i],
                "audio_length": int(a_len[i]),
                "vision_length": int(v_len[i]),
                "label": s.label[i],
                "id": s.ids[i],
                "index": i,
            }
            if "text_bert" in features:
                rec["text_bert"] = s.text_bert[i]
            if "raw_text" in features:
                rec["raw_text"] = s.raw_text[i]
            for k in _TAV:
                if f"label_{k}" in features:
                    rec[f"label_{k}"] = s.label_TAV[k][i]
            yield i, rec


# ---------------------------------------------------------------------------------------
# Build and read
# ---------------------------------------------------------------------------------------

#: The TFDS name of :class:`DecalignMmsa` (the folder under ``data_dir``).
BUILDER_NAME: str = DecalignMmsa.name  # "decalign_mmsa"


def dataset_dir(data_dir: str | os.PathLike, dataset: str) -> pathlib.Path:
    """``data_dir/decalign_mmsa/{dataset}/{VERSION}`` (``dataset`` canonicalised)."""
    return ar.builder_dir(data_dir, BUILDER_NAME, canonical_dataset(dataset), VERSION)


def build_arrayrecord(
    mmsa_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    dataset: str,
    standardize: bool | None = None,
    clip_percentiles: Sequence[float] | None = None,
    num_classes: int | None = None,
    overwrite: bool = False,
    writer_options: str = ar.WRITER_OPTIONS,
) -> pathlib.Path:
    """Converts an MMSA pickle into an ArrayRecord dataset under ``data_dir``.

    Args:
      mmsa_path: the pickle.
      data_dir: the TFDS data folder to write (``data.path`` for ``format=arrayrecord``).
      dataset: ``mosi`` | ``mosei`` | ``sims`` | ``iemocap`` (aliases accepted).
      standardize, clip_percentiles, num_classes: for
        :func:`decalign_jax.data.mmsa.read_mmsa` (applied before writing).
      overwrite: replace a dataset of the same name already in ``data_dir``.
      writer_options: ArrayRecord writer options (default uncompressed; see
        :data:`xmodal.arrayrecord.WRITER_OPTIONS`).

    Returns:
      The dataset folder written (or reused, when an identical conversion exists).

    Raises:
      FileExistsError: ``data_dir`` already holds this dataset converted from another
        file or with other settings, and ``overwrite`` is False.
    """
    name = canonical_dataset(dataset)
    path = files.require_file(mmsa_path, "mmsa_path")
    source = _source_identity(path, name, standardize, clip_percentiles, num_classes)

    def make() -> DecalignMmsa:
        return DecalignMmsa(
            mmsa_path=path,
            standardize=standardize,
            clip_percentiles=clip_percentiles,
            num_classes=num_classes,
            data_dir=data_dir,
            config=name,
            file_format="array_record",
        )

    return ar.prepare(
        make,
        dataset_dir(data_dir, name),
        source=source,
        overwrite=overwrite,
        writer_options=writer_options,
    )


def _float_array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _stats(stats: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The recorded standardisation statistics in ``read_mmsa``'s form."""
    return {
        key: {
            "low": _float_array(v["low"]),
            "high": _float_array(v["high"]),
            "mean": _float_array(v["mean"]),
            "std": _float_array(v["std"]),
            "percentiles": tuple(float(p) for p in v["percentiles"]),
        }
        for key, v in stats.items()
    }


def _check_settings(
    md: Mapping[str, Any],
    stats: Mapping[str, Any],
    path: pathlib.Path,
    standardize: bool | None,
    clip_percentiles: Sequence[float] | None,
    num_classes: int | None,
) -> None:
    """The requested reading settings must match what was baked in."""
    stored_std = bool(stats)
    if standardize is not None and bool(standardize) != stored_std:
        raise ValueError(
            f"standardize: expected {stored_std} (as stored in {path}), got "
            f"{standardize}; convert the pickle again with the setting you want"
        )
    if clip_percentiles is not None:
        want = tuple(float(p) for p in clip_percentiles)
        got = next(iter(stats.values()))["percentiles"] if stats else None
        if want != got:
            raise ValueError(
                f"clip_percentiles: expected {got} (as stored in {path}), got {want}"
            )
    stored_classes = md.get("num_classes")
    if (
        num_classes is not None
        and stored_classes is not None
        and int(num_classes) != int(stored_classes)
    ):
        raise ValueError(
            f"num_classes: expected {stored_classes} (as stored in {path}), got "
            f"{num_classes}"
        )


def _open_split(
    builder: Any, path: pathlib.Path, split: str, meta: dict[str, Any]
) -> MMSASplit:
    """One split: lazy feature columns, per-sample fields from the metadata."""
    md = builder.info.metadata or {}
    entries = md.get("splits") or {}
    if split not in entries or split not in builder.info.splits:
        raise FileNotFoundError(
            f"{path} [split]: split {split!r} missing; it has "
            f"{sorted(builder.info.splits)}"
        )
    e = entries[split]
    n = int(e["num_samples"])
    got = builder.info.splits[split].num_examples
    if got != n:
        raise ValueError(
            f"{path} [{split}]: expected {n} records (metadata), got {got}"
        )
    if n == 0:
        raise ValueError(
            f"{path} [{split}]: expected at least 1 sample, got 0 (empty split)"
        )
    features = builder.info.features
    table = ar.RecordTable(path, split, n)

    def column(field: str) -> ar.ArrayColumn:
        f = features[field]
        return ar.ArrayColumn(table, field, f.shape, f.np_dtype)

    def lengths(value: Any) -> np.ndarray | None:
        return None if value is None else np.asarray(value, dtype=np.int32)

    return MMSASplit(
        text=column("text"),
        audio=column("audio"),
        vision=column("vision"),
        label=np.asarray(e["label"], dtype=np.dtype(features["label"].np_dtype)),
        ids=[str(i) for i in e["ids"]],
        audio_lengths=lengths(e.get("audio_lengths")),
        vision_lengths=lengths(e.get("vision_lengths")),
        text_bert=column("text_bert") if "text_bert" in features else None,
        raw_text=(ar.TextColumn(table, "raw_text") if "raw_text" in features else None),
        label_TAV={
            k: np.asarray(v, dtype=np.float32)
            for k, v in (e.get("label_TAV") or {}).items()
        },
        sanitised={k: int(v) for k, v in (e.get("sanitised") or {}).items()},
        meta=meta,
        name=split,
    )


def read_mmsa_arrayrecord(
    data_dir: str | os.PathLike,
    *,
    dataset: str,
    standardize: bool | None = None,
    clip_percentiles: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> dict[str, MMSASplit]:
    """Opens a converted MMSA dataset (``data.format = "arrayrecord"``).

    Args:
      data_dir: the TFDS data folder given to :func:`build_arrayrecord`.
      dataset: ``mosi`` | ``mosei`` | ``sims`` | ``iemocap`` (aliases accepted).
      standardize: ``None`` accepts what was baked in; ``True`` / ``False`` must match it
        (the stored features are already standardised or not).
      clip_percentiles: ``None``, or the percentiles the stored data must have used.
      num_classes: ``None``, or the class count the stored data must have (IEMOCAP).

    Returns:
      ``{"train", "valid", "test"} -> MMSASplit`` with lazy ``text`` / ``audio`` /
      ``vision`` ``[N, T, D]`` float32 columns (and ``text_bert`` ``[N, 3, T_l]``,
      ``raw_text`` when stored), in-memory ``label``, ``ids``, lengths and ``label_TAV``;
      ``meta`` as :func:`read_mmsa` builds it plus ``format = "arrayrecord"`` and the
      dataset folder; ``sanitised`` as counted when the pickle was read.

    Raises:
      FileNotFoundError: no converted dataset of that name (the message lists what is
        there).
      ValueError: a requested setting disagrees with the stored data, or the dataset is
        inconsistent or has an empty split.
    """
    name = canonical_dataset(dataset)
    path = dataset_dir(data_dir, name)
    builder = ar.open_builder(path, what=f"{name} dataset")
    md = builder.info.metadata or {}
    stats = _stats(md.get("standardization") or {})
    _check_settings(md, stats, path, standardize, clip_percentiles, num_classes)
    stored_classes = md.get("num_classes")
    out: dict[str, MMSASplit] = {}
    for split in SPLITS:
        meta: dict[str, Any] = {
            "file": md.get("file"),
            "dataset": md.get("dataset", name),
            "split": split,
            "variant": md.get("variant"),
            "standardization": stats,
            "file_meta": dict(md.get("file_meta") or {}),
            "format": "arrayrecord",
            "arrayrecord": {"dataset_dir": str(path), "layout": md.get("layout")},
        }
        if stored_classes is not None:
            meta["num_classes"] = int(stored_classes)
        out[split] = _open_split(builder, path, split, meta)
    return out
