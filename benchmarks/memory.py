"""Memory of a step: what the compiler plans, what the device reached, what is free.

One place for every memory number in BENCHMARKS.md. On accelerators the device's
``peak_bytes_in_use`` is reported when the measured step raised it; on CPU (no device
statistics) the compiled executable's ``memory_analysis()``: temp + argument + output -
alias bytes, so a donated state aliased by the output counts once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax

from benchmarks import machine
from benchmarks.timing import log

__all__ = [
    "MEMORY_GROWTH_LIMIT",
    "MEMORY_GUARD",
    "available_bytes",
    "device_peak_bytes",
    "memory_analysis",
    "memory_growth",
    "memory_of",
]

#: Memory growth per batch doubling above which a CDDS step is flagged (x2 batch may
#: cost at most x2.2 memory: the target in the Targets table).
MEMORY_GROWTH_LIMIT = 2.2
#: Fraction of the available memory a step may need before it is skipped, not run.
MEMORY_GUARD = 0.9


def device_peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of device 0 (accelerators; None on CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without memory stats
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def available_bytes() -> int | None:
    """Memory a step may use: free device memory, or MemAvailable on CPU."""
    if jax.default_backend() != "cpu":
        try:
            stats = jax.devices()[0].memory_stats() or {}
        except Exception:
            stats = {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    return machine.meminfo_bytes("MemAvailable")


def memory_analysis(compiled: Any) -> dict[str, int] | None:
    """The compiled executable's buffer sizes; ``total_bytes = temp + arg + out - alias``."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    names = (
        "temp_size_in_bytes",
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    out = {n: int(getattr(m, n)) for n in names if hasattr(m, n)}
    out["total_bytes"] = (
        out.get("temp_size_in_bytes", 0)
        + out.get("argument_size_in_bytes", 0)
        + out.get("output_size_in_bytes", 0)
        - out.get("alias_size_in_bytes", 0)
    )
    return out


def memory_of(entry: dict[str, Any]) -> tuple[int | None, str]:
    """The step memory reported in the table and its source (a ``run_step`` entry)."""
    peak = entry.get("device_peak_bytes")
    if peak is not None and entry.get("device_peak_raised"):
        return peak, "device `peak_bytes_in_use` (process high-water mark)"
    total = (entry.get("memory_analysis") or {}).get("total_bytes")
    if total is not None:
        return total, (
            "compiled `memory_analysis()`: temp + argument + output - alias bytes "
            "(the donated state, aliased by the output, counted once)"
        )
    return None, "unavailable"


def memory_growth(
    rows: Sequence[dict[str, Any]], *, what: str = "CDDS step"
) -> list[dict[str, Any]]:
    """Memory growth per batch doubling between consecutive rows (sorted by batch).

    ``(m2 / m1) ** (1 / log2(B2 / B1))`` for the reported memory, the compiled total and
    the temp buffers alone; ``violates`` when the reported growth exceeds
    ``MEMORY_GROWTH_LIMIT`` (x2.2). ``what`` names the step in the log line of a flag.
    """

    def analysis(row: dict[str, Any], key: str) -> Any:
        return (row.get("memory_analysis") or {}).get(key)

    growth = []
    for prev, cur in itertools.pairwise(rows):
        doublings = math.log2(cur["batch"] / prev["batch"])
        g: dict[str, Any] = {"from": prev["batch"], "to": cur["batch"]}
        pairs = {
            "reported": (prev.get("memory_bytes"), cur.get("memory_bytes")),
            "analysis_total": (
                analysis(prev, "total_bytes"),
                analysis(cur, "total_bytes"),
            ),
            "analysis_temp": (
                analysis(prev, "temp_size_in_bytes"),
                analysis(cur, "temp_size_in_bytes"),
            ),
        }
        for key, (a, b) in pairs.items():
            g[f"{key}_per_doubling"] = (
                (b / a) ** (1.0 / doublings) if a and b and doublings > 0 else None
            )
        g["violates"] = bool(
            g["reported_per_doubling"] is not None
            and g["reported_per_doubling"] > MEMORY_GROWTH_LIMIT
        )
        if g["violates"]:
            log(
                f"FLAG: {what} memory grows x{g['reported_per_doubling']:.2f} per "
                f"batch doubling from B={g['from']} to B={g['to']} (> x"
                f"{MEMORY_GROWTH_LIMIT})"
            )
        growth.append(g)
    return growth
