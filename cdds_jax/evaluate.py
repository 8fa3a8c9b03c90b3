r"""Scores a trained CDDS run on its test protocols.

    python -m cdds_jax.evaluate --config configs/flickr.py --workdir runs/f30k
    python -m cdds_jax.evaluate --config configs/coco.py --workdir runs/coco \
        --checkpoint=latest --split=dev

Restores ``best/`` (or ``checkpoints/`` with ``--checkpoint=latest``), encodes every
unique image and caption of the split once, prints the results table and writes
``workdir/results.json`` (``results_<split>.json`` for a split other than the test one).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from cdds_jax import retrieval, train
from xmodal import sharding
from xmodal.checkpoint import restore_for_eval

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
    split_name = split or config.data.test_split
    mesh = sharding.make_mesh(config.mesh)
    data = train.load_data(config, workdir, splits=())
    root = train.data_root(config)
    from cdds_jax import data as data_lib

    target_split = data_lib.read_split(config.data.format, root, split_name)
    model = train.build_model(config, len(data.vocab) if data.vocab else 0)
    example = data.pair_source(target_split)[0]
    example = {k: np.asarray(v)[None] for k, v in example.items()}
    state, _ = train.create_train_state(config, model, example, mesh, steps_per_epoch=1)
    state, meta, which = restore_for_eval(workdir, state, which=checkpoint)
    protocols = (
        tuple(config.data.test_protocols)
        if split_name == config.data.test_split
        else ("full",)
    )
    results_by_protocol = train.Evaluator(config, model, mesh, data)(
        state, target_split, protocols
    )
    results = {
        "method": "CDDS",
        "checkpoint": which,
        "selected_on": "test (LAPS protocol)" if config.eval.select_on_test else "dev",
        "selected_step": meta.get("best_step"),
        "dev": meta.get("dev"),
        "test_split": split_name,
        "test": results_by_protocol,
        "steps": int(jax.device_get(state.step)),
    }
    if jax.process_index() == 0:
        name = (
            "results.json"
            if split_name == config.data.test_split
            else f"results_{split_name}.json"
        )
        (workdir / name).write_text(json.dumps(results, indent=2))
        print(f"Split '{split_name}', checkpoint {which}:")
        print(retrieval.format_table(results_by_protocol))
        print(f"results written to {workdir / name}")
    return results


if __name__ == "__main__":
    from xmodal import cli

    cli.run_evaluate(evaluate)
