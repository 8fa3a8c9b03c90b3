"""Tests for decalign_jax.data (MMSA reader, standardisation, IEMOCAP adapter, grain
source) and decalign_jax.data.synthetic (files in the real formats with a planted signal).

Every file is written by the generator and read back through the real readers;
references are independent float64 NumPy code written from docs/decalign.md, 'Data'.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from decalign_jax import data
from decalign_jax.data import (
    MMSAFormatError,
    MMSASource,
    MMSASplit,
    read_mmsa,
    synthetic,
)
from xmodal.files import ZeroFeaturesWarning

SMALL = {"train": 48, "valid": 16, "test": 24}
F32_MAX = float(np.finfo(np.float32).max)


def _load(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _dump(obj, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmsa")
    mosi = synthetic.write_mmsa_pickle(
        root / "MOSI" / "aligned_50.pkl",
        seed=1,
        dataset="mosi",
        sizes=SMALL,
        seq_lens=(8, 8, 8),
        dims=(16, 5, 20),
    )
    sims = synthetic.write_mmsa_pickle(
        root / "SIMS" / "unaligned_39.pkl",
        seed=2,
        dataset="sims",
        sizes=SMALL,
        seq_lens=(7, 30, 11),
        dims=(16, 6, 12),
    )
    mosei = synthetic.write_mmsa_pickle(
        root / "MOSEI" / "aligned_50.pkl",
        seed=3,
        dataset="mosei",
        sizes=SMALL,
        seq_lens=(8, 8, 8),
        dims=(16, 9, 7),
        corrupt_audio=True,
    )
    return {"mosi": mosi, "sims": sims, "mosei": mosei}


# ------------------------------------------------------------------ float64 references


def _ref_sanitise(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    bad |= np.abs(np.where(bad, 0.0, x)) > F32_MAX
    x[bad] = 0.0
    return x


def _ref_standardise(
    splits: dict[str, np.ndarray], percentiles
) -> dict[str, np.ndarray]:
    """docs/decalign.md §9.11, one feature dim at a time, train statistics only."""
    train = splits["train"]
    out = {s: np.empty_like(x, dtype=np.float64) for s, x in splits.items()}
    for d in range(train.shape[2]):
        column = train[:, :, d].ravel()
        lo, hi = np.percentile(column, percentiles)
        clipped = np.minimum(np.maximum(column, lo), hi)
        mean = clipped.sum() / clipped.size
        std = max(np.sqrt(((clipped - mean) ** 2).sum() / clipped.size), 1e-6)
        for s, x in splits.items():
            out[s][:, :, d] = (np.minimum(np.maximum(x[:, :, d], lo), hi) - mean) / std
    return out


def _ridge_corr(train_x, train_y, test_x, test_y, lam=10.0) -> float:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-8
    a = np.c_[(train_x - mu) / sd, np.ones(len(train_x))]
    b = np.c_[(test_x - mu) / sd, np.ones(len(test_x))]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ train_y)
    return float(np.corrcoef(b @ w, test_y)[0, 1])


def _pooled(split: MMSASplit) -> list[np.ndarray]:
    return [split.text.mean(1), split.audio.mean(1), split.vision.mean(1)]


# ------------------------------------------------------------------ happy paths


def test_read_mosi_aligned(files):
    raw = _load(files["mosi"])
    out = read_mmsa(files["mosi"], dataset="mosi")
    assert list(out) == ["train", "valid", "test"]
    for name, split in out.items():
        r = raw[name]
        n = SMALL[name]
        assert split.name == name and len(split) == n
        assert split.seq_lens == (8, 8, 8) and split.feature_dims == (16, 5, 20)
        for key in ("text", "audio", "vision"):
            assert getattr(split, key).dtype == np.float32
            # MOSI: no standardisation, values are the file's.
            np.testing.assert_array_equal(
                getattr(split, key), r[key].astype(np.float32)
            )
        assert split.label.dtype == np.float32 and split.label.shape == (n,)
        np.testing.assert_array_equal(split.label, r["regression_labels"])
        assert split.label.min() >= -3 and split.label.max() <= 3
        assert r["text_bert"].dtype == np.float64  # stored as float, like some releases
        assert split.text_bert.dtype == np.int32 and split.text_bert.shape == (n, 3, 8)
        np.testing.assert_array_equal(split.text_bert, r["text_bert"].astype(np.int64))
        assert split.audio_lengths is None and split.vision_lengths is None
        assert split.ids == list(r["id"]) and all("$_$" in i for i in split.ids)
        assert split.raw_text == r["raw_text"]
        assert split.label_TAV == {} and split.sanitised == {}
        assert not split.is_classification
        assert split.meta["variant"] == "mmsa-mosi-aligned_50"
        assert split.meta["standardization"] == {}


def test_mosi_labels_look_real(files):
    label = np.concatenate(
        [s.label for s in read_mmsa(files["mosi"], dataset="mosi").values()]
    )
    # means of 5 integer ratings: multiples of 0.2, some exact integers and zeros
    np.testing.assert_allclose(label * 5, np.rint(label * 5), atol=1e-4)
    assert 0.05 < np.mean(np.isclose(label, np.rint(label))) < 0.8
    assert np.any(label == 0) and label.std() > 0.8


def test_read_sims_unaligned_with_lengths(files):
    raw = _load(files["sims"])
    out = read_mmsa(files["sims"], dataset="ch-sims")  # alias
    for name, split in out.items():
        r = raw[name]
        assert split.seq_lens == (7, 30, 11)
        for key, arr in (("audio_lengths", "audio"), ("vision_lengths", "vision")):
            lengths = getattr(split, key)
            assert lengths.dtype == np.int32
            np.testing.assert_array_equal(lengths, r[key])
            # right padding in the written file: frames past the length are zero
            t = np.arange(r[arr].shape[1])[None, :]
            assert not np.any(r[arr][t >= r[key][:, None]])
            assert np.all(np.any(r[arr], axis=2)[t < r[key][:, None]])
        np.testing.assert_allclose(split.label * 5, np.rint(split.label * 5), atol=1e-4)
        assert split.label.min() >= -1 and split.label.max() <= 1
        assert sorted(split.label_TAV) == ["A", "T", "V"]
        np.testing.assert_array_equal(split.label_TAV["A"], r["regression_labels_A"])
        assert split.meta["dataset"] == "sims"
        assert split.meta["standardization"]["audio"]["percentiles"] == (0.1, 99.9)


def test_mosei_corrupt_audio_is_sanitised_and_recorded(files, caplog):
    raw = _load(files["mosei"])
    train_audio = raw["train"]["audio"]
    assert train_audio.dtype == np.float64
    assert np.isneginf(train_audio).any() and (np.abs(train_audio) > F32_MAX).any()
    with caplog.at_level(logging.INFO, logger="decalign_jax.data"):
        out = read_mmsa(files["mosei"], dataset="mosei", standardize=False)
    for name, split in out.items():
        a = raw[name]["audio"]
        nonfinite = int((~np.isfinite(a)).sum())
        overflow = int((np.isfinite(a) & (np.abs(a) > F32_MAX)).sum())
        assert split.sanitised["audio_nonfinite"] == nonfinite
        assert split.sanitised["audio_overflow"] == overflow
        assert np.all(np.isfinite(split.audio))
        np.testing.assert_array_equal(split.audio, _ref_sanitise(a).astype(np.float32))
        assert "vision_nonfinite" not in split.sanitised
    assert any(
        "key 'audio'" in r.getMessage() and str(files["mosei"]) in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("dataset", ["mosei", "sims"])
def test_standardisation_matches_float64_reference(files, dataset):
    raw = _load(files[dataset])
    out = read_mmsa(files[dataset], dataset=dataset)
    pct = data.DATASET_SPECS[dataset].clip_percentiles
    for key in ("audio", "vision"):
        ref = _ref_standardise(
            {s: _ref_sanitise(raw[s][key]) for s in data.SPLITS}, pct
        )
        for s in data.SPLITS:
            got = getattr(out[s], key)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, ref[s], rtol=1e-5, atol=1e-5)
        # text is never standardised
        np.testing.assert_array_equal(out["train"].text, raw["train"]["text"])


def test_standardisation_uses_train_statistics_only(files, tmp_path):
    raw = _load(files["sims"])
    before = read_mmsa(files["sims"], dataset="sims")
    for s in ("valid", "test"):
        raw[s]["audio"] = raw[s]["audio"] * 1000.0 + 5.0
        raw[s]["vision"] = raw[s]["vision"][::-1].copy()
    after = read_mmsa(_dump(raw, tmp_path / "unaligned_39.pkl"), dataset="sims")
    for key in ("audio", "vision"):
        np.testing.assert_array_equal(
            getattr(before["train"], key), getattr(after["train"], key)
        )
        assert not np.allclose(
            getattr(before["test"], key), getattr(after["test"], key)
        )
    stats = after["train"].meta["standardization"]["audio"]
    assert stats["std"].shape == (6,) and np.all(stats["std"] >= data.STD_FLOOR)


def test_constant_column_does_not_divide_by_zero(files, tmp_path):
    raw = _load(files["sims"])
    for s in data.SPLITS:
        raw[s]["vision"][:, :, 0] = 3.0 if s == "train" else 4.0
    out = read_mmsa(_dump(raw, tmp_path / "const.pkl"), dataset="sims")
    for s in data.SPLITS:
        col = out[s].vision[:, :, 0]
        assert np.all(np.isfinite(col)) and np.all(col == 0.0)
    assert out["train"].meta["standardization"]["vision"]["std"][0] == data.STD_FLOOR


def test_standardize_flags(files):
    forced_off = read_mmsa(files["sims"], dataset="sims", standardize=False)
    raw = _load(files["sims"])
    np.testing.assert_array_equal(forced_off["test"].vision, raw["test"]["vision"])
    forced_on = read_mmsa(
        files["mosi"], dataset="mosi", standardize=True, clip_percentiles=(1, 99)
    )
    ref = _ref_standardise(
        {s: _ref_sanitise(_load(files["mosi"])[s]["audio"]) for s in data.SPLITS},
        (1, 99),
    )
    np.testing.assert_allclose(
        forced_on["valid"].audio, ref["valid"], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="clip_percentiles"):
        read_mmsa(
            files["mosi"], dataset="mosi", standardize=True, clip_percentiles=(99, 1)
        )


# ------------------------------------------------------------------ bad inputs


def _mutate(src: Path, tmp_path: Path, fn) -> Path:
    raw = _load(src)
    fn(raw)
    return _dump(raw, tmp_path / "aligned_50.pkl")


def _set(split, key, fn):
    def apply(raw):
        raw[split][key] = fn(raw[split][key])

    return apply


def _nan_text(raw):
    raw["train"]["text"][3, 2, 1] = np.nan


BAD_MMSA = [
    (
        "missing key",
        lambda r: r["train"].pop("audio"),
        r"split 'train', key 'audio': missing key; keys present: \[.*'regression_labels'.*'text'",
    ),
    (
        "wrong rank",
        _set("valid", "vision", lambda v: v[:, 0]),
        r"split 'valid', key 'vision': expected rank 3 \[N, T, D\], got shape \(16, 20\)",
    ),
    (
        "mismatched N",
        _set("test", "regression_labels", lambda v: v[:-1]),
        r"split 'test': sample counts N differ between keys: .*'regression_labels': 23",
    ),
    (
        "dims differ",
        _set("test", "audio", lambda v: v[:, :, :4]),
        r"key 'audio': feature dim D differs between splits: \{'train': 5, 'valid': 5, 'test': 4\}",
    ),
    (
        "length differs",
        _set("valid", "vision", lambda v: v[:, :6]),
        r"key 'vision': padded length T differs between splits: \{'train': 8, 'valid': 6, 'test': 8\}",
    ),
    (
        "NaN text",
        _nan_text,
        r"split 'train', key 'text': expected finite BERT features, found 1 NaN/inf values \(first in sample 3\)",
    ),
    (
        "label out of range",
        _set(
            "valid", "regression_labels", lambda v: np.r_[3.5, v[1:]].astype(np.float32)
        ),
        r"split 'valid', key 'regression_labels': expected values in \[-3, 3\] for dataset 'mosi', found min .* max 3\.5 \(1 of 16 out of range\)",
    ),
    (
        "NaN label",
        _set("train", "regression_labels", lambda v: np.r_[np.nan, v[1:]]),
        r"split 'train', key 'regression_labels': found 1 NaN/inf labels",
    ),
    (
        "fractional text_bert",
        _set("train", "text_bert", lambda v: v + 0.5),
        r"key 'text_bert': expected integral token ids",
    ),
    (
        "text_bert shape",
        _set("train", "text_bert", lambda v: v[:, :2]),
        r"key 'text_bert': expected \[N, 3, T_l=8\]",
    ),
    (
        "split not a dict",
        lambda r: r.__setitem__("test", [1, 2, 3]),
        r"split 'test': expected a dict of arrays, got list",
    ),
    (
        "string features",
        _set("train", "vision", lambda v: np.full(v.shape, "x")),
        r"split 'train', key 'vision': expected a numeric array",
    ),
]


@pytest.mark.parametrize(
    "name, mutate, pattern", BAD_MMSA, ids=[b[0] for b in BAD_MMSA]
)
def test_bad_mmsa_files_raise_one_clear_error(files, tmp_path, name, mutate, pattern):
    path = _mutate(files["mosi"], tmp_path, mutate)
    with pytest.raises(MMSAFormatError, match=pattern) as err:
        read_mmsa(path, dataset="mosi")
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_missing_file_and_split_and_not_a_dict(files, tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"nope\.pkl \[MMSA pickle for dataset 'mosi'\]: file not found; .* "
        r"holds: aligned_50\.pkl",
    ):
        read_mmsa(files["mosi"].parent / "nope.pkl", dataset="mosi")
    with pytest.raises(FileNotFoundError, match="expected a file, got a folder"):
        read_mmsa(files["mosi"].parent, dataset="mosi")
    raw = _load(files["mosi"])
    del raw["valid"]
    with pytest.raises(
        MMSAFormatError,
        match=r"missing split\(s\) \['valid'\]; keys present: \['test', 'train'\]",
    ):
        read_mmsa(_dump(raw, tmp_path / "a.pkl"), dataset="mosi")
    with pytest.raises(
        MMSAFormatError,
        match=r"expected a dict with keys \['train', 'valid', 'test'\], got list",
    ):
        read_mmsa(_dump([1, 2], tmp_path / "b.pkl"), dataset="mosi")
    (tmp_path / "c.pkl").write_bytes(b"not a pickle")
    with pytest.raises(MMSAFormatError, match="cannot unpickle"):
        read_mmsa(tmp_path / "c.pkl", dataset="mosi")
    with pytest.raises(ValueError, match="dataset='mosy'"):
        read_mmsa(files["mosi"], dataset="mosy")


def test_wrong_dataset_and_other_protocols(files, tmp_path):
    with pytest.raises(
        MMSAFormatError,
        match=r"expected values in \[-1, 1\] for dataset 'sims'.*MOSI/MOSEI file",
    ):
        read_mmsa(files["mosi"], dataset="sims")
    raw = _load(files["mosi"])
    for s in data.SPLITS:
        raw[s]["labels"] = raw[s].pop("regression_labels")
    with pytest.raises(MMSAFormatError, match="CMU-SDK / MulT pickle"):
        read_mmsa(_dump(raw, tmp_path / "mult.pkl"), dataset="mosi")


def test_neg_inf_audio_is_sanitised_not_an_error(files, tmp_path):
    raw = _load(files["mosi"])
    raw["valid"]["audio"] = raw["valid"]["audio"].astype(np.float64)
    raw["valid"]["audio"][0, 0, 0] = -np.inf
    raw["valid"]["audio"][1, 1, 1] = np.nan
    raw["valid"]["vision"][2, 2, 2] = np.inf
    out = read_mmsa(_dump(raw, tmp_path / "inf.pkl"), dataset="mosi")
    v = out["valid"]
    assert v.sanitised == {
        "audio_nonfinite": 2,
        "audio_overflow": 0,
        "vision_nonfinite": 1,
        "vision_overflow": 0,
    }
    assert v.audio[0, 0, 0] == 0 and v.audio[1, 1, 1] == 0 and v.vision[2, 2, 2] == 0
    assert out["train"].sanitised == {}


def test_bad_lengths(files, tmp_path):
    raw = _load(files["sims"])
    raw["train"]["audio_lengths"] = raw["train"]["audio_lengths"] * 1.0 + 0.5
    with pytest.raises(
        MMSAFormatError,
        match=r"split 'train', key 'audio_lengths': expected integer lengths",
    ):
        read_mmsa(_dump(raw, tmp_path / "l1.pkl"), dataset="sims")
    raw = _load(files["sims"])
    raw["test"]["vision_lengths"][0] = -1
    with pytest.raises(
        MMSAFormatError,
        match=r"key 'vision_lengths': expected lengths >= 0, found min -1",
    ):
        read_mmsa(_dump(raw, tmp_path / "l2.pkl"), dataset="sims")
    raw = _load(files["sims"])
    raw["test"]["vision_lengths"][:3] = 999
    out = read_mmsa(_dump(raw, tmp_path / "l3.pkl"), dataset="sims")
    assert out["test"].vision_lengths[:3].tolist() == [11, 11, 11]
    assert out["test"].sanitised["vision_lengths_clipped"] == 3


def test_empty_split_is_refused_naming_file_and_split(files, tmp_path):
    raw = _load(files["mosi"])
    raw["valid"] = {k: v[:0] for k, v in raw["valid"].items()}
    path = _dump(raw, tmp_path / "empty.pkl")
    with pytest.raises(MMSAFormatError) as err:
        read_mmsa(path, dataset="mosi")
    message = str(err.value)
    assert str(path) in message and "split 'valid'" in message, message
    assert "empty split" in message and "\n" not in message


@pytest.mark.parametrize("key", ["text", "audio", "vision"])
def test_all_zero_modality_warns(files, tmp_path, key):
    raw = _load(files["mosi"])
    raw["test"][key] = np.zeros_like(raw["test"][key])
    path = _dump(raw, tmp_path / "zero.pkl")
    with pytest.warns(ZeroFeaturesWarning) as record:
        out = read_mmsa(path, dataset="mosi")
    (message,) = [str(w.message) for w in record if w.category is ZeroFeaturesWarning]
    assert str(path) in message and f"split 'test', key '{key}'" in message
    assert "ALL ZERO" in message and "\n" not in message
    assert not np.any(getattr(out["test"], key))  # read anyway: a warning, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroFeaturesWarning)
        read_mmsa(files["mosi"], dataset="mosi")  # real features: no warning


# ------------------------------------------------------------------ IEMOCAP


@pytest.fixture(scope="module")
def iemocap_gcnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("iemocap")
    src = synthetic.write_iemocap_raw(
        root / "IEMOCAP_features_raw_6way.pkl", seed=0, num_classes=6, dims=(12, 8, 10)
    )
    return src, root / "features"


def test_iemocap_gcnet_convert_and_read_round_trip(iemocap_gcnet, tmp_path):
    src, feature_root = iemocap_gcnet
    video_ids, video_labels, _speakers, video_sentences, train_vid, test_vid = _load(
        src
    )
    assert isinstance(train_vid, set) and isinstance(test_vid, set)
    out = tmp_path / "iemocap_data.pkl"
    meta = data.convert_iemocap(
        src, out, num_classes=6, feature_root=feature_root, valid_fraction=0.25, seed=3
    )
    assert meta["variant"] == "iemocap-6way" and meta["source_file"] == src.name
    assert meta["source_layout"] == "gcnet" and meta["split_unit"] == "dialogue"
    assert meta["features"] == data.GCNET_FEATURE_NAMES
    assert _load(out)["meta"] == meta

    splits = read_mmsa(out, dataset="iemocap")
    dialogues = {}
    for name, split in splits.items():
        assert split.seq_lens == (1, 1, 1) and split.feature_dims == (12, 8, 10)
        assert split.label.dtype == np.int32 and split.is_classification
        assert split.num_classes == 6 and split.meta["variant"] == "iemocap-6way"
        assert split.meta["standardization"] == {}
        dialogues[name] = {i.split("$_$")[0] for i in split.ids}
    assert dialogues["test"] == test_vid
    assert dialogues["train"] | dialogues["valid"] == train_vid
    assert not dialogues["train"] & dialogues["valid"]
    assert len(dialogues["valid"]) == round(0.25 * len(train_vid))
    assert sorted(dialogues["valid"]) == meta["valid_dialogues"]
    assert sum(len(s) for s in splits.values()) == sum(
        len(v) for v in video_ids.values()
    )

    # every utterance against the raw files, read independently
    n_zero = 0
    for split in splits.values():
        for row, uid in enumerate(split.ids):
            vid, utt = uid.split("$_$")
            k = video_ids[vid].index(utt)
            assert split.label[row] == video_labels[vid][k]
            assert split.raw_text[row] == video_sentences[vid][k]
            text = np.load(feature_root / "deberta-large-4-UTT" / f"{utt}.npy")
            audio = np.load(feature_root / "wav2vec-large-c-UTT" / f"{utt}.npy")[0]
            faces = sorted((feature_root / "manet_UTT" / utt).glob("*.npy"))
            vision = (
                np.mean([np.load(f) for f in faces], axis=0) if faces else np.zeros(10)
            )
            n_zero += not faces
            np.testing.assert_allclose(split.text[row, 0], text, rtol=1e-6)
            np.testing.assert_allclose(split.audio[row, 0], audio, rtol=1e-6)
            np.testing.assert_allclose(
                split.vision[row, 0], vision, rtol=1e-5, atol=1e-6
            )
    assert n_zero == 1 == sum(meta["zero_rows"][s]["vision"] for s in data.SPLITS)

    # the valid split is a seeded function of the training dialogues
    again = data.convert_iemocap(
        src,
        tmp_path / "b.pkl",
        num_classes=6,
        feature_root=feature_root,
        valid_fraction=0.25,
        seed=3,
    )
    other = data.convert_iemocap(
        src,
        tmp_path / "c.pkl",
        num_classes=6,
        feature_root=feature_root,
        valid_fraction=0.25,
        seed=4,
    )
    assert again == meta and (tmp_path / "b.pkl").read_bytes() == out.read_bytes()
    assert other["valid_dialogues"] != meta["valid_dialogues"]

    fold = data.convert_iemocap(
        src,
        tmp_path / "d.pkl",
        num_classes=6,
        feature_root=feature_root,
        test_session=2,
    )
    assert fold["protocol"] == "leave-session-2-out" and meta["test_session"] is None
    assert fold["test_dialogues"] == sorted(
        v for v in video_ids if v.startswith("Ses02")
    )
    assert not any(
        v.startswith("Ses02") for v in fold["train_dialogues"] + fold["valid_dialogues"]
    )
    with pytest.raises(
        ValueError, match=r"test_session: expected one of \[1, 2, 3, 4, 5\], got 6"
    ):
        data.convert_iemocap(
            src,
            tmp_path / "e.pkl",
            num_classes=6,
            feature_root=feature_root,
            test_session=6,
        )


def test_iemocap_dialoguernn_layout(tmp_path):
    src = synthetic.write_iemocap_raw(
        tmp_path / "IEMOCAP_features_raw_4way.pkl",
        seed=5,
        num_classes=4,
        dims=(6, 5, 4),
        layout="dialoguernn",
    )
    raw = _load(src)
    assert len(raw) == 9
    meta = data.convert_iemocap(
        src,
        tmp_path / "out.pkl",
        num_classes=4,
        class_names=["hap", "sad", "neu", "ang"],
    )
    assert meta["variant"] == "iemocap-4way" and meta["features"] == "inline"
    splits = read_mmsa(tmp_path / "out.pkl", dataset="iemocap")
    video_ids, text = raw[0], raw[3]
    for split in splits.values():
        assert split.label.max() < 4
        for row, uid in enumerate(split.ids):
            vid, utt = uid.split("$_$")
            np.testing.assert_array_equal(
                split.text[row, 0], text[vid][video_ids[vid].index(utt)]
            )
    with pytest.raises(
        MMSAFormatError, match="num_classes=6 but the file's meta says 4"
    ):
        read_mmsa(tmp_path / "out.pkl", dataset="iemocap", num_classes=6)


def test_iemocap_errors(iemocap_gcnet, tmp_path):
    src, feature_root = iemocap_gcnet
    with pytest.raises(
        MMSAFormatError, match=r"holds labels only .*feature_root=.*all-zero"
    ):
        data.convert_iemocap(src, tmp_path / "o.pkl", num_classes=6)
    with pytest.raises(
        MMSAFormatError,
        match=r"class ids in \[0, 4\) for num_classes=4, found min 0 max 5",
    ):
        data.convert_iemocap(
            src, tmp_path / "o.pkl", num_classes=4, feature_root=feature_root
        )
    with pytest.raises(
        FileNotFoundError, match=r"IEMOCAP audio feature folder not found: .*nope"
    ):
        data.convert_iemocap(
            src,
            tmp_path / "o.pkl",
            num_classes=6,
            feature_root=feature_root,
            feature_names={"audio": "nope"},
        )
    with pytest.raises(
        FileNotFoundError, match=r"missing\.pkl \[raw IEMOCAP pickle\]: file not found"
    ):
        data.convert_iemocap(
            tmp_path / "missing.pkl", tmp_path / "o.pkl", num_classes=6
        )
    with pytest.raises(
        MMSAFormatError, match="unknown IEMOCAP layout: got tuple of 5 items"
    ):
        data.convert_iemocap(
            _dump((1, 2, 3, 4, 5), tmp_path / "five.pkl"),
            tmp_path / "o.pkl",
            num_classes=6,
        )
    with pytest.raises(ValueError, match="valid_fraction"):
        data.convert_iemocap(src, tmp_path / "o.pkl", num_classes=6, valid_fraction=0.0)
    assert not (tmp_path / "o.pkl").exists()

    zero_root = tmp_path / "zero"
    zsrc = synthetic.write_iemocap_raw(
        zero_root / "raw.pkl",
        seed=0,
        num_classes=6,
        dims=(4, 3, 2),
        zero_modalities=("audio",),
    )
    with pytest.raises(
        MMSAFormatError,
        match=r"audio features are ALL ZERO \(\d+ utterances x 3 dims\); refusing",
    ):
        data.convert_iemocap(
            zsrc, tmp_path / "o.pkl", num_classes=6, feature_root=zero_root / "features"
        )
    zsrc = synthetic.write_iemocap_raw(
        tmp_path / "z2.pkl",
        seed=0,
        num_classes=6,
        dims=(4, 3, 2),
        layout="dialoguernn",
        zero_modalities=("vision",),
    )
    with pytest.raises(MMSAFormatError, match="vision features are ALL ZERO"):
        data.convert_iemocap(zsrc, tmp_path / "o.pkl", num_classes=6)

    out = tmp_path / "ok.pkl"
    data.convert_iemocap(src, out, num_classes=6, feature_root=feature_root)
    # The trainer's reader refuses all-zero IEMOCAP features as the converter does.
    raw = _load(out)
    raw["valid"]["audio"] = np.zeros_like(raw["valid"]["audio"])
    with pytest.raises(
        MMSAFormatError,
        match=r"zero\.pkl: split 'valid', key 'audio': audio features are ALL ZERO "
        r"\(shape \(\d+, 1, \d+\)\); refusing",
    ):
        read_mmsa(_dump(raw, tmp_path / "zero.pkl"), dataset="iemocap")
    raw = _load(out)
    raw["valid"]["classification_labels"][0] = 6
    with pytest.raises(
        MMSAFormatError,
        match=r"split 'valid', key 'classification_labels': expected class ids in \[0, 6\), found min 0 max 6",
    ):
        read_mmsa(_dump(raw, tmp_path / "bad.pkl"), dataset="iemocap")
    raw = _load(out)
    raw["train"]["classification_labels"] = raw["train"]["classification_labels"] + 0.5
    with pytest.raises(MMSAFormatError, match="expected integer class ids"):
        read_mmsa(_dump(raw, tmp_path / "bad2.pkl"), dataset="iemocap")


# ------------------------------------------------------------------ planted signal


def test_planted_sentiment_signal_needs_all_modalities(tmp_path):
    sizes = {"train": 400, "valid": 40, "test": 300}
    for dataset, seq_lens, dims in (
        ("mosi", (12, 12, 12), (24, 5, 20)),
        ("sims", (10, 30, 14), (24, 8, 30)),
    ):
        path = synthetic.write_mmsa_pickle(
            tmp_path / f"{dataset}.pkl",
            seed=11,
            dataset=dataset,
            sizes=sizes,
            seq_lens=seq_lens,
            dims=dims,
        )
        out = read_mmsa(path, dataset=dataset)
        tr, te = _pooled(out["train"]), _pooled(out["test"])
        y_tr, y_te = out["train"].label, out["test"].label
        corr_all = _ridge_corr(np.concatenate(tr, 1), y_tr, np.concatenate(te, 1), y_te)
        singles = [_ridge_corr(tr[m], y_tr, te[m], y_te) for m in range(3)]
        assert corr_all > 0.5, (dataset, corr_all, singles)
        assert corr_all > max(singles) + 0.1, (dataset, corr_all, singles)
        assert min(singles) > 0.1, (
            dataset,
            singles,
        )  # every modality carries some signal


def test_planted_iemocap_class_signal(tmp_path):
    src = synthetic.write_iemocap_raw(
        tmp_path / "raw.pkl",
        seed=2,
        num_classes=6,
        dims=(16, 12, 16),
        dialogues_per_session=6,
    )
    data.convert_iemocap(
        src, tmp_path / "out.pkl", num_classes=6, feature_root=tmp_path / "features"
    )
    out = read_mmsa(tmp_path / "out.pkl", dataset="iemocap")

    def accuracy(mods):
        def x(split):
            feats = (split.text, split.audio, split.vision)
            return np.c_[
                np.concatenate([feats[m][:, 0] for m in mods], 1), np.ones(len(split))
            ]

        a = x(out["train"])
        w = np.linalg.solve(
            a.T @ a + np.eye(a.shape[1]), a.T @ np.eye(6)[out["train"].label]
        )
        return np.mean(np.argmax(x(out["test"]) @ w, 1) == out["test"].label)

    acc = accuracy([0, 1, 2])
    singles = [accuracy([m]) for m in range(3)]
    majority = np.max(np.bincount(out["test"].label, minlength=6)) / len(out["test"])
    assert acc > majority + 0.2, (acc, majority)
    assert acc > max(singles) + 0.1, (acc, singles)


# ------------------------------------------------------------------ determinism, caching


def test_same_seed_same_bytes(tmp_path):
    kw = dict(
        dataset="mosei",
        sizes=SMALL,
        seq_lens=(6, 6, 6),
        dims=(8, 4, 3),
        corrupt_audio=True,
    )
    a = synthetic.write_mmsa_pickle(tmp_path / "a.pkl", seed=7, **kw).read_bytes()
    b = synthetic.write_mmsa_pickle(tmp_path / "b.pkl", seed=7, **kw).read_bytes()
    c = synthetic.write_mmsa_pickle(tmp_path / "c.pkl", seed=8, **kw).read_bytes()
    assert a == b and a != c
    r1 = _load(
        synthetic.write_iemocap_raw(
            tmp_path / "r1" / "raw.pkl", seed=1, num_classes=4, dims=(3, 3, 3)
        )
    )
    r2 = _load(
        synthetic.write_iemocap_raw(
            tmp_path / "r2" / "raw.pkl", seed=1, num_classes=4, dims=(3, 3, 3)
        )
    )
    assert r1 == r2
    np.testing.assert_array_equal(
        np.load(
            tmp_path
            / "r1"
            / "features"
            / "deberta-large-4-UTT"
            / f"{r1[0]['Ses01F_impro01'][0]}.npy"
        ),
        np.load(
            tmp_path
            / "r2"
            / "features"
            / "deberta-large-4-UTT"
            / f"{r2[0]['Ses01F_impro01'][0]}.npy"
        ),
    )


def test_ensure_demo_pickle_writes_once(tmp_path, monkeypatch):
    kw = dict(seed=0, dataset="mosi", sizes=SMALL, seq_lens=(6, 6, 6), dims=(8, 5, 20))
    path = synthetic.ensure_demo_pickle(tmp_path, **kw)
    assert path.name == "aligned_6.pkl" and path.parent.parent == tmp_path
    assert path.parent.name.startswith("mosi-")
    stamp = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("regenerated a cached file")

    monkeypatch.setattr(synthetic, "write_mmsa_pickle", boom)
    assert synthetic.ensure_demo_pickle(tmp_path, **kw) == path
    assert path.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    other = synthetic.ensure_demo_pickle(tmp_path, **{**kw, "seed": 1})
    assert other != path and other.parent != path.parent
    sims = synthetic.ensure_demo_pickle(
        tmp_path,
        seed=0,
        dataset="sims",
        sizes=SMALL,
        seq_lens=(5, 9, 7),
        dims=(8, 4, 6),
    )
    assert sims.name == "unaligned_5.pkl"
    assert read_mmsa(sims, dataset="sims")["train"].audio_lengths is not None
    iemo = synthetic.ensure_demo_pickle(
        tmp_path, seed=0, dataset="iemocap", num_classes=6, dims=(8, 4, 6)
    )
    assert iemo.name == "iemocap_data.pkl"
    assert read_mmsa(iemo, dataset="iemocap")["test"].meta["variant"] == "iemocap-6way"
    assert not [p for p in iemo.parent.iterdir() if p.name.startswith((".", "tmp"))]
    with pytest.raises(ValueError, match="seed"):
        synthetic.ensure_demo_pickle(tmp_path, dataset="mosi")


# ------------------------------------------------------------------ grain source


def test_source_items(files):
    splits = read_mmsa(files["sims"], dataset="sims")
    src = MMSASource(splits["valid"])
    assert len(src) == SMALL["valid"]
    item = src[3]
    assert set(item) == {
        "text",
        "audio",
        "vision",
        "audio_lengths",
        "vision_lengths",
        "label",
        "index",
    }
    assert item["text"].shape == (7, 16) and item["text"].dtype == np.float32
    assert item["audio"].shape == (30, 6) and item["vision"].shape == (11, 12)
    assert item["audio_lengths"].dtype == np.int32 and item["audio_lengths"].shape == ()
    assert item["audio_lengths"] == splits["valid"].audio_lengths[3]
    assert item["label"].dtype == np.float32 and item["label"].shape == ()
    assert item["index"].dtype == np.int64 and item["index"] == 3
    np.testing.assert_array_equal(src[-1]["audio"], splits["valid"].audio[-1])
    with pytest.raises(IndexError):
        src[SMALL["valid"]]
    clone = pickle.loads(pickle.dumps(src))
    assert len(clone) == len(src)
    np.testing.assert_array_equal(clone[5]["vision"], src[5]["vision"])

    aligned = MMSASource(
        read_mmsa(files["mosi"], dataset="mosi")["train"], with_text_bert=True
    )
    it = aligned[0]
    assert (
        it["audio_lengths"] == 8 and it["vision_lengths"] == 8
    )  # full length if absent
    assert it["text_bert"].shape == (3, 8) and it["text_bert"].dtype == np.int32


def test_source_with_grain(files, tmp_path):
    import grain

    data.convert_iemocap(
        synthetic.write_iemocap_raw(
            tmp_path / "raw.pkl", seed=0, num_classes=6, dims=(4, 3, 2)
        ),
        tmp_path / "out.pkl",
        num_classes=6,
        feature_root=tmp_path / "features",
    )
    src = MMSASource(read_mmsa(tmp_path / "out.pkl", dataset="iemocap")["train"])
    assert src[0]["label"].dtype == np.int32
    ds = grain.MapDataset.source(src).seed(0).shuffle().batch(4, drop_remainder=True)
    batch = ds[0]
    assert batch["text"].shape == (4, 1, 4) and batch["label"].dtype == np.int32
    assert batch["index"].shape == (4,) and len(set(batch["index"].tolist())) == 4


def test_split_validates_itself():
    x = np.zeros((3, 2, 4), np.float32)
    with pytest.raises(ValueError, match="sample counts differ"):
        MMSASplit(
            text=x,
            audio=x,
            vision=x[:2],
            label=np.zeros(3, np.float32),
            ids=["a", "b", "c"],
        )
    with pytest.raises(ValueError, match=r"MMSASplit.audio: expected a rank-3 array"):
        MMSASplit(
            text=x,
            audio=x[:, 0],
            vision=x,
            label=np.zeros(3, np.float32),
            ids=["a", "b", "c"],
        )
    with pytest.raises(ValueError, match=r"text_bert: expected \[N, 3, T_l=2\]"):
        MMSASplit(
            text=x,
            audio=x,
            vision=x,
            label=np.zeros(3, np.float32),
            ids=["a", "b", "c"],
            text_bert=np.zeros((3, 3, 5), np.int32),
        )
    with pytest.raises(TypeError, match="expected an MMSASplit"):
        MMSASource({"text": x})
