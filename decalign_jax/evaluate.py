r"""Scores a trained DecAlign run (every seed) on the test split.

    python -m decalign_jax.evaluate --config configs/mosi.py --workdir runs/mosi \
        --config.data.path=data/MOSI/aligned_50.pkl

Restores each ``workdir/seed_<s>/best`` (or ``checkpoints`` with
``--checkpoint=latest``), prints the paper-shaped table (mean ± std over seeds) and
writes ``workdir/results.json``.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from decalign_jax import data as data_lib
from decalign_jax import train
from xmodal import sharding
from xmodal.checkpoint import restore_for_eval

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
    mesh = sharding.make_mesh(config.mesh)
    splits = train.load_data(config)
    if split not in splits:
        raise ValueError(f"split: expected one of {sorted(splits)}, got {split!r}")
    model = train.build_model(config)
    example = data_lib.MMSASource(splits[split])[0]
    example = {k: np.asarray(v)[None] for k, v in example.items()}
    evaluator = train.Evaluator(config, model, mesh)
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
                split: evaluator(state, splits[split]),
            }
        )
    summary = train.summarize_seeds([r[split] for r in per_seed])
    results = {
        "method": "DecAlign",
        "dataset": config.data.dataset,
        "seeds": seeds,
        f"{split}_mean_std": summary,
        "per_seed": per_seed,
    }
    if jax.process_index() == 0:
        name = "results.json" if split == "test" else f"results_{split}.json"
        (workdir / name).write_text(json.dumps(results, indent=2))
        print(f"Split '{split}', {checkpoint} checkpoints:")
        print(train.format_table(config.data.dataset, summary, len(seeds)))
        print(f"results written to {workdir / name}")
    return results


if __name__ == "__main__":
    from xmodal import cli

    cli.run_evaluate(evaluate)
