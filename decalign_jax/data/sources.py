"""The grain source over one :class:`~decalign_jax.data.split.MMSASplit`."""

from __future__ import annotations

import operator

import numpy as np

from decalign_jax.data.split import MMSASplit

__all__ = ["MMSASource"]


class MMSASource:
    """Random-access source over one ``MMSASplit`` for ``grain.MapDataset.source``.

    Items (static shapes, numpy):
      ``text`` ``[T_l, D_l]`` float32, ``audio`` ``[T_a, D_a]`` float32, ``vision``
      ``[T_v, D_v]`` float32, ``audio_lengths`` / ``vision_lengths`` int32 scalars (the
      full padded length when the file has none), ``label`` float32 scalar (regression)
      or int32 scalar (classification), ``index`` int64 scalar (row in the split); with
      ``with_text_bert=True`` also ``text_bert`` ``[3, T_l]`` int32; with
      ``with_text=False`` no ``text`` (a model that reads BERT ids instead).

    The source holds the split's arrays; it is picklable (grain workers receive a
    copy of the arrays, so large splits cost memory per worker process).
    """

    def __init__(
        self,
        split: MMSASplit,
        *,
        with_text_bert: bool = False,
        with_text: bool = True,
    ) -> None:
        if not isinstance(split, MMSASplit):
            raise TypeError(f"split: expected an MMSASplit, got {type(split).__name__}")
        if with_text_bert and split.text_bert is None:
            raise ValueError(
                f"with_text_bert=True but split {split.name!r} has no text_bert"
            )
        n = split.num_samples
        _, t_a, t_v = split.seq_lens
        self._n = n
        self._text = split.text if with_text else None
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
        item = {} if self._text is None else {"text": self._text[i]}
        item |= {
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
            f"MMSASource(split={self._name!r}, n={self._n}, "
            f"text={None if self._text is None else self._text.shape[1:]}, "
            f"audio={self._audio.shape[1:]}, vision={self._vision.shape[1:]})"
        )
