"""Every call the benchmark makes into the CDDS driver, its config and its batch format.

The sections (``cdds_train``, ``cdds_eval``, ``kernels``) reach ``cdds_jax.train`` and
``configs/flickr.py`` only through this module, so a change of the driver's signatures
is followed here, in one place. The train step measured is the driver's own
(``build_model`` / ``create_train_state`` / ``jit_train_step``: its shardings and
donation), on random inputs in the driver's batch format.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks import steps
from benchmarks.settings import CddsSizes, Settings
from cdds_jax import train as cdds_train
from cdds_jax.data import inputs
from configs import flickr
from xmodal import sharding

__all__ = [
    "BUILT_BY",
    "STEPS_PER_EPOCH",
    "backbone_config",
    "build_model",
    "config",
    "create_state",
    "eval_block_size",
    "jit_step",
    "kl_chunk_size",
    "measure_step",
    "random_batch",
    "random_pixels_batch",
]

#: How the measured step is built, as BENCHMARKS.md says it (follows the calls below).
BUILT_BY = (
    "`cdds_jax.train.build_model` / `create_train_state` / `train_step` (jitted with "
    "the driver's shardings and donation)"
)
#: Steps per epoch given to the driver: only the L_s ramp and the hardest-negative
#: switch read it, and a benchmark step is far from both.
STEPS_PER_EPOCH = 1000


def config(
    s: CddsSizes, batch: int, model: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """``configs/flickr.py`` with the benchmark's sizes; ``model`` overrides fields."""
    c = flickr.get_config()
    c.model.dim = s.dim
    c.model.num_heads = s.heads
    c.model.mlp_ratio = s.mlp_ratio
    c.model.num_samples = s.samples
    c.semantics.num_levels = s.levels
    c.semantics.num_bins = s.bins
    c.train.batch_size = batch
    for key, value in (model or {}).items():
        c.model[key] = value
    return c


def eval_block_size() -> int:
    """``eval.block_size`` of ``configs/flickr.py``: the block of ``score_matrix``."""
    return int(flickr.get_config().eval.block_size)


def kl_chunk_size() -> int | None:
    """``semantics.kl_chunk_size`` of ``configs/flickr.py`` (None: one chunk)."""
    return int(flickr.get_config().semantics.kl_chunk_size) or None


def random_batch(s: CddsSizes, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random precomputed features; caption lengths uniform in ``[L / 2, L]``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, s.text_tokens // 2), s.text_tokens + 1, size=batch)
    return {
        "image": rng.standard_normal(
            (batch, s.image_tokens, s.image_dim), dtype=np.float32
        ),
        "image_id": np.arange(batch, dtype=np.int32),
        "text": rng.standard_normal(
            (batch, s.text_tokens, s.text_dim), dtype=np.float32
        ),
        "text_mask": np.arange(s.text_tokens)[None, :] < lengths[:, None],
    }


def build_model(config: ml_collections.ConfigDict) -> Any:
    """The driver's model for ``config`` with the backbones its data layer resolves
    (no BiGRU vocabulary)."""
    return cdds_train.build_model(config, inputs.resolve_backbones(config))


def create_state(
    config: ml_collections.ConfigDict,
    model: Any,
    example: Mapping[str, np.ndarray],
    mesh: jax.sharding.Mesh,
) -> tuple[Any, Any]:
    """The driver's sharded train state from a one-example batch: ``(state, shardings)``."""
    return cdds_train.create_train_state(
        config, model, example, mesh, steps_per_epoch=STEPS_PER_EPOCH
    )


def jit_step(
    config: ml_collections.ConfigDict,
    model: Any,
    shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Any:
    """The driver's jitted train step (its shardings, the state donated)."""
    return cdds_train.jit_train_step(
        config, model, shardings, mesh, steps_per_epoch=STEPS_PER_EPOCH
    )


def measure_step(
    config: ml_collections.ConfigDict,
    model: Any,
    batch: Mapping[str, np.ndarray],
    mesh: jax.sharding.Mesh,
    settings: Settings,
    *,
    label: str,
) -> tuple[dict[str, Any], int, float]:
    """The driver's state for ``batch`` (timed), then its train step on ``batch``
    (:func:`benchmarks.steps.run_step`): ``(entry, parameter count, init seconds)``."""
    t0 = time.perf_counter()
    state, shardings = create_state(
        config, model, {k: v[:1] for k, v in batch.items()}, mesh
    )
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
    step = jit_step(config, model, shardings, mesh)
    global_batch = sharding.global_batch(batch, mesh)
    entry = steps.run_step(step, state, global_batch, settings, label=label)
    return entry, n_params, init_s


# -- With backbones (section cdds_backbones) -------------------------------------------


def backbone_config(
    s: CddsSizes,
    batch: int,
    *,
    image_backbone: str,
    text_backbone: str,
    text_tokens: int,
    model: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """:func:`config` with a ViT image encoder and a BERT text encoder read from the
    checkpoint folders given (random weights written by the benchmark)."""
    c = config(s, batch, model)
    c.model.image_encoder = "vit"
    c.model.text_encoder = "bert"
    c.model.image_backbone_path = image_backbone
    c.model.text_backbone_path = text_backbone
    c.model.backbone_dropout = True  # as the paper rows train (LAPS: train mode)
    c.data.max_words = text_tokens
    return c


def random_pixels_batch(
    batch: int, image_size: int, text_tokens: int, vocab: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """The driver's batch format with image backbones: uint8 pixels, BERT ids (CLS
    first, SEP last; lengths uniform in ``[L / 2, L]``) and their mask."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(3, text_tokens // 2), text_tokens + 1, size=batch)
    mask = np.arange(text_tokens)[None, :] < lengths[:, None]
    ids = rng.integers(min(1000, vocab // 2), vocab, (batch, text_tokens), np.int32)
    ids[:, 0] = 101
    ids[np.arange(batch), lengths - 1] = 102
    return {
        "image": rng.integers(0, 256, (batch, image_size, image_size, 3), np.uint8),
        "image_id": np.arange(batch, dtype=np.int32),
        "tokens": np.where(mask, ids, 0).astype(np.int32),
        "text_mask": mask,
    }
