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
from collections.abc import Callable
from typing import Any

import jax

from benchmarks.settings import Settings

__all__ = ["log", "time_calls", "time_jit", "timed"]


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
