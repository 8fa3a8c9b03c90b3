"""CDDS evaluation: every image and caption of a split embedded once, then the
retrieval protocols on the score GEMM (docs/cdds.md §9 Evaluation).

The correlation weights W come from the S statistics kept in the train state (the EMA,
the window mean, or the refreshed dataset S, by the reading's ``w_source``; W = I for
``identity``), never from the evaluated pairs; the score function is the training one (``ScoreOptions``), so a
checkpoint is scored as it was trained.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from cdds_jax import kl_statistics, reading, retrieval, scores
from cdds_jax.data import inputs
from cdds_jax.model import CDDSModel
from xmodal import sharding
from xmodal.inference import map_source
from xmodal.state import TrainState

__all__ = ["Evaluator", "embed_captions", "embed_images", "eval_weights"]


def eval_weights(
    params: Any,
    extra: Mapping[str, jax.Array],
    model: CDDSModel,
    config: ml_collections.ConfigDict,
) -> tuple[jax.Array, jax.Array] | None:
    """``(W^v, W^t)`` at evaluation, from the state's S statistics; None without
    sampling."""
    scalars = model.apply({"params": params}, method="scalars")
    s_v, s_t = kl_statistics.evaluation_correlation(
        extra, source=reading.of(config).w_source
    )
    return scores.weights_from_scalars(
        scalars, s_v, s_t, scores.ScoreOptions.from_config(config)
    )


def embed_images(params, extra, batch, *, model, config):
    """Retrieval embeddings ``[B, E]`` of a batch of images (``batch["image"]``)."""
    img = model.apply(
        {"params": params}, batch["image"], train=False, method="encode_image"
    )
    return scores.retrieval_embeddings(
        img["s"],
        img["mask"],
        None,
        None,
        eval_weights(params, extra, model, config),
        options=scores.ScoreOptions.from_config(config),
    ).image


def embed_captions(params, extra, batch, *, model, config):
    """Retrieval embeddings ``[B, E]`` of a batch of captions (features or ids)."""
    txt = model.apply(
        {"params": params},
        inputs.text_input(batch),
        batch["text_mask"],
        train=False,
        method="encode_text",
    )
    return scores.retrieval_embeddings(
        None,
        None,
        txt["s"],
        txt["mask"],
        eval_weights(params, extra, model, config),
        options=scores.ScoreOptions.from_config(config),
    ).caption


class Evaluator:
    """Jitted embedding functions + the retrieval protocols, for one config.

    ``evaluator(state, split, protocols) -> {protocol: metrics}``; every protocol
    also reports ``score_std`` / ``tie_fraction`` / ``degenerate`` (the training loop
    never selects a checkpoint whose dev scores are degenerate).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: CDDSModel,
        mesh: jax.sharding.Mesh,
        data: inputs.Data,
    ) -> None:
        self.config, self.mesh, self.data = config, mesh, data
        kw = dict(model=model, config=config)
        out = sharding.data_sharding(mesh)
        self.embed_images = jax.jit(
            functools.partial(embed_images, **kw), out_shardings=out
        )
        self.embed_captions = jax.jit(
            functools.partial(embed_captions, **kw), out_shardings=out
        )

    def __call__(
        self, state: TrainState, split: Any, protocols: Sequence[str]
    ) -> dict[str, dict[str, float]]:
        ec = self.config.eval
        kw = dict(
            mesh=self.mesh,
            batch_size=ec.batch_size,
            num_threads=self.config.data.num_threads,
        )
        img = map_source(
            functools.partial(self.embed_images, state.params, state.extra),
            self.data.image_source(split),
            **kw,
        )
        cap = map_source(
            functools.partial(self.embed_captions, state.params, state.extra),
            self.data.caption_source(split),
            **kw,
        )
        return retrieval.evaluate_protocols(
            img,
            cap,
            np.asarray(split.caption_to_image),
            protocols=tuple(protocols),
            block_size=ec.block_size,
            collapse_floor=float(self.config.collapse.floor),
        )
