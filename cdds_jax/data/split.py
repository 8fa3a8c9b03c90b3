"""One split of an image-text retrieval dataset, and the checks every reader applies.

:class:`RetrievalSplit` is what every format reader returns (``store``, ``scan``,
``arrayrecord``; docs/cdds.md, 'Data'): unique images ``[N_img, P, D_v]``, an explicit
caption -> image index, and caption token features ``[N_cap, L_max, D_t]`` and/or caption
text. The validators and low-level readers below are shared by the format readers; each
raises ONE error (``FileNotFoundError`` for missing files, else ``ValueError``) whose
single-line message names the file, the field, what was expected and what was found
(:func:`xmodal.files.field_error`).

Finiteness: arrays of at most :data:`FINITE_SCAN_MAX_BYTES` bytes are scanned when the
split is opened (:func:`scan_features`); larger ones are checked row by row as items are
read (:meth:`RetrievalSplit.image`, :meth:`RetrievalSplit.caption_feature`). Features
that are all zero (placeholders) draw a :class:`xmodal.files.ZeroFeaturesWarning`.

:func:`check_compatible` refuses splits that one model cannot read (feature dims or
tokens per image that differ), before any training.
"""

from __future__ import annotations

import dataclasses
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from xmodal import files

__all__ = [
    "FINITE_SCAN_MAX_BYTES",
    "RetrievalSplit",
    "check_caption_lengths",
    "check_caption_to_image",
    "check_compatible",
    "check_float",
    "check_images",
    "check_int_1d",
    "load_npy",
    "read_lines",
    "scan_features",
]

#: Arrays up to this many bytes are scanned for NaN/Inf when a split is opened; larger
#: arrays are checked row by row as items are read (keeps opening COCO's 33 GB cheap).
FINITE_SCAN_MAX_BYTES: int = 512 * 2**20

_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))

_msg = files.field_error


# ---------------------------------------------------------------------------------------
# Low-level readers and validators
# ---------------------------------------------------------------------------------------


def load_npy(path: pathlib.Path, field: str) -> np.ndarray:
    """Opens a ``.npy`` file memory-mapped (read-only), with one clear error."""
    files.require_file(path, field)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(
            _msg(path, field, "a readable .npy array", f"{type(e).__name__}: {e}")
        ) from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(_msg(path, field, "a single .npy array", type(arr).__name__))
    return arr


def read_lines(path: pathlib.Path, field: str) -> list[str]:
    """One caption per line (UTF-8; ``\\r\\n`` accepted; final newline optional)."""
    files.require_file(path, field)
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


def check_float(arr: np.ndarray, path: pathlib.Path, field: str, ndim: int) -> None:
    """``arr`` is an ``ndim``-D float16/float32 array with non-zero trailing dims."""
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


def check_int_1d(arr: np.ndarray, path: pathlib.Path, field: str) -> None:
    """``arr`` is a 1-D integer array."""
    if arr.ndim != 1:
        raise ValueError(
            _msg(path, field, "a 1-D array", f"{arr.ndim}-D shape {arr.shape}")
        )
    if arr.dtype.kind not in "iu":
        raise ValueError(_msg(path, field, "an integer dtype", f"dtype {arr.dtype}"))


def check_images(images: np.ndarray, path: pathlib.Path) -> None:
    """``images`` is a non-empty float [N_img, P, D_v] array."""
    check_float(images, path, "images", 3)
    if images.shape[0] == 0:
        raise ValueError(
            _msg(path, "images", "at least 1 image (empty split)", "0 images")
        )


def check_caption_to_image(
    c2i: np.ndarray, path: pathlib.Path | str, num_images: int, num_captions: int
) -> np.ndarray:
    """Validates the caption -> image index; returns it as in-memory int64 [N_cap].

    Every caption must name an image row in ``[0, num_images)`` and every image must
    have at least one caption.
    """
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


def check_caption_lengths(
    lengths: np.ndarray, path: pathlib.Path | str, num_captions: int, l_max: int
) -> np.ndarray:
    """Validates caption lengths [N_cap], each in ``[1, l_max]``; returns int32 [N_cap]."""
    if lengths.shape != (num_captions,):
        raise ValueError(
            _msg(
                path,
                "caption_lengths",
                f"{num_captions} entries",
                f"{lengths.shape[0] if lengths.ndim else 0} (shape {lengths.shape})",
            )
        )
    lengths = np.asarray(lengths).astype(np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > l_max))
    if bad.size:
        raise ValueError(
            _msg(
                path,
                "caption_lengths",
                f"lengths in [1, {l_max}] (L_max of the caption features)",
                f"{lengths[bad[0]]} at caption {bad[0]} ({bad.size} bad)",
            )
        )
    return lengths.astype(np.int32)


def scan_features(arr: np.ndarray, path: pathlib.Path, field: str) -> bool:
    """Checks the features ``arr`` [N, ...] of a split being opened.

    Arrays of at most :data:`FINITE_SCAN_MAX_BYTES` are scanned whole: NaN/Inf raise
    (naming the row), all-zero features warn. Larger arrays are only sampled (their
    first block of rows, for the all-zero warning); their rows are checked finite as
    they are read.

    Returns:
      Whether ``arr`` was scanned whole (it goes into ``finite_checked``).
    """
    if arr.nbytes <= FINITE_SCAN_MAX_BYTES:
        scan, scanned = files.check_finite(arr, path, field), True
        what = "every value is zero"
    else:
        head = arr[: max(1, files.SCAN_BLOCK_BYTES // max(1, arr[:1].nbytes))]
        scan, scanned = files.scan_values(head), False
        what = (
            f"the first {head.shape[0]} of {arr.shape[0]} rows (a sample) are all zero"
        )
    if scan.all_zero:
        warnings.warn(
            f"{path} [{field}]: {what} (shape {tuple(arr.shape)}): placeholder "
            "features? Nothing can be learnt from them",
            files.ZeroFeaturesWarning,
            stacklevel=3,
        )
    return scanned


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
# Across splits
# ---------------------------------------------------------------------------------------

# What one model needs to be the same in every split: (name, field, value of a split).
_SHARED_DIMS = (
    ("tokens per image P", "images", lambda s: s.num_tokens),
    ("image feature dim D_v", "images", lambda s: s.image_dim),
    ("caption feature dim D_t", "caption_features", lambda s: s.text_dim),
)


def check_compatible(splits: Mapping[str, Any]) -> None:
    """Refuses splits that one model cannot read, before anything is trained.

    The tokens per image (P), the image feature dim (D_v) and, among splits with
    caption features, the caption feature dim (D_t) must agree between all splits
    (the model is built from the training split's shapes and evaluated on the others).

    Args:
      splits: role or split name -> split (None entries and raw splits, whose images
        are files, are skipped).

    Raises:
      ValueError: one line naming both splits, their files and shapes.
    """
    # Raw splits (image files) have no stored dims: the backbone fixes them.
    opened = {k: s for k, s in splits.items() if isinstance(s, RetrievalSplit)}
    for what, field, get in _SHARED_DIMS:
        having = {k: s for k, s in opened.items() if get(s) is not None}
        if not having:
            continue
        (ref_name, ref), *others = having.items()
        for name, other in others:
            if get(other) == get(ref):
                continue
            shapes = [
                f"{n!r} {s.source_file(field)} has shape {tuple(getattr(s, field).shape)}"
                for n, s in ((ref_name, ref), (name, other))
            ]
            raise ValueError(
                f"splits {ref_name!r} and {name!r}: expected the same {what} "
                f"({get(ref)}), got {get(other)}: {shapes[0]}, {shapes[1]} (one model "
                "reads every split: extract the features of all splits with one backbone)"
            )
