r"""The CDDS evidence table: the demo's default and each variant, several seeds each.

    python scripts/cdds_variants.py --out runs/variants                # every variant
    python scripts/cdds_variants.py --out runs/variants --only default,no_sampling

Each variant is ``python -m cdds_jax.train --config configs/flickr.py:demo`` with its
overrides and ``--config.seeds=0,1,2`` (one run folder per variant, one sub-folder
per seed; a rerun resumes or reuses finished seeds). The script prints a markdown
table (test rSum, i2t / t2i R@1 as mean ± std over the seeds, wall and CPU time per
run) and writes it with the raw numbers to ``OUT/variants.md`` / ``OUT/variants.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

# name -> (overrides, what it tests)
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "default": ((), "the demo config"),
    "no_sampling": (("ablate.sampling=False",), "Table 3: mean-pooled cosine score"),
    "no_decouple": (("ablate.decouple=False",), "Table 3: no UNet, no L_m / L_f / L_x"),
    "no_modality": (("ablate.modality=False",), "Table 3: no L_m"),
    "no_integrity": (("ablate.integrity=False",), "Table 3: no L_f / L_x"),
    "no_noise": (("ablate.noise=False",), "Table 3: no bottleneck noise"),
    "w_batch": (("semantics.w_source=batch",), "W from each batch's S in training"),
    "w_window": (("semantics.w_source=window",), "W from S over the last 16 batches"),
    "tau_relative": (("semantics.tau_mode=relative",), "tau x each row's std of S"),
    "tau_learned": (("semantics.tau_mode=learned",), "a learned temperature"),
    "level_centred": (
        ("semantics.table_compare=level_centred",),
        "tables centred per level",
    ),
    "cosine": (
        ("semantics.table_compare=cosine",),
        "cosine of the raw tables (the paper's reading)",
    ),
    "table_scale": (("semantics.table_scale=True",), "centred and divided by spread"),
    "w2": (("semantics.table_compare=w2",), "-W2 distance between quantile functions"),
    "hardest_after_1": (
        ("loss.max_violation_after_epochs=1",),
        "hardest negative after epoch 1 (LAPS)",
    ),
}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_variant(name: str, out: pathlib.Path, seeds: str) -> dict:
    """Trains (or reuses) one variant's seeds; returns its summary and timing."""
    overrides, _ = VARIANTS[name]
    workdir = out / name
    timing_path = workdir / "timing.json"
    argv = [
        sys.executable,
        "-m",
        "cdds_jax.train",
        "--config",
        "configs/flickr.py:demo",
        "--workdir",
        str(workdir),
        f"--config.seeds={seeds}",
        *(f"--config.{o}" for o in overrides),
    ]
    done = (workdir / "results.json").is_file() and timing_path.is_file()
    if not done:
        wall, cpu = time.perf_counter(), _cpu_seconds()
        log = out / f"{name}.log"
        with open(log, "w") as f:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode:
            raise SystemExit(f"{name}: exit {proc.returncode}, see {log}")
        n = len(seeds.split(","))
        timing = {
            "wall_s_per_run": (time.perf_counter() - wall) / n,
            "cpu_s_per_run": (_cpu_seconds() - cpu) / n,
        }
        timing_path.write_text(json.dumps(timing))
    results = json.loads((workdir / "results.json").read_text())
    return {
        "results": results,
        "timing": json.loads(timing_path.read_text()),
        "degenerate": [
            r.get("degenerate_dev_steps") for r in results.get("per_seed", [])
        ],
    }


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| variant | what | test rSum | i2t R@1 | t2i R@1 | wall / run | CPU / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        full = row["results"]["test_mean_std"]["full"]

        def cell(key: str, full=full) -> str:
            return f"{full[key]['mean']:.1f} ± {full[key]['std']:.1f}"

        t = row["timing"]
        overrides, what = VARIANTS[name]
        label = ", ".join(f"`{o}`" for o in overrides) or "`configs/flickr.py:demo`"
        lines.append(
            f"| {label} | {what} | {cell('rsum')} | {cell('i2t_r1')} | "
            f"{cell('t2i_r1')} | {t['wall_s_per_run']:.0f} s | "
            f"{t['cpu_s_per_run']:.0f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/variants")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default="", help="comma-separated variant names")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        print(f"error: unknown variants {unknown}; known: {list(VARIANTS)}")
        return 2
    rows = {}
    for name in names:
        print(f"[variants] {name} ...", flush=True)
        rows[name] = run_variant(name, out, args.seeds)
        text = table(rows)
        (out / "variants.md").write_text(text + "\n")
        (out / "variants.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
