"""Lazy, picklable random access to TFDS ArrayRecord datasets, without TensorFlow.

The method packages turn their inputs (``cdds_jax``'s feature store, ``decalign_jax``'s
MMSA pickles) into TFDS datasets written as ArrayRecord files
(``file_format="array_record"``) by the builders in ``*/tfds_builder.py``. This module
holds what both need to read them back and to build them:

* :class:`RecordTable` - one split of one prepared dataset, opened with
  ``tfds.builder_from_directory(...).as_data_source(split)`` on first use (never
  ``tfds.load``, which needs TensorFlow). Every record carries an ``index`` field equal
  to its row; reads check it.
* :class:`ArrayColumn` / :class:`TextColumn` - one field of a table as an array-like
  ``[N, *item_shape]`` (``__getitem__(int)``, slices, ``shape``, ``dtype``, ``len``) or
  a sequence of ``str``. Readers put them where in-memory or memory-mapped arrays used to
  be, so the existing grain sources work unchanged.
* :func:`prepare` - the shared build step: refuse to mix two inputs in one TFDS
  ``data_dir``, reuse an identical earlier conversion, overwrite on request, and write
  the ArrayRecord files with :data:`WRITER_OPTIONS` (uncompressed by default).

Pickling a table or column stores the dataset folder and split, never records: a spawned
grain worker reopens the files on its first read (one data source per process, shared by
every column of the same split). Each thread keeps the last record it decoded, so reading
several fields of one row (``text``, ``audio``, ``vision`` of a DecAlign sample) decodes
the record once.

TensorFlow: nothing here imports it. Note that ``tfds.features.Tensor.dtype`` does (it is
a ``tf.DType``); use ``np_dtype``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import os
import pathlib
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ITER_CHUNK",
    "WRITER_OPTIONS",
    "ArrayColumn",
    "RecordTable",
    "TextColumn",
    "builder_dir",
    "jsonable",
    "open_builder",
    "prepare",
]

logger = logging.getLogger(__name__)

#: Records decoded per batched read when iterating or slicing a column.
ITER_CHUNK = 256

#: ArrayRecord writer options for :func:`prepare`: one record per chunk (random access,
#: as TFDS writes) and NO compression. TFDS's default compression saved ~8% on float16
#: features but made reading a 36 x 2048 float16 record ~5x slower (430 us vs 85 us,
#: decompression-bound); features are read every epoch, so speed wins. Readers handle
#: any options (they are stored in the file).
WRITER_OPTIONS = "group_size:1,uncompressed"

# One opened data source per (process, dataset folder, split, version of the folder):
# spawned or forked workers never reuse a parent's file handles, columns unpickled
# separately share one source, and a dataset rebuilt in place is opened afresh.
_SOURCES: dict[tuple[Any, ...], Any] = {}
_SOURCES_LOCK = threading.Lock()


def builder_dir(
    data_dir: str | os.PathLike, name: str, config: str, version: str
) -> pathlib.Path:
    """``data_dir/name/config/version``: where TFDS keeps one prepared dataset."""
    return pathlib.Path(data_dir) / name / config / str(version)


def _listing(folder: pathlib.Path) -> str:
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return "(does not exist)"
    return ", ".join(names[:20]) or "(empty)"


def open_builder(path: str | os.PathLike, *, what: str = "dataset") -> Any:
    """A read-only TFDS builder for a prepared ArrayRecord dataset folder.

    Args:
      path: ``data_dir/name/config/version`` (holds ``dataset_info.json``).
      what: a name for error messages.

    Raises:
      FileNotFoundError: no prepared dataset there (the message lists what is there).
      ValueError: the dataset was written in another file format (e.g. tfrecord, which
        needs TensorFlow to read).
    """
    import tensorflow_datasets as tfds

    path = pathlib.Path(path)
    if not (path / "dataset_info.json").is_file():
        parent = path.parent
        raise FileNotFoundError(
            f"{path} [{what}]: no prepared TFDS dataset (dataset_info.json) found; "
            f"{parent} holds: {_listing(parent)} (convert with "
            "scripts/convert_to_arrayrecord.py)"
        )
    builder = tfds.builder_from_directory(os.fspath(path))
    fmt = builder.info.file_format
    fmt_name = getattr(fmt, "value", fmt)
    if fmt_name != "array_record":
        raise ValueError(
            f"{path} [{what}]: expected file_format 'array_record', got {fmt_name!r} "
            "(tfrecord files need TensorFlow; rebuild with file_format='array_record')"
        )
    return builder


def _open_source(path: str, split: str) -> Any:
    try:
        st = os.stat(os.path.join(path, "dataset_info.json"))
        stamp = (st.st_ino, st.st_mtime_ns)
    except OSError:
        stamp = None  # open_builder raises the clear error
    key = (os.getpid(), path, split, stamp)
    with _SOURCES_LOCK:
        source = _SOURCES.get(key)
        if source is None:
            builder = open_builder(path)
            if split not in builder.info.splits:
                raise FileNotFoundError(
                    f"{path} [split]: split {split!r} not found; the dataset has "
                    f"{sorted(builder.info.splits)}"
                )
            source = builder.as_data_source(split=split)
            _SOURCES[key] = source
        return source


class RecordTable:
    """One split of a prepared ArrayRecord dataset, opened lazily.

    Args:
      path: the dataset folder ``data_dir/name/config/version``.
      split: the split name.
      num_records: the expected record count; ``None`` opens the split now to count.

    Records are dicts of NumPy arrays / Python scalars / ``bytes`` as TFDS decodes them;
    each holds ``index`` = its row, checked on every read.
    """

    def __init__(
        self, path: str | os.PathLike, split: str, num_records: int | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.split = str(split)
        if num_records is None:
            num_records = len(_open_source(self.path, self.split))
        self.num_records = int(num_records)
        self._local = threading.local()
        self._src: Any = None  # this process's data source, opened on first read
        self._pid = -1

    def __reduce__(self):
        # Paths only: the unpickled table reopens the files on its first read.
        return (RecordTable, (self.path, self.split, self.num_records))

    def __len__(self) -> int:
        return self.num_records

    def __repr__(self) -> str:
        return f"RecordTable({self.path!r}, split={self.split!r}, n={self.num_records})"

    def _source(self) -> Any:
        source = self._src
        if source is None or self._pid != os.getpid():
            source = _open_source(self.path, self.split)
            if len(source) != self.num_records:
                raise ValueError(
                    f"{self.path} [{self.split}]: expected {self.num_records} records "
                    f"(as when the split was opened), got {len(source)}: the dataset "
                    "changed"
                )
            self._src, self._pid = source, os.getpid()
        return source

    def _check(self, i: int, record: Mapping[str, Any]) -> None:
        got = record.get("index")
        if got is None or int(got) != i:
            raise ValueError(
                f"{self.path} [{self.split}, index]: expected record {i} to hold "
                f"index {i}, got {got!r} (records out of order or a corrupt file)"
            )

    def index(self, i: Any) -> int:
        """``i`` as a row in ``[0, N)`` (negative counts from the end)."""
        try:
            i = operator.index(i)
        except TypeError:
            raise IndexError(
                f"expected an integer row, a slice or a 1-D integer array, got "
                f"{type(i).__name__} {i!r}"
            ) from None
        n = self.num_records
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} records ({self.path})")
        return i

    def record(self, i: Any) -> dict[str, Any]:
        """Record ``i`` (the thread's last decoded record is reused)."""
        i = self.index(i)
        local = self._local
        if getattr(local, "row", None) == i:
            return local.record
        record = self._source()[i]
        self._check(i, record)
        local.row, local.record = i, record
        return record

    def records(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Records ``rows`` in one batched read."""
        rows = [self.index(i) for i in rows]
        if not rows:
            return []
        out = self._source().__getitems__(rows)
        for i, record in zip(rows, out, strict=True):
            self._check(i, record)
        return list(out)

    def iter_records(self, chunk: int = ITER_CHUNK) -> Iterator[dict[str, Any]]:
        """Every record in row order, read ``chunk`` at a time."""
        for start in range(0, self.num_records, chunk):
            yield from self.records(range(start, min(start + chunk, self.num_records)))


def _rows(key: Any, n: int) -> list[int] | None:
    """The rows a slice / integer sequence selects, or None for a single index."""
    if isinstance(key, slice):
        return list(range(*key.indices(n)))
    if isinstance(key, (list, tuple, np.ndarray)) and not isinstance(key, str):
        arr = np.asarray(key)
        if arr.dtype == np.bool_:
            if arr.shape != (n,):
                raise IndexError(f"boolean index of shape {arr.shape}, expected ({n},)")
            return np.flatnonzero(arr).tolist()
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise IndexError(
                f"expected an int, a slice or a 1-D integer array, got {arr.dtype} "
                f"array of shape {arr.shape}"
            )
        return [int(i) for i in arr]
    return None


class ArrayColumn:
    """One array field of a :class:`RecordTable`, as a lazy ``[N, *item_shape]`` array.

    ``col[i]`` is a read-only ``item_shape`` array of ``dtype`` (decoded from record
    ``i``); ``col[a:b]`` / ``col[[i, j]]`` stack rows; ``np.asarray(col)`` reads every
    row (small datasets and tests only). ``shape``, ``dtype``, ``ndim``, ``nbytes`` and
    ``len`` come from the dataset's feature spec without reading records.

    Args:
      table: the records.
      field: the feature name in each record.
      item_shape: the static shape of one row.
      dtype: the row dtype (as stored: float16 stays float16).
    """

    def __init__(
        self,
        table: RecordTable,
        field: str,
        item_shape: Sequence[int],
        dtype: Any,
    ) -> None:
        self.table = table
        self.field = str(field)
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dtype = np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, *item_shape)``."""
        return (len(self.table), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (
            f"ArrayColumn({self.field!r}, shape={self.shape}, dtype={self.dtype}, "
            f"table={self.table!r})"
        )

    def _row(self, record: Mapping[str, Any], i: int) -> np.ndarray:
        try:
            value = record[self.field]
        except KeyError:
            raise KeyError(
                f"{self.table.path} [{self.table.split}]: record {i} has no field "
                f"{self.field!r} (fields: {sorted(record)})"
            ) from None
        arr = np.asarray(value)
        if arr.shape != self.item_shape or arr.dtype != self.dtype:
            raise ValueError(
                f"{self.table.path} [{self.table.split}, {self.field}]: expected row {i} "
                f"of shape {self.item_shape} dtype {self.dtype}, got shape {arr.shape} "
                f"dtype {arr.dtype}"
            )
        return arr

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # col[i, ...] / col[a:b, ...]: rows first
            if not key:
                return self[:]
            head, rest = key[0], key[1:]
            if _rows(head, len(self)) is None:
                return self[head][rest]
            return self[head][(slice(None), *rest)]
        rows = _rows(key, len(self))
        if rows is None:
            i = self.table.index(key)
            return self._row(self.table.record(i), i)
        out = np.empty((len(rows), *self.item_shape), self.dtype)
        for start in range(0, len(rows), ITER_CHUNK):
            part = rows[start : start + ITER_CHUNK]
            for j, record in enumerate(self.table.records(part)):
                out[start + j] = self._row(record, part[j])
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for i, record in enumerate(self.table.iter_records()):
            yield self._row(record, i)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(
                "ArrayColumn: cannot give an array without copying (records are decoded)"
            )
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


class TextColumn:
    """One text field of a :class:`RecordTable` as a lazy sequence of ``str`` (UTF-8).

    ``col[i]`` is a ``str``, ``col[a:b]`` a ``list[str]``; iteration reads records in
    batches of :data:`ITER_CHUNK`.
    """

    def __init__(self, table: RecordTable, field: str) -> None:
        self.table = table
        self.field = str(field)

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return f"TextColumn({self.field!r}, n={len(self)}, table={self.table!r})"

    def _text(self, record: Mapping[str, Any], i: int) -> str:
        value = record[self.field]
        if isinstance(value, (bytes, np.bytes_)):
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{self.table.path} [{self.table.split}, {self.field}]: row {i} is "
                    f"not UTF-8 ({e})"
                ) from None
        return str(value)

    def __getitem__(self, key: Any) -> Any:
        rows = _rows(key, len(self))
        if rows is None:
            i = self.table.index(key)
            return self._text(self.table.record(i), i)
        out: list[str] = []
        for start in range(0, len(rows), ITER_CHUNK):
            part = rows[start : start + ITER_CHUNK]
            out += [
                self._text(r, i)
                for r, i in zip(self.table.records(part), part, strict=True)
            ]
        return out

    def __iter__(self) -> Iterator[str]:
        for i, record in enumerate(self.table.iter_records()):
            yield self._text(record, i)

    def tolist(self) -> list[str]:
        """Every row, in order."""
        return list(self)


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars/arrays, tuples and paths turned into JSON types.

    Mapping keys become strings; non-finite floats become ``None`` (JSON has no NaN).
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple, set, frozenset)):
        items = (
            sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        )
        return [jsonable(v) for v in items]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(jsonable(a), sort_keys=True) == json.dumps(
        jsonable(b), sort_keys=True
    )


def _brief(source: Mapping[str, Any]) -> str:
    """A one-line summary of a source identity (nested mappings by their keys)."""
    parts = [
        f"{k}={sorted(v) if isinstance(v, Mapping) else v!r}"
        for k, v in sorted(source.items())
    ]
    return "{" + ", ".join(parts) + "}"


@contextlib.contextmanager
def _writer_options(options: str) -> Iterator[None]:
    """Makes TFDS write ArrayRecord files with ``options`` (restored on exit).

    TFDS hard-codes ``"group_size:1"`` in ``ArrayRecordFileAdapter.write_examples``;
    this swaps that one classmethod for the duration of a build.
    """
    from array_record.python import array_record_module
    from tensorflow_datasets.core import file_adapters

    adapter = file_adapters.ArrayRecordFileAdapter
    original = adapter.__dict__["write_examples"]

    def write_examples(cls, path, iterator):
        writer = array_record_module.ArrayRecordWriter(os.fspath(path), options)
        try:
            for _, serialized in iterator:
                writer.write(serialized)
        finally:
            writer.close()
        return None

    adapter.write_examples = classmethod(write_examples)
    try:
        yield
    finally:
        adapter.write_examples = original


def prepare(
    make_builder: Any,
    path: str | os.PathLike,
    *,
    source: Mapping[str, Any],
    overwrite: bool = False,
    writer_options: str = WRITER_OPTIONS,
) -> pathlib.Path:
    """Builds one TFDS dataset as ArrayRecord files, or reuses an identical one.

    Args:
      make_builder: ``() -> GeneratorBasedBuilder``; called only when building (the
        builders read their input when constructed).
      path: the dataset folder the builder writes (``data_dir/name/config/version``).
      source: what the dataset is made from (input path, settings), as recorded in its
        metadata under ``"source"`` (the builder records it).
      overwrite: delete an existing dataset at ``path`` first.
      writer_options: ArrayRecord writer options (recorded in the metadata under
        ``"writer_options"``), e.g. ``"group_size:1,zstd:3"`` to trade read speed for
        disk.

    Returns:
      ``path``.

    Raises:
      FileExistsError: ``path`` holds a dataset made from a different ``source`` (or
        with other ``writer_options``) and ``overwrite`` is False (one TFDS
        ``data_dir`` holds one input per builder config).
    """
    path = pathlib.Path(path)
    wanted = {"source": dict(source), "writer_options": writer_options}
    if (path / "dataset_info.json").is_file():
        if overwrite:
            logger.info("Deleting %s (overwrite)", path)
            shutil.rmtree(path)
        else:
            md = open_builder(path).info.metadata or {}
            old = {
                "source": md.get("source") or {},
                "writer_options": md.get("writer_options"),
            }
            if _same(old, wanted):
                logger.info("Reusing %s: already built from the same input", path)
                return path
            differ = sorted(
                k
                for k in set(old["source"]) | set(source)
                if not _same(old["source"].get(k), source.get(k))
            )
            if old["writer_options"] != writer_options:
                differ.append("writer_options")
            raise FileExistsError(
                f"{path}: already holds a dataset built from {_brief(old['source'])}; "
                f"the new input {_brief(source)} differs in {differ}; pass "
                "overwrite=True (--overwrite) or another output folder"
            )
    import tensorflow_datasets as tfds

    builder = make_builder()
    if pathlib.Path(os.fspath(builder.data_dir)) != path:
        raise AssertionError(f"builder writes {builder.data_dir}, expected {path}")
    builder.info.metadata["writer_options"] = writer_options
    # Nothing is downloaded; keep TFDS's empty downloads/ folder out of data_dir.
    with (
        tempfile.TemporaryDirectory(prefix="tfds-downloads-") as tmp,
        _writer_options(writer_options),
    ):
        builder.download_and_prepare(
            file_format="array_record",
            download_dir=tmp,
            download_config=tfds.download.DownloadConfig(
                manual_dir=getattr(builder, "manual_dir", None)
            ),
        )
    return path
