"""Grain-compatible sources over a :class:`~cdds_jax.data.split.RetrievalSplit`.

:class:`PairSource` (training, one item per caption), :class:`ImageSource` and
:class:`CaptionSource` (evaluation) are plain picklable classes with ``__len__`` and
``__getitem__(i) -> dict`` of NumPy arrays with identical shapes and dtypes for every
item (static shapes for ``jit``). Pickling a source stores file paths, not array
contents: spawned grain workers reopen the memory maps (or the ArrayRecord files).
"""

from __future__ import annotations

import operator
from typing import Any, Literal

import numpy as np

from cdds_jax.data.split import RetrievalSplit
from cdds_jax.data.text import TokenTable, Vocabulary

__all__ = [
    "CaptionItems",
    "CaptionSource",
    "ImageSource",
    "PairSource",
    "TextFields",
    "TextMode",
    "checked_index",
]

#: How captions reach the model: token features from the store, word ids of the
#: BiGRU vocabulary (``tokens``), or ids of a backbone tokenizer (``ids``, a
#: :class:`~cdds_jax.data.text.TokenTable` made once per split).
TextMode = Literal["features", "tokens", "ids"]


def checked_index(i: int, n: int) -> int:
    i = operator.index(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for {n} items")
    return i


class TextFields:
    """Builds the text fields of caption i (shared by Pair- and CaptionSource)."""

    def __init__(
        self,
        split: RetrievalSplit,
        text: str,
        vocab: Vocabulary | None,
        max_words: int | None,
        tokens: TokenTable | None = None,
    ):
        self.tokens = tokens
        if text == "ids":
            if tokens is None or len(tokens) != split.num_captions:
                raise ValueError(
                    f"{split.root}/{split.split} [captions]: text='ids' needs a "
                    f"TokenTable of the split's {split.num_captions} captions, got "
                    f"{None if tokens is None else len(tokens)}"
                )
            max_words = tokens.max_length
        elif text == "features":
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
            raise ValueError(
                f"text: expected 'features', 'tokens' or 'ids', got {text!r}"
            )
        if max_words < 1:
            raise ValueError(f"max_words: expected >= 1, got {max_words}")
        self.split = split
        self.text = text
        self.vocab = vocab
        self.max_words = int(max_words)

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        length_axis = np.arange(self.max_words)
        if self.text == "ids":
            assert self.tokens is not None
            n = int(self.tokens.lengths[i])
            return {"tokens": self.tokens.ids[i], "text_mask": length_axis < n}
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


class CaptionItems:
    """Base of the sources with one item per caption: the split and its text fields.

    `split` is any split with ``num_captions`` and the caption fields `TextFields`
    reads (a feature store split, or a raw image + caption split).
    """

    def __init__(
        self,
        split: Any,
        *,
        text: TextMode = "features",
        vocab: Vocabulary | None = None,
        max_words: int | None = None,
        tokens: TokenTable | None = None,
    ):
        self.split = split
        self._text = TextFields(split, text, vocab, max_words, tokens)

    def __len__(self) -> int:
        return self.split.num_captions


class PairSource(CaptionItems):
    """Training source: one item per CAPTION (one epoch = one pass over captions).

    Item i:
      ``image`` float32 [P, D_v] (the image of caption i), ``image_id`` int64 [] (=
      ``caption_to_image[i]``), ``index`` int64 [] (= i), and either ``text`` float32
      [L, D_t] + ``text_mask`` bool [L] (``text="features"``; L = ``max_words`` or the
      store's L_max; truncated / zero-padded) or ``tokens`` int32 [L] + ``text_mask``
      bool [L] (``text="tokens"``; L = ``max_words``, required, with ``vocab``; or
      ``text="ids"`` with ``tokens``, a backbone tokenizer's table, L its length).
    """

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = checked_index(i, len(self))
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
        i = checked_index(i, len(self))
        return {"image": self.split.image(i), "index": np.int64(i)}

    def __repr__(self) -> str:
        return f"ImageSource({self.split.split}, n={len(self)})"


class CaptionSource(CaptionItems):
    """Evaluation source: one item per caption: text fields (as :class:`PairSource`),
    ``image_id`` int64 [] and ``index`` int64 []."""

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = checked_index(i, len(self))
        return {
            **self._text(i),
            "image_id": np.int64(self.split.caption_to_image[i]),
            "index": np.int64(i),
        }

    def __repr__(self) -> str:
        return f"CaptionSource({self.split.split}, text={self._text.text!r}, n={len(self)})"
