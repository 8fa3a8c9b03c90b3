r"""The CDDS evidence table: readings of the score and Table 3's switches on the demo,
on both synthetic generators, several seeds each (README "The evidence table").

    python scripts/cdds_variants.py --out runs/variants              # everything
    python scripts/cdds_variants.py --out runs/variants --only grid  # the readings
    python scripts/cdds_variants.py --out runs/variants --only switches --jobs 2

Every row is ``python -m cdds_jax.train --config configs/flickr.py:demo`` with its
overrides, ``--config.seeds=0,1,2`` and ``--config.data.synthetic.generator=G`` for G
in ``offsets`` and ``mixed`` (docs/cdds.md §12.6: what each generator plants and which
reading it rewards). Two groups of rows:

* ``grid``: every reading, i.e. each table comparison (cosine / centred /
  level_centred / w2) with each source of W (batch / ema / window / subset / precompute
  / identity); each row sets all four reading fields, so it does not depend on the
  default.
* ``switches``: the base reading (``BASE``: the project preset when the table was
  measured; its own numbers are its grid row) with one more override each: Table 3's five switches, the temperature
  modes, ``table_scale``, the hardest-negative switch.

One run folder per (generator, row), one sub-folder per seed; a rerun resumes or reuses
finished rows. ``--jobs 2`` trains two rows at a time (each a separate process; the
numbers do not depend on it). CPU seconds are each run's own (user + system), so they
are comparable across rows even when runs share the machine; wall time is not shown.
The script writes ``OUT/variants.md`` (the README's table) and ``OUT/variants.json``
(every number) after each row, and prints the table at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import threading

GENERATORS = ("offsets", "mixed")
COMPARES = ("cosine", "centred", "level_centred", "w2")
SOURCES = ("batch", "ema", "window", "subset", "precompute", "identity")
#: The reading the switch rows are measured on (README: the "base" column).
BASE = {
    "semantics.w_source": "ema",
    "semantics.table_compare": "centred",
    "semantics.table_scale": "False",
    "semantics.tau_mode": "fixed",
}
#: The rows of the "switches" group: name -> (override, what it tests).
SWITCHES: dict[str, tuple[str, str]] = {
    "no_sampling": ("ablate.sampling=False", "Table 3: mean-pooled cosine, same hinge"),
    "no_decouple": ("ablate.decouple=False", "Table 3: no UNet, no L_m / L_f / L_x"),
    "no_modality": ("ablate.modality=False", "Table 3: no L_m"),
    "no_integrity": ("ablate.integrity=False", "Table 3: no L_f / L_x"),
    "no_noise": ("ablate.noise=False", "Table 3: no bottleneck noise"),
    "tau_relative": ("semantics.tau_mode=relative", "tau x each row's std of S"),
    "tau_learned": ("semantics.tau_mode=learned", "a learned temperature"),
    "table_scale": ("semantics.table_scale=True", "centred tables / their spread"),
    "hardest_after_1": (
        "loss.max_violation_after_epochs=1",
        "hardest negative after epoch 1 (LAPS)",
    ),
}
_WORDS = {
    "batch": "W per batch",
    "ema": "W from EMA of S",
    "window": "W from 16-batch window",
    "subset": "W from a 10% subset",
    "precompute": "W from all pairs",
    "identity": "W = I",
}


def rows() -> dict[str, dict]:
    """Every row: ``{name: {"group", "overrides", "what", "base"}}`` in table order."""
    out: dict[str, dict] = {}
    for compare in COMPARES:
        for source in SOURCES:
            reading = {
                "semantics.w_source": source,
                "semantics.table_compare": compare,
                "semantics.table_scale": "False",
                "semantics.tau_mode": "fixed",
            }
            label = f"{compare}, {_WORDS[source]}"
            if (compare, source) == ("cosine", "batch"):
                label += " (the paper's reading)"
            out[f"{compare}-{source}"] = {
                "group": "grid",
                "overrides": [f"{k}={v}" for k, v in reading.items()],
                "what": label,
                "base": "-",
            }
    base = [f"{k}={v}" for k, v in BASE.items()]
    base_name = (
        f"{BASE['semantics.table_compare']}, {_WORDS[BASE['semantics.w_source']]}"
    )
    # The base itself is the grid row with the same four fields (trained once).
    base_row = f"{BASE['semantics.table_compare']}-{BASE['semantics.w_source']}"
    assert out[base_row]["overrides"] == base, "BASE must be one of the grid rows"
    out[base_row]["what"] += " (**the base**)"
    for name, (override, what) in SWITCHES.items():
        out[name] = {
            "group": "switches",
            "overrides": [*base, override],
            "what": what,
            "base": base_name,
        }
    return out


def _command(row: dict, generator: str, workdir: pathlib.Path, seeds: str) -> list:
    return [
        sys.executable,
        "-m",
        "cdds_jax.train",
        "--config",
        row.get("config", "configs/flickr.py:demo"),
        "--workdir",
        str(workdir),
        f"--config.seeds={seeds}",
        f"--config.data.synthetic.generator={generator}",
        *(f"--config.{o}" for o in row["overrides"]),
    ]


def run_row(
    name: str, row: dict, generator: str, out: pathlib.Path, seeds: str
) -> dict:
    """Trains (or reuses) one row's seeds on one generator; returns its record."""
    workdir = out / generator / name
    timing_path = workdir / "timing.json"
    done = (workdir / "results.json").is_file() and timing_path.is_file()
    if not done:
        workdir.parent.mkdir(parents=True, exist_ok=True)
        log = out / generator / f"{name}.log"
        # Speed only, the numbers are the same: huge pages for malloc (fewer page
        # faults) and JAX's persistent compilation cache (the seeds and rows of one
        # program compile it once).
        env = dict(
            os.environ,
            GLIBC_TUNABLES="glibc.malloc.hugetlb=1",
            JAX_COMPILATION_CACHE_DIR=str(out / ".jax_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        )
        with open(log, "w") as f:
            proc = subprocess.Popen(
                _command(row, generator, workdir, seeds),
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
            )
            _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code:
            raise RuntimeError(f"{generator}/{name}: exit {code}, see {log}")
        n = len(seeds.split(","))
        cpu = (usage.ru_utime + usage.ru_stime) / n
        timing_path.write_text(json.dumps({"cpu_s_per_run": cpu}))
    results = json.loads((workdir / "results.json").read_text())
    return {
        "test": results["test_mean_std"]["full"],
        "per_seed": [r["test"]["full"] for r in results["per_seed"]],
        "reading": results["per_seed"][0].get("reading"),
        "timing": json.loads(timing_path.read_text()),
        "degenerate": [
            r.get("degenerate_dev_steps") for r in results.get("per_seed", [])
        ],
        "collapse_warned_at": [
            r.get("collapse_warned_at_step") for r in results.get("per_seed", [])
        ],
    }


def cell(record: dict | None) -> str:
    """A table cell: ``rSum mean ± std (i2t R@1 / t2i R@1)``, or "not run"."""
    if record is None:
        return "not run"
    t = record["test"]
    return (
        f"{t['rsum']['mean']:.1f} ± {t['rsum']['std']:.1f} "
        f"({t['i2t_r1']['mean']:.1f} / {t['t2i_r1']['mean']:.1f})"
    )


def table(spec: dict[str, dict], records: dict[str, dict[str, dict]]) -> str:
    """The markdown table: one line per row, one column per generator."""
    lines = [
        "| variant | overrides | base | offsets: rSum (i2t / t2i R@1) "
        "| mixed: rSum (i2t / t2i R@1) | CPU s / run |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in spec.items():
        cells = [cell(records.get(g, {}).get(name)) for g in GENERATORS]
        cpu = [
            records[g][name]["timing"]["cpu_s_per_run"]
            for g in GENERATORS
            if name in records.get(g, {})
        ]
        if row["group"] == "grid":
            shown = row["overrides"][:2]
        else:
            shown = row["overrides"][len(BASE) :] or ["(none)"]
        overrides = ", ".join(f"`{o}`" for o in shown)
        lines.append(
            f"| {row['what']} | {overrides} | {row['base']} | {cells[0]} | {cells[1]} "
            f"| {' / '.join(f'{c:.0f}' for c in cpu) or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/variants")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated row names or groups (grid, switches), run in this order",
    )
    parser.add_argument("--generators", default=",".join(GENERATORS))
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at a time")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = rows()
    wanted = [n for n in args.only.split(",") if n]
    # Rows named in --only run in the order given (groups in table order), so a
    # partial campaign measures the rows it names first.
    names: list[str] = []
    for w in wanted or ["grid", "switches"]:
        names += [n for n, r in spec.items() if n == w or r["group"] == w]
    names = list(dict.fromkeys(names))
    generators = [g for g in args.generators.split(",") if g]
    unknown = sorted(set(wanted) - set(spec) - {"grid", "switches"})
    unknown += sorted(set(generators) - set(GENERATORS))
    if unknown:
        print(f"error: unknown rows or generators {unknown}; rows: {list(spec)}")
        return 2
    records: dict[str, dict[str, dict]] = {}
    previous = out / "variants.json"
    if previous.is_file():
        records = json.loads(previous.read_text()).get("records", {})
    lock = threading.Lock()

    def one(job: tuple[str, str]) -> None:
        generator, name = job
        print(f"[variants] {generator}/{name} ...", flush=True)
        record = run_row(name, spec[name], generator, out, args.seeds)
        with lock:
            records.setdefault(generator, {})[name] = record
            (out / "variants.json").write_text(
                json.dumps({"rows": spec, "records": records}, indent=2)
            )
            (out / "variants.md").write_text(table(spec, records) + "\n")
        print(f"[variants] {generator}/{name}: {cell(record)}", flush=True)

    jobs = [(g, n) for n in names for g in generators]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(one, j) for j in jobs]:
            future.result()
    print(table(spec, records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
