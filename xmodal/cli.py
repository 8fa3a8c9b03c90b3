"""The command line shared by every entry point: ``--config``, ``--workdir`` and, for
evaluation, ``--checkpoint`` / ``--split``; multi-host start-up before anything runs.

    python -m cdds_jax.train --config configs/flickr.py:demo --workdir runs/demo \
        --config.train.batch_size=32
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from xmodal import sharding

__all__ = ["run_evaluate", "run_train"]


def _define_common() -> Any:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "config file[:arg]; override fields with --config.a.b=v",
        lock_config=True,
    )  # fmt: skip
    flags.DEFINE_string("workdir", None, "run directory (created; rerunning resumes)")
    flags.mark_flags_as_required(["config", "workdir"])
    return flags.FLAGS


def _start() -> None:
    sharding.initialize_distributed()
    logging.getLogger("absl").setLevel(logging.WARNING)


def run_train(train_and_evaluate: Callable[[Any, str], Any]) -> None:
    """``python -m <method>.train``: parses flags, starts JAX, calls the driver."""
    from absl import app

    flags_ = _define_common()

    def main(argv: Any) -> None:
        del argv
        _start()
        train_and_evaluate(flags_.config, flags_.workdir)

    app.run(main)


def run_evaluate(evaluate: Callable[..., Any]) -> None:
    """``python -m <method>.evaluate``: also ``--checkpoint`` and ``--split``."""
    from absl import app, flags

    flags_ = _define_common()
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which state to score")
    flags.DEFINE_string("split", None, "split to score (default: the test split)")

    def main(argv: Any) -> None:
        del argv
        _start()
        kwargs = {"checkpoint": flags_.checkpoint}
        if flags_.split:
            kwargs["split"] = flags_.split
        evaluate(flags_.config, flags_.workdir, **kwargs)

    app.run(main)
