"""Section ``backbones``: each backbone's step in JAX beside ``transformers``' PyTorch
model at the same shapes, in the same run.

Per backbone of ``backbone_cases.cases_for`` (full mode: ViT-B/16 224, Swin-B 384,
CLIP ViT-L/14 forward only, BERT-base at L 50) and batch size: the JAX call (the
project's Flax module, ``grad`` of ``mean(h^2)`` w.r.t. the parameters, or the forward)
and the PyTorch call (same config, random init, ``torch.set_num_threads`` = the usable
cores) are timed interleaved (``backbone_parts.side_by_side``), so the JAX / PyTorch
ratio compares numbers taken side by side. Reported: items / s, the fraction of the
f32 GEMM rate (analytical FLOPs, ``backbone_cases.model_flops``), the JAX step's
compiled memory, and ``model dtype = bfloat16`` / ``remat = True`` (JAX only) beside
the default at the option batches. Where JAX is slower than PyTorch, or ViT-B at
B >= 32 is below 50% of the GEMM rate, one layer's parts are timed apart
(``backbone_parts``) and the table names the op that dominates.

The GEMM rate is the ``ceilings`` section's when this run measured it, else measured
here first (``ceilings.measure_end``): every ratio comes from one run.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import backbone_cases, backbone_parts, ceilings, markdown, memory
from benchmarks.backbone_cases import BackboneCase
from benchmarks.markdown import Target, Targets
from benchmarks.settings import Settings
from benchmarks.timing import log, time_calls, timed

__all__ = ["KINDS", "NAME", "OPTIONS", "measure", "merge", "render", "targets"]

NAME = "backbones"
#: The JAX options measured beside the default: (label, ``from_config`` keywords).
OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("dtype=bfloat16", {"dtype": jnp.bfloat16}),
    ("remat=True", {"remat": True}),
)
#: The backbone kinds (``--backbones`` selects some).
KINDS: tuple[str, ...] = tuple(backbone_cases.CONFIG_CLASSES)
#: ViT-B's target: at B >= 32, at least this fraction of the f32 GEMM rate.
GEMM_TARGET = 0.5


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _compile(case: BackboneCase, batch: int, **options: Any) -> dict[str, Any]:
    fn, args = backbone_cases.jax_step(case, batch, **options)
    compile_s, compiled = timed(lambda: fn.lower(*args).compile())
    analysis = memory.memory_analysis(compiled)
    out = {"compile_s": compile_s, "memory_analysis": analysis}
    need = (analysis or {}).get("total_bytes")
    avail = memory.available_bytes()
    if need is not None and avail is not None and need > memory.MEMORY_GUARD * avail:
        out["skipped"] = (
            f"needs {need / 2**30:.1f} GiB > {memory.MEMORY_GUARD:.0%} of "
            f"{avail / 2**30:.1f} GiB available"
        )
    out["call"] = lambda: compiled(*args)
    out["memory_bytes"] = need
    return out


def _finish(
    entry: dict[str, Any], case: BackboneCase, batch: int, rate: float | None
) -> dict[str, Any]:
    flops = batch * backbone_cases.model_flops(case)
    entry["model_flops"] = flops
    for side in ("jax", "torch"):
        t = entry.get(side)
        if t:
            t["items_per_s"] = batch / t["median_s"]
            t["fraction_of_f32_gemm"] = flops / t["median_s"] / rate if rate else None
    if entry.get("jax") and entry.get("torch"):
        entry["jax_over_torch"] = entry["torch"]["median_s"] / entry["jax"]["median_s"]
    return entry


def _entry(
    case: BackboneCase, batch: int, variant: str, jx: Mapping[str, Any]
) -> dict[str, Any]:
    """The result row of one shape and variant, with its compilation's numbers."""
    return {
        "backbone": case.name,
        "kind": case.kind,
        "batch": batch,
        "variant": variant,
        "forward_only": case.forward_only,
        "compile_s": jx["compile_s"],
        "memory_bytes": jx["memory_bytes"],
        "memory_analysis": jx["memory_analysis"],
    }


def _measure_pair(
    case: BackboneCase, batch: int, settings: Settings, rate: float | None
) -> dict[str, Any]:
    """JAX (default options) and PyTorch at one shape, interleaved."""
    label = f"{NAME} {case.name} B={batch}"
    log(f"{label}: compiling")
    jx = _compile(case, batch)
    entry = _entry(case, batch, "float32", jx)
    if "skipped" in jx:
        entry["skipped"] = jx["skipped"]
        log(f"{label}: SKIPPED, {jx['skipped']}")
        return _finish(entry, case, batch, rate)
    torch_call, model = backbone_cases.torch_step(case, batch)
    timing = backbone_parts.side_by_side(
        {"jax": jx["call"], "torch": torch_call},
        settings,
        block={"jax": jax.block_until_ready, "torch": lambda r: r},
    )
    del model, torch_call, jx
    entry["jax"], entry["torch"] = timing["jax"], timing["torch"]
    _finish(entry, case, batch, rate)
    log(
        f"{label}: JAX {entry['jax']['median_s']:.2f} s, PyTorch "
        f"{entry['torch']['median_s']:.2f} s (JAX / PyTorch speed "
        f"x{entry['jax_over_torch']:.2f}), "
        f"{markdown.pct(entry['jax']['fraction_of_f32_gemm'])} of f32 GEMM"
    )
    return entry


def _measure_option(
    case: BackboneCase,
    batch: int,
    settings: Settings,
    rate: float | None,
    label: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    """A JAX option alone (PyTorch has its row at this shape already)."""
    log(f"{NAME} {case.name} B={batch} {label}: compiling")
    jx = _compile(case, batch, **options)
    entry = _entry(case, batch, label, jx)
    if "skipped" in jx:
        entry["skipped"] = jx["skipped"]
        return _finish(entry, case, batch, rate)
    entry["jax"], _ = time_calls(jx["call"], settings, min_reps=1, warmup=1)
    return _finish(entry, case, batch, rate)


def _needs_breakdown(entry: Mapping[str, Any]) -> bool:
    if not entry.get("jax") or not entry.get("torch"):
        return False
    behind = entry["jax_over_torch"] < 1.0
    frac = entry["jax"].get("fraction_of_f32_gemm")
    low_vit = (
        entry["kind"] == "vit"
        and entry["batch"] >= 32
        and frac is not None
        and frac < GEMM_TARGET
    )
    return behind or low_vit


def measure(settings: Settings, results: Mapping[str, Any]) -> dict[str, Any]:
    """Every backbone at every batch, JAX beside PyTorch; options; op breakdowns."""
    import torch

    accelerator = jax.default_backend() != "cpu"
    cases = backbone_cases.cases_for(settings, accelerator)
    if settings.backbone_kinds:
        cases = tuple(c for c in cases if c.kind in settings.backbone_kinds)
    cores = _usable_cores()
    torch.set_num_threads(cores)
    ceil = results.get(ceilings.NAME)
    if ceil:
        gemm = {"gflops": ceil["f32"]["gflops"], "source": "ceilings section"}
    else:
        gemm = {**ceilings.measure_end(settings), "source": "measured by this section"}
        log(f"{NAME}: f32 GEMM {gemm['gflops']:.1f} GFLOP/s")
    rate = gemm["gflops"] * 1e9
    gemm["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    gemm["kinds"] = [c.kind for c in cases]
    rows, options = [], []
    for case in cases:
        for batch in case.batches:
            entry = _measure_pair(case, batch, settings, rate)
            if _needs_breakdown(entry):
                parts = backbone_parts.measure_parts(case, batch, settings)
                parts["dominant"] = backbone_parts.dominant(
                    parts, entry["jax"]["median_s"], entry["torch"]["median_s"]
                )
                entry["breakdown"] = parts
                log(f"{NAME} {case.name} B={batch}: dominant {parts['dominant']}")
            rows.append(entry)
        for batch in case.option_batches:
            for label, fields in OPTIONS:
                if case.forward_only and "remat" in fields:
                    continue  # remat changes nothing without a backward pass
                options.append(
                    _measure_option(case, batch, settings, rate, label, fields)
                )
    import transformers

    return {
        "gemm": gemm,
        "gemm_runs": [gemm],
        "torch": {
            "version": torch.__version__,
            "threads": torch.get_num_threads(),
            "transformers": transformers.__version__,
        },
        "cores": cores,
        "cases": [
            {**c.__dict__, "flops_per_item": backbone_cases.model_flops(c)}
            for c in cases
        ],
        "rows": rows,
        "options": options,
    }


def _kind_order(row: Mapping[str, Any]) -> int:
    return KINDS.index(row["kind"]) if row["kind"] in KINDS else len(KINDS)


def merge(kept: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A run of some backbones (``--backbones``) joined with the kept rows of the
    others; each row keeps the GEMM rate of its own run (``gemm_runs``)."""
    redone = {c["kind"] for c in new["cases"]}
    out = dict(new)
    for part in ("cases", "rows", "options"):
        rows = [r for r in kept.get(part, []) if r["kind"] not in redone]
        out[part] = sorted((*rows, *new[part]), key=_kind_order)  # stable sort
    earlier = [
        {**g, "kinds": [k for k in g.get("kinds", KINDS) if k not in redone]}
        for g in kept.get("gemm_runs", [kept["gemm"]])
    ]
    out["gemm_runs"] = [g for g in earlier if g["kinds"]] + list(new["gemm_runs"])
    return out


# -- Report ---------------------------------------------------------------------------


def _time(t: Mapping[str, Any] | None) -> str:
    return markdown.ms(t["median_s"]) if t else "-"


def _row(r: Mapping[str, Any]) -> list[Any]:
    jx, pt = r.get("jax"), r.get("torch")
    what = "forward" if r["forward_only"] else "fwd + bwd"
    return [
        r["backbone"],
        what,
        r["batch"],
        f"`{r['variant']}`",
        _time(jx) if jx else r.get("skipped", "-"),
        f"{jx['items_per_s']:.2f}" if jx else "-",
        markdown.pct(jx.get("fraction_of_f32_gemm")) if jx else "-",
        markdown.gib(r.get("memory_bytes")),
        _time(pt),
        f"{pt['items_per_s']:.2f}" if pt else "-",
        markdown.ratio(r.get("jax_over_torch")),
        f"{jx['reps']}" if jx else "-",
        (r.get("breakdown") or {}).get("dominant", ""),
    ]


def _gemm_text(res: Mapping[str, Any]) -> str:
    runs = res.get("gemm_runs") or [res["gemm"]]
    if len(runs) == 1:
        return f"{runs[0]['gflops']:.1f} GFLOP/s, {runs[0]['source']}"
    return "; ".join(
        f"{g['gflops']:.1f} GFLOP/s for the {', '.join(g['kinds'])} rows "
        f"({g['source']}, {g.get('date', '?')})"
        for g in runs
    )


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## Backbones: JAX beside PyTorch`` section."""
    res = results[NAME]
    pt = res["torch"]
    lines = [
        "",
        "## Backbones: JAX beside PyTorch",
        "",
        "Each backbone of `xmodal.backbones` (random weights from a config, dropout "
        "off) against `transformers`' PyTorch model of the same config (random init, "
        f"`eval()`, torch {pt['version']} with {pt['threads']} threads, transformers "
        f"{pt['transformers']}), timed interleaved in the same run on a "
        f"{res['cores']}-core machine shared with other jobs: the JAX / PyTorch "
        "ratio (PyTorch time / JAX time, > 1: JAX faster) is the number to read, "
        "the absolute times drift with the machine's load. fwd + bwd = gradients of "
        "`mean(h^2)` w.r.t. every parameter. GEMM fraction = analytical model FLOPs "
        "(dense layers, attention products, patch embedding / merging) / time / "
        f"the f32 GEMM rate of the same run ({_gemm_text(res)}); that rate is taken "
        "once, at the start, so on a machine whose load changes during the run a "
        "fraction can exceed 100% (the load dropped after it was taken): compare "
        "fractions within one run, and read JAX / PyTorch as the robust number. "
        "Memory: the JAX step's compiled `memory_analysis()` (temp + arguments + "
        "outputs); a step needing more than 90% of the memory then available is "
        "compiled and reported, not run (the machine's memory is shared too).",
        "",
    ]
    header = [
        "backbone", "step", "B", "variant", "JAX", "JAX items/s", "of f32 GEMM",
        "JAX memory", "PyTorch", "PyTorch items/s", "JAX / PyTorch", "reps",
        "dominant op (where behind / below target)",
    ]  # fmt: skip
    rows = [_row(r) for r in res["rows"]] + [_row(o) for o in res["options"]]
    lines += markdown.table(header, rows)
    broken = [r for r in res["rows"] if r.get("breakdown")]
    if broken:
        lines += [
            "",
            "Op breakdown of those rows: one layer's parts (`benchmarks.backbone_parts`"
            ": attention = softmax(QK^T)V, dense = the QKV / out / MLP GEMMs, norms + "
            "activation) timed apart at the shape of the backbone's representative "
            "layer, times its number of layers; rest = the step minus these.",
            "",
        ]
        prow = []
        for r in broken:
            b = r["breakdown"]
            for name, p in b["parts"].items():
                prow.append([
                    r["backbone"], r["batch"], name, markdown.ms(p["jax_s"]),
                    markdown.ms(p["torch_s"]),
                    markdown.ratio(p["torch_s"] / p["jax_s"] if p["jax_s"] else None),
                ])  # fmt: skip
        lines += markdown.table(
            ["backbone", "B", "part", "JAX", "PyTorch", "JAX / PyTorch"], prow
        )
    return lines


def targets(results: Mapping[str, Any]) -> Targets:
    """JAX at least as fast as PyTorch at every shape; ViT-B B >= 32 at 50% of GEMM."""
    res = results.get(NAME) or {}
    rows = [r for r in res.get("rows") or [] if r.get("jax_over_torch")]
    if not rows:
        return Targets()
    worst = min(rows, key=lambda r: r["jax_over_torch"])
    skipped = [r for r in res["rows"] if "skipped" in r]
    not_run = "".join(
        f"; {r['backbone']} B = {r['batch']} not run ({r['skipped']})" for r in skipped
    )
    met = worst["jax_over_torch"] >= 1.0
    out = [
        Target(
            "backbones: JAX step at least as fast as PyTorch at every shape",
            f"slowest x{worst['jax_over_torch']:.2f} ({worst['backbone']}, B = "
            f"{worst['batch']}); {sum(r['jax_over_torch'] >= 1 for r in rows)} of "
            f"{len(rows)} measured shapes met{not_run}",
            None if met and skipped else met,  # a shape not run: not "met"
        )
    ]
    vit = [r for r in rows if r["kind"] == "vit" and r["batch"] >= 32]
    if vit:
        frac = vit[0]["jax"]["fraction_of_f32_gemm"]
        out.append(
            Target(
                f"ViT-B/16 fwd + bwd at B = {vit[0]['batch']}: >= 50% of the f32 "
                "GEMM rate",
                markdown.pct(frac),
                None if frac is None else frac >= GEMM_TARGET,
            )
        )
    return Targets(tuple(out))
