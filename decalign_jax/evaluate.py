r"""Scores a trained DecAlign run (every seed) on the test split.

    python -m decalign_jax.evaluate --config configs/mosi.py --workdir runs/mosi \
        --config.data.path=data/MOSI/aligned_50.pkl

Restores each seed's ``best/`` (or ``checkpoints/`` with ``--checkpoint=latest``),
prints the paper-shaped table (mean ± std over seeds) and writes
``workdir/results__evaluate-<checkpoint>__split-<split>.json`` (never the training
run's ``results.json``). The config must match the run's in every training key. The
loop over the seeds is :func:`xmodal.run.evaluate`'s; this module is the method's part.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from decalign_jax import evaluation, metrics, train
from decalign_jax.data import inputs
from xmodal import run
from xmodal.writer import log, mean_std

__all__ = ["evaluate"]


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    checkpoint: str = "best",
    split: str = "test",
) -> dict[str, Any]:
    """Evaluates every seed's ``checkpoint`` in ``workdir`` on ``split``."""
    dataset = config.data.dataset

    def prepare(
        mesh: jax.sharding.Mesh,
    ) -> Callable[[ml_collections.ConfigDict], run.Scoring]:
        splits = inputs.load_data(config)
        if split not in splits:
            raise ValueError(
                f"--split: expected one of {sorted(splits)}, got {split!r}"
            )
        model = train.build_model(config)
        example = inputs.make_source(splits[split], config)[0]
        example = {k: np.asarray(v)[None] for k, v in example.items()}
        evaluator = evaluation.Evaluator(config, model, mesh)
        return lambda run_config: run.Scoring(
            name=f"DecAlign seed {run_config.seed}",
            init_state=lambda spe: train.create_train_state(
                run_config,
                model,
                example,
                mesh,
                seed=run_config.seed,
                steps_per_epoch=spe,
            ),
            test=lambda state: evaluator(state, splits[split]),
            format_test=functools.partial(evaluation.format_run, dataset),
            results_fields={"seed": run_config.seed},
        )

    def summarize(
        per_seed: Sequence[Mapping[str, Any]], seeds: Sequence[int]
    ) -> dict[str, Any]:
        summary = mean_std([r["test"] for r in per_seed], metrics.display_scale)
        log(f"Split '{split}', {checkpoint} checkpoints:")
        log(metrics.format_table(dataset, summary, len(seeds)))
        return {
            "method": "DecAlign",
            "dataset": dataset,
            "split": split,
            "seeds": list(seeds),
            "test_mean_std": summary,
            "per_seed": list(per_seed),
        }

    return run.evaluate(
        config,
        workdir,
        prepare,
        summarize,
        checkpoint=checkpoint,
        split=split,
        always_subdirs=True,
    )


if __name__ == "__main__":
    from xmodal import cli

    cli.run_evaluate(evaluate, "decalign_jax.evaluate")
