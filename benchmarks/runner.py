"""The runner: orders the sections, measures them, writes BENCHMARKS.md + benchmarks.json.

``python scripts/benchmark.py [flags]`` calls ``main``. Sections run in the order of
``SECTION_MODULES`` (ceilings first: every ratio needs them); after each one both files
are rewritten, so an interrupted run keeps what it measured. ``--render JSON`` only
rebuilds BENCHMARKS.md from a saved ``benchmarks.json``.

A partial run (``--sections`` a subset) into a folder that already has a
``benchmarks.json`` of the same mode keeps that file's other sections (and its
``meta`` / ``machine`` / ``settings``) and replaces only the sections it measured; the
run itself is recorded under ``runs`` and named in BENCHMARKS.md's header. Its
sections take their ratios from numbers of this run only (``results`` passed to
``measure`` holds this run's sections, never the kept ones).

Adding a section
----------------
A section is a module of this package that defines:

- ``NAME: str``: its key in ``benchmarks.json`` and its name for ``--sections``;
- ``measure(settings, results) -> dict``: runs the measurements and returns what goes
  under ``NAME`` (JSON-able). ``results`` holds what earlier sections measured (e.g.
  ``results.get("ceilings")`` for the GEMM rate; None when that section did not run).
  Time through ``benchmarks.timing``, run train steps through ``steps.run_step``,
  report memory through ``benchmarks.memory``, reach a method's driver through its
  ``*_setup`` module; sizes of its own go in a per-mode table in the module, keyed by
  ``settings.mode``;
- ``render(results) -> list[str]``: its markdown lines, starting with a blank line and
  its ``## title``, built with ``benchmarks.markdown``; called only when
  ``results[NAME]`` is non-empty, so ``--render`` works on any saved JSON;
- optionally ``targets(results) -> markdown.Targets``: its rows of the Targets table;
- optionally ``merge(kept, new) -> dict``: how a partial run's ``new`` numbers join
  the ``kept`` ones of the same section (default: they replace them).

Then add the module to ``SECTION_MODULES`` below: one line. A backbone section
(forward + backward of ViT / Swin / CLIP / BERT beside PyTorch) and a "CDDS with
backbones" section are each such a module.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from benchmarks import (
    backbones,
    cdds_backbones,
    cdds_eval,
    cdds_train,
    ceilings,
    decalign,
    decalign_official,
    heads,
    kernels,
    machine,
    markdown,
    memory,
    process,
)
from benchmarks.settings import Settings, mode_settings
from benchmarks.timing import log

__all__ = [
    "SECTIONS",
    "SECTION_MODULES",
    "USAGE",
    "Section",
    "kept_results",
    "main",
    "make_settings",
    "merged",
    "parse_args",
    "render_markdown",
    "write",
]


class Section(Protocol):
    """What the runner needs of a section module (see the module docstring)."""

    NAME: str

    def measure(
        self, settings: Settings, results: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    def render(self, results: Mapping[str, Any]) -> list[str]: ...


#: The sections in the order they run and appear in BENCHMARKS.md.
SECTION_MODULES: tuple[Section, ...] = (
    ceilings,
    cdds_train,
    cdds_eval,
    heads,
    decalign,
    kernels,
    backbones,
    cdds_backbones,
)
#: Their names (``--sections``, keys of ``benchmarks.json``), in the same order.
SECTIONS: tuple[str, ...] = tuple(m.NAME for m in SECTION_MODULES)

USAGE = """\
    python scripts/benchmark.py                     # full sizes -> ./BENCHMARKS.md + ./benchmarks.json
    python scripts/benchmark.py --quick             # laptop sizes (< 10 min on 2 CPU cores)
    python scripts/benchmark.py --cdds-batches 8,16 --sections ceilings,cdds_train
    python scripts/benchmark.py --sections decalign --official-src DIR   # beside the official step"""


def make_settings(
    mode: str,
    *,
    accelerator: bool,
    cdds_batches: Sequence[int] | None = None,
    budget_s: float | None = None,
    max_reps: int | None = None,
    sections: Sequence[str] = SECTIONS,
    backbone_kinds: Sequence[str] = (),
    backbone_batches: Sequence[int] = (),
    official_src: str | None = None,
) -> Settings:
    """The sizes of ``mode`` on this backend with the command line's overrides."""
    s = mode_settings(mode, accelerator=accelerator)
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown:
        raise ValueError(f"sections: unknown {unknown}; known {SECTIONS}")
    changes: dict[str, Any] = {"sections": tuple(x for x in SECTIONS if x in sections)}
    bad = [k for k in backbone_kinds if k not in backbones.KINDS]
    if bad:
        raise ValueError(f"backbones: unknown {bad}; known {backbones.KINDS}")
    changes["backbone_kinds"] = tuple(backbone_kinds)
    if any(b < 1 for b in backbone_batches):
        raise ValueError(f"backbone_batches must be positive; got {backbone_batches}")
    changes["backbone_batches"] = tuple(sorted(set(backbone_batches)))
    if official_src is not None:
        # Checked now, not after an hour of other sections.
        changes["official_src"] = str(decalign_official.check_source(official_src))
    if cdds_batches:
        if any(b < 1 for b in cdds_batches):
            raise ValueError(f"cdds_batches must be positive; got {list(cdds_batches)}")
        changes["cdds"] = dataclasses.replace(
            s.cdds, batches=tuple(sorted(set(cdds_batches)))
        )
    if budget_s is not None:
        changes["budget_s"] = float(budget_s)
    if max_reps is not None:
        if max_reps < 1:
            raise ValueError(f"max_reps must be >= 1; got {max_reps}")
        changes["max_reps"] = int(max_reps)
    return dataclasses.replace(s, **changes)


# -- Report ---------------------------------------------------------------------------


def _targets(results: Mapping[str, Any]) -> list[str]:
    """The Targets table: every section's target rows, then their notes."""
    rows: list[markdown.Target] = []
    notes: list[str] = []
    for module in SECTION_MODULES:
        hook = getattr(module, "targets", None)
        if hook is not None:
            found = hook(results)
            rows += found.rows
            notes += found.notes
    if not rows:
        return []
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    lines = [
        "",
        "## Targets",
        "",
        "The project's targets for a CPU, from this run's numbers (the GEMM rate is the "
        "one measured at the start; the end-of-run rate shows the drift):",
        "",
    ]
    lines += markdown.table(
        ["target", "measured", ""], [[t.goal, t.measured, verdict[t.met]] for t in rows]
    )
    for note in notes:
        lines += ["", note]
    return lines


def _method(settings: Mapping[str, Any]) -> list[str]:
    """How every number was taken (the closing section)."""
    return [
        "",
        "## Method",
        "",
        "- Each measurement: compile (timed separately), warm-up call(s), then n timed "
        "calls blocking on the result; n = budget / (one call) clamped to [minimum, "
        f"max_reps] (budget {settings['budget_s']:.0f} s, max "
        f"{settings['max_reps']}); the median is reported, the count is "
        "in the tables and `benchmarks.json` (with min / max).",
        "- Ratios compare numbers from this run only; the machine ceilings drift "
        "between runs on shared CPUs.",
        f"- A step whose compiled memory exceeds {memory.MEMORY_GUARD:.0%} of the "
        "available memory is compiled and reported, not run.",
        "",
    ]


def _later_runs(results: Mapping[str, Any]) -> list[str]:
    """One paragraph per partial run whose sections replaced the first run's."""
    lines = []
    for run in results.get("runs") or []:
        names = ", ".join(f"`{x}`" for x in run["sections"])
        cores = (run.get("machine") or {}).get("cpu_cores_usable", "?")
        lines += [
            f"Section{'s' if len(run['sections']) > 1 else ''} {names} "
            f"{'were' if len(run['sections']) > 1 else 'was'} measured later, in "
            f"{'their' if len(run['sections']) > 1 else 'its'} own run: {run['date']} "
            f"by `{run['command']}` (commit `{run.get('git_commit') or '?'}`, "
            f"{run.get('wall_s', 0):.0f} s, {cores} usable cores); its ratios use "
            "numbers of that run only.",
            "",
        ]
    return lines


def render_markdown(results: Mapping[str, Any]) -> str:
    """BENCHMARKS.md from the results dict (sections that did not run are skipped)."""
    meta = results["meta"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {meta['date']} by `{meta['command']}` (mode `{meta['mode']}`, "
        f"commit `{meta.get('git_commit') or '?'}`, {meta.get('wall_s', 0):.0f} s). "
        "All numbers come from this one run"
        + (" unless named below" if results.get("runs") else "")
        + "; every number is also in `benchmarks.json`.",
        "",
    ]
    lines += _later_runs(results)
    lines += machine.render(results)
    lines += _targets(results)
    for module in SECTION_MODULES:
        if results.get(module.NAME):
            lines += module.render(results)
    lines += _method(results["settings"])
    return "\n".join(lines)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return repr(x)


def kept_results(
    out: pathlib.Path, mode: str, sections: Sequence[str]
) -> dict[str, Any] | None:
    """The ``benchmarks.json`` in ``out`` whose other sections a partial run keeps:
    None for a run of every section, no file, or a file of another mode."""
    path = out / "benchmarks.json"
    if set(sections) >= set(SECTIONS) or not path.is_file():
        return None
    previous = json.loads(path.read_text())
    if previous.get("meta", {}).get("mode") != mode:
        log(f"{path}: mode {previous.get('meta', {}).get('mode')!r}, not {mode!r}: "
            "replaced, not merged")  # fmt: skip
        return None
    return previous


def merged(
    previous: Mapping[str, Any] | None, results: Mapping[str, Any]
) -> dict[str, Any]:
    """``results`` of a partial run laid over the ``previous`` file (see the module
    docstring); ``results`` itself when there is nothing to keep."""
    if previous is None:
        return dict(results)
    out = dict(previous)
    measured = [name for name in SECTIONS if name in results]
    for module in SECTION_MODULES:
        if module.NAME not in measured:
            continue
        hook = getattr(module, "merge", None)
        new = results[module.NAME]
        old = previous.get(module.NAME)
        out[module.NAME] = hook(old, new) if hook is not None and old else new
    run = {
        **results["meta"],
        "sections": measured,
        "machine": results["machine"],
        "settings": results["settings"],
    }
    # An earlier partial run keeps the sections nobody measured since.
    earlier = [
        {**r, "sections": [x for x in r["sections"] if x not in measured]}
        for r in previous.get("runs", [])
    ]
    out["runs"] = [r for r in earlier if r["sections"]] + [run]
    return out


def write(results: Mapping[str, Any], out: pathlib.Path) -> None:
    """Writes ``out/benchmarks.json`` (every number) and ``out/BENCHMARKS.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(
        json.dumps(results, indent=2, default=_json_default)
    )
    (out / "BENCHMARKS.md").write_text(render_markdown(results))


# -- Entry point ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``scripts/benchmark.py``."""
    parser = argparse.ArgumentParser(
        description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="laptop sizes")
    mode.add_argument(
        "--smoke", action="store_true", help="trivial sizes (tests): seconds"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: . for the full run, runs/benchmark-<mode> else)",
    )
    parser.add_argument(
        "--cdds-batches",
        default=None,
        help="comma-separated CDDS batch sizes, e.g. 8,16 (default by mode)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--backbones",
        default="",
        help="section backbones: only these kinds (comma-separated vit,swin,clip,bert); "
        "their rows replace those of a kept benchmarks.json, the others stay",
    )
    parser.add_argument(
        "--cdds-backbone-batches",
        default="",
        help="section cdds_backbones: these batch sizes (default by mode), e.g. 8",
    )
    parser.add_argument(
        "--official-src",
        default=None,
        metavar="DIR",
        help="section decalign: a checkout of taco-group/DecAlign whose PyTorch train "
        "step is timed beside ours (imported from DIR at run time, never copied)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=None, help="time budget per measurement"
    )
    parser.add_argument(
        "--max-reps", type=int, default=None, help="at most this many timed calls"
    )
    parser.add_argument(
        "--render",
        default=None,
        metavar="JSON",
        help="only rewrite BENCHMARKS.md from a benchmarks.json (beside it, or --out)",
    )
    return parser.parse_args(argv)


def _render_only(source: pathlib.Path, out: str | None) -> dict[str, Any]:
    """Rewrites BENCHMARKS.md from a saved benchmarks.json; nothing is measured."""
    results = json.loads(source.read_text())
    folder = pathlib.Path(out) if out else source.parent
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "BENCHMARKS.md").write_text(render_markdown(results))
    log(f"rendered {source} -> {folder / 'BENCHMARKS.md'}")
    return results


def _settings_from_args(args: argparse.Namespace) -> Settings:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    batches = (
        [int(x) for x in args.cdds_batches.split(",") if x.strip()]
        if args.cdds_batches
        else None
    )
    return make_settings(
        mode,
        accelerator=jax.default_backend() != "cpu",
        cdds_batches=batches,
        budget_s=args.budget_s,
        max_reps=args.max_reps,
        sections=[x.strip() for x in args.sections.split(",") if x.strip()],
        backbone_kinds=[x.strip() for x in args.backbones.split(",") if x.strip()],
        backbone_batches=[
            int(x) for x in args.cdds_backbone_batches.split(",") if x.strip()
        ],
        official_src=args.official_src,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; returns the results written to ``benchmarks.json``."""
    args = parse_args(argv)
    if args.render:
        return _render_only(pathlib.Path(args.render), args.out)
    process.use_cpu_memory_scheduler()
    # grain's worker processes read absl flags (the pipeline rows of cdds_backbones).
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    settings = _settings_from_args(args)
    mode = settings.mode
    out = pathlib.Path(
        args.out or ("." if mode == "full" else f"runs/benchmark-{mode}")
    )
    start = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(
                [
                    "python scripts/benchmark.py",
                    *(argv if argv is not None else sys.argv[1:]),
                ]
            ),
            "mode": mode,
            "git_commit": machine.git_commit(),
        },
        "machine": machine.machine_info(),
        "settings": dataclasses.asdict(settings),
    }
    previous = kept_results(out, mode, settings.sections)
    if previous is not None:
        kept = [x for x in SECTIONS if x in previous and x not in settings.sections]
        log(f"partial run: keeping {kept} of {out / 'benchmarks.json'}")
    m = results["machine"]
    log(
        f"{mode} run on {m['cpu_model']} ({m['cpu_cores_usable']} cores), backend "
        f"{m['jax_backend']} {m['device_kinds']}, jax {m['jax']}; writing to {out}"
    )
    for module in SECTION_MODULES:
        if module.NAME not in settings.sections:
            continue
        log(f"--- {module.NAME}")
        results[module.NAME] = module.measure(settings, results)
        results["meta"]["wall_s"] = time.perf_counter() - start
        write(merged(previous, results), out)
    if ceilings.NAME in results:
        results[ceilings.NAME]["f32_end"] = ceilings.measure_end(settings)
        log(
            f"f32 GEMM {settings.gemm_size}^3 at the end: "
            f"{results[ceilings.NAME]['f32_end']['gflops']:.1f} GFLOP/s"
        )
    results["meta"]["wall_s"] = time.perf_counter() - start
    write(merged(previous, results), out)
    log(f"done in {results['meta']['wall_s']:.0f} s: {out / 'BENCHMARKS.md'}")
    return results
