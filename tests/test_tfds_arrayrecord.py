"""ArrayRecord / TFDS input path: builders, readers, grain, pickling, no TensorFlow.

Every dataset is written by the project's synthetic generators, converted with the TFDS
builders, and compared item by item with what the ORIGINAL readers return for the same
files (the references: ``cdds_jax.data.read_features`` and
``decalign_jax.data.read_mmsa``, which have their own tests). Nothing is downloaded.
"""

import importlib.util
import pathlib
import pickle
import sys

import numpy as np
import pytest

from cdds_jax import data as cdata
from cdds_jax.data import arrayrecord as ctfds
from cdds_jax.data import split as csplit
from cdds_jax.data import synthetic as csyn
from decalign_jax import data as ddata
from decalign_jax.data import arrayrecord as dtfds
from decalign_jax.data import synthetic as dsyn
from xmodal import arrayrecord, pipeline

SMALL = dict(
    num_images={"train": 16, "dev": 5, "test": 6},
    num_tokens=6,
    image_dim=8,
    max_words=7,
    text_dim=5,
    num_concepts=12,
    concepts_per_image=3,
)
MMSA_SIZES = {"train": 18, "valid": 6, "test": 7}


@pytest.fixture(scope="module")
def cdds_store(tmp_path_factory):
    """An UNEVEN store (5-7 captions per image, rows shuffled) and its conversion."""
    root = tmp_path_factory.mktemp("cdds")
    store = csyn.write_feature_store(root / "store", seed=7, uneven=True, **SMALL)
    out = ctfds.build_arrayrecord(store, root / "tfds")
    return store, root / "tfds", out


def _assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype)
        np.testing.assert_array_equal(x, y, err_msg=k)


def _assert_sources_equal(ref, got) -> None:
    assert len(ref) == len(got)
    for i in range(len(ref)):
        _assert_items_equal(ref[i], got[i])


# ---------------------------------------------------------------------------------------
# CDDS: feature store -> ArrayRecord
# ---------------------------------------------------------------------------------------


def test_cdds_layout_and_split_fields(cdds_store):
    store, tfds_dir, out = cdds_store
    assert set(out) == {"images", "captions", "caption_features"}
    for split in ("train", "dev", "test"):
        ref = cdata.read_features(store, split)
        got = cdata.read_split("arrayrecord", tfds_dir, split)
        assert got.format == "arrayrecord" and got.split == split
        # float16 stays float16 on disk and in the column; shapes from the spec
        assert isinstance(got.images, arrayrecord.ArrayColumn)
        assert got.images.dtype == np.float16 and got.images.shape == ref.images.shape
        assert got.caption_features.dtype == ref.caption_features.dtype
        assert got.caption_features.shape == ref.caption_features.shape
        assert got.num_images == ref.num_images
        assert got.num_captions == ref.num_captions
        # uneven explicit caption -> image index
        np.testing.assert_array_equal(got.caption_to_image, ref.caption_to_image)
        assert got.caption_to_image.dtype == np.int64
        assert np.bincount(ref.caption_to_image).max() > 5  # really uneven
        np.testing.assert_array_equal(got.caption_lengths, ref.caption_lengths)
        assert got.caption_lengths.dtype == np.int32
        assert list(got.captions) == ref.captions
        assert {k: v for k, v in got.meta.items() if k != "arrayrecord"} == ref.meta
        assert got.finite_checked == {"images", "caption_features"}
        # the whole arrays, read through the columns, are the stored arrays
        np.testing.assert_array_equal(np.asarray(got.images), np.asarray(ref.images))
        np.testing.assert_array_equal(
            np.asarray(got.caption_features), np.asarray(ref.caption_features)
        )


def test_cdds_sources_equal_both_text_modes(cdds_store):
    store, tfds_dir, _ = cdds_store
    train = cdata.read_features(store, "train")
    vocab = cdata.Vocabulary.build(train.captions)
    got_train = ctfds.read_arrayrecord(tfds_dir, "train")
    assert cdata.Vocabulary.build(got_train.captions) == vocab  # lazy text iterates
    for split in ("train", "test"):
        ref = cdata.read_features(store, split)
        got = ctfds.read_arrayrecord(tfds_dir, split)
        _assert_sources_equal(cdata.ImageSource(ref), cdata.ImageSource(got))
        for kw in (
            dict(text="features"),
            dict(text="features", max_words=4),  # truncated
            dict(text="tokens", vocab=vocab, max_words=9),
        ):
            _assert_sources_equal(
                cdata.PairSource(ref, **kw), cdata.PairSource(got, **kw)
            )
            _assert_sources_equal(
                cdata.CaptionSource(ref, **kw), cdata.CaptionSource(got, **kw)
            )


def test_cdds_text_only_and_features_only_stores(tmp_path):
    text_store = csyn.write_feature_store(tmp_path / "text", seed=1, **SMALL)
    feat_store = csyn.write_feature_store(
        tmp_path / "feat", seed=2, dtype="float32", **SMALL
    )
    for split in SMALL["num_images"]:
        (text_store / split / "captions.npy").unlink()
        (text_store / split / "caption_lengths.npy").unlink()
        (feat_store / split / "captions.txt").unlink()
    out = ctfds.build_arrayrecord(text_store, tmp_path / "t", splits=["train", "dev"])
    assert set(out) == {"images", "captions"}  # no caption_features dataset
    got = ctfds.read_arrayrecord(tmp_path / "t", "dev")
    ref = cdata.read_features(text_store, "dev")
    assert got.caption_features is None and got.caption_lengths is None
    assert (
        got.captions[-1] == ref.captions[-1] and got.captions[1:3] == ref.captions[1:3]
    )
    vocab = cdata.Vocabulary.build(ref.captions)
    kw = dict(text="tokens", vocab=vocab, max_words=8)
    _assert_sources_equal(cdata.PairSource(ref, **kw), cdata.PairSource(got, **kw))
    with pytest.raises(FileNotFoundError, match="'test' not converted"):
        ctfds.read_arrayrecord(tmp_path / "t", "test")

    ctfds.build_arrayrecord(feat_store, tmp_path / "f")
    got = ctfds.read_arrayrecord(tmp_path / "f", "train")
    ref = cdata.read_features(feat_store, "train")
    assert got.captions is None and got.images.dtype == np.float32
    _assert_sources_equal(cdata.PairSource(ref), cdata.PairSource(got))
    with pytest.raises(ValueError, match=r"captions\.txt"):
        cdata.PairSource(got, text="tokens", vocab=vocab, max_words=8)


def test_cdds_grain_batches_equal(cdds_store):
    store, tfds_dir, _ = cdds_store
    ref = cdata.PairSource(cdata.read_features(store, "train"))
    got = cdata.PairSource(cdata.read_split("arrayrecord", tfds_dir, "train"))
    kw = dict(global_batch_size=8, seed=3, num_threads=2, prefetch_batches=1)
    it_ref = pipeline.train_iterator(ref, **kw)
    # worker_count=1: the source is pickled into a spawned grain worker, which reopens
    # the ArrayRecord files from their paths.
    it_got = pipeline.train_iterator(got, worker_count=1, **kw)
    try:
        n_batches = 2 * len(ref) // 8 + 1  # crosses an epoch boundary (reshuffle)
        for _ in range(n_batches):
            _assert_items_equal(next(it_ref), next(it_got))
    finally:
        it_got.close()
    # padded evaluation batches
    for source_cls in (cdata.ImageSource, cdata.CaptionSource):
        a = list(pipeline.eval_batches(source_cls(ref.split), global_batch_size=8))
        b = list(pipeline.eval_batches(source_cls(got.split), global_batch_size=8))
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_items_equal(x, y)


def test_cdds_sources_pickle_cheaply(cdds_store):
    store, tfds_dir, _ = cdds_store
    got = ctfds.read_arrayrecord(tfds_dir, "train")
    source = cdata.PairSource(got)
    blob = pickle.dumps(source)
    # paths + the in-memory caption index and meta, never the records
    for column in (got.images, got.caption_features, got.captions):
        assert len(pickle.dumps(column)) < 700
    assert len(blob) < got.images.nbytes + got.caption_features.nbytes
    back = pickle.loads(blob)
    assert isinstance(back.split.images, arrayrecord.ArrayColumn)
    assert back.split.images.table.path == got.images.table.path
    ref = cdata.PairSource(cdata.read_features(store, "train"))
    for i in (0, 7, len(ref) - 1):
        _assert_items_equal(ref[i], back[i])
    # an unpickled table holds no records until its first read
    got.images[0]
    assert got.images.table._src is not None
    table = pickle.loads(pickle.dumps(got.images.table))
    assert table._src is None and table.num_records == got.num_images


def test_array_column_indexing(cdds_store):
    store, tfds_dir, _ = cdds_store
    ref = np.asarray(cdata.read_features(store, "test").images)
    col = ctfds.read_arrayrecord(tfds_dir, "test").images
    n = ref.shape[0]
    assert len(col) == n and col.ndim == 3 and col.nbytes == ref.nbytes
    np.testing.assert_array_equal(col[-1], ref[-1])
    np.testing.assert_array_equal(col[np.int64(2)], ref[2])
    np.testing.assert_array_equal(col[1:5:2], ref[1:5:2])
    np.testing.assert_array_equal(col[[4, 0, 4]], ref[[4, 0, 4]])
    mask = np.arange(n) % 2 == 0
    np.testing.assert_array_equal(col[mask], ref[mask])
    np.testing.assert_array_equal(col[2, 1:3], ref[2, 1:3])
    np.testing.assert_array_equal(col[1:3, 0], ref[1:3, 0])
    np.testing.assert_array_equal(np.asarray(col, np.float32), ref.astype(np.float32))
    np.testing.assert_array_equal(np.stack(list(col)), ref)
    assert col[5:2].shape == (0, *ref.shape[1:])
    with pytest.raises(IndexError, match="out of range"):
        col[n]
    with pytest.raises(IndexError):
        col[1.5]
    with pytest.raises(ValueError, match="copying"):
        np.asarray(col, copy=False)


def test_cdds_rebuild_reuses_refuses_or_overwrites(tmp_path):
    a = csyn.write_feature_store(tmp_path / "a", seed=1, **SMALL)
    b = csyn.write_feature_store(tmp_path / "b", seed=2, **SMALL)
    out = ctfds.build_arrayrecord(a, tmp_path / "tfds", splits=["dev"])
    info = out["images"] / "dataset_info.json"
    stamp = info.stat().st_mtime_ns
    ctfds.build_arrayrecord(a, tmp_path / "tfds", splits=["dev"])  # identical: reused
    assert info.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="differs in") as e:
        ctfds.build_arrayrecord(b, tmp_path / "tfds", splits=["dev"])
    assert "\n" not in str(e.value)
    old = ctfds.read_arrayrecord(tmp_path / "tfds", "dev")
    old.image(0)  # opened (and cached) before the rebuild
    ctfds.build_arrayrecord(b, tmp_path / "tfds", splits=["dev"], overwrite=True)
    got = ctfds.read_arrayrecord(tmp_path / "tfds", "dev")
    np.testing.assert_array_equal(
        np.asarray(got.images), np.asarray(cdata.read_features(b, "dev").images)
    )


def test_cdds_bad_inputs_raise_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no prepared TFDS dataset"):
        ctfds.read_arrayrecord(tmp_path / "nothing", "train")
    store = csyn.write_feature_store(tmp_path / "s", seed=1, **SMALL)
    bad = np.load(store / "dev" / "images.npy")
    bad[3, 2, 1] = np.inf
    np.save(store / "dev" / "images.npy", bad)  # small: caught when the store opens
    with pytest.raises(ValueError, match=r"images\.npy \[images\].*row 3"):
        ctfds.build_arrayrecord(store, tmp_path / "t", splits=["dev"])
    # rows the reader does not pre-scan are checked while they are written
    monkeypatch.setattr(csplit, "FINITE_SCAN_MAX_BYTES", 0)
    with pytest.raises(ValueError, match=r"images\.npy \[images\].*row 3"):
        ctfds.build_arrayrecord(store, tmp_path / "t1", splits=["dev"])
    monkeypatch.undo()
    (store / "test" / "captions.txt").unlink()  # text in train/dev only
    with pytest.raises(ValueError, match=r"captions\.txt present.*'test': False"):
        ctfds.build_arrayrecord(store, tmp_path / "t2", splits=["train", "test"])
    assert not (tmp_path / "t2").exists()  # checked before anything was written
    with pytest.raises(ValueError, match="manual_dir"):
        ctfds.CddsFeatureStore(
            data_dir=tmp_path / "u", config="images"
        ).download_and_prepare(file_format="array_record")


def test_tfds_data_source_by_name(cdds_store):
    """The registered builder reads the prepared dataset through ``tfds.data_source``."""
    import tensorflow_datasets as tfds

    store, tfds_dir, _ = cdds_store
    src = tfds.data_source(
        "cdds_feature_store/images", split="dev", data_dir=tfds_dir, download=False
    )
    ref = cdata.read_features(store, "dev")
    assert len(src) == ref.num_images
    np.testing.assert_array_equal(src[3]["image"], ref.images[3])


# ---------------------------------------------------------------------------------------
# DecAlign: MMSA pickle -> ArrayRecord
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmsa(tmp_path_factory):
    """MOSI aligned, SIMS (standardised, unaligned, T/A/V labels), MOSEI with corrupt
    audio (sanitised), IEMOCAP (classification), each converted into one data_dir."""
    root = tmp_path_factory.mktemp("mmsa")
    dims = (8, 4, 3)
    files = {
        "mosi": dsyn.write_mmsa_pickle(
            root / "mosi.pkl", seed=1, dataset="mosi", sizes=MMSA_SIZES,
            seq_lens=(5, 5, 5), dims=dims,
        ),
        "sims": dsyn.write_mmsa_pickle(
            root / "sims.pkl", seed=2, dataset="sims", sizes=MMSA_SIZES,
            seq_lens=(5, 7, 6), dims=dims,
        ),
        "mosei": dsyn.write_mmsa_pickle(
            root / "mosei.pkl", seed=3, dataset="mosei", sizes=MMSA_SIZES,
            seq_lens=(5, 9, 4), dims=dims, aligned=False, corrupt_audio=True,
        ),
        "iemocap": dsyn.ensure_demo_pickle(
            root / "demo", seed=0, dataset="iemocap", num_classes=4, dims=dims,
        ),
    }  # fmt: skip
    for name, path in files.items():
        dtfds.build_arrayrecord(path, root / "tfds", dataset=name)
    return files, root / "tfds"


@pytest.mark.parametrize("dataset", ["mosi", "sims", "mosei", "iemocap"])
def test_decalign_splits_and_items_equal(mmsa, dataset):
    files, tfds_dir = mmsa
    ref = ddata.read_mmsa(files[dataset], dataset=dataset)
    got = ddata.read_dataset(tfds_dir, dataset=dataset, format="arrayrecord")
    assert list(got) == list(ddata.SPLITS)
    for split in ddata.SPLITS:
        r, g = ref[split], got[split]
        assert isinstance(g.audio, arrayrecord.ArrayColumn)
        assert g.seq_lens == r.seq_lens and g.feature_dims == r.feature_dims
        assert g.is_classification == r.is_classification
        assert g.label.dtype == r.label.dtype
        np.testing.assert_array_equal(g.label, r.label)
        assert g.ids == r.ids and g.sanitised == r.sanitised
        for key in ("audio_lengths", "vision_lengths"):
            if getattr(r, key) is None:
                assert getattr(g, key) is None
            else:
                np.testing.assert_array_equal(getattr(g, key), getattr(r, key))
        assert g.label_TAV.keys() == r.label_TAV.keys()
        for k in r.label_TAV:
            np.testing.assert_array_equal(g.label_TAV[k], r.label_TAV[k])
        assert (g.raw_text is None) == (r.raw_text is None)
        if r.raw_text is not None:
            assert list(g.raw_text) == list(r.raw_text)
        for key in ("text", "audio", "vision"):
            np.testing.assert_array_equal(np.asarray(getattr(g, key)), getattr(r, key))
        # meta: read_mmsa's keys and values (statistics as float64 arrays)
        assert g.meta["format"] == "arrayrecord"
        for key in ("file", "dataset", "split", "variant", "num_classes"):
            assert g.meta.get(key) == r.meta.get(key), key
        assert g.meta["standardization"].keys() == r.meta["standardization"].keys()
        for m, stats in r.meta["standardization"].items():
            for k, v in stats.items():
                assert (
                    np.asarray(g.meta["standardization"][m][k]).dtype
                    == np.asarray(v).dtype
                )
                np.testing.assert_array_equal(g.meta["standardization"][m][k], v)
        with_tb = r.text_bert is not None
        _assert_sources_equal(
            ddata.MMSASource(r, with_text_bert=with_tb),
            ddata.MMSASource(g, with_text_bert=with_tb),
        )
    expected_std = dataset in ("sims", "mosei")
    assert bool(got["train"].meta["standardization"]) == expected_std
    if dataset == "mosei":
        assert sum(s.sanitised.get("audio_nonfinite", 0) for s in got.values()) > 0


def test_compressed_files_read_the_same(mmsa, tmp_path):
    files, tfds_dir = mmsa
    plain = dtfds.read_mmsa_arrayrecord(tfds_dir, dataset="mosi")
    md = arrayrecord.open_builder(dtfds.dataset_dir(tfds_dir, "mosi")).info.metadata
    assert md["writer_options"] == arrayrecord.WRITER_OPTIONS
    zstd = "group_size:1,zstd:3"
    dtfds.build_arrayrecord(
        files["mosi"], tmp_path, dataset="mosi", writer_options=zstd
    )
    packed = dtfds.read_mmsa_arrayrecord(tmp_path, dataset="mosi")
    _assert_sources_equal(
        ddata.MMSASource(plain["test"]), ddata.MMSASource(packed["test"])
    )
    with pytest.raises(FileExistsError, match="writer_options"):
        dtfds.build_arrayrecord(files["mosi"], tmp_path, dataset="mosi")


def test_decalign_description_records_preprocessing(mmsa):
    _, tfds_dir = mmsa
    b = arrayrecord.open_builder(dtfds.dataset_dir(tfds_dir, "mosei"))
    text = b.info.description
    assert "read_mmsa" in text and "z-scored with train statistics" in text
    assert "(0.5, 99.5)" in text and "audio_nonfinite" in text
    md = b.info.metadata
    assert md["read_mmsa"]["standardize"] is None and md["dataset"] == "mosei"


def test_decalign_grain_batches_equal_and_pickle(mmsa):
    files, tfds_dir = mmsa
    ref = ddata.MMSASource(ddata.read_mmsa(files["sims"], dataset="sims")["train"])
    got_split = dtfds.read_mmsa_arrayrecord(tfds_dir, dataset="ch-sims")["train"]
    got = ddata.MMSASource(got_split)
    blob = pickle.dumps(got)
    assert len(blob) < 4000 < got_split.text.nbytes + got_split.audio.nbytes
    back = pickle.loads(blob)
    kw = dict(global_batch_size=6, seed=11, num_threads=2, prefetch_batches=1)
    it_ref, it_got = (
        pipeline.train_iterator(ref, **kw),
        pipeline.train_iterator(back, **kw),
    )
    for _ in range(2 * len(ref) // 6 + 1):
        _assert_items_equal(next(it_ref), next(it_got))


def test_decalign_settings_must_match_stored(mmsa):
    files, tfds_dir = mmsa
    read = dtfds.read_mmsa_arrayrecord
    read(tfds_dir, dataset="sims", standardize=True, clip_percentiles=(0.1, 99.9))
    with pytest.raises(ValueError, match="standardize: expected True"):
        read(tfds_dir, dataset="sims", standardize=False)
    with pytest.raises(ValueError, match="clip_percentiles"):
        read(tfds_dir, dataset="sims", clip_percentiles=(1, 99))
    with pytest.raises(ValueError, match="num_classes: expected 4"):
        read(tfds_dir, dataset="iemocap", num_classes=6)
    with pytest.raises(FileNotFoundError, match="no prepared TFDS dataset"):
        read(tfds_dir.parent / "elsewhere", dataset="mosi")
    with pytest.raises(ValueError, match=r"data\.format"):
        ddata.read_dataset(files["mosi"], dataset="mosi", format="tfrecord")
    # another file (or other settings) for the same dataset in the same data_dir
    with pytest.raises(FileExistsError, match="differs in"):
        dtfds.build_arrayrecord(
            files["mosi"], tfds_dir, dataset="mosi", standardize=True
        )


# ---------------------------------------------------------------------------------------
# CLI and TensorFlow
# ---------------------------------------------------------------------------------------


def _cli():
    path = pathlib.Path(__file__).parents[1] / "scripts" / "convert_to_arrayrecord.py"
    spec = importlib.util.spec_from_file_location("convert_to_arrayrecord", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_prints_overrides(mmsa, tmp_path, capsys):
    files, _ = mmsa
    cli = _cli()
    store = csyn.write_feature_store(tmp_path / "store", seed=5, **SMALL)
    out = tmp_path / "tfds"
    assert cli.main(["cdds", "--src", str(store), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"--config.data.format=arrayrecord --config.data.root={out}" in text
    assert cdata.read_split("arrayrecord", out, "test").num_images == 6
    argv = [
        "decalign",
        "--dataset",
        "mosi",
        "--src",
        str(files["mosi"]),
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert f"--config.data.format=arrayrecord --config.data.path={out}" in text
    assert "train: 18 samples" in text
    assert cli.main([*argv[:-1], str(out), "--standardize", "on"]) == 2
    assert "differs in" in capsys.readouterr().err


def test_tensorflow_never_imported():
    """Runs last in this file: building and reading never imported TensorFlow."""
    assert "tensorflow_datasets" in sys.modules
    assert "tensorflow" not in sys.modules
    assert not any(m.startswith("tensorflow.") for m in sys.modules)
