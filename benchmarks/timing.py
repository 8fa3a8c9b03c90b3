"""The one timing loop every measurement goes through, and the progress log.

Every measurement compiles first (compile time reported separately), runs ``warmup``
calls, then repeats the call ``n`` times blocking on its result
(``jax.block_until_ready``) and reports the median. ``n`` adapts to the cost of one
call: ``Settings.budget_s`` divided by the first timed call, clamped to
``[min_reps, Settings.max_reps]``, so large sizes run few repetitions. Every count of
repetitions is in ``benchmarks.json``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

from benchmarks.settings import Settings

__all__ = ["log", "side_by_side", "time_calls", "time_jit", "timed"]


def log(message: str) -> None:
    """One progress line (flushed, so a long run shows life)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _sync(x: Any) -> Any:
    return jax.block_until_ready(x)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call of ``fn()`` blocking on its result, and the result."""
    t0 = time.perf_counter()
    out = _sync(fn())
    return time.perf_counter() - t0, out


def time_calls(
    call: Callable[[], Any],
    settings: Settings,
    *,
    min_reps: int = 3,
    warmup: int = 1,
) -> tuple[dict[str, Any], Any]:
    """Median wall time of ``call()`` (blocking on its result) after ``warmup`` calls.

    The number of timed calls is ``budget_s / (time of the first timed call)``, clamped
    to ``[min_reps, max_reps]`` (``max_reps`` wins).

    Returns:
      ``(timing, last result)``; ``timing`` has ``median_s``, ``min_s``, ``max_s``,
      ``reps`` and ``warmup_s`` (the warm-up calls' times).
    """
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        _sync(call())
        warm.append(time.perf_counter() - t0)
    times = []
    t0 = time.perf_counter()
    out = _sync(call())
    times.append(time.perf_counter() - t0)
    n = int(settings.budget_s / max(times[0], 1e-9))
    n = min(settings.max_reps, max(min_reps, n))
    while len(times) < n:
        t0 = time.perf_counter()
        out = _sync(call())
        times.append(time.perf_counter() - t0)
    timing = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "reps": len(times),
        "warmup_s": warm,
    }
    return timing, out


def time_jit(
    fn: Callable[..., Any], args: tuple[Any, ...], settings: Settings
) -> tuple[dict[str, Any], Any]:
    """Compile (the first call, timed as ``compile_s``) then time ``fn(*args)``."""
    compile_s, _ = timed(lambda: fn(*args))
    timing, out = time_calls(lambda: fn(*args), settings, min_reps=3)
    return {"compile_s": compile_s, **timing}, out


def side_by_side(
    calls: Mapping[str, Callable[[], Any]],
    settings: Settings,
    *,
    block: Mapping[str, Callable[[Any], Any]],
    warmup: int = 1,
    min_reps: int = 1,
) -> dict[str, dict[str, Any]]:
    """Times several calls interleaved (a, b, a, b, ...) so that a drifting shared
    machine slows all of them alike; median per call.

    Reps: ``budget_s / (the slowest first timed call)`` clamped to ``[min_reps,
    max_reps]`` (``max_reps`` wins). ``block[name](result)`` waits for a
    call's result. Each entry also holds its ``times_s`` in call order, so ratios can
    be taken round by round.
    """
    times: dict[str, list[float]] = {k: [] for k in calls}
    warm: dict[str, list[float]] = {k: [] for k in calls}

    def run(name: str, into: dict[str, list[float]]) -> None:
        t0 = time.perf_counter()
        block[name](calls[name]())
        into[name].append(time.perf_counter() - t0)

    for _ in range(warmup):
        for name in calls:
            run(name, warm)
    for name in calls:
        run(name, times)
    slowest = max(t[0] for t in times.values())
    n = int(settings.budget_s / max(slowest, 1e-9))
    n = min(settings.max_reps, max(min_reps, n))
    while len(next(iter(times.values()))) < n:
        for name in calls:
            run(name, times)
    return {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            "reps": len(t),
            "warmup_s": warm[name],
            "times_s": t,
        }
        for name, t in times.items()
    }
