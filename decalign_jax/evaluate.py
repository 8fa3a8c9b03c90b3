r"""Scores a trained DecAlign run (every seed) on the test split.

    python -m decalign_jax.evaluate --config configs/mosi.py --workdir runs/mosi \
        --config.data.path=data/MOSI/aligned_50.pkl

Restores each ``workdir/seed_<s>/best`` (or ``checkpoints`` with
``--checkpoint=latest``), prints the paper-shaped table (mean ± std over seeds) and
writes ``workdir/results__evaluate-<checkpoint>__split-<split>.json`` (never the
training run's ``results.json``). The config must match the run's in every training
key.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import ml_collections
import numpy as np

from decalign_jax import evaluation, metrics, text, train
from xmodal import run, sharding
from xmodal.checkpoint import restore_for_eval
from xmodal.workdir import check_trained_with, evaluation_name

__all__ = ["evaluate"]


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    checkpoint: str = "best",
    split: str = "test",
) -> dict[str, Any]:
    """Evaluates every seed's ``checkpoint`` in ``workdir`` on ``split``."""
    workdir = pathlib.Path(workdir)
    check_trained_with(workdir, config)
    mesh = sharding.make_mesh(config.mesh)
    run.check_batch_sizes(config, mesh)
    splits = train.load_data(config)
    if split not in splits:
        raise ValueError(f"--split: expected one of {sorted(splits)}, got {split!r}")
    model = train.build_model(config)
    example = text.make_source(splits[split], config)[0]
    example = {k: np.asarray(v)[None] for k, v in example.items()}
    evaluator = evaluation.Evaluator(config, model, mesh)
    seeds = [int(s) for s in (config.seeds or (config.seed,))]
    per_seed = []
    for seed in seeds:
        target, _ = train.create_train_state(
            config, model, example, mesh, seed=seed, steps_per_epoch=1
        )
        state, meta, which = restore_for_eval(
            workdir / f"seed_{seed}", target, which=checkpoint
        )
        per_seed.append(
            {
                "seed": seed,
                "checkpoint": which,
                "selected_step": meta.get("best_step"),
                "test": evaluator(state, splits[split]),
            }
        )
    summary = run.mean_std([r["test"] for r in per_seed], metrics.display_scale)
    results = {
        "method": "DecAlign",
        "dataset": config.data.dataset,
        "split": split,
        "seeds": seeds,
        "test_mean_std": summary,
        "per_seed": per_seed,
    }
    run.log(f"Split '{split}', {checkpoint} checkpoints:")
    run.log(metrics.format_table(config.data.dataset, summary, len(seeds)))
    path = workdir / evaluation_name(checkpoint, split)
    run.write_json(path, results)
    run.log(f"results written to {path}")
    return results


if __name__ == "__main__":
    from xmodal import cli

    cli.run_evaluate(evaluate, "decalign_jax.evaluate")
