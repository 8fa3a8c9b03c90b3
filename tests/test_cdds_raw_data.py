"""Raw image-text data: the Karpathy and LAPS readers, their errors, the image pipeline
(with the caption augmentation: through grain workers and a resume).

Everything is read from files written by ``cdds_jax.data.synthetic_images`` through the
real readers; broken variants are made by editing those files.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from cdds_jax import data
from cdds_jax.data import captions, images, raw, synthetic_images
from cdds_jax.data.text import TokenTable, WordPieces
from xmodal import pipeline
from xmodal.backbones import load_tokenizer, write_random_checkpoint

COUNTS = {"train": 10, "dev": 4, "test": 4}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("raw")
    synthetic_images.write_image_dataset(
        root, seed=1, num_images=COUNTS, image_size=24, num_concepts=12
    )
    return root


@pytest.fixture
def copy(written, tmp_path) -> pathlib.Path:
    """A private copy to break."""
    return pathlib.Path(shutil.copytree(written, tmp_path / "copy"))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_karpathy_and_laps_read_the_same_splits(written):
    ann = written / "dataset_synthetic.json"
    entries = json.loads(ann.read_text())["images"]
    for ours, theirs in (("train", "train"), ("dev", "val"), ("test", "test")):
        k = data.read_split("karpathy", written, ours, image_root=written)
        lp = data.read_split("laps", written / "laps", ours, image_root=written)
        assert isinstance(k, raw.RawSplit) and isinstance(lp, raw.RawSplit)
        assert k.num_images == lp.num_images == COUNTS[ours]
        assert k.image_paths == lp.image_paths
        assert k.captions == lp.captions and k.num_captions == 5 * COUNTS[ours]
        np.testing.assert_array_equal(k.caption_to_image, lp.caption_to_image)
        np.testing.assert_array_equal(
            k.caption_to_image, np.repeat(np.arange(COUNTS[ours]), 5)
        )
        # Reference: the JSON entries of that Karpathy split (restval into train).
        kinds = {"train": ("train", "restval")}.get(ours, (theirs,))
        ref = [e for e in entries if e["split"] in kinds]
        assert [pathlib.Path(p).name for p in k.image_paths] == [
            e["filename"] for e in ref
        ]
    assert {e["split"] for e in entries} == {"train", "restval", "val", "test"}
    # COCO's names for the 5K test and dev.
    assert data.read_split("karpathy", written, "testall").num_images == COUNTS["test"]
    assert data.read_split("karpathy", ann, "val").num_images == COUNTS["dev"]


def test_laps_test_images_are_encoded_once(written):
    split = data.read_split("laps", written / "laps", "test", image_root=written)
    ids = (written / "laps" / "test_ids.txt").read_text().split()
    assert len(ids) == split.num_captions  # one id per caption in the file
    source = raw.RawImageSource(split, images.ImageSpec(16))
    assert len(source) == split.num_images == len(set(ids))
    item = source[0]
    assert item["image"].shape == (16, 16, 3) and item["image"].dtype == np.uint8


def test_missing_image_files_are_counted_and_named(copy):
    (copy / "images" / "test" / "00002.jpg").unlink()
    (copy / "images" / "test" / "00003.jpg").unlink()
    for fmt, root in (("karpathy", copy), ("laps", copy / "laps")):
        with pytest.raises(FileNotFoundError) as e:
            data.read_split(fmt, root, "test", image_root=copy)
        msg = _one_line(e)
        assert "2 missing" in msg and "00002.jpg" in msg and "00003.jpg" in msg
        assert "4 image files" in msg
    with pytest.raises(FileNotFoundError, match=r"data\.image_root"):
        data.read_split("karpathy", copy, "test", image_root=copy / "nope")


def test_unknown_split_names_the_known_ones(written):
    with pytest.raises(ValueError) as e:
        data.read_split("karpathy", written, "valid")
    assert "'dev'" in _one_line(e) and "'valid'" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        data.read_split("laps", written / "laps", "valid", image_root=written)
    assert "['dev', 'test', 'train']" in _one_line(e)


def test_caption_count_mismatch(copy):
    caps = copy / "laps" / "train_caps.txt"
    caps.write_text("".join(caps.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError) as e:
        data.read_split("laps", copy / "laps", "train", image_root=copy)
    msg = _one_line(e)
    assert "49 captions" in msg and "10 lines of train_ids.txt" in msg
    # Per-caption ids that do not match the captions either.
    ids = copy / "laps" / "test_ids.txt"
    ids.write_text("".join(ids.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="20 captions"):
        data.read_split("laps", copy / "laps", "test", image_root=copy)
    # A Karpathy image without captions, and an id without a path.
    ann = copy / "dataset_synthetic.json"
    doc = json.loads(ann.read_text())
    doc["images"][-1]["sentences"] = []
    ann.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as e:
        data.read_split("karpathy", copy, "test")
    assert "at least one caption per image" in _one_line(e)
    mapping = copy / "laps" / "id_mapping.json"
    m = json.loads(mapping.read_text())
    first_dev = (copy / "laps" / "dev_ids.txt").read_text().split()[0]
    del m[first_dev]
    mapping.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=f"1 ids missing, first \\[{first_dev}\\]"):
        data.read_split("laps", copy / "laps", "dev", image_root=copy)


def test_random_resized_crop_box_follows_torchvision():
    rng = np.random.default_rng(0)
    for width, height in ((500, 375), (40, 400), (31, 32)):
        for _ in range(200):
            left, top, w, h = images.random_resized_crop_box(
                width, height, rng, (0.6, 1.0), (3 / 4, 4 / 3)
            )
            assert left >= 0 and left + w <= width and top >= 0 and top + h <= height
            if (width, height) == (500, 375):  # always sampled, never the fallback
                assert 0.6 * 0.97 <= w * h / (width * height) <= 1.0
                assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # A 10:1 strip never fits the ratio: the centre-crop fallback.
    assert images.random_resized_crop_box(400, 40, rng, (0.6, 1.0), (3 / 4, 4 / 3)) == (
        173,
        0,
        53,
        40,
    )


def test_train_transform_is_a_function_of_seed_epoch_index(written):
    split = data.read_split("karpathy", written, "train")
    tok = load_tokenizer(
        write_random_checkpoint(
            written.parent / "bert", "bert", vocab=synthetic_images.demo_vocab()
        )
    )
    table = TokenTable.encode(split.captions, tok, 20)
    source = raw.RawPairSource(split, text="ids", tokens=table)
    t = images.TrainImageTransform(images.ImageSpec(16), seed=3)
    a = t(source[7], epoch=2)
    assert set(a) == {"image", "image_id", "index", "tokens", "text_mask"}
    assert a["image"].shape == (16, 16, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"], t(source[7], epoch=2)["image"])
    assert not np.array_equal(a["image"], t(source[7], epoch=3)["image"])
    other = images.TrainImageTransform(images.ImageSpec(16), seed=4)
    assert not np.array_equal(a["image"], other(source[7], epoch=2)["image"])
    # Captions: [CLS] words [SEP], the mask over exactly those ids.
    n = int(a["text_mask"].sum())
    assert n == len(split.captions[7].split()) + 2
    assert a["tokens"][0] == tok.tokenizer.token_to_id("[CLS]")
    assert a["tokens"][n - 1] == tok.tokenizer.token_to_id("[SEP]")


def test_pipeline_resumes_exactly_and_workers_decode_the_same(written):
    split = data.read_split("laps", written / "laps", "train", image_root=written)
    tok = load_tokenizer(
        write_random_checkpoint(
            written.parent / "bert_pipe", "bert", vocab=synthetic_images.demo_vocab()
        )
    )
    source = raw.RawPairSource(
        split, text="ids", tokens=TokenTable.encode(split.captions, tok, 12)
    )
    # The images, then the captions (LAPS's augmentation, docs/cdds.md §12.8).
    transform = pipeline.Chain(
        images.TrainImageTransform(images.ImageSpec(16), seed=5),
        captions.CaptionAugment(
            WordPieces.encode(split.captions, tok), seed=5, rate=0.5
        ),
    )

    def iterator(workers=0):
        return pipeline.train_iterator(
            source,
            global_batch_size=8,
            seed=5,
            num_threads=2,
            worker_count=workers,
            transform=transform,
        )

    straight = iterator()
    batches = [next(straight) for _ in range(13)]  # 50 captions: epochs 0, 1, 2
    resumed = iterator()
    for _ in range(4):
        next(resumed)
    again = iterator()
    again.set_state(resumed.get_state())
    in_workers = iterator(workers=1)  # decoded in a worker process
    for i, want in enumerate(batches):
        got = next(in_workers)
        got_again = next(again) if i >= 4 else want
        for key in want:
            np.testing.assert_array_equal(got_again[key], want[key], err_msg=key)
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # The augmentation of caption i in epoch e does not depend on where it is read.
    first = batches[0]
    i = int(first["index"][0])
    ref = transform(source[i], epoch=0)["image"]
    np.testing.assert_array_equal(first["image"][0], ref)
    assert first["image"].shape == (8, 16, 16, 3)
    # The last row of batch 12 is element 103, in epoch 2.
    last = batches[12]
    ref = transform(source[int(last["index"][-1])], epoch=2)
    np.testing.assert_array_equal(last["tokens"][-1], ref["tokens"])
    np.testing.assert_array_equal(last["image"][-1], ref["image"])
    assert last["tokens"].shape == (8, 12)
