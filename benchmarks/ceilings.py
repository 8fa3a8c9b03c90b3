"""Section ``ceilings``: the machine's GEMM rates and copy bandwidths, measured first.

Every ratio in BENCHMARKS.md divides by a number from this section of the same run (a
shared CPU's ceilings drift by 2x between runs): the f32 GEMM rate (``n^3`` through
``jax.jit``, median of several; f32 at ``Precision.HIGHEST`` too on accelerators, where
the default may be TF32), the bf16 GEMM rate, and the copy bandwidth (read + write
bytes / s) of a donated in-place update, of a fresh-output update and of a host
``np.copyto``. The f32 rate is measured again at the end of the run
(``measure_end``) to show the drift.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import markdown
from benchmarks.settings import Settings
from benchmarks.timing import log, time_calls, timed

__all__ = ["NAME", "measure", "measure_end", "render"]

NAME = "ceilings"


def _matrices(n: int) -> list[jax.Array]:
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return [
        jax.random.normal(k1, (n, n), jnp.float32),
        jax.random.normal(k2, (n, n), jnp.float32),
    ]


def measure_end(settings: Settings) -> dict[str, Any]:
    """The f32 GEMM rate alone (``gemm_size``^3), again at the end of a run."""
    n = settings.gemm_size
    x, y = _matrices(n)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(x, y))
    timing, _ = time_calls(lambda: f(x, y), settings, min_reps=5)
    return {"gflops": 2.0 * n**3 / timing["median_s"] / 1e9, **timing}


def _copies(settings: Settings) -> dict[str, Any]:
    """Read + write bandwidth of a donated update, a fresh output and ``np.copyto``."""
    nbytes = settings.copy_bytes
    count = nbytes // 4
    moved = 2.0 * count * 4  # read + write
    neg_donated = jax.jit(lambda v: -v, donate_argnums=0)
    neg = jax.jit(lambda v: -v)
    holder = {"x": jnp.ones((count,), jnp.float32)}

    def donated() -> jax.Array:
        holder["x"] = neg_donated(holder["x"])
        return holder["x"]

    out: dict[str, Any] = {}
    timing, _ = time_calls(donated, settings, min_reps=5)
    out["copy_donated"] = {"gb_per_s": moved / timing["median_s"] / 1e9, **timing}
    timing, _ = time_calls(lambda: neg(holder["x"]), settings, min_reps=5)
    out["copy_fresh"] = {"gb_per_s": moved / timing["median_s"] / 1e9, **timing}
    holder.clear()
    src = np.ones(count, np.float32)
    dst = np.zeros_like(src)
    timing, _ = time_calls(lambda: np.copyto(dst, src), settings, min_reps=5)
    out["copy_host"] = {"gb_per_s": moved / timing["median_s"] / 1e9, **timing}
    out["copy_bytes"] = nbytes
    log(
        f"copy {nbytes / 2**20:.0f} MiB (read+write): donated "
        f"{out['copy_donated']['gb_per_s']:.1f} GB/s, fresh output "
        f"{out['copy_fresh']['gb_per_s']:.1f} GB/s, host np.copyto "
        f"{out['copy_host']['gb_per_s']:.1f} GB/s"
    )
    return out


def measure(settings: Settings, results: Mapping[str, Any]) -> dict[str, Any]:
    """GEMM rates (f32, f32 HIGHEST, bf16) and copy bandwidths."""
    del results  # the first section: nothing to read
    n = settings.gemm_size
    flops = 2.0 * n**3
    mats = _matrices(n)
    cpu = jax.default_backend() == "cpu"
    out: dict[str, Any] = {"gemm_size": n, "gemm_flops": flops}

    def gemm(dtype: Any, precision: Any) -> dict[str, Any]:
        f = jax.jit(functools.partial(jnp.matmul, precision=precision))
        x, y = mats[0].astype(dtype), mats[1].astype(dtype)
        compile_s, _ = timed(lambda: f(x, y))
        timing, _ = time_calls(lambda: f(x, y), settings, min_reps=5)
        return {
            "gflops": flops / timing["median_s"] / 1e9,
            "compile_s": compile_s,
            **timing,
        }

    out["f32"] = gemm(jnp.float32, None)
    log(f"f32 GEMM {n}^3: {out['f32']['gflops']:.1f} GFLOP/s")
    out["f32_end"] = None  # measured again after the last section (drift)
    if cpu:
        # XLA:CPU has one f32 path: HIGHEST is the same kernel (not measured twice).
        out["f32_highest"] = {**out["f32"], "same_as": "f32"}
    else:
        out["f32_highest"] = gemm(jnp.float32, jax.lax.Precision.HIGHEST)
        log(f"f32 GEMM (HIGHEST) {n}^3: {out['f32_highest']['gflops']:.1f} GFLOP/s")
    try:
        out["bf16"] = {"supported": True, **gemm(jnp.bfloat16, None)}
        log(f"bf16 GEMM {n}^3: {out['bf16']['gflops']:.1f} GFLOP/s")
    except Exception as err:  # a backend without bf16 dots
        out["bf16"] = {"supported": False, "error": repr(err)}
        log(f"bf16 GEMM: not supported ({err!r})")
    mats.clear()  # free the GEMM inputs before the copy buffers
    out.update(_copies(settings))
    return out


def _rate(gflops: float) -> str:
    return f"{gflops:.1f} GFLOP/s"


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## Machine ceilings`` table."""
    ceil = results[NAME]
    n = ceil["gemm_size"]
    rows: list[list[Any]] = [
        [f"f32 GEMM {n}^3", _rate(ceil["f32"]["gflops"]), ceil["f32"]["reps"]]
    ]
    end = ceil.get("f32_end")
    if end:
        rows.append(
            [
                f"f32 GEMM {n}^3, again at the end of the run",
                _rate(end["gflops"]),
                end["reps"],
            ]
        )
    highest = ceil["f32_highest"]
    if "same_as" in highest:
        rows.append([f"f32 GEMM {n}^3, HIGHEST", "same kernel on CPU", "-"])
    else:
        rows.append(
            [f"f32 GEMM {n}^3, HIGHEST", _rate(highest["gflops"]), highest["reps"]]
        )
    bf = ceil["bf16"]
    rows.append(
        [
            f"bf16 GEMM {n}^3",
            _rate(bf["gflops"]) if bf.get("supported") else "unsupported",
            bf.get("reps", "-"),
        ]
    )
    mib = ceil["copy_bytes"] / 2**20
    for key, what in (
        ("copy_donated", "copy, donated in-place update"),
        ("copy_fresh", "copy, fresh output buffer"),
        ("copy_host", "copy, host np.copyto"),
    ):
        rows.append(
            [
                f"{what} ({mib:.0f} MiB, read + write)",
                f"{ceil[key]['gb_per_s']:.1f} GB/s",
                ceil[key]["reps"],
            ]
        )
    lines = ["", "## Machine ceilings", ""]
    return lines + markdown.table(["ceiling", "rate (median)", "reps"], rows)
