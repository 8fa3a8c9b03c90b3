r"""Scores a trained CDDS run on its test protocols.

    python -m cdds_jax.evaluate --config configs/flickr.py --workdir runs/f30k
    python -m cdds_jax.evaluate --config configs/coco.py --workdir runs/coco \
        --checkpoint=latest --split=dev

Restores ``best/`` (or ``checkpoints/`` with ``--checkpoint=latest``) of the run (of
every seed's run when ``config.seeds`` is set), encodes every unique image and caption
of the split once, prints the results table and writes
``workdir/results__evaluate-<checkpoint>__split-<split>.json`` (never the training
run's ``results.json``). The config must match the run's in every training key. The
loop over the runs is :func:`xmodal.run.evaluate`'s; this module is the method's part.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from cdds_jax import evaluation, reading, retrieval, train
from cdds_jax.data import inputs
from xmodal import run

__all__ = ["evaluate"]


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    checkpoint: str = "best",
    split: str | None = None,
) -> dict[str, Any]:
    """Evaluates the ``checkpoint`` of ``workdir`` on ``split`` (default: the test split)."""
    config = reading.fill(config)  # as the run stored it (docs/cdds.md §10.18)
    split_name = split or config.data.test_split
    protocols = (
        tuple(config.data.test_protocols)
        if split_name == config.data.test_split
        else ("full",)
    )

    def prepare(
        mesh: jax.sharding.Mesh,
    ) -> Callable[[ml_collections.ConfigDict], run.Scoring]:
        data = train.load_data(config, pathlib.Path(workdir), splits=())
        target_split = inputs.read_config_split(config, split_name)
        model = train.build_model(
            config, data.backbones, len(data.vocab) if data.vocab else 0
        )
        example = data.example(target_split)
        evaluator = evaluation.Evaluator(config, model, mesh, data)
        return lambda run_config: run.Scoring(
            name="CDDS",
            init_state=lambda spe: train.create_train_state(
                run_config, model, example, mesh, steps_per_epoch=spe
            ),
            test=lambda state: evaluator(state, target_split, protocols),
            format_test=retrieval.format_table,
            results_fields={"method": "CDDS", "test_split": split_name},
        )

    return run.evaluate(
        config,
        workdir,
        prepare,
        train.summarize_seeds,
        checkpoint=checkpoint,
        split=split_name,
        always_subdirs=False,
    )


if __name__ == "__main__":
    from xmodal import cli

    cli.run_evaluate(evaluate, "cdds_jax.evaluate")
