"""Tests for cdds_jax.data: readers, split checks, vocabulary, sources, synthetic data.

Everything is read back from generated files through the real readers. References are
independent: plain NumPy on the written arrays, Python loops over captions.
"""

import collections
import json
import os
import pathlib
import pickle
import warnings

import numpy as np
import pytest

from cdds_jax import data
from cdds_jax.data import split as split_lib
from cdds_jax.data import synthetic
from xmodal import files

SMALL = dict(
    num_images={"train": 24, "dev": 6, "test": 8},
    num_tokens=6,
    image_dim=8,
    max_words=7,
    text_dim=5,
    num_concepts=12,
    concepts_per_image=3,
)


@pytest.fixture
def store(tmp_path) -> pathlib.Path:
    return synthetic.write_feature_store(tmp_path / "store", seed=3, **SMALL)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------
# Readers on valid files
# ---------------------------------------------------------------------------------------


def test_read_features_shapes_and_index(store):
    s = data.read_features(store, "train")
    assert s.num_images == 24 and s.num_captions == 120
    assert s.num_tokens == 6 and s.image_dim == 8
    assert s.max_caption_tokens == 7 and s.text_dim == 5
    assert isinstance(s.images, np.memmap) and isinstance(s.caption_features, np.memmap)
    assert s.images.dtype == np.float16 and s.images.shape == (24, 6, 8)
    assert s.caption_features.shape == (120, 7, 5)
    assert s.caption_to_image.dtype == np.int64 and s.caption_lengths.dtype == np.int32
    np.testing.assert_array_equal(s.caption_to_image, np.arange(120) // 5)
    assert s.meta["dataset"] == "synthetic" and s.meta["split"] == "train"
    assert s.finite_checked == {"images", "caption_features"}
    assert s.source_file("images").endswith(os.path.join("train", "images.npy"))
    # captions.txt words line up with the feature rows
    assert len(s.captions) == 120
    for i, line in enumerate(s.captions):
        assert len(data.tokenize(line)) == s.caption_lengths[i] >= 3
    # zero padding past each length (loop reference)
    feats = np.asarray(s.caption_features, np.float32)
    for i in range(s.num_captions):
        assert not feats[i, s.caption_lengths[i] :].any()
        assert np.abs(feats[i, : s.caption_lengths[i]]).sum(-1).min() > 0


def test_uneven_store_index_and_concept_words(tmp_path):
    root = synthetic.write_feature_store(
        tmp_path, seed=5, uneven=True, **{**SMALL, "num_images": {"test": 30}}
    )
    s = data.read_features(root, "test")
    counts = np.bincount(s.caption_to_image, minlength=30)
    assert counts.min() >= 5 and counts.max() <= 7 and len(set(counts.tolist())) > 1
    assert s.num_captions == counts.sum()
    assert np.any(np.diff(s.caption_to_image) < 0)  # shuffled order
    # Captions of one image mention only its concepts; different captions differ.
    by_image = collections.defaultdict(list)
    for line, img in zip(s.captions, s.caption_to_image, strict=True):
        content = {w for w in line.split() if w not in synthetic.FILLER_WORDS}
        assert 2 <= len(content) <= 3, line
        by_image[int(img)].append(frozenset(content))
    for sets in by_image.values():
        assert len(frozenset().union(*sets)) == 3
        assert len(set(sets)) >= 3  # 4 subsets of size >= 2 cycled over >= 5 captions


def test_word_features_match_caption_text(store):
    """Token j of captions.npy is word j of captions.txt: same word -> close features."""
    s = data.read_features(store, "train")
    feats = np.asarray(s.caption_features, np.float64)
    by_word = collections.defaultdict(list)
    for i, line in enumerate(s.captions):
        for j, w in enumerate(line.split()):
            if w not in synthetic.FILLER_WORDS:
                by_word[w].append(feats[i, j])
    means = {w: np.mean(v, 0) for w, v in by_word.items() if len(v) >= 3}
    within = np.mean(
        [np.mean(np.sum((np.array(by_word[w]) - m) ** 2, -1)) for w, m in means.items()]
    )
    centres = np.array(list(means.values()))
    between = np.mean(np.sum((centres - centres.mean(0)) ** 2, -1))
    assert len(means) >= 8 and within < 0.3 * between


def test_read_scan_precomp(tmp_path):
    root = synthetic.write_scan_precomp(
        tmp_path, seed=1, num_images={"train": 10, "test": 4}, num_tokens=5, image_dim=6
    )
    s = data.read_split("scan_precomp", root, "train")
    assert s.images.dtype == np.float32 and s.images.shape == (10, 5, 6)
    assert (
        s.num_captions == 50
        and s.caption_features is None
        and s.caption_lengths is None
    )
    np.testing.assert_array_equal(s.caption_to_image, np.arange(50) // 5)
    assert s.meta["captions_per_image"] == 5 and s.format == "scan_precomp"
    assert "i // 5" in s.source_file("caption_to_image")
    # Same world and stream as the feature store: identical images and captions.
    feat = synthetic.write_feature_store(
        tmp_path / "f", seed=1, num_images={"train": 10}, num_tokens=5, image_dim=6
    )
    f = data.read_features(feat, "train")
    assert f.captions == s.captions
    np.testing.assert_allclose(np.asarray(f.images, np.float32), s.images, atol=2e-2)


def test_read_scan_precomp_identity_and_bad_multiple(tmp_path):
    np.save(tmp_path / "dev_ims.npy", np.ones((3, 2, 4), np.float32))
    (tmp_path / "dev_caps.txt").write_text("a b\nc d\ne f\n")
    s = data.read_scan_precomp(tmp_path, "dev")
    np.testing.assert_array_equal(s.caption_to_image, [0, 1, 2])
    (tmp_path / "dev_caps.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(ValueError) as e:
        data.read_scan_precomp(tmp_path, "dev")
    msg = _one_line(e)
    assert (
        "dev_caps.txt" in msg and "multiple of the 3 images" in msg and "4 lines" in msg
    )
    with pytest.raises(FileNotFoundError) as e:
        data.read_scan_precomp(tmp_path, "test")
    assert "test_ims.npy" in _one_line(e) and "dev_caps.txt" in str(e.value)


def test_read_split_unknown_format(store):
    with pytest.raises(ValueError) as e:
        data.read_split("coco_json", store, "train")
    msg = _one_line(e)
    assert "'features'" in msg and "'scan_precomp'" in msg
    assert "laps" in msg and "karpathy" in msg and "coco_json" in msg


# ---------------------------------------------------------------------------------------
# Bad inputs: one clear error each
# ---------------------------------------------------------------------------------------


def _corrupt(folder: pathlib.Path, name: str, arr) -> None:
    np.save(folder / name, arr)


def _load(folder: pathlib.Path, name: str) -> np.ndarray:
    return np.load(folder / name)


def _meta_without(folder: pathlib.Path, *keys: str) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    for k in keys:
        meta.pop(k)
    (folder / "meta.json").write_text(json.dumps(meta))


CORRUPTIONS = {
    # name: (corrupt(folder), exception, words the message must contain)
    "missing_images": (
        lambda f: (f / "images.npy").unlink(),
        FileNotFoundError,
        ["images.npy", "[images]", "captions.npy", "meta.json"],
    ),
    "missing_meta": (
        lambda f: (f / "meta.json").unlink(),
        FileNotFoundError,
        ["meta.json", "images.npy"],
    ),
    "missing_lengths": (
        lambda f: (f / "caption_lengths.npy").unlink(),
        FileNotFoundError,
        ["caption_lengths.npy", "[caption_lengths]", "captions.npy"],
    ),
    "no_captions": (
        lambda f: [
            (f / n).unlink()
            for n in ("captions.npy", "caption_lengths.npy", "captions.txt")
        ],
        FileNotFoundError,
        ["[captions]", "captions.txt", "images.npy"],
    ),
    "images_2d": (
        lambda f: _corrupt(f, "images.npy", _load(f, "images.npy")[:, 0]),
        ValueError,
        ["images.npy", "[images]", "3-D", "2-D"],
    ),
    "images_float64": (
        lambda f: _corrupt(f, "images.npy", _load(f, "images.npy").astype(np.float64)),
        ValueError,
        ["images.npy", "[images]", "float16 or float32", "float64"],
    ),
    "images_zero_dim": (
        lambda f: _corrupt(f, "images.npy", np.zeros((24, 0, 8), np.float32)),
        ValueError,
        ["images.npy", "[images]", "(24, 0, 8)"],
    ),
    "captions_4d": (
        lambda f: _corrupt(f, "captions.npy", _load(f, "captions.npy")[..., None]),
        ValueError,
        ["captions.npy", "[caption_features]", "3-D", "4-D"],
    ),
    "captions_rows": (
        lambda f: _corrupt(f, "captions.npy", _load(f, "captions.npy")[:-1]),
        ValueError,
        ["captions.npy", "[caption_features]", "120 rows", "119 rows"],
    ),
    "lengths_zero": (
        lambda f: _corrupt(
            f,
            "caption_lengths.npy",
            np.r_[_load(f, "caption_lengths.npy")[:-1], 0].astype(np.int32),
        ),
        ValueError,
        ["caption_lengths.npy", "[caption_lengths]", "[1, 7]", "0 at caption 119"],
    ),
    "lengths_too_long": (
        lambda f: _corrupt(f, "caption_lengths.npy", np.full(120, 8, np.int32)),
        ValueError,
        ["caption_lengths.npy", "[caption_lengths]", "[1, 7]", "8 at caption 0"],
    ),
    "lengths_float": (
        lambda f: _corrupt(f, "caption_lengths.npy", np.full(120, 3.0)),
        ValueError,
        ["caption_lengths.npy", "[caption_lengths]", "integer", "float64"],
    ),
    "lengths_count": (
        lambda f: _corrupt(f, "caption_lengths.npy", np.full(119, 3, np.int32)),
        ValueError,
        ["caption_lengths.npy", "[caption_lengths]", "120", "119"],
    ),
    "index_out_of_range": (
        lambda f: _corrupt(f, "caption_to_image.npy", np.r_[np.arange(119) // 5, 24]),
        ValueError,
        ["caption_to_image.npy", "[caption_to_image]", "[0, 24)", "24 at caption 119"],
    ),
    "index_negative": (
        lambda f: _corrupt(
            f, "caption_to_image.npy", np.r_[-1, np.arange(1, 120) // 5]
        ),
        ValueError,
        ["caption_to_image.npy", "[caption_to_image]", "-1 at caption 0"],
    ),
    "index_float": (
        lambda f: _corrupt(f, "caption_to_image.npy", np.arange(120) / 5.0),
        ValueError,
        ["caption_to_image.npy", "[caption_to_image]", "integer", "float64"],
    ),
    "index_2d": (
        lambda f: _corrupt(f, "caption_to_image.npy", (np.arange(120) // 5)[:, None]),
        ValueError,
        ["caption_to_image.npy", "[caption_to_image]", "1-D", "2-D"],
    ),
    "index_length": (
        lambda f: _corrupt(f, "caption_to_image.npy", np.arange(115) // 5),
        ValueError,
        ["captions.npy", "115 rows", "120 rows"],
    ),
    "image_without_caption": (
        lambda f: _corrupt(
            f, "caption_to_image.npy", np.minimum(np.arange(120) // 5, 22)
        ),
        ValueError,
        ["caption_to_image.npy", "at least one caption", "[23]"],
    ),
    "text_line_count": (
        lambda f: (f / "captions.txt").write_text(
            "".join(f"a b c {i}\n" for i in range(121))
        ),
        ValueError,
        ["captions.txt", "[captions]", "120 lines", "121 lines"],
    ),
    "text_blank_line": (
        lambda f: (f / "captions.txt").write_text("a b\n\n" + "c d\n" * 118),
        ValueError,
        ["captions.txt", "[captions]", "line 2"],
    ),
    "empty_images": (
        lambda f: _corrupt(f, "images.npy", np.zeros((0, 6, 8), np.float16)),
        ValueError,
        ["images.npy", "[images]", "empty split", "0 images"],
    ),
    "empty_captions": (
        lambda f: [
            _corrupt(f, "caption_to_image.npy", np.zeros(0, np.int64)),
            _meta_without(f, "num_captions"),
        ],
        ValueError,
        ["caption_to_image.npy", "empty split", "0 captions"],
    ),
    "nan_image": (
        lambda f: _corrupt(f, "images.npy", _nan_at(_load(f, "images.npy"), 17)),
        ValueError,
        ["images.npy", "[images]", "finite", "row 17"],
    ),
    "inf_caption": (
        lambda f: _corrupt(
            f, "captions.npy", _nan_at(_load(f, "captions.npy"), 101, np.inf)
        ),
        ValueError,
        ["captions.npy", "[caption_features]", "finite", "row 101"],
    ),
    "meta_count": (
        lambda f: (f / "meta.json").write_text(json.dumps({"num_images": 25})),
        ValueError,
        ["meta.json", "meta.num_images", "24", "25"],
    ),
    "meta_not_json": (
        lambda f: (f / "meta.json").write_text("{not json"),
        ValueError,
        ["meta.json", "[meta]", "JSON"],
    ),
    "not_npy": (
        lambda f: (f / "images.npy").write_bytes(b"garbage"),
        ValueError,
        ["images.npy", "[images]", ".npy"],
    ),
}


def _nan_at(arr: np.ndarray, row: int, value=np.nan) -> np.ndarray:
    arr = arr.copy()
    arr[row, -1, -1] = value
    return arr


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_bad_inputs_raise_one_clear_error(store, case):
    corrupt, exc, words = CORRUPTIONS[case]
    corrupt(store / "train")
    with pytest.raises(exc) as e:
        data.read_features(store, "train")
    assert type(e.value) is exc
    msg = _one_line(e)
    for w in words:
        assert w in msg, (w, msg)


def test_missing_split_folder_lists_what_is_there(store):
    with pytest.raises(FileNotFoundError) as e:
        data.read_features(store, "val")
    msg = _one_line(e)
    assert "val" in msg and "train/" in msg and "dev/" in msg and "test/" in msg


def test_text_only_and_features_only_stores(store):
    folder = store / "train"
    (folder / "captions.txt").unlink()
    s = data.read_features(store, "train")
    assert s.captions is None and s.caption_features is not None
    with pytest.raises(ValueError, match=r"captions\.txt"):
        data.PairSource(
            s, text="tokens", vocab=data.Vocabulary.build(["a"]), max_words=5
        )
    folder = store / "dev"
    (folder / "captions.npy").unlink()
    (folder / "caption_lengths.npy").unlink()
    s = data.read_features(store, "dev")
    assert s.caption_features is None and len(s.captions) == 30
    with pytest.raises(ValueError, match=r"captions\.npy"):
        data.CaptionSource(s, text="features")


def test_nonfinite_checked_per_item_for_large_arrays(store, monkeypatch):
    folder = store / "train"
    _corrupt(folder, "images.npy", _nan_at(_load(folder, "images.npy"), 7, np.inf))
    _corrupt(folder, "captions.npy", _nan_at(_load(folder, "captions.npy"), 33))
    monkeypatch.setattr(split_lib, "FINITE_SCAN_MAX_BYTES", 0)
    s = data.read_features(store, "train")  # opening stays cheap: no scan
    assert s.finite_checked == frozenset()
    images = data.ImageSource(s)
    images[6]
    with pytest.raises(ValueError) as e:
        images[7]
    msg = _one_line(e)
    assert "images.npy" in msg and "[images]" in msg and "row 7" in msg
    pairs = data.PairSource(s)
    with pytest.raises(ValueError, match=r"images\.npy.*row 7"):
        pairs[36]  # caption 36 -> image 7
    with pytest.raises(ValueError) as e:
        pairs[33]
    assert "captions.npy" in _one_line(e) and "row 33" in str(e.value)
    # The per-item check survives pickling (spawned grain workers).
    with pytest.raises(ValueError, match="row 7"):
        pickle.loads(pickle.dumps(images))[7]


def test_scan_precomp_empty_split_names_the_file(tmp_path):
    np.save(tmp_path / "dev_ims.npy", np.ones((0, 2, 4), np.float32))
    (tmp_path / "dev_caps.txt").write_text("a b\n")
    with pytest.raises(ValueError) as e:
        data.read_scan_precomp(tmp_path, "dev")
    msg = _one_line(e)
    assert "dev_ims.npy" in msg and "empty split" in msg and "0 images" in msg
    np.save(tmp_path / "dev_ims.npy", np.ones((2, 2, 4), np.float32))
    (tmp_path / "dev_caps.txt").write_text("")
    with pytest.raises(ValueError) as e:
        data.read_scan_precomp(tmp_path, "dev")
    msg = _one_line(e)
    assert "dev_caps.txt" in msg and "empty split" in msg and "0 lines" in msg


def _zero_warnings(record) -> list[str]:
    return [str(w.message) for w in record if w.category is files.ZeroFeaturesWarning]


@pytest.mark.parametrize(
    "name, field", [("images.npy", "images"), ("captions.npy", "caption_features")]
)
def test_all_zero_store_features_warn(store, name, field):
    folder = store / "train"
    _corrupt(folder, name, np.zeros_like(_load(folder, name)))
    with pytest.warns(files.ZeroFeaturesWarning) as record:
        s = data.read_features(store, "train")
    (msg,) = _zero_warnings(record)
    assert "\n" not in msg and name in msg and f"[{field}]" in msg and "zero" in msg
    assert field in s.finite_checked  # still read: a warning, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("error", files.ZeroFeaturesWarning)
        data.read_features(store, "dev")  # real features: no warning


def test_all_zero_large_arrays_sampled_and_scan_images_warn(
    store, tmp_path, monkeypatch
):
    folder = store / "train"
    _corrupt(folder, "images.npy", np.zeros_like(_load(folder, "images.npy")))
    monkeypatch.setattr(split_lib, "FINITE_SCAN_MAX_BYTES", 0)
    with pytest.warns(files.ZeroFeaturesWarning, match=r"images\.npy \[images\]"):
        s = data.read_features(store, "train")
    assert s.finite_checked == frozenset()  # sampled, not scanned
    monkeypatch.undo()
    np.save(tmp_path / "dev_ims.npy", np.zeros((3, 2, 4), np.float32))
    (tmp_path / "dev_caps.txt").write_text("a\nb\nc\n")
    with pytest.warns(files.ZeroFeaturesWarning, match=r"dev_ims\.npy \[images\]"):
        data.read_scan_precomp(tmp_path, "dev")


def test_check_compatible_names_both_splits(tmp_path):
    a = synthetic.write_feature_store(tmp_path / "a", seed=1, **SMALL)
    train, dev = data.read_features(a, "train"), data.read_features(a, "dev")
    data.check_compatible({"train": train, "dev": dev, "test": None})
    for i, (changed, what, field) in enumerate(
        [
            ({"image_dim": 9}, "image feature dim D_v", "images"),
            ({"num_tokens": 5}, "tokens per image P", "images"),
            ({"text_dim": 4}, "caption feature dim D_t", "caption_features"),
        ]
    ):
        b = synthetic.write_feature_store(
            tmp_path / f"b{i}", seed=1, **{**SMALL, **changed}
        )
        other = data.read_features(b, "dev")
        with pytest.raises(ValueError) as e:
            data.check_compatible({"train": train, "dev": other})
        msg = _one_line(e)
        assert what in msg and "'train'" in msg and "'dev'" in msg, msg
        for s in (train, other):
            assert s.source_file(field) in msg, msg
            assert str(getattr(s, field).shape) in msg, msg
    # Splits without caption features are not compared on D_t.
    (a / "dev" / "captions.npy").unlink()
    (a / "dev" / "caption_lengths.npy").unlink()
    b = synthetic.write_feature_store(
        tmp_path / "t", seed=1, **{**SMALL, "text_dim": 4}
    )
    data.check_compatible(
        {"dev": data.read_features(a, "dev"), "test": data.read_features(b, "test")}
    )


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------


def _check_static(source, n_items=None):
    items = [source[i] for i in range(len(source) if n_items is None else n_items)]
    spec = {k: (v.shape, v.dtype) for k, v in items[0].items()}
    for it in items:
        assert {k: (v.shape, v.dtype) for k, v in it.items()} == spec
    return items, spec


def test_pair_source_features(store):
    s = data.read_features(store, "train")
    src = data.PairSource(s)
    assert len(src) == 120
    items, spec = _check_static(src)
    assert spec == {
        "image": ((6, 8), np.float32),
        "image_id": ((), np.int64),
        "index": ((), np.int64),
        "text": ((7, 5), np.float32),
        "text_mask": ((7,), np.bool_),
    }
    imgs = np.load(store / "train" / "images.npy").astype(np.float32)
    caps = np.load(store / "train" / "captions.npy").astype(np.float32)
    lens = np.load(store / "train" / "caption_lengths.npy")
    c2i = np.load(store / "train" / "caption_to_image.npy")
    for i, it in enumerate(items):
        assert it["image_id"] == c2i[i] and it["index"] == i
        np.testing.assert_array_equal(it["image"], imgs[c2i[i]])
        np.testing.assert_array_equal(it["text"], caps[i])
        np.testing.assert_array_equal(it["text_mask"], np.arange(7) < lens[i])
    assert src[-1]["index"] == 119
    with pytest.raises(IndexError):
        src[120]
    # max_words truncates (mask and zeros follow) or zero-pads
    short = data.PairSource(s, max_words=4)
    long = data.PairSource(s, max_words=9)
    for i in range(0, 120, 7):
        a, b = short[i], long[i]
        n = min(lens[i], 4)
        np.testing.assert_array_equal(a["text"][:n], caps[i, :n])
        assert not a["text"][n:].any() and a["text_mask"].sum() == n
        np.testing.assert_array_equal(b["text"][:7], caps[i])
        assert not b["text"][7:].any() and b["text_mask"].sum() == lens[i]


def test_sources_tokens_and_vocabulary(store, tmp_path):
    train = data.read_features(store, "train")
    vocab = data.Vocabulary.build(train.captions)
    assert set(vocab.tokens[4:]) == {w for line in train.captions for w in line.split()}
    test = data.read_features(store, "test")
    src = data.CaptionSource(test, text="tokens", vocab=vocab, max_words=9)
    items, spec = _check_static(src)
    assert spec == {
        "tokens": ((9,), np.int32),
        "text_mask": ((9,), np.bool_),
        "image_id": ((), np.int64),
        "index": ((), np.int64),
    }
    for i, it in enumerate(items):
        words = data.tokenize(test.captions[i])
        expect = ["<start>", *[w if w in vocab else "<unk>" for w in words], "<end>"]
        n = len(expect)
        assert [vocab.id_to_token(t) for t in it["tokens"][:n]] == expect
        assert not it["tokens"][n:].any()
        np.testing.assert_array_equal(it["text_mask"], np.arange(9) < n)
        assert it["image_id"] == test.caption_to_image[i] and it["index"] == i
    pairs = data.PairSource(train, text="tokens", vocab=vocab, max_words=9)
    _, spec = _check_static(pairs, 10)
    assert set(spec) == {"image", "image_id", "index", "tokens", "text_mask"}
    images = data.ImageSource(test)
    items, spec = _check_static(images)
    assert len(images) == 8 and spec == {
        "image": ((6, 8), np.float32),
        "index": ((), np.int64),
    }
    for bad, match in [
        (dict(text="tokens", max_words=9), "vocab"),
        (dict(text="tokens", vocab=vocab), "max_words"),
        (dict(text="tokens", vocab=vocab, max_words=1), "max_words"),
        (dict(text="words"), "text"),
    ]:
        with pytest.raises(ValueError, match=match):
            data.PairSource(train, **bad)


def test_sources_pickle_without_array_data(store):
    s = data.read_features(store, "train")
    vocab = data.Vocabulary.build(s.captions)
    for src in (
        data.PairSource(s),
        data.PairSource(s, text="tokens", vocab=vocab, max_words=8),
        data.ImageSource(s),
        data.CaptionSource(s),
    ):
        blob = pickle.dumps(src)
        assert len(blob) < s.images.nbytes + s.caption_features.nbytes
        back = pickle.loads(blob)
        assert isinstance(back.split.images, np.memmap)
        for i in (0, 5, len(src) - 1):
            a, b = src[i], back[i]
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


def test_unpickle_detects_changed_file(store):
    s = data.read_features(store, "train")
    blob = pickle.dumps(data.ImageSource(s))
    np.save(store / "train" / "images.npy", np.zeros((3, 6, 8), np.float16))
    with pytest.raises(ValueError, match=r"images\.npy.*file changed"):
        pickle.loads(blob)


def test_grain_map_dataset_batches(store):
    grain = pytest.importorskip("grain")
    s = data.read_features(store, "train")
    ds = (
        grain.MapDataset.source(data.PairSource(s))
        .seed(0)
        .shuffle()
        .batch(4, drop_remainder=True)
    )
    batch = ds[0]
    assert batch["image"].shape == (4, 6, 8) and batch["text"].shape == (4, 7, 5)
    assert batch["text_mask"].dtype == np.bool_ and batch["image_id"].shape == (4,)


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------


def test_tokenize():
    assert data.tokenize("A man's hat, RED. ") == ["a", "man's", "hat", ",", "red", "."]
    assert data.tokenize("two  dogs\tplay!!") == ["two", "dogs", "play", "!", "!"]
    assert data.tokenize("zorb17 of a") == ["zorb17", "of", "a"]
    assert data.tokenize("  ") == []


def test_vocabulary_build_order_and_limits(tmp_path):
    caps = ["b a a", "c b a", "d", "e e"]
    v = data.Vocabulary.build(caps)
    # counts: a 3, b 2, e 2, c 1, d 1 -> by count desc then token
    assert v.tokens == ["<pad>", "<unk>", "<start>", "<end>", "a", "b", "e", "c", "d"]
    assert data.Vocabulary.build(caps, min_count=2).tokens[4:] == ["a", "b", "e"]
    assert data.Vocabulary.build(caps, max_size=6).tokens[4:] == ["a", "b"]
    assert data.Vocabulary.build(reversed(caps)) == v
    ids, n = v.encode("A e zzz", 6)
    assert ids.dtype == np.int32 and ids.tolist() == [2, 4, 6, 1, 3, 0] and n == 5
    ids, n = v.encode("a b c d e", 5)  # truncated, <end> kept
    assert ids.tolist() == [2, 4, 5, 7, 3] and n == 5
    ids, n = v.encode("", 3)
    assert ids.tolist() == [2, 3, 0] and n == 2
    assert v.decode(v.encode("b zzz c", 8)[0]) == ["b", "<unk>", "c"]
    path = tmp_path / "vocab.json"
    v.save(path)
    back = data.Vocabulary.load(path)
    assert back == v and len(back) == 9 and back.token_to_id("e") == 6
    assert pickle.loads(pickle.dumps(v)) == v
    with pytest.raises(ValueError, match="max_len"):
        v.encode("a", 1)
    with pytest.raises(ValueError, match="max_size"):
        data.Vocabulary.build(caps, max_size=3)
    with pytest.raises(ValueError, match="duplicates"):
        data.Vocabulary([*data.Vocabulary.SPECIAL_TOKENS, "a", "a"])
    path.write_text(json.dumps({"tokens": ["a", "<pad>"]}))
    with pytest.raises(ValueError, match=r"vocab\.json.*start with"):
        data.Vocabulary.load(path)


# ---------------------------------------------------------------------------------------
# Synthetic generator
# ---------------------------------------------------------------------------------------


def _file_bytes(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generator_is_deterministic(tmp_path):
    kw = dict(SMALL, uneven=True)
    a = _file_bytes(synthetic.write_feature_store(tmp_path / "a", seed=11, **kw))
    b = _file_bytes(synthetic.write_feature_store(tmp_path / "b", seed=11, **kw))
    c = _file_bytes(synthetic.write_feature_store(tmp_path / "c", seed=12, **kw))
    assert a == b and len(a) == 3 * 6
    assert a.keys() == c.keys() and a["train/images.npy"] != c["train/images.npy"]
    # Splits draw from their own streams: dropping one leaves the others unchanged.
    d = _file_bytes(
        synthetic.write_feature_store(
            tmp_path / "d", seed=11, **{**kw, "num_images": {"test": 8}}
        )
    )
    assert d["test/images.npy"] == a["test/images.npy"]
    assert d["test/captions.txt"] == a["test/captions.txt"]
    s1 = _file_bytes(
        synthetic.write_scan_precomp(tmp_path / "s1", seed=2, num_images={"dev": 3})
    )
    s2 = _file_bytes(
        synthetic.write_scan_precomp(tmp_path / "s2", seed=2, num_images={"dev": 3})
    )
    assert s1 == s2 and set(s1) == {"dev_ims.npy", "dev_caps.txt"}


def test_generator_argument_errors(tmp_path):
    for bad, match in [
        (dict(num_tokens=2), "num_tokens"),
        (dict(max_words=3), "max_words"),
        (dict(concepts_per_image=13), "concepts_per_image"),
        (dict(num_images={"train": 0}), "num_images"),
        (dict(dtype="float64"), "dtype"),
        (dict(noise=-1.0), "noise"),
    ]:
        with pytest.raises(ValueError, match=match):
            synthetic.write_feature_store(tmp_path, seed=0, **{**SMALL, **bad})


def test_ensure_demo_store_writes_once(tmp_path):
    kw = dict(SMALL, seed=4)
    root = synthetic.ensure_demo_store(tmp_path / "cache", **kw)
    stamp = (root / "train" / "images.npy").stat().st_mtime_ns
    again = synthetic.ensure_demo_store(tmp_path / "cache", **kw)
    assert again == root and (root / "train" / "images.npy").stat().st_mtime_ns == stamp
    other = synthetic.ensure_demo_store(tmp_path / "cache", **{**kw, "seed": 5})
    assert other != root
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [root.name, other.name]
    )
    assert data.read_features(root, "dev").num_images == 6
    with pytest.raises(ValueError, match="seed"):
        synthetic.ensure_demo_store(tmp_path / "cache", **SMALL)


def _t2i_r1(pred: np.ndarray, images: np.ndarray, c2i: np.ndarray) -> float:
    """Text -> image R@1 by cosine of centred vectors (loop over captions)."""
    p = pred - pred.mean(0)
    v = images - images.mean(0)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    hits = 0
    for i in range(len(c2i)):
        scores = v @ p[i]
        hits += int(np.sum(scores > scores[c2i[i]]) == 0)
    return hits / len(c2i)


def test_planted_structure_is_learnable_but_not_by_chance(tmp_path):
    root = synthetic.write_feature_store(
        tmp_path, seed=0, num_images={"train": 500, "test": 100}
    )
    train, test = data.read_features(root, "train"), data.read_features(root, "test")

    def pooled_text(s):
        f = np.asarray(s.caption_features, np.float64)
        m = np.arange(f.shape[1])[None, :] < s.caption_lengths[:, None]
        return (f * m[..., None]).sum(1) / m.sum(1, keepdims=True)

    def pooled_images(s):
        return np.asarray(s.images, np.float64).mean(1)

    x_tr = np.c_[pooled_text(train), np.ones(train.num_captions)]
    y_tr = pooled_images(train)[train.caption_to_image]
    w = np.linalg.lstsq(x_tr, y_tr, rcond=None)[0]
    x_te = np.c_[pooled_text(test), np.ones(test.num_captions)]
    y_te = pooled_images(test)
    chance = 1.0 / test.num_images
    r1_ls = _t2i_r1(x_te @ w, y_te, test.caption_to_image)
    rng = np.random.default_rng(0)
    r1_rand = np.mean(
        [
            _t2i_r1(x_te @ rng.standard_normal(w.shape), y_te, test.caption_to_image)
            for _ in range(5)
        ]
    )
    assert r1_ls > 8 * chance, r1_ls  # ~0.14 measured
    assert r1_rand < 2.5 * chance, r1_rand  # ~0.01 measured
    assert r1_ls < 0.9  # nuisance + noise: not trivial

    # The text alone carries it too: bag of words (via the Vocabulary) -> image means.
    vocab = data.Vocabulary.build(train.captions)

    def bow(s):
        out = np.zeros((s.num_captions, len(vocab)))
        for i, line in enumerate(s.captions):
            for w_ in data.tokenize(line):
                out[i, vocab.token_to_id(w_)] += 1.0
        return out

    wb = np.linalg.lstsq(bow(train), y_tr, rcond=None)[0]
    r1_bow = _t2i_r1(bow(test) @ wb, y_te, test.caption_to_image)
    assert r1_bow > 8 * chance, r1_bow
