r"""Training curves from ``metrics.jsonl``: one panel per loss part and the dev metric.

Every run writes ``WORKDIR/curves.png`` at each evaluation. To compare runs (e.g. the
ablation variants), overlay them:

    python -m xmodal.plot runs/demo runs/no_sampling --out compare.png

Panels: the training loss and each loss part (the keys the run lists in
``metrics.jsonl``'s train rows, or ``--keys``), then the dev selection metric.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from xmodal.writer import read_metrics

__all__ = ["main", "plot_runs"]

# Train-row bookkeeping that is not a loss part.
_NOT_LOSS = frozenset(
    {"step", "split", "time", "epoch", "lr", "grad_norm", "param_norm", "update_norm"}
)


def _series(rows: Sequence[Mapping[str, Any]], split: str, key: str) -> tuple:
    pts = [
        (r["step"], float(r[key]))
        for r in rows
        if r.get("split") == split and isinstance(r.get(key), int | float)
    ]
    pts.sort()
    return tuple(p[0] for p in pts), tuple(p[1] for p in pts)


def plot_runs(
    workdirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    train_keys: Sequence[str] | None = None,
    dev_key: str | None = None,
    labels: Sequence[str] | None = None,
) -> pathlib.Path:
    """Writes a figure of the runs' curves to ``out``; returns its path.

    Args:
      workdirs: run folders (each with ``metrics.jsonl``).
      out: the PNG file.
      train_keys: train metrics to plot (default: ``loss`` and every ``l_*`` /
        loss-part key of the first run).
      dev_key: the dev metric (default: ``rsum`` if present, else the first).
      labels: legend names (default: the folder names).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for w in workdirs:
        path = pathlib.Path(w) / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics.jsonl in this run folder")
        runs.append(read_metrics(path))
    labels = list(labels or [pathlib.Path(w).name for w in workdirs])
    first_train = next((r for r in runs[0] if r.get("split") == "train"), {})
    if train_keys is None:
        train_keys = [
            "loss",
            *sorted(
                k
                for k, v in first_train.items()
                if k not in _NOT_LOSS and k != "loss" and isinstance(v, int | float)
            ),
        ]
    first_dev = next((r for r in runs[0] if r.get("split") == "dev"), None)
    if dev_key is None and first_dev is not None:
        numeric = [
            k
            for k, v in first_dev.items()
            if k not in _NOT_LOSS and isinstance(v, int | float)
        ]
        dev_key = "rsum" if "rsum" in numeric else (numeric[0] if numeric else None)
    panels = [("train", k) for k in train_keys] + (
        [("dev", dev_key)] if dev_key else []
    )
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (split, key) in zip(axes.flat, panels, strict=False):
        for rows_, label in zip(runs, labels, strict=True):
            x, y = _series(rows_, split, key)
            if x:
                ax.plot(x, y, label=label, marker="o" if split == "dev" else None, ms=3)
        ax.set_title(f"{split} {key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    out = pathlib.Path(out)
    partial = out.with_name(f".{out.name}.partial.png")
    fig.savefig(partial, dpi=80)
    plt.close(fig)
    os.replace(partial, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xmodal.plot",
        description="Overlay the training curves of one or more run folders.",
    )
    parser.add_argument("workdirs", nargs="+", help="run folders (metrics.jsonl)")
    parser.add_argument("--out", default="curves.png", help="output PNG")
    parser.add_argument("--keys", default=None, help="train metrics, comma-separated")
    parser.add_argument("--dev", default=None, help="dev metric (default rsum/first)")
    args = parser.parse_args(argv)
    try:
        path = plot_runs(
            args.workdirs,
            args.out,
            train_keys=args.keys.split(",") if args.keys else None,
            dev_key=args.dev,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
