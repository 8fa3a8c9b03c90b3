"""Caption text as ids: the BiGRU's word vocabulary, or a backbone tokenizer's table.

The vocabulary is built from the TRAINING captions only (docs/cdds.md, 'Data'); ids
``<pad>`` = 0, ``<unk>`` = 1, ``<start>`` = 2, ``<end>`` = 3, then words by count.

:class:`TokenTable` holds a split's captions tokenised ONCE by a backbone tokenizer
(BERT WordPiece, :func:`xmodal.backbones.load_tokenizer`) at a fixed length, so the
input pipeline only indexes arrays (docs/cdds.md §12.8). :class:`WordPieces` holds the
same captions untruncated, each WordPiece id with the basic token (word) it belongs to,
for the training-time caption augmentation (:mod:`cdds_jax.data.captions`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from xmodal import files

__all__ = ["TokenTable", "Vocabulary", "WordPieces", "tokenize"]

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
        """Writes the table as JSON ``{"format", "version", "tokens"}`` (atomically)."""
        payload = {
            "format": "cdds_jax.Vocabulary",
            "version": 1,
            "tokens": self._tokens,
        }
        files.atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Reads a table written by :meth:`save`."""
        path = files.require_file(path, "vocabulary")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(
                files.field_error(path, "vocabulary", "valid UTF-8 JSON", str(e))
            ) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("tokens"), list):
            raise ValueError(
                files.field_error(
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


@dataclasses.dataclass(frozen=True, eq=False)
class TokenTable:
    """Captions tokenised once by a backbone tokenizer.

    Attributes:
      ids: int32 [N_cap, L]: ``[CLS] w_1 .. w_n [SEP]`` right-padded with the pad id,
        truncated to L (``[SEP]`` kept last).
      lengths: int32 [N_cap]: valid ids per caption (the attention mask's sum).
      source: the tokenizer file (for messages).
    """

    ids: np.ndarray
    lengths: np.ndarray
    source: str

    @classmethod
    def encode(
        cls, captions: Sequence[str], tokenizer: Any, max_length: int
    ) -> TokenTable:
        """Tokenises ``captions`` with ``tokenizer`` (a
        :class:`xmodal.backbones.TextTokenizer`) to ``max_length`` ids each."""
        batch = tokenizer.encode(list(captions), max_length)
        return cls(
            ids=np.ascontiguousarray(batch.input_ids, np.int32),
            lengths=batch.attention_mask.sum(axis=1).astype(np.int32),
            source=str(tokenizer.source),
        )

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def max_length(self) -> int:
        """L, the fixed length."""
        return int(self.ids.shape[1])

    @property
    def num_full(self) -> int:
        """Captions that fill all L ids (truncated, or exactly L long)."""
        return int(np.sum(self.lengths >= self.max_length))


#: The mask token LAPS (CrossmodalGroup/LAPS) writes for a masked word (BERT's).
MASK_TOKEN = "[MASK]"


@dataclasses.dataclass(frozen=True, eq=False)
class WordPieces:
    """Captions as untruncated WordPiece ids grouped into basic tokens (words).

    Ragged: caption i's ids are ``ids[offsets[i]:offsets[i + 1]]`` (the body, without
    ``[CLS]`` / ``[SEP]``) and ``words`` gives, for each of them, the index of its basic
    token within the caption (0, 1, ...; the pieces of one word are adjacent). A basic
    token is a piece of BERT's whitespace / punctuation pre-tokeniser (``tokenizers``'
    ``word_ids``), what LAPS's ``basic_tokenizer`` yields (docs/cdds.md §12.8).

    Attributes:
      ids: int32 [P] the WordPiece ids of all captions, one after the other.
      words: int32 [P] the word index of each id within its caption.
      offsets: int64 [N_cap + 1] where each caption starts in ``ids`` (and the end).
      cls_id, sep_id, pad_id, mask_id: the special ids (``[CLS] body [SEP]``,
        padding, the mask token).
      vocab_size: the number of ids (random replacements are drawn below it).
      source: the tokenizer file (for messages).
    """

    ids: np.ndarray
    words: np.ndarray
    offsets: np.ndarray
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    vocab_size: int
    source: str

    @classmethod
    def encode(cls, captions: Sequence[str], tokenizer: Any) -> WordPieces:
        """Tokenises ``captions`` with ``tokenizer`` (a BERT
        :class:`xmodal.backbones.TextTokenizer`) without truncation or padding.

        Raises:
          ValueError: the tokenizer has no ``[MASK]`` token or does not frame a text
            as ``[CLS] text [SEP]`` (naming its file).
        """
        tok = tokenizer.tokenizer  # no padding, no truncation (TextTokenizer)
        source = str(tokenizer.source)
        framing = tok.encode("").ids
        if len(framing) != 2:
            raise ValueError(
                f"{source}: expected a BERT tokenizer framing a text as [CLS] text "
                f"[SEP], got {len(framing)} special ids {framing}"
            )
        mask_id = tok.token_to_id(MASK_TOKEN)
        if mask_id is None:
            raise ValueError(
                f"{source}: the mask token {MASK_TOKEN!r} is not in the vocabulary "
                "(data.caption_augment masks words with it)"
            )
        encodings = tok.encode_batch(list(captions), add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.fromiter(
            (i for e in encodings for i in e.ids), np.int32, int(offsets[-1])
        )
        # Each caption's words renumbered 0, 1, ... in order: a new word starts where
        # the pre-tokeniser's word index changes or a caption starts.
        word_ids = np.fromiter(
            (w for e in encodings for w in e.word_ids), np.int64, ids.size
        )
        first = np.ones(ids.shape, bool)
        first[1:] = word_ids[1:] != word_ids[:-1]
        first[offsets[:-1][lengths > 0]] = True
        seen = np.concatenate([[0], np.cumsum(first)])  # words before each piece
        words = (seen[1:] - 1 - np.repeat(seen[offsets[:-1]], lengths)).astype(np.int32)
        return cls(
            ids=ids,
            words=words,
            offsets=offsets,
            cls_id=int(framing[0]),
            sep_id=int(framing[1]),
            pad_id=int(tokenizer.pad_id),
            mask_id=int(mask_id),
            vocab_size=int(tokenizer.vocab_size),
            source=source,
        )

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def caption(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, words)`` of caption ``i``, each int32 [P_i]."""
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[start:stop], self.words[start:stop]
