r"""Scores a trained CDDS run on its test protocols.

    python -m cdds_jax.evaluate --config configs/flickr.py --workdir runs/f30k
    python -m cdds_jax.evaluate --config configs/coco.py --workdir runs/coco \
        --checkpoint=latest --split=dev

Restores ``best/`` (or ``checkpoints/`` with ``--checkpoint=latest``) of the run (of
every seed's run when ``config.seeds`` is set), encodes every unique image and caption
of the split once, prints the results table and writes
``workdir/results__evaluate-<checkpoint>__split-<split>.json`` (never the training
run's ``results.json``). The config must match the run's in every training key.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import ml_collections

from cdds_jax import evaluation, retrieval, train
from cdds_jax.data import inputs
from xmodal import run, sharding
from xmodal.checkpoint import restore_for_eval
from xmodal.workdir import check_trained_with, evaluation_name

__all__ = ["evaluate"]


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    checkpoint: str = "best",
    split: str | None = None,
) -> dict[str, Any]:
    """Evaluates the ``checkpoint`` of ``workdir`` on ``split`` (default: the test split)."""
    workdir = pathlib.Path(workdir)
    check_trained_with(workdir, config)
    split_name = split or config.data.test_split
    mesh = sharding.make_mesh(config.mesh)
    run.check_batch_sizes(config, mesh)
    data = train.load_data(config, workdir, splits=())
    target_split = inputs.read_config_split(config, split_name)
    model = train.build_model(
        config, data.backbones, len(data.vocab) if data.vocab else 0
    )
    example = data.example(target_split)
    evaluator = evaluation.Evaluator(config, model, mesh, data)
    protocols = (
        tuple(config.data.test_protocols)
        if split_name == config.data.test_split
        else ("full",)
    )
    seeds = [int(s) for s in config.get("seeds") or ()]
    folders = [workdir / f"seed_{s}" for s in seeds] or [workdir]
    per_run = []
    for folder, seed in zip(folders, seeds or [int(config.seed)], strict=True):
        run_config = ml_collections.ConfigDict(config.to_dict())
        run_config.seed = seed
        target, _ = train.create_train_state(
            run_config, model, example, mesh, steps_per_epoch=1
        )
        state, meta, which = restore_for_eval(folder, target, which=checkpoint)
        per_run.append(
            {
                "method": "CDDS",
                "checkpoint": which,
                "selected_step": meta.get("best_step"),
                "dev": meta.get("dev"),
                "test_split": split_name,
                "test": evaluator(state, target_split, protocols),
                "steps": int(jax.device_get(state.step)),
            }
        )
    results = train.summarize_seeds(per_run, seeds) if seeds else per_run[0]
    if not seeds:
        run.log(f"Split '{split_name}', checkpoint {per_run[0]['checkpoint']}:")
        run.log(retrieval.format_table(results["test"]))
    path = workdir / evaluation_name(checkpoint, split_name)
    run.write_json(path, results)
    run.log(f"results written to {path}")
    return results


if __name__ == "__main__":
    from xmodal import cli

    cli.run_evaluate(evaluate, "cdds_jax.evaluate")
