"""The retrieval feature store as TFDS ArrayRecord datasets, and a reader for them.

Building (no download; the input is a ``features`` store, docs/cdds.md, 'Data')::

    from cdds_jax.data import arrayrecord
    arrayrecord.build_arrayrecord("data/f30k", "data/tfds")   # all splits
    split = arrayrecord.read_arrayrecord("data/tfds", "train")  # a RetrievalSplit

or ``python scripts/convert_to_arrayrecord.py cdds --src data/f30k --out data/tfds``,
then train with ``--config.data.format=arrayrecord --config.data.root=data/tfds``.

Records. Retrieval needs UNIQUE images and captions with an explicit caption -> image
index, and the two have different feature specs, so one builder,
:class:`CddsFeatureStore`, has three configs, each a TFDS dataset with one split per
store split, records in row order (``disable_shuffling``; record ``i`` holds
``index = i``):

* ``images``: one record per unique image: ``image`` ``[P, D_v]`` in the store's dtype
  (float16 stays float16; raw bytes, no up-casting) and ``index``.
* ``captions``: one record per caption: ``index``, ``image_id`` (its image row) and,
  when the store has ``captions.txt``, ``caption`` (UTF-8 text, for the trained BiGRU).
  The dataset metadata (``metadata.json``) also holds, per split, ``caption_to_image``
  and ``caption_lengths`` (and the store's ``meta.json``), so opening a split reads a few
  MB of JSON instead of decoding every record.
* ``caption_features`` (only when the store has ``captions.npy``): one record per
  caption: ``index``, ``caption_features`` ``[L_max, D_t]`` in the store's dtype and
  ``caption_length``.

Text and features are separate datasets so that building a vocabulary from the text
never decodes the (large) caption features, and a text-only store builds no feature set.

Every row is checked finite while it is written, so the reader marks both feature
fields as finite-checked. Build-time inputs go through
:func:`cdds_jax.data.store.read_features` (all of its validation applies).

Reading: :func:`read_arrayrecord` returns a :class:`cdds_jax.data.split.RetrievalSplit` whose
``images`` / ``caption_features`` are lazy :class:`xmodal.arrayrecord.ArrayColumn` s and
``captions`` a lazy :class:`xmodal.arrayrecord.TextColumn` backed by
``tfds.builder_from_directory(...).as_data_source(split)``; ``caption_to_image`` and
``caption_lengths`` are in memory. ``PairSource`` / ``ImageSource`` /
``CaptionSource`` and the driver use it as any other split; pickling stores folder paths, so
spawned grain workers reopen the files. TensorFlow is never imported.

TFDS fixes a dataset's feature spec (shapes, dtypes) when the builder is CONSTRUCTED, so
the builder takes the store root as its ``manual_dir=`` constructor argument; a
``DownloadConfig(manual_dir=...)`` given to ``download_and_prepare`` must name the same
folder. One TFDS ``data_dir`` holds one store (F30K and COCO need two folders): building
a different store into a folder that already has one raises ``FileExistsError`` unless
``overwrite=True``.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from cdds_jax.data.split import (
    RetrievalSplit,
    check_caption_lengths,
    check_caption_to_image,
)
from cdds_jax.data.store import read_features
from xmodal import arrayrecord as ar
from xmodal import files

__all__ = [
    "BUILDER_NAME",
    "CONFIGS",
    "VERSION",
    "CddsFeatureStore",
    "build_arrayrecord",
    "dataset_dir",
    "read_arrayrecord",
    "store_splits",
]

#: Version of the record layout (the dataset folder name).
VERSION = "1.0.0"
#: The configs, in build order.
CONFIGS: tuple[str, ...] = ("images", "captions", "caption_features")

_BYTES = tfds.features.Encoding.BYTES  # raw bytes: exact, no up-casting to float32
_SPLIT_RE = re.compile(r"[A-Za-z0-9_]+")
_SEPARATE = "convert the splits into separate folders (splits=...)"


def store_splits(store: str | os.PathLike) -> list[str]:
    """The split folders (holding ``meta.json``) of a feature store, sorted."""
    root = pathlib.Path(store)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} [feature store root]: folder not found")
    names = sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())
    if not names:
        raise FileNotFoundError(
            f"{root} [feature store root]: no split folders with meta.json; it holds: "
            f"{files.listing(root)}"
        )
    return names


def _source_identity(
    store: pathlib.Path, splits: dict[str, RetrievalSplit]
) -> dict[str, Any]:
    """What a conversion is made from (recorded; compared on re-conversion)."""
    return {
        "format": "features",
        "store": str(store.resolve()),
        "splits": {
            name: {
                "meta": s.meta,
                "file_bytes": {
                    k: os.path.getsize(v)
                    for k, v in sorted(s.files.items())
                    if os.path.isfile(v)
                },
            }
            for name, s in splits.items()
        },
    }


def _check_consistent(store: pathlib.Path, splits: dict[str, RetrievalSplit]) -> None:
    """Every split must fit one feature spec per config (shapes, dtypes, text kinds)."""
    checks = {
        "images.npy shape/dtype": lambda s: (s.images.shape[1:], s.images.dtype.str),
        "captions.txt present": lambda s: s.captions is not None,
        "captions.npy shape/dtype": lambda s: (
            None
            if s.caption_features is None
            else (s.caption_features.shape[1:], s.caption_features.dtype.str)
        ),
    }
    for key, get in checks.items():
        ar.agreed_value(store, key, {n: get(s) for n, s in splits.items()}, _SEPARATE)


class CddsFeatureStore(ar.RowBuilder):
    """TFDS builder: a ``features`` store -> ArrayRecord datasets (see the module doc).

    Args:
      manual_dir: the feature store root (``root/{split}/images.npy`` ...). Required to
        build; leave it None to read an already prepared dataset through TFDS.
      splits: the store splits to convert (default: every folder with ``meta.json``).
      **kwargs: ``data_dir``, ``config`` (``"images"`` | ``"captions"`` |
        ``"caption_features"``), ``file_format`` ... for ``GeneratorBasedBuilder``.
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        str(VERSION): (
            "Feature store as ArrayRecord: images / captions / caption_features."
        )
    }
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(
            name="images", description="One record per unique image."
        ),
        tfds.core.BuilderConfig(
            name="captions",
            description="One record per caption: image row and text.",
        ),
        tfds.core.BuilderConfig(
            name="caption_features",
            description="One record per caption: token features and length.",
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the root of a cdds_jax 'features' store (root/{split}/images.npy, "
        "caption_to_image.npy, captions.npy + caption_lengths.npy and/or captions.txt, "
        "meta.json) as manual_dir= when constructing the builder."
    )
    INPUT_ARG = "manual_dir"

    def __init__(
        self,
        *,
        manual_dir: str | os.PathLike | None = None,
        splits: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._store = None if manual_dir is None else pathlib.Path(manual_dir)
        self._splits: dict[str, RetrievalSplit] | None = None
        if self._store is not None:
            names = list(splits) if splits is not None else store_splits(self._store)
            if not names:
                raise ValueError("splits: expected at least one split, got []")
            for name in names:
                if not _SPLIT_RE.fullmatch(name):
                    raise ValueError(
                        f"splits: {name!r} is not a valid TFDS split name "
                        "(letters, digits, underscore)"
                    )
            self._splits = {n: read_features(self._store, n) for n in names}
        elif splits is not None:
            raise ValueError("splits: given without manual_dir (nothing to build)")
        super().__init__(
            input_state=dict(
                manual_dir=None if manual_dir is None else os.fspath(manual_dir),
                splits=None if splits is None else list(splits),
            ),
            **kwargs,
        )

    @property
    def input_path(self) -> pathlib.Path | None:
        """The feature store root this builder converts (None: read-only)."""
        return self._store

    @property
    def manual_dir(self) -> pathlib.Path | None:
        """The feature store root (TFDS's ``DownloadConfig.manual_dir`` must match)."""
        return self._store

    def split_names(self) -> list[str]:
        assert self._splits is not None
        return list(self._splits)

    def source_identity(self) -> dict[str, Any]:
        assert self._splits is not None and self._store is not None
        return _source_identity(self._store, self._splits)

    # ----------------------------------------------------------------- feature spec

    def _common(self, key: str, get: Any) -> Any:
        """``get(split)`` for every split; all splits must agree (one feature spec)."""
        assert self._splits is not None
        values = {name: get(s) for name, s in self._splits.items()}
        return ar.agreed_value(self._store, key, values, _SEPARATE)

    def feature_spec(self) -> tfds.features.FeaturesDict:
        name = self.builder_config.name
        index = {"index": tfds.features.Scalar(dtype=np.int64)}
        if name == "images":
            shape = self._common("images.shape", lambda s: s.images.shape[1:])
            dtype = self._common("images.dtype", lambda s: s.images.dtype.name)
            return tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=shape, dtype=np.dtype(dtype), encoding=_BYTES
                    ),
                    **index,
                }
            )
        has_text = self._common("captions.txt", lambda s: s.captions is not None)
        has_feat = self._common(
            "captions.npy", lambda s: s.caption_features is not None
        )
        if name == "captions":
            feats = {"image_id": tfds.features.Scalar(dtype=np.int64), **index}
            if has_text:
                feats["caption"] = tfds.features.Text()
            return tfds.features.FeaturesDict(feats)
        if not has_feat:
            raise ValueError(
                f"{self._store} [caption_features]: config 'caption_features' needs "
                "captions.npy + caption_lengths.npy in the store; it has caption text only"
            )
        shape = self._common(
            "captions.npy shape", lambda s: s.caption_features.shape[1:]
        )
        dtype = self._common(
            "captions.npy dtype", lambda s: s.caption_features.dtype.name
        )
        return tfds.features.FeaturesDict(
            {
                "caption_features": tfds.features.Tensor(
                    shape=shape, dtype=np.dtype(dtype), encoding=_BYTES
                ),
                "caption_length": tfds.features.Scalar(dtype=np.int32),
                **index,
            }
        )

    def description(self) -> str:
        assert self._splits is not None
        first = next(iter(self._splits.values()))
        counts = {
            n: f"{s.num_images} images / {s.num_captions} captions"
            for n, s in self._splits.items()
        }
        return (
            f"cdds_jax feature store {self._store} (dataset "
            f"{first.meta.get('dataset', '?')!r}), config {self.builder_config.name!r}: "
            f"{self.builder_config.description} Splits: {counts}. Records are in row "
            "order; record i holds index = i."
        )

    # ----------------------------------------------------------------- generation

    def split_metadata(self) -> dict[str, Any]:
        assert self._splits is not None
        entries = {}
        for name, s in self._splits.items():
            entry: dict[str, Any] = {
                "num_images": s.num_images,
                "num_captions": s.num_captions,
                "store_meta": s.meta,
            }
            if self.builder_config.name == "captions":
                entry["caption_to_image"] = s.caption_to_image.tolist()
                entry["caption_lengths"] = (
                    None if s.caption_lengths is None else s.caption_lengths.tolist()
                )
            entries[name] = entry
        return {"splits": entries}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        assert self._splits is not None
        s = self._splits[split]
        config = self.builder_config.name
        if config == "images":
            for i, row in _rows_checked(s.images, s.source_file("images"), "images"):
                yield i, {"image": row, "index": i}
        elif config == "captions":
            c2i = s.caption_to_image
            for i in range(s.num_captions):
                rec: dict[str, Any] = {"image_id": int(c2i[i]), "index": i}
                if s.captions is not None:
                    rec["caption"] = s.captions[i]
                yield i, rec
        else:
            lengths = s.caption_lengths
            for i, row in _rows_checked(
                s.caption_features,
                s.source_file("caption_features"),
                "caption_features",
            ):
                yield (
                    i,
                    {
                        "caption_features": row,
                        "caption_length": int(lengths[i]),
                        "index": i,
                    },
                )


def _rows_checked(
    arr: np.ndarray, path: str, field: str
) -> Iterator[tuple[int, np.ndarray]]:
    """Rows of a memory-mapped ``[N, ...]`` array, read in blocks, each checked finite."""
    for start, block in files.finite_blocks(arr, path, field):
        block = np.ascontiguousarray(block)
        for j in range(block.shape[0]):
            yield start + j, block[j]


# ---------------------------------------------------------------------------------------
# Build and read
# ---------------------------------------------------------------------------------------

#: The TFDS name of :class:`CddsFeatureStore` (the folder under ``data_dir``).
BUILDER_NAME: str = CddsFeatureStore.name  # "cdds_feature_store"


def dataset_dir(data_dir: str | os.PathLike, config: str) -> pathlib.Path:
    """``data_dir/cdds_feature_store/{config}/{VERSION}``."""
    if config not in CONFIGS:
        raise ValueError(f"config: expected one of {list(CONFIGS)}, got {config!r}")
    return ar.builder_dir(data_dir, BUILDER_NAME, config, VERSION)


def build_arrayrecord(
    store: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    writer_options: str = ar.WRITER_OPTIONS,
) -> dict[str, pathlib.Path]:
    """Converts a ``features`` store into ArrayRecord datasets under ``data_dir``.

    Args:
      store: the feature store root.
      data_dir: the TFDS data folder to write (``data.root`` for ``format=arrayrecord``).
      splits: store splits to convert (default: all).
      overwrite: replace datasets already in ``data_dir``.
      writer_options: ArrayRecord writer options (default uncompressed; see
        :data:`xmodal.arrayrecord.WRITER_OPTIONS`).

    Returns:
      config -> the dataset folder written (``caption_features`` only when the store
      has caption features).

    Raises:
      FileExistsError: ``data_dir`` already holds a conversion of another store (or of
        other splits) and ``overwrite`` is False. An identical earlier conversion is
        reused.
    """
    store = pathlib.Path(store)
    names = list(splits) if splits is not None else store_splits(store)
    opened = {n: read_features(store, n) for n in names}
    _check_consistent(store, opened)  # before anything is written
    source = _source_identity(store, opened)
    has_feat = {n: s.caption_features is not None for n, s in opened.items()}
    configs = [c for c in CONFIGS if c != "caption_features" or any(has_feat.values())]
    out = {}
    for config in configs:
        path = dataset_dir(data_dir, config)

        def make(config: str = config) -> CddsFeatureStore:
            return CddsFeatureStore(
                manual_dir=store,
                splits=names,
                data_dir=data_dir,
                config=config,
                file_format="array_record",
            )

        out[config] = ar.prepare(
            make,
            path,
            source=source,
            overwrite=overwrite,
            writer_options=writer_options,
        )
    return out


def _table(
    path: pathlib.Path, builder: Any, split: str, expected: int, what: str
) -> ar.RecordTable:
    """``split`` of a prepared dataset, which must hold ``expected`` records."""
    if split not in builder.info.splits:
        raise FileNotFoundError(
            f"{path} [split]: split {split!r} not found; it has "
            f"{sorted(builder.info.splits)}"
        )
    got = builder.info.splits[split].num_examples
    if got != expected:
        raise ValueError(
            f"{path} [{what}]: expected {expected} records in split {split!r} "
            f"(captions metadata), got {got}"
        )
    return ar.RecordTable(path, split, got)


def _array_column(
    data_dir: pathlib.Path, name: str, feature: str, split: str, expected: int
) -> tuple[ar.ArrayColumn, pathlib.Path]:
    """The ``feature`` column of ``split`` in the prepared dataset ``name`` (which must
    hold ``expected`` records), and the dataset's folder."""
    folder = dataset_dir(data_dir, name)
    builder = ar.open_builder(folder, what=name)
    spec = builder.info.features[feature]
    table = _table(folder, builder, split, expected, name)
    return ar.ArrayColumn(table, feature, spec.shape, spec.np_dtype), folder


def read_arrayrecord(data_dir: str | os.PathLike, split: str) -> RetrievalSplit:
    """Opens ``split`` of a converted store (``data.format = "arrayrecord"``).

    Args:
      data_dir: the TFDS data folder given to :func:`build_arrayrecord`.
      split: the split name (as in the store).

    Returns:
      A :class:`cdds_jax.data.RetrievalSplit` with ``format = "arrayrecord"``:
      ``images`` [N_img, P, D_v] and ``caption_features`` [N_cap, L_max, D_t] lazy
      array columns (store dtype), ``captions`` a lazy text column (or None),
      ``caption_to_image`` int64 and ``caption_lengths`` int32 in memory, ``meta`` the
      store's ``meta.json`` plus an ``"arrayrecord"`` entry (folders, layout version).

    Raises:
      FileNotFoundError: no converted store or no such split (the message lists what is
        there).
      ValueError: the datasets disagree with each other (record counts, index).
    """
    data_dir = pathlib.Path(data_dir)
    caps_dir = dataset_dir(data_dir, "captions")
    caps = ar.open_builder(caps_dir, what="captions")
    md = caps.info.metadata or {}
    entries = md.get("splits") or {}
    if split not in entries:
        raise FileNotFoundError(
            f"{caps_dir} [split]: split {split!r} not converted; converted splits: "
            f"{sorted(entries)}"
        )
    entry = entries[split]
    n_img, n_cap = int(entry["num_images"]), int(entry["num_captions"])
    if n_img == 0 or n_cap == 0:
        raise ValueError(
            f"{caps_dir} [{split}]: expected at least 1 image and 1 caption (empty "
            f"split), got {n_img} images and {n_cap} captions"
        )
    where: dict[str, str] = {}
    images, img_dir = _array_column(data_dir, "images", "image", split, n_img)
    where["images"] = f"{img_dir} [{split}]"

    cap_table = _table(caps_dir, caps, split, n_cap, "captions")
    c2i = np.asarray(entry["caption_to_image"], dtype=np.int64)
    c2i = check_caption_to_image(c2i, f"{caps_dir} [metadata]", n_img, n_cap)
    where["caption_to_image"] = f"{caps_dir} [{split}, metadata caption_to_image]"
    captions = None
    if "caption" in caps.info.features:
        captions = ar.TextColumn(cap_table, "caption")
        where["captions"] = f"{caps_dir} [{split}]"

    caption_features = caption_lengths = None
    if entry.get("caption_lengths") is not None:
        caption_features, feat_dir = _array_column(
            data_dir, "caption_features", "caption_features", split, n_cap
        )
        caption_lengths = check_caption_lengths(
            np.asarray(entry["caption_lengths"], dtype=np.int64),
            f"{caps_dir} [metadata]",
            n_cap,
            caption_features.shape[1],
        )
        where["caption_features"] = f"{feat_dir} [{split}]"
        where["caption_lengths"] = f"{caps_dir} [{split}, metadata caption_lengths]"

    meta = dict(entry.get("store_meta") or {})
    meta["arrayrecord"] = {
        "data_dir": str(data_dir),
        "layout": md.get("layout"),
        "source_store": (md.get("source") or {}).get("store"),
        "datasets": {k: v.split(" [")[0] for k, v in where.items()},
    }
    return RetrievalSplit(
        root=data_dir,
        split=split,
        images=images,
        caption_to_image=c2i,
        caption_features=caption_features,
        caption_lengths=caption_lengths,
        captions=captions,
        meta=meta,
        files=where,
        format="arrayrecord",
        # Every row was checked finite when the dataset was written.
        finite_checked=frozenset(
            {"images"}
            | ({"caption_features"} if caption_features is not None else set())
        ),
        memmapped=frozenset(),
    )
