"""DecAlign evaluation: jitted predictions over a split, the dataset's metrics.

The selection ``"loss"`` is computed as the official evaluation loop does
(:func:`decalign_jax.metrics.batch_mean_loss` at ``config.eval.loss_batch_size``);
predictions themselves run at ``config.eval.batch_size`` (any size gives the same
outputs: evaluation has no batch statistics).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from decalign_jax import data as data_lib
from decalign_jax import metrics
from decalign_jax.data import inputs
from decalign_jax.objective import is_classification
from xmodal import sharding
from xmodal.inference import map_source
from xmodal.state import TrainState
from xmodal.writer import mean_std

__all__ = ["Evaluator", "format_run", "predict"]


def predict(
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    config: ml_collections.ConfigDict,
) -> dict[str, jax.Array]:
    """Outputs ``[B]`` / ``[B, C]`` and per-sample task losses ``[B]`` (no dropout)."""
    out = model.apply({"params": params}, batch, train=False)
    if is_classification(config):
        per_sample = -jnp.take_along_axis(
            jax.nn.log_softmax(out["output"]),
            batch["label"][:, None].astype(jnp.int32),
            1,
        )[:, 0]
    else:
        per_sample = (out["output"] - batch["label"]) ** 2
    return {"output": out["output"], "loss": per_sample}


class Evaluator:
    """A jitted prediction function + the dataset's metrics, for one config."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: nn.Module,
        mesh: jax.sharding.Mesh,
    ) -> None:
        self.config, self.mesh = config, mesh
        self.predict = jax.jit(
            functools.partial(predict, model=model, config=config),
            out_shardings=sharding.data_sharding(mesh),
        )

    def __call__(
        self, state: TrainState, split: data_lib.MMSASplit
    ) -> dict[str, float]:
        out = map_source(
            functools.partial(self.predict, state.params),
            inputs.make_source(split, self.config),
            mesh=self.mesh,
            batch_size=self.config.eval.batch_size,
            num_threads=self.config.data.num_threads,
        )
        result = metrics.report(self.config.data.dataset).metrics(
            out["output"], np.asarray(split.label), self.config.data.num_classes
        )
        # The official selection loss: per-batch means at the official batch size.
        result["loss"] = metrics.batch_mean_loss(
            out["loss"], int(self.config.eval.loss_batch_size)
        )
        return result


def format_run(dataset: str, test: Mapping[str, float]) -> str:
    """The paper-shaped table of one run's metrics (display units)."""
    return metrics.format_table(dataset, mean_std([test], metrics.display_scale), 1)
