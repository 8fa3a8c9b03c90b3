"""CLIP's byte-level BPE tokenizer built with the ``tokenizers`` library (docs/cdds.md
§3.5), and tiny vocabularies in its layout for random checkpoints.

A CLIP folder holds ``vocab.json`` (token -> id) and ``merges.txt`` (one merge per
line, in rank order, after a ``#version`` line), and usually ``tokenizer.json``, which
:func:`xmodal.backbones.load_tokenizer` prefers. From the two files,
:func:`clip_bpe` builds the pipeline of CLIP's tokenizer as transformers'
``CLIPTokenizerFast`` runs it (the ids are tested equal):

- normalise: Unicode NFC, every whitespace run -> one space, lower case (the
  original's ``ftfy`` / HTML unescaping is not part of the fast tokenizer either);
- split into words with CLIP's pattern (the two special tokens, the contractions
  ``'s 't 're 've 'm 'll 'd``, letter runs, single digits, runs of other non-space
  characters), whitespace dropped; then map each word's UTF-8 bytes to the 256
  printable characters of the byte-level alphabet (:func:`byte_alphabet`);
- BPE with ``</w>`` marking the end of each word (no continuation prefix), unknown
  pieces -> ``<|endoftext|>``;
- ``<|startoftext|> ... <|endoftext|>`` around the caption; truncation keeps both.

Padding is on the right with the folder's ``pad_token`` (``<|endoftext|>`` in the
OpenAI folders, so padding repeats the end-of-text id; the text tower pools the FIRST
end-of-text position, :func:`xmodal.backbones.clip_text.eos_positions`).

Tiny vocabularies (:func:`clip_vocab`): the byte alphabet, the same with ``</w>``,
one merge chain per given word (``r e -> re``, ``re d</w> -> red</w>``; ordered so
that each word is one token), then
``<|startoftext|>`` and ``<|endoftext|>`` as the last two ids (the end-of-text token
has the highest id, as in the original vocabulary). :func:`write_bpe_files` writes
them with the merges each entry implies.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors

__all__ = [
    "BOS",
    "EOS",
    "WORD_PATTERN",
    "byte_alphabet",
    "clip_bpe",
    "clip_vocab",
    "merges_of",
    "read_bpe_files",
    "special_ids",
    "write_bpe_files",
]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
#: CLIP's word pattern (its ``simple_tokenizer``), case already folded.
WORD_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
    r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE writes bytes as, indexed by byte value: a
    printable Latin-1 byte is itself, every other byte the next code point from 256
    on (GPT-2 / CLIP's table)."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    }
    out, shifted = [], 256
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(shifted))
            shifted += 1
    return out


def _special(cfg: dict[str, Any], name: str, default: str) -> str:
    value = cfg.get(f"{name}_token")
    if value is None:
        return default
    return str(value["content"]) if isinstance(value, dict) else str(value)


def clip_bpe(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    cfg: dict[str, Any],
    source: Path,
) -> tokenizers.Tokenizer:
    """CLIP's tokenizer over ``vocab`` / ``merges`` (the module docstring's pipeline);
    ``cfg`` is ``tokenizer_config.json`` (its ``bos`` / ``eos`` / ``unk`` tokens)."""
    bos = _special(cfg, "bos", BOS)
    eos = _special(cfg, "eos", EOS)
    unk = _special(cfg, "unk", EOS)
    for name, token in (("bos", bos), ("eos", eos), ("unk", unk)):
        if token not in vocab:
            raise ValueError(
                f"{source}: {name} token {token!r} is not in the vocabulary"
            )
    tok = tokenizers.Tokenizer(
        models.BPE(
            vocab,
            merges,
            continuing_subword_prefix="",
            end_of_word_suffix=END_OF_WORD,
            fuse_unk=False,
            unk_token=unk,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Lowercase(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Keep the pattern's matches, drop what lies between them (whitespace).
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])],
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(dict.fromkeys([bos, eos, unk])))
    return tok


def read_bpe_files(folder: Path, cfg: dict[str, Any]) -> tokenizers.Tokenizer:
    """:func:`clip_bpe` of ``folder/vocab.json`` and ``folder/merges.txt``."""
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{vocab_path}: not valid JSON ({e})") from None
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{vocab_path}: expected a non-empty token -> id object")
    merges = []
    for number, line in enumerate(merges_path.read_text(encoding="utf-8").splitlines()):
        if not line.strip() or (number == 0 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"{merges_path}:{number + 1}: expected two tokens, got {line!r}"
            )
        merges.append((parts[0], parts[1]))
    return clip_bpe(vocab, merges, cfg, vocab_path)


def clip_vocab(words: Sequence[str] = ()) -> list[str]:
    """A tiny CLIP vocabulary: the byte alphabet, the alphabet with ``</w>``, a merge
    chain per word (lower-cased), then ``<|startoftext|>`` and ``<|endoftext|>``.

    A chain's first merge can split another word (``a n`` of "and" inside
    "triangle"), so the chains are ordered until every word encodes to one token:
    the words another chain splits move ahead of it (a few rounds for the demos'
    words; the last order is kept if that does not settle).
    """
    alphabet = byte_alphabet()
    spelled = list(
        dict.fromkeys(
            "".join(alphabet[b] for b in w.lower().encode("utf-8")) for w in words
        )
    )
    order = [w for w in spelled if w]
    for _ in range(len(order) + 1):
        vocab = _chain_vocab(alphabet, order)
        ranks = {m: r for r, m in enumerate(merges_of(vocab))}
        split = [w for w in order if len(_bpe(w, ranks)) > 1]
        if not split:
            break
        order = split + [w for w in order if w not in split]
    return vocab


def _chain_vocab(alphabet: list[str], words: Sequence[str]) -> list[str]:
    vocab = [*alphabet, *(c + END_OF_WORD for c in alphabet)]
    for chars in words:
        vocab += [chars[:k] for k in range(2, len(chars))]
        vocab.append(chars + END_OF_WORD)
    return [*dict.fromkeys(vocab), BOS, EOS]


def _bpe(chars: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The pieces BPE makes of one word (byte-level characters): the adjacent pair
    of lowest merge rank is merged until none is a merge."""
    pieces = [*chars[:-1], chars[-1] + END_OF_WORD]
    while len(pieces) > 1:
        rank, i = min(
            (ranks.get(pair, len(ranks)), i)
            for i, pair in enumerate(itertools.pairwise(pieces))
        )
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def _is_special(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>")


def merges_of(vocab: Sequence[str]) -> list[tuple[str, str]]:
    """The merges that make each entry of a :func:`clip_vocab`-style vocabulary, in
    its order: ``abc -> (ab, c)``, ``abc</w> -> (ab, c</w>)``; single characters (with
    or without ``</w>``) and ``<|...|>`` tokens need none.

    Raises:
      ValueError: an entry whose two parts are not earlier entries.
    """
    seen: set[str] = set()
    out = []
    for token in vocab:
        core = token[: -len(END_OF_WORD)] if token.endswith(END_OF_WORD) else token
        if not _is_special(token) and len(core) > 1:
            suffix = END_OF_WORD if core != token else ""
            left, right = core[:-1], core[-1] + suffix
            if left not in seen or right not in seen:
                raise ValueError(
                    f"vocabulary entry {token!r}: {left!r} and {right!r} must both "
                    "come before it (a merge chain)"
                )
            out.append((left, right))
        seen.add(token)
    return out


def special_ids(vocab: Sequence[str]) -> dict[str, int]:
    """``bos_token_id`` / ``eos_token_id`` of a vocabulary (text-config fields)."""
    index = {t: i for i, t in enumerate(vocab)}
    return {"bos_token_id": index[BOS], "eos_token_id": index[EOS]}


def write_bpe_files(
    folder: Path, vocab: Sequence[str], vocab_size: int, max_length: int
) -> None:
    """Writes ``vocab.json``, ``merges.txt`` (:func:`merges_of`) and
    ``tokenizer_config.json`` (CLIP's special tokens, ``model_max_length =
    max_length``): the files :func:`read_bpe_files` and transformers'
    ``CLIPTokenizer`` read. ``vocab_size`` may exceed the vocabulary (rows of the
    embedding no token reaches)."""
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size {vocab_size} < {len(vocab)} vocabulary entries")
    (folder / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
        encoding="utf-8",
    )
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges_of(vocab))]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
    }
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2)
    )
