"""The training loss of a Table 4 head, with or without the distribution-sampling
plug-in (docs/cdds.md §15.7).

``L = ramp(epoch) * hinge(s_head + lambda * s_DS)``: the VSE++ hinge all five papers
train with (``losses.hinge_loss`` through ``objective.objective`` with only L_s on),
with the head's published margin, hardest-negative epoch and ramp
(:class:`~cdds_jax.head_model.HeadLoss`), on the head's ``[B, B]`` scores plus
``lambda = plugin.weight`` times the plug-in's (``plugin.combined_scores``). The
plug-in's S statistics follow the run's reading (``kl_statistics.step_correlation``)
and are kept in ``TrainState.extra[plugin.STATS_KEY]``; SGR / SAF's BatchNorm
statistics in ``TrainState.extra["batch_stats"]`` (:func:`init_extra`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cdds_jax import kl_statistics, plugin
from cdds_jax import model as model_lib
from cdds_jax import objective as objective_lib
from cdds_jax import scores as scores_lib
from cdds_jax.data import inputs
from cdds_jax.head_model import HeadLoss, HeadModel

__all__ = ["BATCH_STATS", "compute_loss", "init_extra", "variables"]

#: ``TrainState.extra`` key of the head's BatchNorm statistics (SGR / SAF).
BATCH_STATS = "batch_stats"


def init_extra(
    config: ml_collections.ConfigDict, model_variables: Mapping[str, Any]
) -> dict[str, Any]:
    """The statistics a head model's train state carries: the plug-in's S
    (``kl_statistics.init_from_config``) when it is on, the ``batch_stats``
    collection of ``model.init`` when the head has one."""
    extra: dict[str, Any] = {}
    if plugin.enabled(config):
        extra[plugin.STATS_KEY] = kl_statistics.init_from_config(config)
    if BATCH_STATS in model_variables:
        extra[BATCH_STATS] = model_variables[BATCH_STATS]
    return extra


def variables(params: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The model's variables from the state: ``params`` and the BatchNorm statistics."""
    out = {"params": params}
    if BATCH_STATS in extra:
        out[BATCH_STATS] = extra[BATCH_STATS]
    return out


def compute_loss(
    params: Any,
    extra: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    model: HeadModel,
    config: ml_collections.ConfigDict,
    epoch: jax.Array,
) -> tuple[jax.Array, dict[str, Any]]:
    """A head's loss on a global batch of B (image, caption) pairs.

    Returns ``(loss, aux)``: ``l_s`` (the hinge before the ramp), the statistics of
    the trained score matrix (``score_std`` for the collapse guard, ...), with the
    plug-in also ``head_score_std`` / ``ds_score_std`` (each part's spread) and the new
    ``extra`` (``"stats"``: S statistics and BatchNorm statistics, for the state).
    """
    variables_in = variables(params, extra)
    rngs = model_lib.model_rngs(rng)
    img, txt, _ = model.apply(
        variables_in,
        batch["image"],
        inputs.text_input(batch),
        batch["text_mask"],
        train=True,
        rngs=rngs,
    )
    new_extra = dict(extra)
    if BATCH_STATS in extra:
        head_scores, updates = model.apply(
            variables_in,
            img,
            txt,
            train=True,
            rngs=rngs,
            method="scores",
            mutable=[BATCH_STATS],
        )
        new_extra[BATCH_STATS] = updates[BATCH_STATS]
    else:
        head_scores = model.apply(
            variables_in, img, txt, train=True, rngs=rngs, method="scores"
        )
    aux: dict[str, Any] = {}
    ds_scores = None
    if plugin.STATS_KEY in extra:
        # S from this batch's matched pairs (or the EMA / window / refreshed S, by the
        # reading), exactly as CDDS (docs/cdds.md §4.4).
        s_v, s_t, stats = kl_statistics.step_correlation(
            img, txt, extra[plugin.STATS_KEY], config.semantics, sampling=True
        )
        new_extra[plugin.STATS_KEY] = stats
        ds = model.apply(variables_in, img, txt, s_v, s_t, method="sample")
        ds_scores = ds.scores()
        aux["head_score_std"] = jnp.std(head_scores)
        aux["ds_score_std"] = jnp.std(ds_scores)
    score = plugin.combined_scores(head_scores, ds_scores, float(config.plugin.weight))
    loss = HeadLoss.from_config(config)
    options = objective_lib.ObjectiveOptions(
        margin=loss.margin,
        max_violation_after_epochs=loss.max_violation_after_epochs,
        ramp_epochs=loss.ramp_epochs,
        decouple=False,  # L_s only: the heads have no decoupler (no L_m / L_f / L_x)
    )
    obj = objective_lib.objective(
        score,
        batch["image_id"],
        img,
        txt,
        w_s=1.0,
        w_m=1.0,
        epoch=epoch,
        options=options,
    )
    aux.update(l_s=obj.l_s, **scores_lib.score_statistics(score), stats=new_extra)
    return obj.total, aux
