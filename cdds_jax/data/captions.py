"""Caption size augmentation in training, the rule of LAPS (CrossmodalGroup/LAPS).

LAPS (``lib/image_caption.py``, ``process_caption_bert`` with ``size_augment``) splits
a training caption into BERT basic tokens (whitespace and punctuation) and, for each
basic token with probability ``rate`` (0.2): with probability 0.5 writes ``[MASK]`` for
each of its WordPiece pieces, with 0.1 a random vocabulary id for each piece, with 0.4
deletes it (all its pieces); other words are kept. The result is framed as ``[CLS] ...
[SEP]``. LAPS pads per batch without a limit; here the ids are truncated to the item's
fixed length L after the augmentation, ``[SEP]`` kept last, as
:class:`~cdds_jax.data.text.TokenTable` does (docs/cdds.md §12.8).

The draws of one caption, in this order, from :func:`caption_rng` (integers only, so
the rule has no floating-point edge):

1. ``u`` uint64 [W]: word w is augmented iff ``u[w] < threshold`` with ``threshold =
   round(rate * 2**32)`` and ``u`` uniform on ``[0, 2**32)``;
2. ``action`` int64 [W] uniform on ``[0, 10)``: 0-4 mask, 5 random ids, 6-9 delete
   (LAPS's 50% / 10% / 40%);
3. ``random_ids`` int64 [P] uniform on ``[0, vocab_size)``, one per piece (LAPS draws
   uniformly over BERT's vocabulary), used by the pieces of words whose action is 5.

W is the caption's number of words, P its number of pieces (untruncated).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cdds_jax.data.text import WordPieces

__all__ = [
    "CAPTION_STREAM",
    "DRAW_RANGE",
    "CaptionAugment",
    "caption_rng",
    "rate_threshold",
    "size_augment",
]

#: ``u`` is uniform on ``[0, DRAW_RANGE)``.
DRAW_RANGE = 2**32
#: The actions of an augmented word: ``action < MASK_BELOW`` masks, ``== RANDOM_AT``
#: draws random ids, the rest (6-9) delete; out of ``ACTIONS``.
ACTIONS, MASK_BELOW, RANDOM_AT = 10, 5, 5
#: The spawn key of the caption stream: item (seed, epoch, index)'s image augmentation
#: draws from ``SeedSequence([seed, epoch, index])`` itself, the captions from this
#: child of it, so the two streams are independent.
CAPTION_STREAM = 1


def rate_threshold(rate: float) -> int:
    """``round(rate * 2**32)``: a word is augmented iff its draw ``u`` is below it."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"data.caption_augment_rate: expected in [0, 1], got {rate}")
    return round(rate * DRAW_RANGE)


def caption_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of caption ``index`` in ``epoch``: a child of the item's seed
    sequence, distinct from the image augmentation's
    (:class:`~cdds_jax.data.images.TrainImageTransform`)."""
    sequence = np.random.SeedSequence(
        [int(seed), int(epoch), int(index)], spawn_key=(CAPTION_STREAM,)
    )
    return np.random.default_rng(sequence)


def size_augment(
    ids: np.ndarray,
    words: np.ndarray,
    rng: np.random.Generator,
    *,
    threshold: int,
    mask_id: int,
    vocab_size: int,
) -> np.ndarray:
    """One caption's augmented body (no ``[CLS]`` / ``[SEP]``).

    Args:
      ids: int [P] the caption's WordPiece ids, untruncated.
      words: int [P] the word index of each id (0, 1, ..., non-decreasing).
      rng: the caption's generator (:func:`caption_rng`); draws as the module says.
      threshold: from :func:`rate_threshold`.
      mask_id: the ``[MASK]`` id.
      vocab_size: random ids are drawn from ``[0, vocab_size)``.

    Returns:
      int32 [P'] (P' <= P): the pieces of kept words, ``mask_id`` for each piece of a
      masked word, a random id for each piece of a replaced word; deleted words gone.
    """
    ids = np.asarray(ids)
    words = np.asarray(words)
    if ids.shape != words.shape or ids.ndim != 1:
        raise ValueError(
            f"ids {ids.shape} and words {words.shape}: expected equal 1-d shapes"
        )
    num_words = int(words[-1]) + 1 if words.size else 0
    u = rng.integers(0, DRAW_RANGE, size=num_words, dtype=np.uint64)
    action = rng.integers(0, ACTIONS, size=num_words)
    random_ids = rng.integers(0, vocab_size, size=ids.size)
    # Per piece: its word's action, -1 where the word is kept.
    piece_action = np.where(u < threshold, action, -1)[words]
    out = np.where(
        (piece_action >= 0) & (piece_action < MASK_BELOW), mask_id, ids
    ).astype(np.int32)
    out = np.where(piece_action == RANDOM_AT, random_ids, out).astype(np.int32)
    return out[piece_action <= RANDOM_AT]


class CaptionAugment:
    """The caption augmentation of training items, an
    :class:`xmodal.pipeline.EpochTransform` (picklable; runs in grain workers).

    Replaces ``tokens`` int32 [L] and ``text_mask`` bool [L] of item ``index`` by
    ``[CLS] body [SEP]`` right-padded to the same L, the body augmented by
    :func:`size_augment` with the generator :func:`caption_rng` ``(seed, epoch,
    index)`` and truncated to L - 2 ids (so ``[SEP]`` stays last). With ``rate = 0``
    the ids are those of the split's :class:`~cdds_jax.data.text.TokenTable`.

    Args:
      pieces: the training split's captions (:class:`WordPieces`, row = ``index``).
      seed: the run's seed.
      rate: the probability that a word is augmented (LAPS's ``mask_rate``, 0.2).
    """

    def __init__(self, pieces: WordPieces, *, seed: int, rate: float) -> None:
        self.pieces, self.seed, self.rate = pieces, int(seed), float(rate)
        self.threshold = rate_threshold(self.rate)

    def __call__(self, item: dict[str, Any], *, epoch: int) -> dict[str, Any]:
        out = dict(item)
        index = int(out["index"])
        length = int(np.shape(out["tokens"])[-1])
        p = self.pieces
        ids, words = p.caption(index)
        body = size_augment(
            ids,
            words,
            caption_rng(self.seed, epoch, index),
            threshold=self.threshold,
            mask_id=p.mask_id,
            vocab_size=p.vocab_size,
        )[: length - 2]
        n = body.size + 2
        tokens = np.full((length,), p.pad_id, np.int32)
        tokens[0], tokens[1 : n - 1], tokens[n - 1] = p.cls_id, body, p.sep_id
        out["tokens"] = tokens
        out["text_mask"] = np.arange(length) < n
        return out

    def __repr__(self) -> str:
        return (
            f"CaptionAugment(rate={self.rate}, seed={self.seed}, "
            f"n={len(self.pieces)}, {self.pieces.source})"
        )
