"""Text tokenisation with the ``tokenizers`` library, from a local folder: BERT's
WordPiece (here) and CLIP's byte-level BPE (:mod:`xmodal.backbones.clip_tokenizer`).

``load_tokenizer(folder)`` prefers the folder's ``tokenizer.json`` (the fast
tokenizer Hugging Face saves); without one it builds the BERT WordPiece pipeline
from ``vocab.txt`` and ``tokenizer_config.json`` (``do_lower_case``,
``tokenize_chinese_chars``, ``strip_accents``, the special tokens; Hugging Face's
defaults where absent): BERT normaliser (clean text, spaces around CJK characters,
accents stripped when lower-casing unless ``strip_accents`` says otherwise),
whitespace / punctuation pre-tokeniser, greedy longest-match WordPiece with ``##``
continuations (``[UNK]`` for words that do not split, or longer than 100 chars),
``[CLS] A [SEP] (B [SEP])`` with token types 0 / 1. The ids equal
``transformers.BertTokenizerFast``'s (tested on uncased and Chinese vocabularies).

``TextTokenizer.encode(texts, max_length)`` returns fixed-shape int32 arrays
``[B, max_length]``: truncated (longest first for pairs), padded on the right with
the pad id, mask 1 for tokens and 0 for padding.

``write_wordpiece_files`` writes the files this module reads (for the tiny random
BERT folders of ``xmodal.backbones.write_random_checkpoint``), with
:func:`default_vocab` as the default vocabulary.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

__all__ = [
    "DEFAULT_WORDS",
    "TextTokenizer",
    "TokenizedText",
    "default_vocab",
    "load_tokenizer",
    "write_wordpiece_files",
]

#: ``max_input_chars_per_word`` of BERT's WordPiece (longer words become [UNK]).
MAX_CHARS_PER_WORD = 100


class TokenizedText(NamedTuple):
    """A batch of token ids, each ``[B, max_length]`` int32."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray


def _token(value: Any, default: str) -> str:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if value is None:
        return default
    if isinstance(value, dict):
        return str(value["content"])
    return str(value)


def _read_vocab(path: Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.rstrip("\n")] = index
    if not vocab:
        raise ValueError(f"{path}: empty vocabulary")
    return vocab


def _wordpiece(
    vocab: dict[str, int], cfg: dict[str, Any], source: Path
) -> tokenizers.Tokenizer:
    special = {
        name: _token(cfg.get(f"{name}_token"), default)
        for name, default in (
            ("unk", "[UNK]"),
            ("sep", "[SEP]"),
            ("pad", "[PAD]"),
            ("cls", "[CLS]"),
            ("mask", "[MASK]"),
        )
    }
    for name in ("unk", "sep", "cls"):
        if special[name] not in vocab:
            raise ValueError(
                f"{source}: {name} token {special[name]!r} is not in the vocabulary"
            )
    lowercase = bool(cfg.get("do_lower_case", True))
    tok = tokenizers.Tokenizer(
        models.WordPiece(
            vocab, unk_token=special["unk"], max_input_chars_per_word=MAX_CHARS_PER_WORD
        )
    )
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(cfg.get("tokenize_chinese_chars", True)),
        strip_accents=cfg.get("strip_accents"),  # None: follow lowercase
        lowercase=lowercase,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = special["cls"], special["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([t for t in special.values() if t in vocab])
    return tok


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus the pad token, encoding to fixed-shape arrays.

    Safe to share between threads: each ``max_length`` gets its own configured copy.
    """

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, pad_token: str, source: str
    ) -> None:
        self.source = source
        self.pad_token = pad_token
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(
                f"{source}: pad token {pad_token!r} is not in the vocabulary"
            )
        self.pad_id: int = pad_id
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._json = tokenizer.to_str()
        self.tokenizer = tokenizer
        self._by_length: dict[int, tokenizers.Tokenizer] = {}
        self._lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        """Number of ids (vocabulary plus added tokens)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _configured(self, max_length: int) -> tokenizers.Tokenizer:
        with self._lock:
            tok = self._by_length.get(max_length)
            if tok is None:
                tok = tokenizers.Tokenizer.from_str(self._json)
                tok.enable_truncation(max_length, strategy="longest_first")
                tok.enable_padding(
                    direction="right",
                    pad_id=self.pad_id,
                    pad_type_id=0,
                    pad_token=self.pad_token,
                    length=max_length,
                )
                self._by_length[max_length] = tok
            return tok

    def encode(
        self,
        texts: Sequence[str],
        max_length: int,
        text_pairs: Sequence[str] | None = None,
    ) -> TokenizedText:
        """``B`` texts (and optional second segments) -> ``[B, max_length]`` arrays.

        ``max_length`` counts the special tokens ([CLS], [SEP]); longer inputs are
        truncated, shorter ones padded.
        """
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of strings, got one string")
        if max_length < 3:
            raise ValueError(f"max_length {max_length} leaves no room for tokens")
        tok = self._configured(max_length)
        if text_pairs is None:
            batch: list[Any] = list(texts)
        else:
            if len(text_pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs")
            batch = list(zip(texts, text_pairs, strict=True))
        out = tok.encode_batch(batch)
        shape = (len(batch), max_length)

        def stack(field: str) -> np.ndarray:
            if not out:
                return np.zeros(shape, np.int32)
            return np.asarray([getattr(e, field) for e in out], dtype=np.int32).reshape(
                shape
            )

        return TokenizedText(stack("ids"), stack("attention_mask"), stack("type_ids"))

    __call__ = encode


def load_tokenizer(folder: str | Path) -> TextTokenizer:
    """The tokenizer of a Hugging Face text folder: its ``tokenizer.json``, else
    BERT's ``vocab.txt`` (WordPiece, above) or CLIP's ``vocab.json`` + ``merges.txt``
    (byte-level BPE, :mod:`xmodal.backbones.clip_tokenizer`), with
    ``tokenizer_config.json``. The pad token is the config's ``pad_token``, else
    ``[PAD]`` for WordPiece and ``<|endoftext|>`` for BPE (CLIP's).

    Raises:
      FileNotFoundError: none of these files in ``folder``.
      ValueError: a special token missing from the vocabulary (naming the file).
    """
    from xmodal.backbones import clip_tokenizer

    folder = Path(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg: dict[str, Any] = {}
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if (folder / "tokenizer.json").is_file():
        path = folder / "tokenizer.json"
        tok = tokenizers.Tokenizer.from_file(str(path))
        default = (
            "[PAD]" if isinstance(tok.model, models.WordPiece) else clip_tokenizer.EOS
        )
        return TextTokenizer(tok, _token(cfg.get("pad_token"), default), str(path))
    if (folder / "vocab.txt").is_file():
        path = folder / "vocab.txt"
        tok = _wordpiece(_read_vocab(path), cfg, path)
        return TextTokenizer(tok, _token(cfg.get("pad_token"), "[PAD]"), str(path))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = clip_tokenizer.read_bpe_files(folder, cfg)
        pad = _token(cfg.get("pad_token"), clip_tokenizer.EOS)
        return TextTokenizer(tok, pad, str(folder / "vocab.json"))
    raise FileNotFoundError(
        f"{folder}: no tokenizer.json, vocab.txt (BERT) or vocab.json + merges.txt "
        "(CLIP)"
    )


# ------------------------------------------------------- writing (random checkpoints)

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: English words of the default vocabularies (BERT's here, CLIP's BPE merges).
DEFAULT_WORDS: tuple[str, ...] = (
    "the",
    "a",
    "an",
    "is",
    "was",
    "be",
    "it",
    "this",
    "that",
    "not",
    "very",
    "so",
    "and",
    "or",
    "but",
    "of",
    "to",
    "in",
    "on",
    "for",
    "with",
    "good",
    "bad",
    "great",
    "movie",
    "film",
    "story",
    "love",
    "hate",
    "like",
    "really",
    "funny",
    "boring",
    "happy",
    "sad",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
)
_CHINESE = "我你他的是不很好电影看喜欢讨厌"
_PUNCTUATION = ".,!?;:'\"()-"


def default_vocab() -> list[str]:
    """A small WordPiece vocabulary: BERT's special tokens, characters, words, and
    ``##`` continuations of letters and common suffixes."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(i) for i in range(10)]
    vocab = [
        *_SPECIAL_TOKENS,
        *_PUNCTUATION,
        *digits,
        *letters,
        *_CHINESE,
        *DEFAULT_WORDS,
    ]
    vocab += [f"##{c}" for c in letters + digits] + ["##s", "##ing", "##ed", "##ly"]
    seen: set[str] = set()
    return [t for t in vocab if not (t in seen or seen.add(t))]


def write_wordpiece_files(
    folder: Path, vocab: Sequence[str], vocab_size: int, max_length: int
) -> None:
    """Writes ``vocab.txt`` (``vocab`` padded with ``[unusedN]`` to ``vocab_size``
    entries) and ``tokenizer_config.json`` (uncased BERT, ``model_max_length =
    max_length``): the files :func:`load_tokenizer` and transformers read."""
    padded = [*vocab, *(f"[unused{i}]" for i in range(vocab_size - len(vocab)))]
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in padded))
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": max_length,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2)
    )
