"""The DecAlign objective on a batch: the model's outputs into the five loss terms.

``L = L_task + w_dec L_dec + alpha L_hete + beta L_homo + w_ct L_CT``
(``docs/decalign.md`` section 3), with every term's options read from
``config.loss``. A batch may carry ``valid`` ``[B]`` (the padded short last batch of
``train.epoch_mode = "official"``): every term then ignores the padded rows, so the
loss equals the loss of the valid rows alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from decalign_jax import losses

__all__ = ["TASKS", "compute_loss", "is_classification", "task_loss"]

#: ``config.loss.task``: "mse" (regression) | "ce" (classification).
TASKS: tuple[str, ...] = ("mse", "ce")


def is_classification(config: ml_collections.ConfigDict) -> bool:
    """``config.loss.task == "ce"``: class logits ``[B, C]`` and integer labels, not one
    regression output ``[B]`` (checked against :data:`TASKS`)."""
    task = config.loss.task
    if task not in TASKS:
        raise ValueError(
            f"config.loss.task: expected one of {list(TASKS)}, got {task!r}"
        )
    return task == "ce"


def task_loss(
    output: jax.Array,
    label: jax.Array,
    config: ml_collections.ConfigDict,
    valid: jax.Array | None = None,
) -> jax.Array:
    """MSE (regression; + SIMS's sign BCE) or cross-entropy (classification)."""
    if is_classification(config):
        return losses.cross_entropy_loss(output, label, valid=valid)
    loss = losses.mse_loss(output, label, valid=valid)
    if config.loss.binary_weight:
        loss = loss + config.loss.binary_weight * losses.sims_binary_loss(
            output, label, valid=valid
        )
    return loss


def compute_loss(
    params: Any,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    model: nn.Module,
    config: ml_collections.ConfigDict,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(L, parts)`` for one batch (dropout on, drawn from ``rng``).

    ``parts`` holds the unweighted terms ``task, dec, hete, ot, local, homo, ct``.
    """
    lc = config.loss
    out = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
    label = batch["label"]
    valid = batch.get("valid")
    task = task_loss(out["output"], label, config, valid)
    dec = losses.decoupling_loss(out["unique"], out["common"], valid)
    zero = jnp.zeros((), jnp.float32)
    hete = ot = local = zero
    if lc.alpha:
        hete, aux = losses.bind_hetero_loss(lc)(out["pooled_unique"], valid=valid)
        ot, local = aux["ot"], aux["local"]
    homo = (
        losses.homo_loss(out["z"], bandwidth=lc.mmd_bandwidth, valid=valid)
        if lc.beta
        else zero
    )
    ct = zero
    if lc.ct_weight:
        bins = (
            label.astype(jnp.int32)
            if is_classification(config)
            else losses.regression_bins(label)
        )
        ct = losses.supcon_loss(
            out["final_rep"], bins, temperature=lc.ct_temperature, valid=valid
        )
    total = losses.total_loss(
        task,
        dec,
        hete,
        homo,
        ct,
        dec_weight=lc.dec_weight,
        alpha=lc.alpha,
        beta=lc.beta,
        ct_weight=lc.ct_weight,
    )
    parts = {"task": task, "dec": dec, "hete": hete, "ot": ot, "local": local}
    return total, {**parts, "homo": homo, "ct": ct}
