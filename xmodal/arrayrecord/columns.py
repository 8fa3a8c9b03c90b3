"""Lazy, picklable random access to TFDS ArrayRecord datasets, without TensorFlow.

* :class:`RecordTable` - one split of one prepared dataset, opened with
  ``tfds.builder_from_directory(...).as_data_source(split)`` on first use (never
  ``tfds.load``, which needs TensorFlow). Every record carries an ``index`` field equal
  to its row; reads check it.
* :class:`ArrayColumn` / :class:`TextColumn` - one field of a table as an array-like
  ``[N, *item_shape]`` (``__getitem__(int)``, slices, ``shape``, ``dtype``, ``len``) or
  a sequence of ``str``. Readers put them where in-memory or memory-mapped arrays used to
  be, so the grain sources work unchanged.

Pickling a table or column stores the dataset folder and split, never records: a spawned
grain worker reopens the files on its first read (one data source per process, shared by
every column of the same split). Each thread keeps the last record it decoded, so reading
several fields of one row (``text``, ``audio``, ``vision`` of a DecAlign sample) decodes
the record once.

TensorFlow: nothing here imports it. Note that ``tfds.features.Tensor.dtype`` does (it is
a ``tf.DType``); use ``np_dtype``.
"""

from __future__ import annotations

import operator
import os
import pathlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from xmodal import files

__all__ = [
    "ITER_CHUNK",
    "ArrayColumn",
    "RecordTable",
    "TextColumn",
    "builder_dir",
    "open_builder",
]

#: Records decoded per batched read when iterating or slicing a column.
ITER_CHUNK = 256

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
            f"{parent} holds: {files.listing(parent)} (convert with "
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
