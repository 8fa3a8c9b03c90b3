"""CDDS evaluation: every image and caption of a split embedded once, then the
retrieval protocols on the score GEMM (docs/cdds.md §9 Evaluation).

The correlation weights W come from the S statistics kept in the train state (the EMA,
the window mean, or the refreshed dataset S, by the reading's ``w_source``; W = I for
``identity``), never from the evaluated pairs; the score function is the training one (``ScoreOptions``), so a
checkpoint is scored as it was trained.

A Table 4 head (``model.head``, docs/cdds.md §15) has no per-item embedding: every
image and caption is encoded once into its tokens, and the head scores every pair in
memory-bounded blocks (``heads.evaluate_head``, §15.6) through the same rank counting
and protocols; with the plug-in each block adds ``plugin.weight`` times the GEMM of the
plug-in's embeddings, built with W from the stored statistics as for CDDS (§15.7).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from cdds_jax import (
    head_model,
    head_objective,
    heads,
    kl_statistics,
    plugin,
    reading,
    retrieval,
    scores,
)
from cdds_jax.data import inputs
from cdds_jax.head_model import HeadModel
from cdds_jax.model import CDDSModel
from xmodal import sharding
from xmodal.inference import map_source
from xmodal.state import TrainState

__all__ = [
    "Evaluator",
    "embed_captions",
    "embed_images",
    "eval_weights",
    "head_captions",
    "head_images",
]


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


def _head_items(
    variables: Any,
    extra: Mapping[str, Any],
    tokens: Mapping[str, jax.Array],
    side: str,
    *,
    model: HeadModel,
    config: ml_collections.ConfigDict,
) -> dict[str, jax.Array]:
    """``{"tokens", "mask"}`` of a batch of one side, and the plug-in's embeddings
    (``"ds"``, W from the stored statistics) when the model has it."""
    out = {"tokens": tokens["s"], "mask": tokens["mask"]}
    if plugin.STATS_KEY in extra:
        s_v, s_t = kl_statistics.evaluation_correlation(
            extra[plugin.STATS_KEY], source=reading.of(config).w_source
        )
        img, txt = (tokens, None) if side == "image" else (None, tokens)
        ds = model.apply(variables, img, txt, s_v, s_t, method="sample")
        out["ds"] = ds.image if side == "image" else ds.caption
    return out


def head_images(params, extra, batch, *, model, config):
    """A head model's image tokens ``[B, P, d]``, mask and plug-in embeddings."""
    variables = head_objective.variables(params, extra)
    img = model.apply(variables, batch["image"], train=False, method="encode_image")
    return _head_items(variables, extra, img, "image", model=model, config=config)


def head_captions(params, extra, batch, *, model, config):
    """A head model's caption tokens ``[B, L, d]``, mask and plug-in embeddings."""
    variables = head_objective.variables(params, extra)
    txt = model.apply(
        variables,
        inputs.text_input(batch),
        batch["text_mask"],
        train=False,
        method="encode_text",
    )
    return _head_items(variables, extra, txt, "text", model=model, config=config)


class Evaluator:
    """Jitted embedding functions + the retrieval protocols, for one config.

    ``evaluator(state, split, protocols) -> {protocol: metrics}``; every protocol
    also reports ``score_std`` / ``tie_fraction`` / ``degenerate`` (the training loop
    never selects a checkpoint whose dev scores are degenerate). A head model's pairs
    are scored in blocks of ``eval.head_image_block`` x ``eval.head_caption_block``.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: CDDSModel | HeadModel,
        mesh: jax.sharding.Mesh,
        data: inputs.Data,
    ) -> None:
        self.config, self.mesh, self.data = config, mesh, data
        kw = dict(model=model, config=config)
        out = sharding.data_sharding(mesh)
        # A head's items are its tokens (scored pair by pair, in blocks); CDDS's are
        # retrieval embeddings (scored by one GEMM).
        self.head = None
        images_fn, captions_fn = embed_images, embed_captions
        if isinstance(model, HeadModel):
            self.head = head_model.build_head(config, model.image_encoder)
            images_fn, captions_fn = head_images, head_captions
        self.embed_images = jax.jit(
            functools.partial(images_fn, **kw), out_shardings=out
        )
        self.embed_captions = jax.jit(
            functools.partial(captions_fn, **kw), out_shardings=out
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
        c2i = np.asarray(split.caption_to_image)
        floor = float(self.config.collapse.floor)
        if self.head is None:
            return retrieval.evaluate_protocols(
                img,
                cap,
                c2i,
                protocols=tuple(protocols),
                block_size=ec.block_size,
                collapse_floor=floor,
            )
        variables = head_objective.variables(state.params, state.extra)
        head_variables = {k: v["head"] for k, v in variables.items() if "head" in v}
        return heads.evaluate_head(
            self.head,
            head_variables,
            img["tokens"],
            img["mask"],
            cap["tokens"],
            cap["mask"],
            c2i,
            protocols=tuple(protocols),
            image_block=int(ec.head_image_block),
            caption_block=int(ec.head_caption_block),
            collapse_floor=floor,
            image_emb=img.get("ds"),
            caption_emb=cap.get("ds"),
            weight=float(self.config.plugin.weight),
        )
