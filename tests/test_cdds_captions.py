"""LAPS's caption size augmentation (cdds_jax.data.captions; docs/cdds.md §12.8).

The transform is checked against a plain Python loop over words written here (the
LAPS rule, with the random draws the module documents), the grouping of pieces into
words against the tokenizer's own pre-tokeniser and WordPiece model, the rates
statistically, and the switch through the config and the data layer (through grain
workers and a resume: tests/test_cdds_raw_data.py).
"""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest

from cdds_jax.data import captions, images, inputs, synthetic_images
from cdds_jax.data.text import TokenTable, WordPieces
from configs import cdds_base, coco, flickr
from xmodal import config as config_lib
from xmodal import pipeline
from xmodal.backbones import default_vocab, load_tokenizer
from xmodal.backbones.tokenizer import write_wordpiece_files

#: BERT-base's vocabulary size: random ids rarely hit a caption's own ids.
VOCAB_SIZE = 30522


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wordpiece")
    vocab = list(dict.fromkeys([*default_vocab(), *synthetic_images.caption_words()]))
    write_wordpiece_files(folder, vocab, VOCAB_SIZE, 512)
    return load_tokenizer(folder)


def _word_pieces(tok, caption: str) -> list[list[int]]:
    """LAPS's two passes: basic tokens, then each one's WordPiece ids."""
    t = tok.tokenizer
    words = t.pre_tokenizer.pre_tokenize_str(t.normalizer.normalize_str(caption))
    return [[p.id for p in t.model.tokenize(w)] for w, _ in words]


def _reference(tok, caption, seed, epoch, index, rate, length) -> np.ndarray:
    """The LAPS rule as a loop over words, with the module's draws, framed and padded."""
    words = _word_pieces(tok, caption)
    rng = captions.caption_rng(seed, epoch, index)
    threshold = round(rate * 2**32)
    u = rng.integers(0, 2**32, size=len(words), dtype=np.uint64)
    action = rng.integers(0, 10, size=len(words))
    random_ids = rng.integers(0, VOCAB_SIZE, size=sum(map(len, words)))
    mask = tok.tokenizer.token_to_id("[MASK]")
    body, k = [], 0
    for w, pieces in enumerate(words):
        for piece in pieces:
            if int(u[w]) >= threshold:  # kept
                body.append(piece)
            elif action[w] < 5:  # masked
                body.append(mask)
            elif action[w] == 5:  # a random vocabulary id
                body.append(int(random_ids[k]))
            k += 1  # deleted otherwise
    body = body[: length - 2]
    cls_, sep = tok.tokenizer.token_to_id("[CLS]"), tok.tokenizer.token_to_id("[SEP]")
    out = [cls_, *body, sep]
    return np.array(out + [tok.pad_id] * (length - len(out)), np.int32)


def _item(index: int, length: int) -> dict[str, np.ndarray]:
    """A training item whose text fields the transform replaces."""
    return {
        "index": np.int64(index),
        "image_id": np.int64(index // 5),
        "tokens": np.zeros((length,), np.int32),
        "text_mask": np.zeros((length,), bool),
    }


def _random_captions(n: int, num_words: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = synthetic_images.caption_words()
    return [" ".join(rng.choice(words, size=num_words)) for _ in range(n)]


CAPTIONS = [
    "A red xylophone, isn't it?",
    "two green squares and a   blue circle .",
    "Café au lait-coloured triangles!!",
    "x",
    " ".join(["purple cross"] * 30),  # longer than L
]


def test_word_pieces_group_pieces_into_basic_tokens(tok):
    pieces = WordPieces.encode(CAPTIONS, tok)
    assert len(pieces) == len(CAPTIONS) and pieces.offsets[0] == 0
    for i, caption in enumerate(CAPTIONS):
        want = _word_pieces(tok, caption)
        ids, words = pieces.caption(i)
        np.testing.assert_array_equal(ids, [p for w in want for p in w])
        np.testing.assert_array_equal(words, [j for j, w in enumerate(want) for _ in w])
    assert max(map(len, _word_pieces(tok, CAPTIONS[0]))) > 1  # multi-piece words
    assert (pieces.ids.dtype, pieces.words.dtype) == (np.int32, np.int32)
    special = [tok.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]")]
    assert [pieces.cls_id, pieces.sep_id, pieces.mask_id] == special
    assert pieces.vocab_size == VOCAB_SIZE and pieces.pad_id == tok.pad_id


@pytest.mark.parametrize("length", [5, 12, 64])
def test_rate_zero_gives_the_token_table(tok, length):
    # The augmentation's framing, truncation and padding are the TokenTable's.
    table = TokenTable.encode(CAPTIONS, tok, length)
    t = captions.CaptionAugment(WordPieces.encode(CAPTIONS, tok), seed=0, rate=0.0)
    for i in range(len(CAPTIONS)):
        out = t(_item(i, length), epoch=3)
        np.testing.assert_array_equal(out["tokens"], table.ids[i])
        np.testing.assert_array_equal(
            out["text_mask"], np.arange(length) < table.lengths[i]
        )
        assert out["tokens"].dtype == np.int32 and out["text_mask"].dtype == bool


@pytest.mark.parametrize("rate", [0.2, 0.5, 1.0])
def test_transform_equals_the_reference_loop(tok, rate):
    texts = CAPTIONS + _random_captions(40, 9, seed=1)
    t = captions.CaptionAugment(WordPieces.encode(texts, tok), seed=7, rate=rate)
    length = 16
    for epoch in range(3):
        for i, text in enumerate(texts):
            out = t(_item(i, length), epoch=epoch)
            want = _reference(tok, text, 7, epoch, i, rate, length)
            np.testing.assert_array_equal(out["tokens"], want, err_msg=f"{i} {epoch}")
            # [CLS] first, [SEP] last of the mask, padding after: never augmented.
            n = int(out["text_mask"].sum())
            np.testing.assert_array_equal(out["text_mask"], np.arange(length) < n)
            assert out["tokens"][0] == t.pieces.cls_id
            assert out["tokens"][n - 1] == t.pieces.sep_id
            assert (out["tokens"][n:] == tok.pad_id).all()
    # A caption longer than L keeps [SEP] last (all L ids used).
    long = t(_item(4, length), epoch=0)
    assert long["text_mask"].all() and long["tokens"][-1] == t.pieces.sep_id


def test_rates_of_the_rule(tok):
    # Single-piece words, no truncation: deleted = words - body length, masked = the
    # [MASK] ids, random = ids not in the caption.
    texts = _random_captions(2500, 10, seed=2)
    assert all(len(w) == 1 for w in _word_pieces(tok, texts[0]))
    t = captions.CaptionAugment(WordPieces.encode(texts, tok), seed=0, rate=0.2)
    counts = dict(words=0, masked=0, random=0, deleted=0)
    drawn = []
    for i in range(len(texts)):
        ids = set(t.pieces.caption(i)[0].tolist())
        out = t(_item(i, 16), epoch=0)
        body = out["tokens"][1 : int(out["text_mask"].sum()) - 1]
        counts["words"] += 10
        counts["deleted"] += 10 - body.size
        counts["masked"] += int((body == t.pieces.mask_id).sum())
        new = [int(b) for b in body if b != t.pieces.mask_id and b not in ids]
        counts["random"] += len(new)
        drawn += new
    affected = counts["masked"] + counts["random"] + counts["deleted"]
    # 25,000 words: std of the affected fraction 0.0025, of the shares <= 0.008.
    assert abs(affected / counts["words"] - 0.2) < 0.01, counts
    assert abs(counts["masked"] / affected - 0.5) < 0.03, counts
    assert abs(counts["random"] / affected - 0.1) < 0.02, counts
    assert abs(counts["deleted"] / affected - 0.4) < 0.03, counts
    # Random ids: uniform over the whole vocabulary (not only the caption words).
    drawn = np.asarray(drawn)
    assert (
        abs(drawn.mean() / VOCAB_SIZE - 0.5) < 0.05 and drawn.max() > 0.9 * VOCAB_SIZE
    )


def test_multi_piece_words_are_augmented_as_one_unit(tok):
    # Words of four single-letter pieces: every block of four output ids is a whole
    # word kept, four [MASK], or four random ids (deletions remove whole blocks).
    rng = np.random.default_rng(3)
    letters = list("bcfhjkmpqvwxz")  # no ##s / ##ly / ##ing / ##ed merges
    texts = [
        " ".join("".join(rng.choice(letters, 4)) for _ in range(6)) for _ in range(300)
    ]
    assert [len(w) for w in _word_pieces(tok, texts[0])] == [4] * 6
    t = captions.CaptionAugment(WordPieces.encode(texts, tok), seed=1, rate=0.5)
    mask = t.pieces.mask_id
    kinds = set()
    for i in range(len(texts)):
        ids = t.pieces.caption(i)[0]
        originals = {tuple(ids[j : j + 4]) for j in range(0, ids.size, 4)}
        out = t(_item(i, 40), epoch=0)
        body = out["tokens"][1 : int(out["text_mask"].sum()) - 1]
        assert body.size % 4 == 0
        for block in body.reshape(-1, 4):
            if tuple(block) in originals:
                kinds.add("kept")
            elif (block == mask).all():
                kinds.add("masked")
            else:
                assert not (block == mask).any(), block
                kinds.add("random")
        if body.size < ids.size:
            kinds.add("deleted")
    assert kinds == {"kept", "masked", "random", "deleted"}


def test_draws_are_a_function_of_seed_epoch_and_index(tok):
    texts = [" ".join(["red square"] * 12)] * 2  # the same text at two indices
    t = captions.CaptionAugment(WordPieces.encode(texts, tok), seed=5, rate=0.5)

    def tokens(transform, index=0, epoch=0):
        return transform(_item(index, 32), epoch=epoch)["tokens"]

    a = tokens(t)
    np.testing.assert_array_equal(a, tokens(t))
    np.testing.assert_array_equal(a, tokens(pickle.loads(pickle.dumps(t))))
    assert not np.array_equal(a, tokens(t, epoch=1))
    assert not np.array_equal(a, tokens(t, index=1))
    other = captions.CaptionAugment(t.pieces, seed=6, rate=0.5)
    assert not np.array_equal(a, tokens(other))
    # A stream of its own: not the image augmentation's generator of the same item.
    mine = captions.caption_rng(5, 0, 0).integers(0, 2**32, 8)
    image = np.random.default_rng([5, 0, 0]).integers(0, 2**32, 8)
    assert not np.array_equal(mine, image)
    with pytest.raises(ValueError, match="caption_augment_rate"):
        captions.CaptionAugment(t.pieces, seed=0, rate=1.5)


def test_paper_rows_augment_captions_and_demos_do_not():
    for module in (flickr, coco):
        for row, spec in cdds_base.PAPER_ROWS.items():
            c = module.get_config(row)
            # The BERT rows; clip_vitl's CLIP text has no [MASK] (docs/cdds.md §3.5).
            bert = spec.text_encoder == "bert"
            assert c.data.caption_augment == bert, row
            assert c.data.caption_augment_rate == 0.2, row
        for arg in ("demo", "tiny", "scan", None):
            assert not module.get_config(arg).data.caption_augment, arg
    assert not flickr.get_config("demo_raw").data.caption_augment


def _demo_raw(tmp_path: pathlib.Path, **overrides):
    c = config_lib.load_config("configs/flickr.py:demo_raw")
    small = {
        "data.synthetic.num_train": 10,
        "data.synthetic.num_dev": 4,
        "data.synthetic.num_test": 4,
        **overrides,
    }
    config_lib.apply_overrides(c, [f"{k}={v}" for k, v in small.items()])
    return inputs.load_data(c, tmp_path, splits=("train",))


@pytest.fixture
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.usefixtures("_cache")
def test_switch_in_the_data_layer(tmp_path):
    off = _demo_raw(tmp_path)
    on = _demo_raw(tmp_path, **{"data.caption_augment": True})
    source = off.pair_source(off.train)
    image_only = off.train_transform()
    assert isinstance(image_only, images.TrainImageTransform)
    chain = on.train_transform()
    assert isinstance(chain, pipeline.Chain)
    assert [type(t) for t in chain.transforms] == [
        images.TrainImageTransform,
        captions.CaptionAugment,
    ]
    # Off: today's items bit for bit (the image transform alone, the TokenTable ids).
    today = images.TrainImageTransform(off.image_spec, off.seed)
    changed = 0
    for i in range(len(source)):
        a, b = image_only(source[i], epoch=1), today(source[i], epoch=1)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_array_equal(a["tokens"], off.tokens(off.train).ids[i])
        # On: the same images, augmented captions of the same shape.
        c = chain(source[i], epoch=1)
        np.testing.assert_array_equal(c["image"], a["image"])
        assert c["tokens"].shape == a["tokens"].shape
        changed += not np.array_equal(c["tokens"], a["tokens"])
    assert changed > len(source) // 4  # 50 captions of 4-6 words at rate 0.2


@pytest.mark.usefixtures("_cache")
def test_switch_needs_bert_ids(tmp_path):
    c = config_lib.load_config("configs/flickr.py:tiny")
    config_lib.apply_overrides(c, ["data.caption_augment=True"])
    with pytest.raises(ValueError) as e:
        inputs.load_data(c, tmp_path, splits=("train",))
    msg = str(e.value)
    assert "\n" not in msg and "data.caption_augment" in msg and "'features'" in msg
    config_lib.apply_overrides(c, ["model.text_encoder=bigru"])
    with pytest.raises(ValueError, match="'bigru'"):
        inputs.load_data(c, tmp_path, splits=("train",))
    with pytest.raises(ValueError, match=r"data\.caption_augment_rate"):
        _demo_raw(
            tmp_path, **{"data.caption_augment": True, "data.caption_augment_rate": 1.5}
        )
