"""CDDS with backbones at tiny sizes (tiny random checkpoints of each row's
architecture): every paper-row config builds its model (``clip_vitl``: CLIP vision +
CLIP text from one CLIPModel folder), puts the checkpoint weights in the state and
traces the driver's step for 8 devices; the step through ViT + BERT gives the same
result on 8 devices as on 1.

Compiling the full step of every row would cost minutes on 2 cores (about 50 s of CPU
per row and mesh); past the backbone module, whose outputs test_backbones.py checks
against transformers for each architecture, the rows run the same step, so one
compiled comparison covers it and every row is traced.
"""

from __future__ import annotations

import pathlib

import chex
import jax
import numpy as np
import pytest

from cdds_jax import encoders, train
from cdds_jax.data import synthetic_images
from configs import cdds_base
from xmodal import config as config_lib
from xmodal import optim, sharding
from xmodal.backbones import write_random_checkpoint
from xmodal.backbones.registry import CLIP_MEAN_STD, IMAGENET_MEAN_STD
from xmodal.errors import UserError

ROWS = [(module, row) for module in ("flickr", "coco") for row in cdds_base.PAPER_ROWS]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("rows")
    synthetic_images.write_image_dataset(
        root / "data",
        seed=0,
        num_images={"train": 8, "dev": 4, "test": 4},
        image_size=24,
        num_concepts=12,
    )
    write_random_checkpoint(
        root / "vit", "vit", image_size=32, patch_size=8, num_hidden_layers=1
    )
    write_random_checkpoint(
        root / "swin", "swin", image_size=32, depths=(1, 1), num_heads=(2, 2)
    )
    # A CLIPModel folder: both towers (the text tower with its BPE files).
    write_random_checkpoint(
        root / "clip",
        "clip",
        image_size=32,
        patch_size=8,
        num_hidden_layers=1,
        towers={"clip_text": {"num_hidden_layers": 1}},
    )
    write_random_checkpoint(
        root / "bert", "bert", vocab=synthetic_images.demo_vocab(), num_hidden_layers=1
    )
    return root


def _config(module: str, row: str, root: pathlib.Path, **extra):
    c = config_lib.load_config(f"configs/{module}.py:{row}")
    kind = c.model.image_encoder
    # CLIP's text tower comes from the CLIPModel folder of its vision tower.
    text = {"bert": "bert", "clip_text": "clip"}[c.model.text_encoder]
    overrides = {
        "data.root": root / "data" / "laps",
        "data.image_root": root / "data",
        "data.max_words": 16,
        "data.worker_count": 0,
        "model.image_backbone_path": root / kind,
        "model.text_backbone_path": root / text,
        "model.dim": 16,
        "model.num_heads": 2,
        "model.num_samples": 2,
        "semantics.num_levels": 4,
        "semantics.num_bins": 4,
        "semantics.kl_chunk_size": 0,
        "train.batch_size": 8,
        **extra,
    }
    config_lib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
    return c


def _batch(config, tmp_path):
    data = train.load_data(config, tmp_path, splits=("train",))
    source, transform = data.pair_source(data.train), data.train_transform()
    rows = [transform(source[i], epoch=0) for i in range(config.train.batch_size)]
    return data, {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize(("module", "row"), ROWS)
def test_paper_row_builds_its_model_and_traces_the_sharded_step(
    module, row, folders, tmp_path
):
    # Every row: its tiny model with the row's architecture, the checkpoint weights in
    # the state, the lr groups, and the driver's step traced for 8 devices (compiling
    # and running it is test_sharded_step_equals_one_device's job).
    config = _config(module, row, folders)
    data, local = _batch(config, tmp_path)
    kind = config.model.image_encoder
    assert local["image"].dtype == np.uint8 and local["image"].shape[1:] == (32, 32, 3)
    assert local["tokens"].shape == (8, 16) and local["text_mask"].any(axis=1).all()
    model = train.build_model(config, data.backbones)
    text = cdds_base.PAPER_ROWS[row].text_encoder
    assert (model.image_encoder, model.text_encoder) == (kind, text)
    assert (
        type(model.text_backbone).__name__
        == {"bert": "Bert", "clip_text": "CLIPText"}[text]
    )
    clip = kind == "clip"
    assert (text == "clip_text") == clip  # clip_vitl: CLIP vision + CLIP text
    assert data.image_spec.center_crop == clip
    stats = CLIP_MEAN_STD if clip else IMAGENET_MEAN_STD
    assert (model.pixel_mean, model.pixel_std) == stats
    pretrained = encoders.pretrained_params(data.backbones)
    example = {k: v[:1] for k, v in local.items()}
    init = train.make_init(config, model, example, steps_per_epoch=10)
    abstract = jax.eval_shape(init, pretrained)
    mult = optim.lr_multipliers(abstract.params, config.optim.lr_groups)
    assert set(jax.tree_util.tree_leaves(mult["image_backbone"])) == {0.1}
    assert set(jax.tree_util.tree_leaves(mult["text_backbone"])) == {0.1}
    assert set(jax.tree_util.tree_leaves(mult["image_proj"])) == {1.0}
    mesh = sharding.make_mesh((("data", -1),))
    shardings = sharding.param_shardings(abstract, mesh, config.sharding_rules)
    state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract,
        shardings,
    )
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.data_sharding(mesh))
        for k, v in local.items()
    }
    step = train.jit_train_step(config, model, shardings, mesh, steps_per_epoch=10)
    new_state, metrics = step.trace(state, batch).out_info
    assert metrics["loss"].shape == () and new_state.step.shape == ()
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state.params, abstract.params)


def test_sharded_step_equals_one_device(folders, tmp_path):
    # The driver's train step through ViT + BERT (backbone dropout on) on 8 devices and
    # on 1: same loss parts and norms, same new parameters.
    config = _config("flickr", "vit224", folders)
    data, local = _batch(config, tmp_path)
    model = train.build_model(config, data.backbones)
    pretrained = encoders.pretrained_params(data.backbones)
    example = {k: v[:1] for k, v in local.items()}
    mesh1 = sharding.make_mesh((("data", -1),), devices=jax.devices()[:1])
    mesh8 = sharding.make_mesh((("data", -1),))
    state1, shardings1 = train.create_train_state(
        config, model, example, mesh1, steps_per_epoch=10, pretrained=pretrained
    )
    chex.assert_trees_all_equal(
        jax.device_get(state1.params["image_backbone"]), pretrained["image_backbone"]
    )
    shardings8 = sharding.param_shardings(state1, mesh8, config.sharding_rules)
    # A copy through the host: state1 is donated below (a device_put could alias it).
    state8 = jax.device_put(jax.device_get(state1), shardings8)

    def step(state, shardings, mesh):
        fn = train.jit_train_step(config, model, shardings, mesh, steps_per_epoch=10)
        batch = jax.device_put(local, sharding.data_sharding(mesh))
        with jax.transfer_guard("disallow"):
            new, metrics = fn(state, batch)
        return jax.device_get((new.params, metrics))

    params1, m1 = step(state1, shardings1, mesh1)
    params8, m8 = step(state8, shardings8, mesh8)
    assert np.isfinite(m1["loss"]) and m1["grad_norm"] > 0
    for key in ("loss", "l_s", "l_m", "l_f", "l_x", "grad_norm", "param_norm"):
        np.testing.assert_allclose(m8[key], m1[key], rtol=1e-4, err_msg=key)
    diff = jax.tree_util.tree_map(lambda a, b: a - b, params1, params8)
    norm = optim.optax.tree.norm
    assert float(norm(diff)) <= 0.05 * float(m1["update_norm"])


def test_missing_checkpoint_says_what_to_put_where(folders, tmp_path):
    config = _config("flickr", "vit224", folders)
    config.model.image_backbone_path = "checkpoints/vit-base-patch16-224-in21k"
    with pytest.raises(FileNotFoundError) as e:
        train.load_data(config, tmp_path, splits=("train",))
    msg = str(e.value)
    assert "\n" not in msg
    assert "config.model.image_backbone_path" in msg
    assert "google/vit-base-patch16-224-in21k" in msg
    config = _config("coco", "swin384", folders)
    config.model.image_backbone_path = str(folders / "vit")
    with pytest.raises(ValueError, match="holds a 'vit' model, expected swin"):
        train.load_data(config, tmp_path, splits=("train",))


@pytest.mark.parametrize("module", ["flickr", "coco"])
def test_clip_rows_read_both_towers_from_one_folder(module):
    # clip_vitl fine-tunes CLIP's own text tower (no BERT); clip_zeroshot is the same
    # backbones marked for the zero-shot command, which cdds_jax.train refuses.
    c = config_lib.load_config(f"configs/{module}.py:clip_vitl")
    assert (c.model.image_encoder, c.model.text_encoder) == ("clip", "clip_text")
    assert c.model.image_backbone_path == "checkpoints/clip-vit-large-patch14"
    assert c.model.text_backbone_path == c.model.image_backbone_path
    assert c.data.max_words == 77 and "zeroshot" not in c.eval
    assert not c.data.caption_augment  # LAPS's rule masks with BERT's [MASK]
    z = config_lib.load_config(f"configs/{module}.py:clip_zeroshot")
    assert z.eval.zeroshot is True
    assert (
        z.model.to_dict() == c.model.to_dict() and z.data.to_dict() == c.data.to_dict()
    )
    with pytest.raises(UserError, match=r"python -m cdds_jax\.zeroshot"):
        train.train_and_evaluate(z, "unused")
