"""Every call the benchmark makes into the DecAlign driver, its configs and its losses.

The sections (``decalign``, ``kernels``) reach ``decalign_jax.train``,
``decalign_jax.losses.hetero_loss`` and ``configs/decalign_base.py`` only through this
module, so a change of the driver's signatures is followed here, in one place. The
train step measured is the driver's own (``build_model`` / ``create_train_state`` /
``jit_train_step``), on random inputs in the driver's batch format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks.settings import DecAlignCase, Settings
from configs import decalign_base
from decalign_jax import losses as decalign_losses
from decalign_jax import train as decalign_train

__all__ = [
    "BUILT_BY",
    "STEPS_PER_EPOCH",
    "VARIANTS",
    "build_model",
    "config",
    "create_state",
    "hetero_loss",
    "jit_step",
    "random_batch",
]

#: How the measured step is built, as BENCHMARKS.md says it (follows the calls below).
BUILT_BY = (
    "driver's `build_model` / `create_train_state` / `train_step` jitted with donation"
)
#: Steps per epoch given to the driver (its schedules only; a benchmark runs a few).
STEPS_PER_EPOCH = 100
#: The step variants measured: the HEAD config, alpha = 0 (no EM + Sinkhorn term) and
#: every dropout rate 0 (no dropout RNG).
VARIANTS: tuple[str, ...] = ("head", "alpha0", "no_dropout")


def config(
    case: DecAlignCase, settings: Settings, variant: str = "head"
) -> ml_collections.ConfigDict:
    """The HEAD config of ``case.dataset``; ``alpha0`` / ``no_dropout`` variants."""
    c = decalign_base.get_config(case.dataset, None)
    for key, value in case.model:
        c.model[key] = value
    if settings.em_iters is not None:
        c.loss.em_iters = settings.em_iters
    if settings.ot_iters is not None:
        c.loss.ot_iters = settings.ot_iters
    if variant == "alpha0":
        c.loss.alpha = 0.0
    elif variant == "no_dropout":
        c.model.attn_dropout = (0.0, 0.0, 0.0)
        for key in ("relu", "res", "embed", "output", "text"):
            c.model[f"{key}_dropout"] = 0.0
    elif variant != "head":
        raise ValueError(f"variant: unknown {variant!r}")
    c.train.batch_size = case.batch
    return c


def random_batch(case: DecAlignCase, seed: int = 0) -> dict[str, np.ndarray]:
    """Random (text, audio, vision) features and labels in [-3, 3]."""
    rng = np.random.default_rng(seed)
    batch = {
        m: rng.standard_normal((case.batch, t, d), dtype=np.float32)
        for m, t, d in zip(
            ("text", "audio", "vision"), case.lengths, case.dims, strict=True
        )
    }
    batch["label"] = rng.uniform(-3.0, 3.0, size=case.batch).astype(np.float32)
    return batch


def hetero_loss(
    config: ml_collections.ConfigDict,
) -> Callable[[tuple[jax.Array, ...]], jax.Array]:
    """``losses.hetero_loss`` with ``config.loss`` bound: pooled ``[B, d]`` x 3 -> scalar."""
    bound = decalign_losses.bind_hetero_loss(config.loss)

    def loss(pooled: tuple[jax.Array, ...]) -> jax.Array:
        return bound(pooled)[0]

    return loss


def build_model(config: ml_collections.ConfigDict) -> Any:
    """The driver's model for ``config``."""
    return decalign_train.build_model(config)


def create_state(
    config: ml_collections.ConfigDict,
    model: Any,
    example: Mapping[str, np.ndarray],
    mesh: jax.sharding.Mesh,
) -> tuple[Any, Any]:
    """The driver's sharded train state (seed 0): ``(state, shardings)``."""
    return decalign_train.create_train_state(
        config, model, example, mesh, seed=0, steps_per_epoch=STEPS_PER_EPOCH
    )


def jit_step(
    config: ml_collections.ConfigDict,
    model: Any,
    shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Any:
    """The driver's jitted train step (its shardings, the state donated)."""
    return decalign_train.jit_train_step(config, model, shardings, mesh)
