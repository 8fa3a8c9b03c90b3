r"""The Table 4 analogue: each retrieval head with and without the distribution-sampling
plug-in on the synthetic SCAN precomp demo, several seeds each (docs/cdds.md §15.7).

    python scripts/cdds_heads.py --out runs/heads                 # 5 heads x 2, 3 seeds
    python scripts/cdds_heads.py --out runs/heads --only scan,chan --jobs 2

Every row is ``python -m cdds_jax.train --config configs/flickr.py:scan_demo
--config.model.head=H --config.plugin.enabled=P --config.seeds=0,1,2`` (synthetic
region features and caption text through the BiGRU, docs/cdds.md §12.6, the
``offsets`` generator unless ``--generators`` says otherwise), the head's published loss
settings (``config.heads.<H>``) and ``plugin.weight`` = ``--weight``. The paper reports
+0.4 to +1.1% for DS on the five heads; the table shows what the demo gives, whichever
way it falls.

One run folder per (generator, row), one sub-folder per seed; a rerun resumes or reuses
finished rows (the runner of ``scripts/cdds_variants.py``). The script writes
``OUT/heads.md`` (one line per head: test rSum mean ± std without and with the plug-in,
the difference of the means and the mean ± std of the per-seed differences, CPU seconds
per run) and ``OUT/heads.json`` (every number) after each row, and prints the table at
the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import sys
import threading

import numpy as np

# The runner of the CDDS evidence table: one subprocess per row, its CPU seconds, and
# the reuse of finished rows (this folder is on sys.path when run as a script).
from cdds_variants import cell, run_row

HEADS = ("vse", "scan", "sgr", "chan", "laps")
TITLES = {"vse": "VSE++", "scan": "SCAN", "sgr": "SGR", "chan": "CHAN", "laps": "LAPS"}
CONFIG = "configs/flickr.py:scan_demo"


def rows(weight: float, config: str = CONFIG) -> dict[str, dict]:
    """``{name: {"head", "plugin", "config", "overrides"}}``: each head alone, then
    with the plug-in at ``plugin.weight = weight``."""
    out: dict[str, dict] = {}
    for head in HEADS:
        for on in (False, True):
            overrides = [f"model.head={head}", f"plugin.enabled={on}"]
            if on:
                overrides.append(f"plugin.weight={weight}")
            out[f"{head}+ds" if on else head] = {
                "head": head,
                "plugin": on,
                "config": config,
                "overrides": overrides,
            }
    return out


def _rsums(record: dict) -> np.ndarray:
    return np.asarray([r["rsum"] for r in record["per_seed"]], np.float64)


def difference(alone: dict, with_ds: dict) -> dict[str, float]:
    """The plug-in's effect on test rSum: the difference of the means (also relative to
    the head alone, in %, the paper's unit) and the mean and std of the per-seed
    differences (seed s with the plug-in minus seed s without: same data order and
    head initialisation)."""
    a, b = _rsums(alone), _rsums(with_ds)
    paired = b - a if a.shape == b.shape else np.asarray([np.nan])
    return {
        "mean": float(b.mean() - a.mean()),
        "relative_pct": float(100.0 * (b.mean() - a.mean()) / a.mean()),
        "paired_mean": float(paired.mean()),
        "paired_std": float(paired.std()),
    }


def table(records: dict[str, dict], generator: str, config: str = CONFIG) -> str:
    """The markdown table of one generator: one line per head."""
    lines = [
        f"`{config}`, generator `{generator}`: test rSum (i2t / t2i R@1), mean ± std "
        "over seeds:",
        "",
        "| head | alone | + distribution sampling | difference (relative) "
        "| per-seed difference | CPU s / run |",
        "|---|---|---|---|---|---|",
    ]
    for head in HEADS:
        alone, with_ds = records.get(head), records.get(f"{head}+ds")
        diff = paired = "-"
        if alone is not None and with_ds is not None:
            d = difference(alone, with_ds)
            diff = f"{d['mean']:+.1f} ({d['relative_pct']:+.1f}%)"
            paired = f"{d['paired_mean']:+.1f} ± {d['paired_std']:.1f}"
        cpu = [
            f"{r['timing']['cpu_s_per_run']:.0f}" for r in (alone, with_ds) if r
        ] or ["-"]
        lines.append(
            f"| {TITLES[head]} | {cell(alone)} | {cell(with_ds)} | {diff} | "
            f"{paired} | {' / '.join(cpu)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/heads")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--weight", type=float, default=1.0, help="plugin.weight")
    parser.add_argument("--only", default="", help="comma-separated heads")
    parser.add_argument("--generators", default="offsets")
    parser.add_argument(
        "--config", default=CONFIG, help="e.g. configs/flickr.py:scan_tiny"
    )
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at a time")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="an extra override for every row, e.g. --set train.num_steps=20",
    )
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = rows(args.weight, args.config)
    for row in spec.values():
        row["overrides"] += args.set
    wanted = [h for h in args.only.split(",") if h] or list(HEADS)
    generators = [g for g in args.generators.split(",") if g]
    unknown = sorted(set(wanted) - set(HEADS))
    if unknown:
        print(f"error: unknown heads {unknown}; heads: {list(HEADS)}")
        return 2
    records: dict[str, dict[str, dict]] = {}
    previous = out / "heads.json"
    if previous.is_file():
        records = json.loads(previous.read_text()).get("records", {})
    lock = threading.Lock()

    def write() -> None:
        (out / "heads.json").write_text(
            json.dumps({"rows": spec, "records": records}, indent=2)
        )
        tables = [table(records.get(g, {}), g, args.config) for g in generators]
        (out / "heads.md").write_text("\n\n".join(tables) + "\n")

    def one(job: tuple[str, str]) -> None:
        generator, name = job
        print(f"[heads] {generator}/{name} ...", flush=True)
        record = run_row(name, spec[name], generator, out, args.seeds)
        with lock:
            records.setdefault(generator, {})[name] = record
            write()
        print(f"[heads] {generator}/{name}: {cell(record)}", flush=True)

    jobs = [(g, n) for g in generators for n, r in spec.items() if r["head"] in wanted]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(one, j) for j in jobs]:
            future.result()
    write()
    print("\n\n".join(table(records.get(g, {}), g, args.config) for g in generators))
    return 0


if __name__ == "__main__":
    sys.exit(main())
