r"""Zero-shot CLIP retrieval: the pretrained ``CLIPModel`` scored without any training
step (the zero-shot CLIP setting of the paper's Table 2; docs/cdds.md §3.5).

    python -m cdds_jax.zeroshot --config configs/flickr.py:clip_zeroshot \
        --workdir runs/f30k_clip_zeroshot
    python -m cdds_jax.zeroshot --config configs/flickr.py:clip_zeroshot_demo \
        --workdir runs/clip_zeroshot_demo

Image embedding = ``visual_projection(post_layernorm(class token))``, caption
embedding = ``text_projection(end-of-text row)``, both L2-normalised; the score is
their cosine (CLIP's ``logits_per_image`` divided by its positive ``logit_scale``,
which changes no rank). Every unique image and caption of the test split is embedded
once (images resized on the short side and centre-cropped, CLIP's evaluation
transform; captions tokenised by the folder's BPE into ``data.max_words`` ids) and
ranked through CDDS's protocols (``cdds_jax/retrieval.py``). The results table is
printed and ``workdir/results.json`` written beside ``config.json``; no train state,
optimiser or checkpoint is ever created. The config must be a zero-shot one
(``eval.zeroshot``, set by :func:`configs.cdds_base.zeroshot_overrides`), which
``cdds_jax.train`` refuses, so a zero-shot workdir never passes for a trained run.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cdds_jax import retrieval
from cdds_jax.data import inputs
from cdds_jax.model import normalise_pixels
from xmodal import sharding
from xmodal import workdir as workdir_lib
from xmodal.backbones.folders import Backbones
from xmodal.errors import UserError
from xmodal.inference import map_source
from xmodal.writer import log, write_json

__all__ = ["CLIPDualEncoder", "build_dual_encoder", "clip_weights", "zeroshot"]

Array = jax.Array


class CLIPDualEncoder(nn.Module):
    """CLIP's two towers and projections: unit-norm embeddings ``[B, E]``.

    Parameters: ``image_backbone`` / ``text_backbone`` (the towers, pooled outputs
    on) and the bias-free ``visual_projection`` / ``text_projection`` kernels
    ``[D, E]``.

    Attributes:
      image_backbone: ``CLIPVision`` with ``add_pooling_layer=True``.
      text_backbone: ``CLIPText`` with ``add_pooling_layer=True``.
      projection_dim: E.
      pixel_mean, pixel_std: CLIP's normalisation of [0, 1] pixels.
      dtype: compute dtype of the projections (the towers carry their own).
    """

    image_backbone: nn.Module
    text_backbone: nn.Module
    projection_dim: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    dtype: Any = jnp.float32

    def setup(self) -> None:
        dense = functools.partial(
            nn.Dense, self.projection_dim, use_bias=False, dtype=self.dtype
        )
        self.visual_projection = dense()
        self.text_projection = dense()

    def encode_image(self, images: Array) -> Array:
        """uint8 ``images [B, S, S, 3]`` -> unit-norm ``[B, E]`` float32."""
        pixels = normalise_pixels(images, self.pixel_mean, self.pixel_std)
        _, pooled = self.image_backbone(pixels.astype(self.dtype))
        return _unit(self.visual_projection(pooled))

    def encode_text(self, ids: Array, mask: Array) -> Array:
        """``ids``, ``mask [B, L]`` -> unit-norm ``[B, E]`` float32."""
        _, pooled = self.text_backbone(ids.astype(jnp.int32), mask.astype(jnp.int32))
        return _unit(self.text_projection(pooled))

    def __call__(self, images: Array, ids: Array, mask: Array) -> tuple[Array, Array]:
        """Both embeddings (``init``)."""
        return self.encode_image(images), self.encode_text(ids, mask)


def _unit(x: Array) -> Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check_clip(backbones: Backbones) -> None:
    if (backbones.image_kind, backbones.text_kind) != ("clip", "clip_text"):
        raise UserError(
            "zero-shot retrieval needs CLIP's two towers: model.image_encoder='clip' "
            f"and model.text_encoder='clip_text', got {backbones.image_kind!r} and "
            f"{backbones.text_kind!r}"
        )


def build_dual_encoder(
    backbones: Backbones, projection_dim: int, dtype: Any = jnp.float32
) -> CLIPDualEncoder:
    """The dual encoder of the resolved CLIP ``backbones`` (``Data.backbones``)."""
    _check_clip(backbones)
    assert backbones.image is not None and backbones.text is not None
    mean, std = backbones.pixel_mean_std
    return CLIPDualEncoder(
        image_backbone=backbones.image.module.clone(add_pooling_layer=True),
        text_backbone=backbones.text.module.clone(add_pooling_layer=True),
        projection_dim=projection_dim,
        pixel_mean=mean,
        pixel_std=std,
        dtype=dtype,
    )


def clip_weights(backbones: Backbones) -> dict[str, Any]:
    """The checkpoint weights of :class:`CLIPDualEncoder` (host float32 NumPy trees):
    both towers with their poolers, and the folder's two projections.

    Raises:
      CheckpointError: a folder without the projections (single-tower folders).
      ValueError: projections of different widths E.
    """
    _check_clip(backbones)
    assert backbones.image is not None and backbones.text is not None
    visual = backbones.image.load_projection()
    text = backbones.text.load_projection()
    if visual.shape[1] != text.shape[1]:
        raise ValueError(
            f"{backbones.image.folder}: visual_projection gives {visual.shape[1]} and "
            f"text_projection {text.shape[1]} dimensions; they must agree"
        )
    return {
        "image_backbone": backbones.image.load_params(add_pooling_layer=True),
        "text_backbone": backbones.text.load_params(add_pooling_layer=True),
        "visual_projection": {"kernel": visual},
        "text_projection": {"kernel": text},
    }


def _check_tree(model: CLIPDualEncoder, example: Mapping[str, np.ndarray], weights):
    """The weights have the module's parameter names and shapes (before any device
    work)."""
    abstract = jax.eval_shape(
        model.init,
        jax.random.PRNGKey(0),
        jnp.zeros((1, *example["image"].shape[1:]), jnp.uint8),
        jnp.zeros((1, example["tokens"].shape[1]), jnp.int32),
        jnp.ones((1, example["tokens"].shape[1]), jnp.int32),
    )["params"]
    want = jax.tree_util.tree_map(lambda a: a.shape, abstract)
    got = jax.tree_util.tree_map(np.shape, weights)
    if want != got:
        raise ValueError(f"CLIP weights {got} do not fit the dual encoder {want}")


def zeroshot(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    accept_config_changes: bool = False,
) -> dict[str, Any]:
    """Scores the pretrained CLIP of ``config`` on its test protocols; writes
    ``workdir/results.json`` and returns the results (module docstring)."""
    if not config.eval.get("zeroshot", False):
        raise UserError(
            "cdds_jax.zeroshot scores a zero-shot config (configs/flickr.py:"
            "clip_zeroshot, configs/coco.py:clip_zeroshot); to train, use "
            "python -m cdds_jax.train"
        )
    workdir = pathlib.Path(workdir)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_sizes(config, mesh)
    data = inputs.load_data(config, workdir, splits=())
    split = inputs.read_config_split(config, config.data.test_split)
    example = data.example(split)
    weights = clip_weights(data.backbones)
    embed_dim = int(weights["visual_projection"]["kernel"].shape[1])
    model = build_dual_encoder(data.backbones, embed_dim, jnp.dtype(config.model.dtype))
    _check_tree(model, example, weights)
    log(
        f"CLIP zero-shot | {len(jax.devices())} devices | {split.split}: "
        f"{split.num_images} images / {split.num_captions} captions | E = {embed_dim}"
    )
    with workdir_lib.open_workdir(
        workdir, config, accept_config_changes=accept_config_changes
    ) as wd:
        params = jax.device_put(weights, sharding.replicated(mesh))
        out = sharding.data_sharding(mesh)
        images = jax.jit(
            lambda p, b: model.apply({"params": p}, b["image"], method="encode_image"),
            out_shardings=out,
        )
        captions = jax.jit(
            lambda p, b: model.apply(
                {"params": p},
                inputs.text_input(b),
                b["text_mask"],
                method="encode_text",
            ),
            out_shardings=out,
        )
        kw = dict(
            mesh=mesh,
            batch_size=config.eval.batch_size,
            num_threads=config.data.num_threads,
        )
        img = map_source(
            functools.partial(images, params), data.image_source(split), **kw
        )
        cap = map_source(
            functools.partial(captions, params), data.caption_source(split), **kw
        )
        test = retrieval.evaluate_protocols(
            img,
            cap,
            np.asarray(split.caption_to_image),
            protocols=tuple(config.data.test_protocols),
            block_size=config.eval.block_size,
            collapse_floor=float(config.collapse.floor),
        )
        results = {
            "method": "CLIP zero-shot",
            "checkpoint": str(data.backbones.image.folder),
            "test_split": config.data.test_split,
            "test": test,
            "steps": 0,
        }
        path = wd.path / wd.results_name()
        write_json(path, results)
    log(f"\nCLIP zero-shot: test, no training ({results['checkpoint']}):")
    log(retrieval.format_table(test))
    log(f"results written to {path}")
    return results


if __name__ == "__main__":
    from xmodal import cli

    # The training command line (--config, --workdir, overrides,
    # --accept_config_changes); the function never trains.
    cli.run_train(zeroshot, "cdds_jax.zeroshot")
