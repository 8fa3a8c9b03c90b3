"""Measuring a jitted train step: compile, memory guard, donated timing, CPU share.

``run_step`` is the one harness for every train step in the benchmark (CDDS,
DecAlign; a later backbone step too): it compiles the step ahead of time (compile time,
``memory_analysis`` and XLA's ``cost_analysis`` FLOPs from the compiled executable),
skips a step whose compiled memory exceeds ``MEMORY_GUARD`` (90%) of the available
memory, then times it with the state donated from call to call (as the training loop
runs it) and records the process's user / kernel CPU time and page faults.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from benchmarks import memory
from benchmarks.settings import Settings
from benchmarks.timing import log, side_by_side, time_calls, timed
from xmodal import sharding

__all__ = [
    "OURS",
    "kernel_share",
    "process_share",
    "run_step",
    "single_device_mesh",
    "xla_flops",
]


#: The name of the measured step among the calls timed ``beside`` it.
OURS = "ours"


def single_device_mesh() -> jax.sharding.Mesh:
    """A ``("data", 1)`` mesh on the first device: every step runs on one device."""
    return sharding.make_mesh((("data", 1),), devices=jax.devices()[:1])


def xla_flops(compiled: Any) -> float | None:
    """XLA's ``cost_analysis`` FLOPs of a compiled executable; None if unavailable."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def process_share(before: resource.struct_rusage, wall_s: float) -> dict[str, float]:
    """CPU time of this process since ``before`` split into user and kernel, and the
    page faults: a large kernel share is the OS zeroing and mapping fresh pages (XLA:CPU
    allocates a step's temporary buffer anew at every call)."""
    after = resource.getrusage(resource.RUSAGE_SELF)
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    return {
        "wall_s": wall_s,
        "user_s": user,
        "system_s": system,
        "system_share": system / (user + system) if user + system > 0 else 0.0,
        "minor_faults": after.ru_minflt - before.ru_minflt,
    }


def run_step(
    step: Any,
    state: Any,
    batch: Any,
    settings: Settings,
    *,
    label: str,
    guard: bool = True,
    beside: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, Any]:
    """Compiles a donated train step, then times it; returns the numbers.

    ``step(state, batch) -> (state, metrics)`` must donate ``state`` and return
    ``metrics["loss"]``. With ``guard``, a step whose compiled memory exceeds
    ``MEMORY_GUARD`` of the available memory is compiled and reported (``skipped``),
    not run. ``beside``: other calls (e.g. a reference implementation's step, each
    returning when its work is done) timed interleaved with this step, call for call
    (``timing.side_by_side``); their timings go under ``out["beside"][name]``.
    """
    log(f"{label}: compiling")
    compile_s, compiled = timed(lambda: step.lower(state, batch).compile())
    out: dict[str, Any] = {
        "compile_s": compile_s,
        "memory_analysis": memory.memory_analysis(compiled),
        "xla_flops": xla_flops(compiled),
    }
    need = (out["memory_analysis"] or {}).get("total_bytes")
    avail = memory.available_bytes()
    if (
        guard
        and need is not None
        and avail is not None
        and need > memory.MEMORY_GUARD * avail
    ):
        out["skipped"] = (
            f"needs {need / 2**30:.1f} GiB (memory_analysis) > "
            f"{memory.MEMORY_GUARD:.0%} of the {avail / 2**30:.1f} GiB available"
        )
        log(f"{label}: SKIPPED, {out['skipped']}")
        return out
    peak_before = memory.device_peak_bytes()
    holder = {"state": state}

    def call() -> Any:
        holder["state"], metrics = compiled(holder["state"], batch)
        holder.setdefault("first_loss", metrics["loss"])  # same parameters in every row
        holder["metrics"] = metrics
        return holder["state"], metrics

    before, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if beside:
        calls = {OURS: call, **beside}
        block = {name: (lambda r: r) for name in beside}
        timings = side_by_side(
            calls,
            settings,
            block={**block, OURS: jax.block_until_ready},
            warmup=1,
            min_reps=settings.step_min_reps,
        )
        timing = timings.pop(OURS)
        out["beside"] = timings
    else:
        timing, _ = time_calls(
            call, settings, min_reps=settings.step_min_reps, warmup=1
        )
    metrics = holder["metrics"]
    out.update(timing)
    if not beside:  # with calls beside, the process's CPU time is theirs too
        out["process"] = process_share(before, time.perf_counter() - wall0)
    out["loss"] = float(metrics["loss"])
    out["first_loss"] = float(holder["first_loss"])
    out["loss_finite"] = bool(np.isfinite(out["loss"]))
    # The device high-water mark is process-wide: it belongs to this step only if the
    # step raised it (batch sizes run in increasing order).
    peak = memory.device_peak_bytes()
    out["device_peak_bytes"] = peak
    out["device_peak_raised"] = bool(
        peak is not None and (peak_before is None or peak > peak_before)
    )
    holder.clear()  # the donated state chain ends here
    return out


def kernel_share(entry: dict[str, Any]) -> str:
    """A ``run_step`` entry's kernel CPU share and page faults per call, as a cell."""
    proc = entry.get("process")
    if not proc:
        return "-"
    calls = entry.get("reps", 0) + len(entry.get("warmup_s", []))
    faults = proc["minor_faults"] / max(calls, 1)
    return f"{proc['system_share']:.0%} ({faults / 1e6:.2f} M)"
