"""The split type of the multimodal sentiment datasets, and what a dataset name implies.

:class:`MMSASplit` is what every reader returns (:mod:`~decalign_jax.data.mmsa` for the
MMSA pickles, :mod:`~decalign_jax.data.arrayrecord` for converted datasets; docs/decalign.md,
'Data'); :class:`DatasetSpec` says per dataset which key holds the labels, their range,
and the default standardisation. Layout problems raise :class:`MMSAFormatError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DATASET_SPECS",
    "MODALITIES",
    "SPLITS",
    "DatasetSpec",
    "MMSAFormatError",
    "MMSASplit",
    "canonical_dataset",
]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
MODALITIES: tuple[str, ...] = ("text", "audio", "vision")


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
