"""File helpers every reader and writer of the project shares.

* Errors that help: :func:`field_error` formats the one-line message every data reader
  raises (``file [field]: expected X, got Y``); :func:`listing` says what IS in a folder
  when something is missing; :func:`require_file` raises the missing-file error;
  :func:`read_json_object` reads a JSON object file with those errors.
* Atomic writes: :func:`atomic_write_bytes` / :func:`atomic_write_text` /
  :func:`atomic_write_pickle` write beside the target and ``os.replace`` it into place,
  so a reader (another process of a multi-host job, a rerun after a kill) never sees a
  half-written file.
* Value scans: :func:`scan_values` counts NaN/Inf values and all-zero rows of an
  ``[N, ...]`` array in blocks of rows (bounded memory, memory maps stay cheap);
  :func:`check_finite` and :func:`finite_blocks` raise on the first row holding NaN/Inf,
  naming the file, field and row. All-zero modality features are reported with
  :class:`ZeroFeaturesWarning`.
* :func:`cache_dir`: where ``:demo`` configs write their synthetic data.
* :func:`jsonable`: NumPy values, tuples and paths as JSON types (dataset metadata,
  cache keys).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "SCAN_BLOCK_BYTES",
    "ValueScan",
    "ZeroFeaturesWarning",
    "atomic_write_bytes",
    "atomic_write_pickle",
    "atomic_write_text",
    "cache_dir",
    "check_finite",
    "field_error",
    "finite_blocks",
    "jsonable",
    "listing",
    "read_json_object",
    "require_file",
    "scan_values",
    "sha256_file",
]

#: Rows are scanned in blocks of about this many bytes (bounded memory for a scan of a
#: memory-mapped array of any size).
SCAN_BLOCK_BYTES: int = 32 * 2**20

#: Names shown by :func:`listing` before it says how many more there are.
_LISTING_LIMIT = 30


class ZeroFeaturesWarning(UserWarning):
    """A modality's features are all zero: placeholders, not features."""


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def field_error(path: os.PathLike | str, field: str, expected: str, actual: str) -> str:
    """The one-line error message of a data reader: ``path [field]: expected E, got A``."""
    return f"{path} [{field}]: expected {expected}, got {actual}"


def listing(folder: os.PathLike | str, *, pattern: str = "*") -> str:
    """What is in ``folder`` (names matching ``pattern``; sub-folders end in ``/``).

    For error messages: at most 30 names, then how many more; ``(empty)``,
    ``(does not exist)`` or ``(unreadable)`` otherwise.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return "(does not exist)" if not folder.exists() else "(not a folder)"
    try:
        names = sorted(
            p.name + ("/" if p.is_dir() else "") for p in folder.glob(pattern)
        )
    except OSError:
        return "(unreadable)"
    if not names:
        return "(empty)"
    shown = ", ".join(names[:_LISTING_LIMIT])
    more = len(names) - _LISTING_LIMIT
    return shown + (f" ... and {more} more" if more > 0 else "")


def require_file(path: os.PathLike | str, field: str) -> pathlib.Path:
    """``path`` as a :class:`pathlib.Path`; raises ``FileNotFoundError`` if no file is there.

    The one-line message names the path and ``field`` and lists what the folder holds
    (or what the path holds, when it is a folder).
    """
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise FileNotFoundError(
            f"{path} [{field}]: expected a file, got a folder holding: {listing(path)}"
        )
    parent = path.parent
    where = (
        f"{parent} holds: {listing(parent)}"
        if parent.is_dir()
        else f"folder {parent} does not exist"
    )
    raise FileNotFoundError(f"{path} [{field}]: file not found; {where}")


def read_json_object(
    path: os.PathLike | str, field: str, *, expected: str = "a JSON object"
) -> dict[str, Any]:
    """The JSON object in the file ``path`` (``field`` names it in errors).

    Raises:
      FileNotFoundError: no file there (:func:`require_file`).
      ValueError: one line (:func:`field_error`): not UTF-8 JSON, or JSON that is not
        an object (``expected`` says what it should be).
    """
    path = require_file(path, field)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(field_error(path, field, "valid UTF-8 JSON", str(e))) from None
    if not isinstance(value, dict):
        raise ValueError(field_error(path, field, expected, type(value).__name__))
    return value


def sha256_file(path: os.PathLike | str, *, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file (hex), streamed in ``chunk_bytes`` pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> pathlib.Path:
    """Writes ``data`` to ``path`` atomically (parent folders created).

    The bytes go to a hidden file beside ``path`` that is then renamed over it
    (``os.replace``), so readers see the old file or the new one, never a part. The
    temporary file is removed if writing fails; an ``OSError`` that names no file
    (a full disk fails ``write``) is raised again naming ``path``.
    """
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(
    path: os.PathLike | str, text: str, *, encoding: str = "utf-8"
) -> pathlib.Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_pickle(
    path: os.PathLike | str, obj: Any, *, protocol: int = 4
) -> pathlib.Path:
    """Pickles ``obj`` to ``path`` atomically (streamed; see :func:`atomic_write_bytes`)."""
    return _atomic(path, lambda f: pickle.dump(obj, f, protocol=protocol))


def _atomic(path: os.PathLike | str, write: Any) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name per writer ("x": never shared), created with the umask's mode.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write() names no file: name the target
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------
# Value scans
# ---------------------------------------------------------------------------------------


class ValueScan(NamedTuple):
    """What :func:`scan_values` found in an ``[N, ...]`` array.

    Attributes:
      rows: N.
      nonfinite: the number of NaN/Inf values.
      first_nonfinite_row: the first row holding one, -1 when every value is finite.
      zero_rows: rows whose values are all exactly zero.
    """

    rows: int
    nonfinite: int
    first_nonfinite_row: int
    zero_rows: int

    @property
    def all_zero(self) -> bool:
        """Every value is zero (and there is at least one row)."""
        return self.rows > 0 and self.zero_rows == self.rows


def _blocks(arr: Any, block_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` of ``arr`` [N, ...], about ``block_bytes`` at a time."""
    n = int(arr.shape[0])
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    step = max(1, block_bytes // row_bytes)
    for start in range(0, n, step):
        yield start, np.asarray(arr[start : start + step])


def scan_values(arr: Any, *, block_bytes: int = SCAN_BLOCK_BYTES) -> ValueScan:
    """Counts NaN/Inf values and all-zero rows of ``arr`` [N, ...], block by block.

    Args:
      arr: a NumPy array, memory map or lazy array-like (``shape``, ``dtype``, slices)
        with a numeric dtype.
      block_bytes: rows read at a time.
    """
    nonfinite, first, zero_rows = 0, -1, 0
    for start, block in _blocks(arr, block_bytes):
        rows = block.reshape(block.shape[0], -1)
        bad = ~np.isfinite(rows)
        if bad.any():
            nonfinite += int(bad.sum())
            if first < 0:
                first = start + int(np.argmax(bad.any(axis=1)))
        zero_rows += int((~rows.any(axis=1)).sum())
    return ValueScan(int(arr.shape[0]), nonfinite, first, zero_rows)


def finite_blocks(
    arr: Any,
    path: os.PathLike | str,
    field: str,
    *,
    block_bytes: int = SCAN_BLOCK_BYTES,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(first row, rows)`` blocks of ``arr`` [N, ...], each checked finite.

    Raises:
      ValueError: before yielding a block with NaN/Inf, naming ``path``, ``field`` and
        the first bad row.
    """
    n = int(arr.shape[0])
    for start, block in _blocks(arr, block_bytes):
        ok = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        if not ok.all():
            bad = start + int(np.argmin(ok))
            raise ValueError(
                field_error(
                    path, field, "finite values", f"NaN/Inf in row {bad} (of {n})"
                )
            )
        yield start, block


def check_finite(
    arr: Any,
    path: os.PathLike | str,
    field: str,
    *,
    block_bytes: int = SCAN_BLOCK_BYTES,
) -> ValueScan:
    """Raises on the first row of ``arr`` [N, ...] holding NaN/Inf; else its scan.

    Raises:
      ValueError: ``path [field]: expected finite values, got NaN/Inf in row r (of N)``.
    """
    zero_rows = 0
    for _, block in finite_blocks(arr, path, field, block_bytes=block_bytes):
        zero_rows += int((~block.reshape(block.shape[0], -1).any(axis=1)).sum())
    return ValueScan(int(arr.shape[0]), 0, -1, zero_rows)


# ---------------------------------------------------------------------------------------
# Caches and JSON
# ---------------------------------------------------------------------------------------


def cache_dir() -> pathlib.Path:
    """Where ``:demo`` data are generated: ``$XMODAL_CACHE`` or ``~/.cache/xmodal``."""
    return pathlib.Path(os.environ.get("XMODAL_CACHE", "~/.cache/xmodal")).expanduser()


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars/arrays, tuples, sets and paths as JSON types.

    Mapping keys become strings; sets become sorted lists; non-finite floats become
    ``None`` (JSON has no NaN); bytes are decoded as UTF-8; anything else unknown
    becomes its ``repr``.
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
