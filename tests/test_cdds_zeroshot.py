"""The zero-shot CLIP command (``cdds_jax/zeroshot.py``, docs/cdds.md §3.5) on the
synthetic JPEGs and the tiny random ``CLIPModel`` that ``configs/flickr.py:
clip_zeroshot_demo`` writes into the cache: it runs from the command line without any
training step (no checkpoint, results.json written), and its scores are the cosines
of transformers' ``CLIPModel`` on the same folder (``logits_per_image / logit_scale``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from cdds_jax import zeroshot
from cdds_jax.data import inputs
from xmodal import cli
from xmodal import config as config_lib
from xmodal.backbones.registry import CLIP_MEAN_STD
from xmodal.errors import UserError

transformers.logging.set_verbosity_error()

CONFIG = "configs/flickr.py:clip_zeroshot_demo"
SMALL = [
    "data.synthetic.num_train=10",
    "data.synthetic.num_dev=5",
    "data.synthetic.num_test=12",
    "eval.batch_size=8",
    "eval.block_size=16",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_zeroshot_command_runs_without_training(tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["--config", CONFIG, "--workdir", str(workdir)]
    argv += [f"--config.{o}" for o in SMALL]
    code = cli.main(zeroshot.zeroshot, argv, prog="cdds_jax.zeroshot", evaluate=False)
    assert code == 0
    out = capsys.readouterr().out
    assert "CLIP zero-shot: test, no training" in out and "rSum" in out
    # No train state ever: no checkpoints/, best/, metrics or curves.
    assert sorted(p.name for p in workdir.iterdir()) == [
        ".lock",
        "config.json",
        "results.json",
    ]
    results = json.loads((workdir / "results.json").read_text())
    assert results["method"] == "CLIP zero-shot" and results["steps"] == 0
    full = results["test"]["full"]
    assert 0.0 <= full["rsum"] <= 600.0 and full["degenerate"] == 0.0
    assert results["checkpoint"].endswith("backbones/clip")
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["eval"]["zeroshot"] is True
    # A training config is refused (a zero-shot workdir never passes for a run).
    train_cfg = config_lib.load_config("configs/flickr.py:demo_raw")
    with pytest.raises(UserError, match="zero-shot config"):
        zeroshot.zeroshot(train_cfg, tmp_path / "other")


def test_zeroshot_scores_are_clip_model_cosines(tmp_path):
    config = config_lib.load_config(CONFIG)
    config_lib.apply_overrides(config, SMALL)
    data = inputs.load_data(config, tmp_path, splits=())
    split = inputs.read_config_split(config, config.data.test_split)
    weights = zeroshot.clip_weights(data.backbones)
    dim = weights["visual_projection"]["kernel"].shape[1]
    model = zeroshot.build_dual_encoder(data.backbones, dim)
    images = np.stack([data.image_source(split)[i]["image"] for i in range(4)])
    captions = [data.caption_source(split)[i] for i in range(6)]
    ids = np.stack([c["tokens"] for c in captions]).astype(np.int32)
    mask = np.stack([c["text_mask"] for c in captions]).astype(np.int32)
    variables = {"params": weights}
    img = model.apply(variables, images, method="encode_image")
    txt = model.apply(variables, ids, mask, method="encode_text")
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    ours = np.asarray(img) @ np.asarray(txt).T

    hf = transformers.CLIPModel.from_pretrained(data.backbones.image.folder).eval()
    mean, std = (np.asarray(v, np.float32) for v in CLIP_MEAN_STD)
    pixels = (images.astype(np.float32) / 255.0 - mean) / std
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)),
        )
        ref = (out.logits_per_image / hf.logit_scale.exp()).numpy()
    assert np.max(np.abs(ours - ref)) <= 1e-5
    assert np.ptp(ref) > 0.01  # distinct scores: the comparison is not vacuous
