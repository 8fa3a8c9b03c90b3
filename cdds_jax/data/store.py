"""Image-text retrieval data: readers, a word vocabulary and grain-compatible sources.

Formats (``spec/data.md``, image-text part):

``features`` - our feature store, one folder per split ``root/split/``::

    images.npy            float16/float32 [N_img, P, D_v]   token features per unique image
    captions.npy          float16/float32 [N_cap, L_max, D_t] zero-padded token features
    caption_lengths.npy   int [N_cap], each in [1, L_max]    (only with captions.npy)
    captions.txt          N_cap lines of UTF-8 text           (trained text encoders)
    caption_to_image.npy  int [N_cap], each in [0, N_img)     explicit caption -> image row
    meta.json             JSON object: dataset, split, backbone, dims, counts

  ``captions.npy`` + ``caption_lengths.npy`` and/or ``captions.txt`` must be present.
  Known ``meta.json`` keys are cross-checked against the arrays when present:
  ``num_images``, ``num_captions``, ``num_tokens`` (P), ``image_dim`` (D_v),
  ``max_words`` (L_max) and ``text_dim`` (D_t).

``scan_precomp`` - the SCAN / VSE++ / VSE-infinity layout: ``root/{split}_ims.npy``
  float [N_img, P, D_v] and ``root/{split}_caps.txt``; caption i -> image
  ``i // (N_cap // N_img)`` (identity when the counts are equal; the caption count must
  be an exact multiple of the image count).

``arrayrecord`` - a feature store converted to TFDS ArrayRecord datasets
  (:mod:`cdds_jax.tfds_builder`, ``scripts/convert_to_arrayrecord.py``); the root is the
  TFDS ``data_dir``. Images and caption features are lazy random-access columns read with
  ``tfds.data_source`` machinery (no TensorFlow); the sources below work unchanged.

Every array is opened memory-mapped (COCO train at 36 x 2048 is ~33 GB), so opening a
split is cheap. Each validation failure raises ONE ``ValueError`` (``FileNotFoundError``
for missing files) whose single-line message names the file, the field, what was
expected and what was found.

Finiteness: arrays of at most :data:`FINITE_SCAN_MAX_BYTES` bytes are scanned in chunks
when the split is opened; larger ones are checked row by row as items are read
(:meth:`RetrievalSplit.image`, :meth:`RetrievalSplit.caption_feature`), and the error
names the file and row.

The grain sources (:class:`PairSource`, :class:`ImageSource`, :class:`CaptionSource`)
are plain picklable classes with ``__len__`` and ``__getitem__(i) -> dict`` of NumPy
arrays with identical shapes and dtypes for every item (static shapes for ``jit``).
Pickling a split stores file paths, not array contents: spawned grain workers reopen
the memory maps.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import operator
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "FINITE_SCAN_MAX_BYTES",
    "FORMATS",
    "CaptionSource",
    "ImageSource",
    "PairSource",
    "RetrievalSplit",
    "Vocabulary",
    "read_features",
    "read_scan_precomp",
    "read_split",
    "tokenize",
]

#: Arrays up to this many bytes are scanned for NaN/Inf when a split is opened; larger
#: arrays are checked row by row as items are read (keeps opening COCO's 33 GB cheap).
FINITE_SCAN_MAX_BYTES: int = 512 * 2**20

#: Rows are scanned in chunks of about this many bytes (bounded memory for the scan).
_SCAN_CHUNK_BYTES = 32 * 2**20

#: Formats :func:`read_split` knows, and those planned for later.
FORMATS: tuple[str, ...] = ("features", "scan_precomp", "arrayrecord")
_LATER_FORMATS = ("laps", "karpathy")

_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))

TextMode = Literal["features", "tokens"]


# ---------------------------------------------------------------------------------------
# Errors and low-level readers
# ---------------------------------------------------------------------------------------


def _msg(path: os.PathLike | str, field: str, expected: str, actual: str) -> str:
    """One-line error message: file, field, expected and actual."""
    return f"{path} [{field}]: expected {expected}, got {actual}"


def _listing(folder: pathlib.Path) -> str:
    """What IS in ``folder``, for missing-file errors."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "(unreadable)"
    if not names:
        return "(empty)"
    shown = names[:30]
    more = f" ... and {len(names) - 30} more" if len(names) > 30 else ""
    return ", ".join(shown) + more


def _require_file(path: pathlib.Path, field: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} [{field}]: file not found; {path.parent} holds: {_listing(path.parent)}"
        )


def _load_npy(path: pathlib.Path, field: str) -> np.ndarray:
    """Opens a ``.npy`` file memory-mapped (read-only), with one clear error."""
    _require_file(path, field)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(
            _msg(path, field, "a readable .npy array", f"{type(e).__name__}: {e}")
        ) from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(_msg(path, field, "a single .npy array", type(arr).__name__))
    return arr


def _check_float(arr: np.ndarray, path: pathlib.Path, field: str, ndim: int) -> None:
    if arr.ndim != ndim:
        raise ValueError(
            _msg(path, field, f"a {ndim}-D array", f"{arr.ndim}-D shape {arr.shape}")
        )
    if arr.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            _msg(path, field, "dtype float16 or float32", f"dtype {arr.dtype}")
        )
    if any(s == 0 for s in arr.shape[1:]):
        raise ValueError(
            _msg(path, field, "non-zero token and feature dims", f"shape {arr.shape}")
        )


def _check_int_1d(arr: np.ndarray, path: pathlib.Path, field: str) -> None:
    if arr.ndim != 1:
        raise ValueError(
            _msg(path, field, "a 1-D array", f"{arr.ndim}-D shape {arr.shape}")
        )
    if arr.dtype.kind not in "iu":
        raise ValueError(_msg(path, field, "an integer dtype", f"dtype {arr.dtype}"))


def _scan_finite(arr: np.ndarray, path: pathlib.Path | str, field: str) -> None:
    """Raises on the first row of ``arr`` [N, ...] holding NaN/Inf (chunked scan)."""
    n = arr.shape[0]
    row_bytes = max(1, arr[:1].nbytes)
    step = max(1, _SCAN_CHUNK_BYTES // row_bytes)
    for start in range(0, n, step):
        chunk = np.asarray(arr[start : start + step])
        ok = np.isfinite(chunk).reshape(chunk.shape[0], -1).all(axis=1)
        if not ok.all():
            bad = start + int(np.argmin(ok))
            raise ValueError(
                _msg(path, field, "finite values", f"NaN/Inf in row {bad} (of {n})")
            )


def _read_lines(path: pathlib.Path, field: str) -> list[str]:
    """One caption per line (UTF-8; ``\\r\\n`` accepted; final newline optional)."""
    _require_file(path, field)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            _msg(path, field, "UTF-8 text", f"undecodable bytes ({e})")
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    blank = [i for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise ValueError(
            _msg(
                path,
                field,
                "a non-empty caption on every line",
                f"{len(blank)} blank line(s), first at line {blank[0] + 1}",
            )
        )
    return lines


def _check_images(images: np.ndarray, path: pathlib.Path) -> None:
    _check_float(images, path, "images", 3)
    if images.shape[0] == 0:
        raise ValueError(
            _msg(path, "images", "at least 1 image (empty split)", "0 images")
        )


def _check_caption_to_image(
    c2i: np.ndarray, path: pathlib.Path | str, num_images: int, num_captions: int
) -> np.ndarray:
    """Validates the caption -> image index; returns it as in-memory int64 [N_cap]."""
    if c2i.shape[0] != num_captions:
        raise ValueError(
            _msg(
                path,
                "caption_to_image",
                f"{num_captions} entries (one per caption)",
                f"{c2i.shape[0]}",
            )
        )
    c2i = np.asarray(c2i).astype(np.int64)
    if num_captions and (c2i.min() < 0 or c2i.max() >= num_images):
        bad = int(np.flatnonzero((c2i < 0) | (c2i >= num_images))[0])
        raise ValueError(
            _msg(
                path,
                "caption_to_image",
                f"image rows in [0, {num_images})",
                f"{c2i[bad]} at caption {bad}",
            )
        )
    counts = np.bincount(c2i, minlength=num_images)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ValueError(
            _msg(
                path,
                "caption_to_image",
                "every image to have at least one caption",
                f"{missing.size} image(s) without captions, first {missing[:5].tolist()}",
            )
        )
    return c2i


# ---------------------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------------------


def _reopen(
    fields: dict[str, Any], mapped: dict[str, tuple[str, tuple, str]]
) -> RetrievalSplit:
    """Unpickles a :class:`RetrievalSplit`, reopening its memory maps."""
    for name, (path, shape, dtype) in mapped.items():
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
            raise ValueError(
                _msg(
                    path,
                    name,
                    f"shape {tuple(shape)} dtype {dtype} (as when the split was opened)",
                    f"shape {arr.shape} dtype {arr.dtype}: the file changed",
                )
            )
        fields[name] = arr
    return RetrievalSplit(**fields)


@dataclasses.dataclass(frozen=True, eq=False)
class RetrievalSplit:
    """One split of an image-text retrieval dataset, arrays memory-mapped.

    ``images`` and ``caption_features`` may also be lazy random-access array-likes
    (``__getitem__(int)``, ``shape``, ``dtype``, ``len``; the ``arrayrecord`` format's
    :class:`xmodal.arrayrecord.ArrayColumn`) and ``captions`` a lazy sequence of ``str``;
    they pickle as paths.

    Attributes:
      root: the dataset root the split was read from.
      split: split name (``train``, ``dev``, ``test``, ``testall`` ...).
      images: [N_img, P, D_v] float16/float32 token features of each unique image.
      caption_to_image: int64 [N_cap]: the image row of each caption.
      caption_features: [N_cap, L_max, D_t] zero-padded caption token features, or None.
      caption_lengths: int32 [N_cap] valid tokens per caption (in [1, L_max]), or None.
      captions: raw caption text, one string per caption, or None.
      meta: metadata (``meta.json`` for the feature store).
      files: field name -> file it comes from (for error messages).
      format: the reader format that produced the split.
      finite_checked: fields already scanned for NaN/Inf when the split was opened;
        others are checked per row as items are read.
      memmapped: fields that are whole-file memory maps of ``files[name]``; pickling
        stores the path and the unpickled split reopens the file.
    """

    root: pathlib.Path
    split: str
    images: np.ndarray
    caption_to_image: np.ndarray
    caption_features: np.ndarray | None = None
    caption_lengths: np.ndarray | None = None
    captions: list[str] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    format: str = "features"
    finite_checked: frozenset[str] = frozenset()
    memmapped: frozenset[str] = frozenset()

    @property
    def num_images(self) -> int:
        """N_img, the number of unique images."""
        return int(self.images.shape[0])

    @property
    def num_captions(self) -> int:
        """N_cap, the number of captions."""
        return int(self.caption_to_image.shape[0])

    @property
    def num_tokens(self) -> int:
        """P, the number of tokens per image."""
        return int(self.images.shape[1])

    @property
    def image_dim(self) -> int:
        """D_v, the image token feature size."""
        return int(self.images.shape[2])

    @property
    def max_caption_tokens(self) -> int | None:
        """L_max of ``caption_features`` (None without caption features)."""
        return (
            None
            if self.caption_features is None
            else int(self.caption_features.shape[1])
        )

    @property
    def text_dim(self) -> int | None:
        """D_t of ``caption_features`` (None without caption features)."""
        return (
            None
            if self.caption_features is None
            else int(self.caption_features.shape[2])
        )

    def __repr__(self) -> str:
        text = [
            k for k in ("caption_features", "captions") if getattr(self, k) is not None
        ]
        return (
            f"RetrievalSplit(format={self.format!r}, root={str(self.root)!r}, "
            f"split={self.split!r}, images={self.images.dtype}{list(self.images.shape)}, "
            f"num_captions={self.num_captions}, text={text})"
        )

    def source_file(self, key: str) -> str:
        """The file (or derivation) a field comes from, for error messages."""
        try:
            return self.files[key]
        except KeyError:
            return f"{self.root}/{self.split} ({key}; known: {sorted(self.files)})"

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as a float32 copy [P, D_v]; raises on NaN/Inf if not pre-scanned."""
        row = np.array(self.images[i], dtype=np.float32)
        if "images" not in self.finite_checked and not np.isfinite(row).all():
            raise ValueError(
                _msg(
                    self.source_file("images"),
                    "images",
                    "finite values",
                    f"NaN/Inf in row {i}",
                )
            )
        return row

    def caption_feature(self, i: int) -> np.ndarray:
        """Caption ``i``'s features as a float32 copy [L_max, D_t], zero past its length."""
        if self.caption_features is None or self.caption_lengths is None:
            raise ValueError(
                f"{self.root}/{self.split} [caption_features]: expected captions.npy + "
                f"caption_lengths.npy, got none (files: {dict(self.files)})"
            )
        row = np.array(self.caption_features[i], dtype=np.float32)
        if "caption_features" not in self.finite_checked and not np.isfinite(row).all():
            raise ValueError(
                _msg(
                    self.source_file("caption_features"),
                    "caption_features",
                    "finite values",
                    f"NaN/Inf in row {i}",
                )
            )
        row[int(self.caption_lengths[i]) :] = 0.0
        return row

    def __reduce__(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        mapped = {}
        for name in self.memmapped:
            arr = fields.pop(name)
            mapped[name] = (self.files[name], tuple(arr.shape), arr.dtype.str)
        return (_reopen, (fields, mapped))


# ---------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------


_META_CHECKS = {
    "num_images": lambda s: s.num_images,
    "num_captions": lambda s: s.num_captions,
    "num_tokens": lambda s: s.num_tokens,
    "image_dim": lambda s: s.image_dim,
    "max_words": lambda s: s.max_caption_tokens,
    "text_dim": lambda s: s.text_dim,
}


def read_features(root: str | os.PathLike, split: str) -> RetrievalSplit:
    """Opens ``root/split/`` of our feature store (layout in the module docstring).

    Args:
      root: dataset root holding one folder per split.
      split: split name, e.g. ``"train"``.

    Returns:
      A :class:`RetrievalSplit` with ``images`` [N_img, P, D_v] and
      ``caption_features`` [N_cap, L_max, D_t] memory-mapped.

    Raises:
      FileNotFoundError: the split folder or a required file is missing (the message
        lists what is there).
      ValueError: any shape, dtype, range, count or finiteness problem, naming the file
        and field.
    """
    root = pathlib.Path(root)
    folder = root / split
    if not folder.is_dir():
        where = _listing(root) if root.is_dir() else "(root does not exist)"
        raise FileNotFoundError(
            f"{folder} [split folder]: not found; {root} holds: {where}"
        )
    paths = {
        "images": folder / "images.npy",
        "caption_to_image": folder / "caption_to_image.npy",
        "caption_features": folder / "captions.npy",
        "caption_lengths": folder / "caption_lengths.npy",
        "captions": folder / "captions.txt",
        "meta": folder / "meta.json",
    }
    files = {k: str(v) for k, v in paths.items()}

    # meta.json
    _require_file(paths["meta"], "meta")
    try:
        meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(
            _msg(paths["meta"], "meta", "valid UTF-8 JSON", str(e))
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(
            _msg(paths["meta"], "meta", "a JSON object", type(meta).__name__)
        )

    # images
    images = _load_npy(paths["images"], "images")
    _check_images(images, paths["images"])
    num_images = images.shape[0]

    # caption -> image
    c2i_raw = _load_npy(paths["caption_to_image"], "caption_to_image")
    _check_int_1d(c2i_raw, paths["caption_to_image"], "caption_to_image")
    num_captions = c2i_raw.shape[0]
    if num_captions == 0:
        raise ValueError(
            _msg(
                paths["caption_to_image"],
                "caption_to_image",
                "at least 1 caption (empty split)",
                "0 captions",
            )
        )

    # captions: features and/or text
    has_feat = paths["caption_features"].is_file()
    has_len = paths["caption_lengths"].is_file()
    has_text = paths["captions"].is_file()
    if has_feat != has_len:
        missing = "caption_lengths" if has_feat else "caption_features"
        raise FileNotFoundError(
            f"{paths[missing]} [{missing}]: file not found (captions.npy and "
            f"caption_lengths.npy come together); {folder} holds: {_listing(folder)}"
        )
    if not (has_feat or has_text):
        raise FileNotFoundError(
            f"{folder} [captions]: expected captions.npy + caption_lengths.npy and/or "
            f"captions.txt, found neither; {folder} holds: {_listing(folder)}"
        )
    caption_features = caption_lengths = None
    memmapped = {"images"}
    if has_feat:
        caption_features = _load_npy(paths["caption_features"], "caption_features")
        _check_float(caption_features, paths["caption_features"], "caption_features", 3)
        if caption_features.shape[0] != num_captions:
            raise ValueError(
                _msg(
                    paths["caption_features"],
                    "caption_features",
                    f"{num_captions} rows (caption_to_image.npy)",
                    f"{caption_features.shape[0]} rows, shape {caption_features.shape}",
                )
            )
        lengths = _load_npy(paths["caption_lengths"], "caption_lengths")
        _check_int_1d(lengths, paths["caption_lengths"], "caption_lengths")
        if lengths.shape[0] != num_captions:
            raise ValueError(
                _msg(
                    paths["caption_lengths"],
                    "caption_lengths",
                    f"{num_captions} entries",
                    f"{lengths.shape[0]}",
                )
            )
        lengths = np.asarray(lengths).astype(np.int64)
        l_max = caption_features.shape[1]
        bad = np.flatnonzero((lengths < 1) | (lengths > l_max))
        if bad.size:
            raise ValueError(
                _msg(
                    paths["caption_lengths"],
                    "caption_lengths",
                    f"lengths in [1, {l_max}] (L_max of captions.npy)",
                    f"{lengths[bad[0]]} at caption {bad[0]} ({bad.size} bad)",
                )
            )
        caption_lengths = lengths.astype(np.int32)
        memmapped.add("caption_features")
    captions = None
    if has_text:
        captions = _read_lines(paths["captions"], "captions")
        if len(captions) != num_captions:
            raise ValueError(
                _msg(
                    paths["captions"],
                    "captions",
                    f"{num_captions} lines (caption_to_image.npy)",
                    f"{len(captions)} lines",
                )
            )

    c2i = _check_caption_to_image(
        c2i_raw, paths["caption_to_image"], num_images, num_captions
    )

    checked = set()
    for key, arr in (("images", images), ("caption_features", caption_features)):
        if arr is not None and arr.nbytes <= FINITE_SCAN_MAX_BYTES:
            _scan_finite(arr, paths[key], key)
            checked.add(key)

    out = RetrievalSplit(
        root=root,
        split=split,
        images=images,
        caption_to_image=c2i,
        caption_features=caption_features,
        caption_lengths=caption_lengths,
        captions=captions,
        meta=meta,
        files={k: v for k, v in files.items() if pathlib.Path(v).is_file()},
        format="features",
        finite_checked=frozenset(checked),
        memmapped=frozenset(memmapped),
    )
    for key, get in _META_CHECKS.items():
        if key in meta and get(out) is not None and meta[key] != get(out):
            raise ValueError(
                _msg(
                    paths["meta"],
                    f"meta.{key}",
                    f"{get(out)} (from the arrays)",
                    repr(meta[key]),
                )
            )
    return out


def read_scan_precomp(root: str | os.PathLike, split: str) -> RetrievalSplit:
    """Opens the SCAN / VSE precomp layout: ``root/{split}_ims.npy`` + ``{split}_caps.txt``.

    Caption i belongs to image ``i // (N_cap // N_img)`` (identity when the counts are
    equal); a caption count that is not an exact multiple of the image count is an
    error. No caption features: ``captions`` holds the text, for a trained encoder.
    ``{split}_ids.txt`` is not needed and not read.

    Returns:
      A :class:`RetrievalSplit` with ``images`` [N_img, P, D_v] memory-mapped and
      ``meta`` = {format, split, counts, dims}.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} [scan_precomp root]: folder not found")
    ims_path = root / f"{split}_ims.npy"
    caps_path = root / f"{split}_caps.txt"
    images = _load_npy(ims_path, "images")
    _check_images(images, ims_path)
    captions = _read_lines(caps_path, "captions")
    n_img, n_cap = images.shape[0], len(captions)
    if n_cap == 0:
        raise ValueError(
            _msg(caps_path, "captions", "at least 1 caption (empty split)", "0 lines")
        )
    if n_cap % n_img != 0:
        raise ValueError(
            _msg(
                caps_path,
                "captions",
                f"a multiple of the {n_img} images in {ims_path.name} (caption i -> image i // k)",
                f"{n_cap} lines",
            )
        )
    per_image = n_cap // n_img
    c2i = np.arange(n_cap, dtype=np.int64) // per_image
    checked = set()
    if images.nbytes <= FINITE_SCAN_MAX_BYTES:
        _scan_finite(images, ims_path, "images")
        checked.add("images")
    meta = {
        "format": "scan_precomp",
        "split": split,
        "num_images": n_img,
        "num_captions": n_cap,
        "captions_per_image": per_image,
        "num_tokens": int(images.shape[1]),
        "image_dim": int(images.shape[2]),
    }
    return RetrievalSplit(
        root=root,
        split=split,
        images=images,
        caption_to_image=c2i,
        captions=captions,
        meta=meta,
        files={
            "images": str(ims_path),
            "captions": str(caps_path),
            "caption_to_image": f"{caps_path} (caption i -> image i // {per_image})",
        },
        format="scan_precomp",
        finite_checked=frozenset(checked),
        memmapped=frozenset({"images"}),
    )


def read_split(format: str, root: str | os.PathLike, split: str) -> RetrievalSplit:
    """Dispatches on ``format`` (config ``data.format``): ``features`` |
    ``scan_precomp`` | ``arrayrecord`` (``root`` = the TFDS data_dir)."""
    if format == "features":
        return read_features(root, split)
    if format == "scan_precomp":
        return read_scan_precomp(root, split)
    if format == "arrayrecord":
        from cdds_jax import tfds_builder  # imports tensorflow_datasets (not TF)

        return tfds_builder.read_arrayrecord(root, split)
    raise ValueError(
        f"data.format: expected one of {list(FORMATS)}, got {format!r} "
        f"({', '.join(_LATER_FORMATS)} are planned but not implemented yet; convert "
        f"them to the 'features' store with scripts/)"
    )


# ---------------------------------------------------------------------------------------
# Text: tokenizer and vocabulary for the trained (bigru) text encoder
# ---------------------------------------------------------------------------------------

# Words (letters/digits/underscore, with inner apostrophes: "don't") or single
# punctuation characters; whitespace separates.
_TOKEN_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cases ``text`` and splits it into words and single punctuation marks.

    >>> tokenize("A man's hat, red.")
    ['a', "man's", 'hat', ',', 'red', '.']
    """
    return _TOKEN_RE.findall(text.lower())


class Vocabulary:
    """Word <-> id table: ``<pad>`` = 0, ``<unk>`` = 1, ``<start>`` = 2, ``<end>`` = 3.

    Build it from the TRAINING captions (:meth:`build`); words are ordered by count
    (descending) then alphabetically, so the table is deterministic.
    """

    PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
    SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, START, END)
    pad_id, unk_id, start_id, end_id = 0, 1, 2, 3

    def __init__(self, tokens: Sequence[str]):
        """Args: tokens: the id -> token table, starting with :attr:`SPECIAL_TOKENS`."""
        tokens = list(tokens)
        if tuple(tokens[:4]) != self.SPECIAL_TOKENS:
            raise ValueError(
                f"tokens: expected to start with {list(self.SPECIAL_TOKENS)}, got {tokens[:4]}"
            )
        index = {t: i for i, t in enumerate(tokens)}
        if len(index) != len(tokens):
            dup = [t for t, c in collections.Counter(tokens).items() if c > 1]
            raise ValueError(
                f"tokens: expected unique tokens, got duplicates {dup[:5]}"
            )
        self._tokens = tokens
        self._index = index

    @classmethod
    def build(
        cls,
        captions: Iterable[str],
        *,
        min_count: int = 1,
        max_size: int | None = None,
    ) -> Vocabulary:
        """Counts :func:`tokenize` words in ``captions``.

        Args:
          captions: caption strings (training split).
          min_count: words seen fewer times map to ``<unk>``.
          max_size: the largest table size INCLUDING the 4 special tokens (so it is the
            embedding table size); the most frequent words are kept. None: no limit.
        """
        if min_count < 1:
            raise ValueError(f"min_count: expected >= 1, got {min_count}")
        if max_size is not None and max_size < len(cls.SPECIAL_TOKENS):
            raise ValueError(
                f"max_size: expected None or >= 4 (special tokens), got {max_size}"
            )
        counts: collections.Counter[str] = collections.Counter()
        for caption in captions:
            counts.update(tokenize(caption))
        words = sorted(
            (
                w
                for w, c in counts.items()
                if c >= min_count and w not in cls.SPECIAL_TOKENS
            ),
            key=lambda w: (-counts[w], w),
        )
        if max_size is not None:
            words = words[: max_size - len(cls.SPECIAL_TOKENS)]
        return cls([*cls.SPECIAL_TOKENS, *words])

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(tuple(self._tokens))

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"

    @property
    def tokens(self) -> list[str]:
        """The id -> token table (a copy)."""
        return list(self._tokens)

    def token_to_id(self, token: str) -> int:
        """Id of ``token`` (``<unk>`` when absent)."""
        return self._index.get(token, self.unk_id)

    def id_to_token(self, i: int) -> str:
        """Token of id ``i``."""
        return self._tokens[i]

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, int]:
        """``<start> w_1 ... w_n <end>``, right-padded with ``<pad>`` = 0.

        Captions longer than ``max_len - 2`` words are truncated, keeping ``<end>`` last.

        Args:
          text: one caption.
          max_len: output length L (>= 2).

        Returns:
          ids: int32 [max_len]; length: the number of valid ids (``min(n + 2, max_len)``).
        """
        if max_len < 2:
            raise ValueError(
                f"max_len: expected >= 2 (<start> and <end>), got {max_len}"
            )
        words = tokenize(text)[: max_len - 2]
        ids = np.zeros((max_len,), np.int32)
        ids[0] = self.start_id
        ids[1 : 1 + len(words)] = [self._index.get(w, self.unk_id) for w in words]
        ids[1 + len(words)] = self.end_id
        return ids, len(words) + 2

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids``, skipping special tokens except ``<unk>``; stops at ``<end>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            out.append(self._tokens[i])
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Writes the table as JSON ``{"format", "version", "tokens"}``."""
        payload = {
            "format": "cdds_jax.Vocabulary",
            "version": 1,
            "tokens": self._tokens,
        }
        pathlib.Path(path).write_text(
            json.dumps(payload, ensure_ascii=False, indent=0), "utf-8"
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Reads a table written by :meth:`save`."""
        path = pathlib.Path(path)
        _require_file(path, "vocabulary")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(
                _msg(path, "vocabulary", "valid UTF-8 JSON", str(e))
            ) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("tokens"), list):
            raise ValueError(
                _msg(
                    path,
                    "tokens",
                    "a JSON object with a 'tokens' list",
                    repr(payload)[:80],
                )
            )
        try:
            return cls(payload["tokens"])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------
# Grain-compatible sources
# ---------------------------------------------------------------------------------------


def _index(i: int, n: int) -> int:
    i = operator.index(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for {n} items")
    return i


class _TextFields:
    """Builds the text fields of caption i (shared by Pair- and CaptionSource)."""

    def __init__(
        self,
        split: RetrievalSplit,
        text: str,
        vocab: Vocabulary | None,
        max_words: int | None,
    ):
        if text == "features":
            if split.caption_features is None:
                raise ValueError(
                    f"{split.root}/{split.split} [caption_features]: text='features' needs "
                    f"captions.npy + caption_lengths.npy, the split has files {sorted(split.files)}"
                )
            if max_words is None:
                max_words = split.max_caption_tokens
        elif text == "tokens":
            if split.captions is None:
                raise ValueError(
                    f"{split.root}/{split.split} [captions]: text='tokens' needs caption "
                    f"text (captions.txt), the split has files {sorted(split.files)}"
                )
            if vocab is None:
                raise ValueError("vocab: text='tokens' needs a Vocabulary, got None")
            if max_words is None:
                raise ValueError(
                    "max_words: text='tokens' needs the token length L, got None"
                )
            if max_words < 2:
                raise ValueError(
                    f"max_words: expected >= 2 (<start>, <end>), got {max_words}"
                )
        else:
            raise ValueError(f"text: expected 'features' or 'tokens', got {text!r}")
        if max_words < 1:
            raise ValueError(f"max_words: expected >= 1, got {max_words}")
        self.split = split
        self.text = text
        self.vocab = vocab
        self.max_words = int(max_words)

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        length_axis = np.arange(self.max_words)
        if self.text == "tokens":
            ids, n = self.vocab.encode(self.split.captions[i], self.max_words)
            return {"tokens": ids, "text_mask": length_axis < n}
        feats = self.split.caption_feature(i)  # [L_max, D_t], zero past the length
        n = min(int(self.split.caption_lengths[i]), self.max_words)
        l_max = feats.shape[0]
        if self.max_words <= l_max:
            feats = feats[: self.max_words]
        else:
            feats = np.pad(feats, ((0, self.max_words - l_max), (0, 0)))
        # caption_feature already zeroed everything past the caption's length.
        return {"text": np.ascontiguousarray(feats), "text_mask": length_axis < n}


class PairSource:
    """Training source: one item per CAPTION (one epoch = one pass over captions).

    Item i:
      ``image`` float32 [P, D_v] (the image of caption i), ``image_id`` int64 [] (=
      ``caption_to_image[i]``), ``index`` int64 [] (= i), and either ``text`` float32
      [L, D_t] + ``text_mask`` bool [L] (``text="features"``; L = ``max_words`` or the
      store's L_max; truncated / zero-padded) or ``tokens`` int32 [L] + ``text_mask``
      bool [L] (``text="tokens"``; L = ``max_words``, required, with ``vocab``).
    """

    def __init__(
        self,
        split: RetrievalSplit,
        *,
        text: TextMode = "features",
        vocab: Vocabulary | None = None,
        max_words: int | None = None,
    ):
        self.split = split
        self._text = _TextFields(split, text, vocab, max_words)

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = _index(i, len(self))
        image_id = int(self.split.caption_to_image[i])
        return {
            "image": self.split.image(image_id),
            "image_id": np.int64(image_id),
            "index": np.int64(i),
            **self._text(i),
        }

    def __repr__(self) -> str:
        return (
            f"PairSource({self.split.split}, text={self._text.text!r}, n={len(self)})"
        )


class ImageSource:
    """Evaluation source: one item per unique image: ``image`` float32 [P, D_v], ``index`` int64 []."""

    def __init__(self, split: RetrievalSplit):
        self.split = split

    def __len__(self) -> int:
        return self.split.num_images

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = _index(i, len(self))
        return {"image": self.split.image(i), "index": np.int64(i)}

    def __repr__(self) -> str:
        return f"ImageSource({self.split.split}, n={len(self)})"


class CaptionSource:
    """Evaluation source: one item per caption: text fields (as :class:`PairSource`),
    ``image_id`` int64 [] and ``index`` int64 []."""

    def __init__(
        self,
        split: RetrievalSplit,
        *,
        text: TextMode = "features",
        vocab: Vocabulary | None = None,
        max_words: int | None = None,
    ):
        self.split = split
        self._text = _TextFields(split, text, vocab, max_words)

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = _index(i, len(self))
        return {
            **self._text(i),
            "image_id": np.int64(self.split.caption_to_image[i]),
            "index": np.int64(i),
        }

    def __repr__(self) -> str:
        return f"CaptionSource({self.split.split}, text={self._text.text!r}, n={len(self)})"
