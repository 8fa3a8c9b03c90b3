"""Section ``cdds_train``: the CDDS train step of the driver, at several batch sizes.

The step is the driver's own (built through ``benchmarks.cdds_setup``: its model, its
sharded state, its jitted step with shardings and donation) on random inputs of paper
shapes. Per batch size: compile time, time per step, model FLOPs counted analytically
(``benchmarks.cdds_flops``), the achieved fraction of the measured f32 GEMM rate, the
step's memory and its growth per batch doubling (flagged above x2.2), and the kernel's
share of the CPU time. Then the two memory / compute options that are off by default
(``model.remat``, ``model.dtype=bfloat16``) at one batch size, beside the default step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from benchmarks import cdds_flops, cdds_setup, markdown, memory, steps
from benchmarks.markdown import Target, Targets
from benchmarks.settings import CddsSizes, Settings
from benchmarks.timing import log

__all__ = ["NAME", "OPTIONS", "measure", "measure_batch", "render", "targets"]

NAME = "cdds_train"
#: The options measured beside the default step: (row label, ``config.model`` fields).
OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("model.remat=True", {"remat": True}),
    ("model.dtype=bfloat16", {"dtype": "bfloat16"}),
)


def _log_row(label: str, entry: dict[str, Any], rate: float | None) -> None:
    parts = [
        f"compile {entry['compile_s']:.1f} s",
        f"step {entry['median_s'] * 1e3:.1f} ms (median of {entry['reps']})",
        f"{entry['model_flops'] / 1e12:.3f} TFLOP",
        f"{entry['achieved_gflops']:.1f} GFLOP/s",
    ]
    if rate:
        parts.append(f"{entry['fraction_of_f32_gemm']:.1%} of f32 GEMM")
    if entry["memory_bytes"] is not None:
        parts.append(f"memory {entry['memory_bytes'] / 2**30:.2f} GiB")
    log(f"{label}: " + ", ".join(parts))


def measure_batch(
    s: CddsSizes,
    batch_size: int,
    settings: Settings,
    mesh: jax.sharding.Mesh,
    rate: float | None,
    *,
    model: dict[str, Any] | None = None,
    name: str = "",
) -> dict[str, Any]:
    """One CDDS train-step measurement at ``batch_size`` (``model`` overrides).

    ``rate`` is the f32 GEMM rate in FLOP/s (None: no fraction is computed).
    """
    config = cdds_setup.config(s, batch_size, model)
    model_ = cdds_setup.build_model(config)
    batch_np = cdds_setup.random_batch(s, batch_size)
    label = f"{NAME} B={batch_size}" + (f" {name}" if name else "")
    entry, n_params, init_s = cdds_setup.measure_step(
        config, model_, batch_np, mesh, settings, label=label
    )
    flops = batch_size * sum(
        c["train_per_pair"] for c in cdds_flops.cdds_flops(s, batch_size)
    )
    entry.update(
        batch=batch_size,
        init_s=init_s,
        params=n_params,
        model_flops=flops,
        model_flops_per_pair=flops / batch_size,
        optimizer_flops_estimate=18.0 * n_params,
    )
    entry["memory_bytes"], entry["memory_source"] = memory.memory_of(entry)
    if "median_s" in entry:
        entry["achieved_gflops"] = flops / entry["median_s"] / 1e9
        entry["fraction_of_f32_gemm"] = (
            flops / entry["median_s"] / rate if rate else None
        )
        _log_row(label, entry, rate)
    return entry


def measure(settings: Settings, results: Mapping[str, Any]) -> dict[str, Any]:
    """The CDDS step through the driver's functions at each batch size, then options."""
    s = settings.cdds
    mesh = steps.single_device_mesh()
    ceilings = results.get("ceilings")
    rate = ceilings["f32"]["gflops"] * 1e9 if ceilings else None
    log(
        f"cdds_train sizes: d {s.dim}, {s.heads} heads, P {s.image_tokens} x D_v "
        f"{s.image_dim}, L {s.text_tokens} x D_t {s.text_dim}, G {s.levels}, z "
        f"{s.samples}, K {s.bins}; B in {list(s.batches)}"
    )
    rows = [measure_batch(s, b, settings, mesh, rate) for b in s.batches]
    # The memory / compute options, off by default, at one batch size.
    options = []
    for name, overrides in OPTIONS:
        row = measure_batch(
            s, settings.option_batch, settings, mesh, rate, model=overrides, name=name
        )
        options.append({"option": name, **row})
    return {
        "sizes": dataclasses.asdict(s),
        "rows": rows,
        "options": options,
        "memory_growth": memory.memory_growth(rows),
        "memory_growth_limit": memory.MEMORY_GROWTH_LIMIT,
        "flops_components": cdds_flops.cdds_flops(s, s.batches[-1]),
        "flops_components_batch": s.batches[-1],
        "blocks_dense_only_per_pair": cdds_flops.blocks_dense_only(s),
        "issue_gflop_per_pair": cdds_flops.ISSUE_GFLOP_PER_PAIR,
    }


# -- Report ---------------------------------------------------------------------------


def _intro(sz: Mapping[str, Any]) -> list[str]:
    return [
        "",
        "## CDDS train step",
        "",
        f"d {sz['dim']}, {sz['heads']} heads, P {sz['image_tokens']} image tokens of "
        f"D_v {sz['image_dim']}, L {sz['text_tokens']} caption tokens of D_t "
        f"{sz['text_dim']} (precomputed features), G {sz['levels']}, z "
        f"{sz['samples']}, K {sz['bins']}; `configs/flickr.py` with these "
        f"overrides, built by {cdds_setup.BUILT_BY} on random "
        "inputs. Step time = median over `reps` calls after one warm-up call, "
        "blocking on the new state and metrics. Fraction = model FLOPs / step time "
        "/ the f32 GEMM rate above.",
        "",
    ]


def _steps_table(train: Mapping[str, Any]) -> list[str]:
    """One row per batch size, the notes on kernel share and memory, the growth table."""
    rows = []
    for r in train["rows"]:
        skipped = "skipped" in r
        rows.append(
            [
                r["batch"],
                f"{r['compile_s']:.1f} s",
                "skipped" if skipped else f"{markdown.ms(r['median_s'])} ({r['reps']})",
                f"{r['model_flops'] / 1e9:.1f}",
                "-" if skipped else f"{r['achieved_gflops']:.1f}",
                "-" if skipped else markdown.pct(r.get("fraction_of_f32_gemm")),
                markdown.gib(r["memory_bytes"]),
                steps.kernel_share(r),
                "-" if r.get("xla_flops") is None else f"{r['xla_flops'] / 1e9:.1f}",
            ]
        )
    header = [
        "B",
        "compile",
        "step (reps)",
        "model GFLOP/step",
        "GFLOP/s",
        "of f32 GEMM",
        "memory",
        "kernel CPU share (faults/step)",
        "XLA cost_analysis GFLOP",
    ]
    lines = markdown.table(header, rows)
    lines += [
        "",
        "Kernel CPU share = system / (user + system) CPU time of the process over "
        "the timed calls; faults = minor page faults per call. XLA:CPU allocates a "
        "step's temporary buffer afresh at every call, and the OS maps and zeroes "
        "those pages (4 KiB each unless transparent hugepages serve them).",
    ]
    sources = sorted({r["memory_source"] for r in train["rows"]})
    lines += ["", f"Memory: {'; '.join(sources)}."]
    for r in train["rows"]:
        if "skipped" in r:
            lines.append(f"B={r['batch']} not run: {r['skipped']}.")
    if train["memory_growth"]:
        lines += ["", "Memory growth per batch doubling (limit x2.2):", ""]
        grow = [
            [
                f"{g['from']} -> {g['to']}",
                markdown.ratio(g["reported_per_doubling"]),
                markdown.ratio(g["analysis_temp_per_doubling"]),
                "**VIOLATED**" if g["violates"] else "ok",
            ]
            for g in train["memory_growth"]
        ]
        lines += markdown.table(
            ["B", "memory (as reported)", "temp buffers only", "x2.2"], grow
        )
    return lines


def _options_table(train: Mapping[str, Any]) -> list[str]:
    """The model.remat / bfloat16 rows beside the default step of the same batch."""
    options = train.get("options") or []
    if not options:
        return []
    batch = options[0]["batch"]
    base = next((r for r in train["rows"] if r["batch"] == batch), None)
    lines = [
        "",
        f"Options (off by default) at B = {batch}, same run; ratios against the "
        "default step of that batch above:",
        "",
    ]
    rows = []
    for r in ([base] if base else []) + options:
        ran = "median_s" in r and base is not None and "median_s" in base
        rows.append(
            [
                f"`{r['option']}`" if "option" in r else "default",
                "skipped" if "median_s" not in r else markdown.ms(r["median_s"]),
                f"x{r['median_s'] / base['median_s']:.2f}" if ran else "-",
                "-"
                if "median_s" not in r
                else markdown.pct(r.get("fraction_of_f32_gemm")),
                markdown.gib(r["memory_bytes"]),
                f"x{r['memory_bytes'] / base['memory_bytes']:.2f}"
                if base and r["memory_bytes"] and base["memory_bytes"]
                else "-",
                "-" if "first_loss" not in r else f"{r['first_loss']:.4f}",
            ]
        )
    header = [
        "variant",
        "step",
        "time ratio",
        "of f32 GEMM",
        "memory",
        "memory ratio",
        "first-step loss",
    ]
    if not any("first_loss" in r for r in [base, *options] if r):
        header, rows = header[:-1], [row[:-1] for row in rows]
    return lines + markdown.table(header, rows)


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## CDDS train step`` section with its options and FLOPs tables."""
    train = results[NAME]
    return (
        _intro(train["sizes"])
        + _steps_table(train)
        + _options_table(train)
        + cdds_flops.render(train)
    )


def _limits(row: Mapping[str, Any]) -> str:
    """What bounds the CDDS step below the GEMM rate, from the row's own numbers."""
    text = (
        "What keeps the CDDS step below the GEMM rate: the model FLOPs count matmuls "
        "only, and the step also runs work that moves memory rather than multiplying: "
        "the attention softmax over [B (2 + 4z), H, P, P], GELU over the 4 d MLP "
        "activations, the LayerNorms, the histogram soft assignments "
        "([B, N, d, K] exponentials) and the sorts of the quantile tables; XLA's "
        "`cost_analysis` column counts part of it."
    )
    proc = row.get("process")
    if proc:
        text += (
            f" The operating system took {proc['system_share']:.0%} of the process's CPU "
            "time during the timed calls (the kernel CPU share column: mapping and "
            "zeroing the step's per-call temporary buffer and the thread pool's waits "
            "are the candidates; `reexec_with_hugepages` records what hugepages "
            "changed)."
        )
    frac = row.get("fraction_of_f32_gemm")
    if frac is not None and frac < 0.5:
        text += (
            " Closing the gap needs fewer bytes per FLOP: a fused attention kernel "
            "(softmax and its backward without the [P, P] probabilities in memory; "
            "XLA:CPU has none), bfloat16 activations on hardware with fast bf16 "
            "GEMMs, or an allocator that keeps the step's buffer between calls."
        )
    return text


def targets(results: Mapping[str, Any]) -> Targets:
    """The CPU targets on the CDDS step: >= 50% of the f32 GEMM rate at B = 64 (or the
    largest batch run) and at most x2.2 memory per batch doubling; the limits note."""
    train = results.get(NAME) or {}
    by_batch = {r["batch"]: r for r in train.get("rows", [])}
    rows = []
    notes = []
    if by_batch:
        batch = 64 if 64 in by_batch else max(by_batch)
        r = by_batch[batch]
        end = ((results.get("ceilings") or {}).get("f32_end") or {}).get("gflops")
        frac = r.get("fraction_of_f32_gemm")
        if frac is None:
            got, ok = r.get("skipped", "not measured"), None
        else:
            got = f"{frac:.1%} ({r['achieved_gflops']:.1f} GFLOP/s)"
            if end:
                got += f"; {r['achieved_gflops'] / end:.1%} of the end-of-run rate"
            ok = frac >= 0.5
        goal = f"CDDS train step at B = {batch}: >= 50% of the f32 GEMM rate"
        rows.append(Target(goal, got, ok))
        notes.append(_limits(r))
    growth = train.get("memory_growth") or []
    if growth:
        worst = max((g["reported_per_doubling"] or 0.0 for g in growth), default=0.0)
        span = f"B {growth[0]['from']} -> {growth[-1]['to']}"
        rows.append(
            Target(
                "CDDS step memory: x2 batch -> at most x2.2",
                f"at most x{worst:.2f} per doubling ({span})",
                not any(g["violates"] for g in growth),
            )
        )
    return Targets(tuple(rows), tuple(notes))
