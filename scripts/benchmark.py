r"""Throughput benchmark: machine ceilings, CDDS and DecAlign steps, evaluation, kernels.

    python scripts/benchmark.py                     # full sizes -> ./BENCHMARKS.md + ./benchmarks.json
    python scripts/benchmark.py --quick             # laptop sizes (< 10 min on 2 CPU cores)
    python scripts/benchmark.py --cdds-batches 8,16 --sections ceilings,cdds_train

Everything is measured in ONE run so that every ratio compares numbers taken side by side
on the same machine (the CI machine's ceilings drift by 2x between runs):

1. ``ceilings``: f32 GEMM rate (``n^3`` through ``jax.jit``, median of several; f32 at
   ``Precision.HIGHEST`` too on accelerators, where the default may be TF32), bf16 GEMM
   rate, and copy bandwidth (read + write bytes / s) of a donated in-place update, of a
   fresh-output update and of a host ``np.copyto``.
2. ``cdds_train``: the CDDS train step built by the driver's own functions
   (``cdds_jax.train.build_model`` / ``create_train_state`` / ``train_step``, jitted with
   the driver's shardings and donation) on random inputs of paper shapes, for several
   batch sizes: compile time, time per step, model FLOPs counted analytically (the
   formula of every component is written in ``cdds_flops`` and in BENCHMARKS.md), the
   achieved fraction of the measured GEMM rate, the step's memory and its growth per
   batch doubling (flagged above x2.2).
3. ``cdds_eval``: ``retrieval.score_matrix`` + ``retrieval.rank_metrics`` on random
   embeddings of the retrieval width ``2 G d`` at Flickr30K (1K x 5K) and COCO-5K
   (5K x 25K) sizes, against the GEMM floor ``2 n_img n_cap width`` FLOPs at the
   measured f32 (HIGHEST) rate, and the naive full-argsort ranks.
4. ``decalign``: the DecAlign train step at MOSI and MOSEI shapes (HEAD configs) with
   the share of EM + Sinkhorn (``losses.hetero_loss`` forward + backward alone, and the
   step with ``alpha = 0``) and of dropout RNG (the step with every rate 0).
5. ``kernels``: each library kernel against its naive form timed in the same run
   (KL correlation, pair scores, EM, Sinkhorn); the naive ranks are in ``cdds_eval``.

Timing: every measurement compiles first (compile time reported separately), runs
``warmup`` calls, then repeats the call ``n`` times blocking on its result
(``jax.block_until_ready``) and reports the median; ``n`` adapts to the cost of one call
(``--budget-s`` per measurement, at least a minimum, at most ``--max-reps``), so large
sizes run few repetitions. Every count of repetitions is in the JSON.

CPU settings, both recorded in the machine table: XLA:CPU's memory-aware scheduler
(``xmodal.layers.CPU_MEMORY_SCHEDULER_FLAG`` added to ``XLA_FLAGS``; with it remat takes
effect and the default step needs 24% less memory) and, on Linux, a restart with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (hugepages for the step's per-call temporary
buffer: far fewer page faults, 18% faster at B = 32). Set either yourself to measure
without it.

Output (``--out``; default ``.`` for the full run, ``runs/benchmark-quick`` /
``runs/benchmark-smoke`` otherwise so a small run never overwrites the committed
table): ``BENCHMARKS.md`` and ``benchmarks.json`` (every number), both rewritten after
each section so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import itertools
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np

from cdds_jax import retrieval, semantics
from cdds_jax import train as cdds_train
from configs import decalign_base, flickr
from decalign_jax import losses as decalign_losses
from decalign_jax import prototypes
from decalign_jax import train as decalign_train
from xmodal import layers, sharding

__all__ = [
    "SECTIONS",
    "CddsSizes",
    "DecAlignCase",
    "EvalCase",
    "Settings",
    "cdds_flops",
    "kernels_cdds",
    "kernels_decalign",
    "machine_info",
    "main",
    "make_settings",
    "measure_cdds_eval",
    "measure_cdds_train",
    "measure_ceilings",
    "measure_decalign",
    "measure_kernels",
    "memory_growth",
    "render_markdown",
    "time_hetero",
]

#: Sections in the order they run (ceilings first: every ratio needs them).
SECTIONS: tuple[str, ...] = (
    "ceilings",
    "cdds_train",
    "cdds_eval",
    "decalign",
    "kernels",
)
#: Memory growth per batch doubling above which a CDDS step is flagged (the issue's bound).
MEMORY_GROWTH_LIMIT = 2.2
#: Fraction of the available memory a CDDS step may need before it is skipped, not run.
MEMORY_GUARD = 0.9
#: Issue's estimate of the CDDS model FLOPs per pair (forward + backward), paper sizes.
ISSUE_GFLOP_PER_PAIR = 80.0


def log(message: str) -> None:
    """One progress line (flushed, so a long run shows life)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# =====================================================================================
# Sizes
# =====================================================================================


@dataclasses.dataclass(frozen=True)
class CddsSizes:
    """CDDS shapes: d, heads, P image tokens of D_v, L caption tokens of D_t, G, z, K."""

    dim: int
    heads: int
    image_tokens: int
    image_dim: int
    text_tokens: int
    text_dim: int
    levels: int
    samples: int
    bins: int
    batches: tuple[int, ...]
    mlp_ratio: int = 4


@dataclasses.dataclass(frozen=True)
class EvalCase:
    """A synthetic retrieval set: ``num_images x num_captions`` embeddings of ``width``."""

    name: str
    num_images: int
    num_captions: int
    width: int


@dataclasses.dataclass(frozen=True)
class DecAlignCase:
    """A DecAlign step: HEAD config of ``dataset``, batch B, lengths T and dims D (l, a, v).

    ``model`` overrides ``config.model`` fields (only the smoke test shrinks the model).
    """

    name: str
    dataset: str
    batch: int
    lengths: tuple[int, int, int]
    dims: tuple[int, int, int]
    model: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run measures and how hard it tries."""

    mode: str  # "full" | "quick" | "smoke"
    gemm_size: int
    copy_bytes: int
    cdds: CddsSizes
    evals: tuple[EvalCase, ...]
    decalign: tuple[DecAlignCase, ...]
    kernel_batch: int  # B of the naive-vs-library CDDS kernels
    option_batch: int  # B of the CDDS rows with model.remat / model.dtype=bfloat16
    budget_s: float  # time budget per measurement (sets the number of repetitions)
    max_reps: int
    step_min_reps: int  # minimum repetitions of a train step
    em_iters: int | None = None  # None: the config's value
    ot_iters: int | None = None
    sections: tuple[str, ...] = SECTIONS


def _paper_cdds(batches: tuple[int, ...]) -> CddsSizes:
    return CddsSizes(
        dim=512,
        heads=8,
        image_tokens=197,
        image_dim=768,
        text_tokens=32,
        text_dim=768,
        levels=32,
        samples=4,
        bins=16,
        batches=batches,
    )


def make_settings(
    mode: str,
    *,
    accelerator: bool,
    cdds_batches: Sequence[int] | None = None,
    budget_s: float | None = None,
    max_reps: int | None = None,
    sections: Sequence[str] = SECTIONS,
) -> Settings:
    """The sizes of ``mode`` (``full``, ``quick`` or ``smoke``) on this backend."""
    if mode == "full":
        s = Settings(
            mode=mode,
            gemm_size=8192 if accelerator else 2048,
            copy_bytes=(1024 if accelerator else 256) * 2**20,
            cdds=_paper_cdds(
                (8, 16, 32, 64, 128, 256) if accelerator else (8, 16, 32, 64)
            ),
            evals=(
                EvalCase("Flickr30K 1K", 1000, 5000, 2 * 32 * 512),
                EvalCase("COCO 5K", 5000, 25000, 2 * 32 * 512),
            ),
            decalign=(
                DecAlignCase("MOSI", "mosi", 32, (50, 50, 50), (768, 5, 20)),
                DecAlignCase("MOSEI", "mosei", 128, (50, 50, 50), (768, 74, 35)),
            ),
            kernel_batch=64,
            option_batch=16,
            budget_s=60.0,
            max_reps=20,
            step_min_reps=3,
        )
    elif mode == "quick":
        s = Settings(
            mode=mode,
            gemm_size=2048,
            copy_bytes=64 * 2**20,
            cdds=CddsSizes(
                dim=128,
                heads=8,
                image_tokens=50,
                image_dim=768,
                text_tokens=16,
                text_dim=768,
                levels=8,
                samples=2,
                bins=16,
                batches=(4, 8),
            ),
            evals=(EvalCase("quick", 200, 1000, 2048),),
            decalign=(
                DecAlignCase("MOSI", "mosi", 32, (50, 50, 50), (768, 5, 20)),
                DecAlignCase("MOSEI", "mosei", 128, (50, 50, 50), (768, 74, 35)),
            ),
            kernel_batch=16,
            option_batch=8,
            budget_s=5.0,
            max_reps=20,
            step_min_reps=3,
        )
    elif mode == "smoke":
        tiny = (("dim", 16), ("num_heads", 2), ("num_layers", 1), ("pde_dim", 16))
        s = Settings(
            mode=mode,
            gemm_size=128,
            copy_bytes=2**20,
            cdds=CddsSizes(
                dim=16,
                heads=2,
                image_tokens=6,
                image_dim=12,
                text_tokens=5,
                text_dim=10,
                levels=4,
                samples=2,
                bins=4,
                batches=(2, 4),
            ),
            evals=(EvalCase("smoke", 16, 48, 32),),
            decalign=(
                DecAlignCase("MOSI", "mosi", 8, (6, 6, 6), (12, 5, 7), tiny),
                DecAlignCase("MOSEI", "mosei", 8, (6, 6, 6), (12, 6, 7), tiny),
            ),
            kernel_batch=2,
            option_batch=2,
            budget_s=0.0,
            max_reps=2,
            step_min_reps=1,
            em_iters=2,
            ot_iters=3,
        )
    else:
        raise ValueError(f"mode must be 'full', 'quick' or 'smoke'; got {mode!r}")
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown:
        raise ValueError(f"sections: unknown {unknown}; known {SECTIONS}")
    changes: dict[str, Any] = {"sections": tuple(x for x in SECTIONS if x in sections)}
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


# =====================================================================================
# Timing and machine helpers
# =====================================================================================


def _sync(x: Any) -> Any:
    return jax.block_until_ready(x)


def time_calls(
    call: Callable[[], Any],
    settings: Settings,
    *,
    min_reps: int = 3,
    warmup: int = 1,
) -> tuple[dict[str, Any], Any]:
    """Median wall time of ``call()`` (blocking on its result) after ``warmup`` calls.

    The number of timed calls is ``budget_s / (time of the first timed call)``, clamped
    to ``[min_reps, max_reps]`` (``max_reps`` wins). Returns ``(timing, last result)``.
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


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = _sync(fn())
    return time.perf_counter() - t0, out


def _read_proc(path: str) -> str:
    try:
        return pathlib.Path(path).read_text()
    except OSError:
        return ""


def _meminfo_bytes(field: str) -> int | None:
    for line in _read_proc("/proc/meminfo").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _cpu_model() -> str:
    for line in _read_proc("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine()


def _total_memory() -> int | None:
    total = _meminfo_bytes("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    return total


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=pathlib.Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, JAX backend, device kinds and versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    devices = jax.devices()
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_bytes": _total_memory(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "device_count": len(devices),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "transparent_hugepages": _read_proc(
            "/sys/kernel/mm/transparent_hugepage/enabled"
        ).strip(),
    }


def _device_peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of device 0 (accelerators; None on CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without memory stats
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def _available_bytes() -> int | None:
    """Memory a step may use: free device memory, or MemAvailable on CPU."""
    if jax.default_backend() != "cpu":
        try:
            stats = jax.devices()[0].memory_stats() or {}
        except Exception:
            stats = {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    return _meminfo_bytes("MemAvailable")


def _memory_analysis(compiled: Any) -> dict[str, int] | None:
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


def _xla_flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _single_device_mesh() -> jax.sharding.Mesh:
    return sharding.make_mesh((("data", 1),), devices=jax.devices()[:1])


# =====================================================================================
# 1. Machine ceilings
# =====================================================================================


def f32_gemm_rate(settings: Settings) -> dict[str, Any]:
    """The f32 GEMM rate alone (``gemm_size``^3), e.g. again at the end of a run."""
    n = settings.gemm_size
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(k1, (n, n), jnp.float32)
    y = jax.random.normal(k2, (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    _sync(f(x, y))
    timing, _ = time_calls(lambda: f(x, y), settings, min_reps=5)
    return {"gflops": 2.0 * n**3 / timing["median_s"] / 1e9, **timing}


def measure_ceilings(settings: Settings) -> dict[str, Any]:
    """GEMM rates (f32, f32 HIGHEST, bf16) and copy bandwidths."""
    n = settings.gemm_size
    flops = 2.0 * n**3
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    mats = [
        jax.random.normal(k1, (n, n), jnp.float32),
        jax.random.normal(k2, (n, n), jnp.float32),
    ]
    cpu = jax.default_backend() == "cpu"
    out: dict[str, Any] = {"gemm_size": n, "gemm_flops": flops}

    def gemm(dtype: Any, precision: Any) -> dict[str, Any]:
        f = jax.jit(functools.partial(jnp.matmul, precision=precision))
        x, y = mats[0].astype(dtype), mats[1].astype(dtype)
        compile_s, _ = _timed(lambda: f(x, y))
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

    nbytes = settings.copy_bytes
    count = nbytes // 4
    moved = 2.0 * count * 4  # read + write
    neg_donated = jax.jit(lambda v: -v, donate_argnums=0)
    neg = jax.jit(lambda v: -v)
    holder = {"x": jnp.ones((count,), jnp.float32)}

    def donated() -> jax.Array:
        holder["x"] = neg_donated(holder["x"])
        return holder["x"]

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


# =====================================================================================
# 2. CDDS train step
# =====================================================================================


def cdds_flops(s: CddsSizes, batch: int) -> list[dict[str, Any]]:
    """Analytical CDDS model FLOPs per pair, component by component.

    A multiply-add is 2 FLOPs; ``multiplier`` turns the forward count into forward +
    backward: 3 for trainable paths (backward = input + weight gradients), 2 for the
    input projections (their inputs are data: no input gradient), 1 for the
    stop-gradient KL statistics. Sorts, gathers and the per-token noise are 0 FLOPs.
    Per-step terms (scores ``[B, B]``, soft threshold) are divided by B.
    """
    d, r, z, g, k = s.dim, s.mlp_ratio, s.samples, s.levels, s.bins
    p, length = s.image_tokens, s.text_tokens
    blocks = 2 + 4 * z  # 2 encoder blocks + 2 paths x 2 decoder blocks on z copies
    skips = 4 * z + 4  # 2 paths x 2 skip merges x (z path denses + 1 skip dense)
    dense = 8 + 4 * r  # QKV 6, out 2, MLP 4r  (x N d^2)

    def row(
        name: str, formula: str, forward: float, mult: int, note: str = ""
    ) -> dict[str, Any]:
        return {
            "name": name,
            "formula": formula,
            "forward_per_pair": float(forward),
            "multiplier": mult,
            "train_per_pair": float(forward) * mult,
            "note": note,
        }

    return [
        row(
            "image projection",
            "2 P D_v d",
            2 * p * s.image_dim * d,
            2,
            "x2: weight gradient only",
        ),
        row(
            "text projection",
            "2 L D_t d",
            2 * length * s.text_dim * d,
            2,
            "x2: weight gradient only",
        ),
        row(
            "image blocks: dense layers",
            f"(2 + 4z) (8 + 4r) P d^2  [{blocks} blocks]",
            blocks * dense * p * d * d,
            3,
            "QKV 6 N d^2 + out 2 N d^2 + MLP 4r N d^2 per block",
        ),
        row(
            "text blocks: dense layers",
            f"(2 + 4z) (8 + 4r) L d^2  [{blocks} blocks]",
            blocks * dense * length * d * d,
            3,
            "",
        ),
        row(
            "image blocks: attention",
            "(2 + 4z) 4 P^2 d",
            blocks * 4 * p * p * d,
            3,
            "QK^T + AV; softmax not counted",
        ),
        row(
            "text blocks: attention",
            "(2 + 4z) 4 L^2 d",
            blocks * 4 * length * length * d,
            3,
            "",
        ),
        row(
            "image UNet skip denses",
            "(4z + 4) 2 P d^2",
            skips * 2 * p * d * d,
            3,
            "Dense([g; h]) = Dense(g) on z copies + Dense(h) once",
        ),
        row("text UNet skip denses", "(4z + 4) 2 L d^2", skips * 2 * length * d * d, 3),
        row(
            "histogram KL (S^v and S^t)",
            "2 [7 (P + L) d K + 2 d^2 K]",
            2 * (7 * (p + length) * d * k + 2 * d * d * k),
            1,
            "stop-gradient; 7 FLOPs per soft assignment (exp as 1) + the P (log Q)^T GEMM",
        ),
        row(
            "soft threshold (W^v, W^t)",
            "2 x 10 d^2 / B",
            2 * 10 * d * d / batch,
            3,
            "per step (softmax, mean, std, relu, renormalise)",
        ),
        row(
            "quantile tables (sorts)",
            "0",
            0,
            3,
            "sorts, gathers and interpolation counted as 0 FLOPs",
        ),
        row(
            "retrieval embeddings",
            "8 G d^2",
            8 * g * d * d,
            3,
            "Q W and Q W^T ([G, d] x [d, d]) per image and per caption",
        ),
        row(
            "scores GEMM",
            "4 B G d",
            4 * batch * g * d,
            3,
            "[B, 2Gd] x [2Gd, B] = 4 B^2 G d per step",
        ),
        row(
            "x-semantic tokens",
            "4 G d^2",
            4 * g * d * d,
            3,
            "X = Q_other W^T, both directions; ranks / gathers 0",
        ),
        row(
            "losses (L_s, L_m, L_f, L_x)",
            "~20 (P + L) d",
            20 * (p + length) * d,
            3,
            "elementwise estimate",
        ),
    ]


def _blocks_dense_only(s: CddsSizes) -> float:
    """3 x the transformer blocks' dense layers only, per pair (the issue's estimate)."""
    blocks = 2 + 4 * s.samples
    return (
        3.0
        * blocks
        * (8 + 4 * s.mlp_ratio)
        * (s.image_tokens + s.text_tokens)
        * (s.dim**2)
    )


def cdds_config(s: CddsSizes, batch: int) -> ml_collections.ConfigDict:
    """``configs/flickr.py`` with the benchmark's sizes."""
    c = flickr.get_config()
    c.model.dim = s.dim
    c.model.num_heads = s.heads
    c.model.mlp_ratio = s.mlp_ratio
    c.model.num_samples = s.samples
    c.semantics.num_levels = s.levels
    c.semantics.num_bins = s.bins
    c.train.batch_size = batch
    return c


def cdds_batch(s: CddsSizes, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random precomputed features; caption lengths uniform in ``[L / 2, L]``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, s.text_tokens // 2), s.text_tokens + 1, size=batch)
    return {
        "image": rng.standard_normal(
            (batch, s.image_tokens, s.image_dim), dtype=np.float32
        ),
        "image_id": np.arange(batch, dtype=np.int32),
        "text": rng.standard_normal(
            (batch, s.text_tokens, s.text_dim), dtype=np.float32
        ),
        "text_mask": np.arange(s.text_tokens)[None, :] < lengths[:, None],
    }


def _process_share(before: resource.struct_rusage, wall_s: float) -> dict[str, float]:
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


def _run_step(
    step: Any,
    state: Any,
    batch: Any,
    settings: Settings,
    *,
    label: str,
    guard: bool = True,
) -> dict[str, Any]:
    """Compiles a donated train step, then times it; returns the numbers."""
    log(f"{label}: compiling")
    compile_s, compiled = _timed(lambda: step.lower(state, batch).compile())
    out: dict[str, Any] = {
        "compile_s": compile_s,
        "memory_analysis": _memory_analysis(compiled),
        "xla_flops": _xla_flops(compiled),
    }
    need = (out["memory_analysis"] or {}).get("total_bytes")
    avail = _available_bytes()
    if guard and need is not None and avail is not None and need > MEMORY_GUARD * avail:
        out["skipped"] = (
            f"needs {need / 2**30:.1f} GiB (memory_analysis) > {MEMORY_GUARD:.0%} of "
            f"the {avail / 2**30:.1f} GiB available"
        )
        log(f"{label}: SKIPPED, {out['skipped']}")
        return out
    peak_before = _device_peak_bytes()
    holder = {"state": state}

    def call() -> Any:
        holder["state"], metrics = compiled(holder["state"], batch)
        holder.setdefault("first_loss", metrics["loss"])  # same parameters in every row
        return holder["state"], metrics

    before, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    timing, (_, metrics) = time_calls(
        call, settings, min_reps=settings.step_min_reps, warmup=1
    )
    out.update(timing)
    out["process"] = _process_share(before, time.perf_counter() - wall0)
    out["loss"] = float(metrics["loss"])
    out["first_loss"] = float(holder["first_loss"])
    out["loss_finite"] = bool(np.isfinite(out["loss"]))
    # The device high-water mark is process-wide: it belongs to this step only if the
    # step raised it (batch sizes run in increasing order).
    peak = _device_peak_bytes()
    out["device_peak_bytes"] = peak
    out["device_peak_raised"] = bool(
        peak is not None and (peak_before is None or peak > peak_before)
    )
    holder.clear()  # the donated state chain ends here
    return out


def _memory_of(entry: dict[str, Any]) -> tuple[int | None, str]:
    """The step memory reported in the table and its source."""
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


def memory_growth(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Memory growth per batch doubling between consecutive rows (sorted by batch).

    ``(m2 / m1) ** (1 / log2(B2 / B1))`` for the reported memory, the compiled total and
    the temp buffers alone; ``violates`` when the reported growth exceeds
    ``MEMORY_GROWTH_LIMIT`` (x2.2, the issue's bound).
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
                f"FLAG: CDDS step memory grows x{g['reported_per_doubling']:.2f} per "
                f"batch doubling from B={g['from']} to B={g['to']} (> x"
                f"{MEMORY_GROWTH_LIMIT})"
            )
        growth.append(g)
    return growth


def _cdds_row(
    s: CddsSizes,
    batch_size: int,
    settings: Settings,
    mesh: jax.sharding.Mesh,
    rate: float | None,
    *,
    model: dict[str, Any] | None = None,
    name: str = "",
) -> dict[str, Any]:
    """One CDDS train-step measurement at ``batch_size`` (``model`` overrides)."""
    steps_per_epoch = 1000  # only the L_s ramp / hardest-negative switch read it
    config = cdds_config(s, batch_size)
    for key, value in (model or {}).items():
        config.model[key] = value
    model_ = cdds_train.build_model(config)
    batch_np = cdds_batch(s, batch_size)
    example = {k: v[:1] for k, v in batch_np.items()}
    t0 = time.perf_counter()
    state, shardings = cdds_train.create_train_state(
        config, model_, example, mesh, steps_per_epoch=steps_per_epoch
    )
    _sync(state)
    init_s = time.perf_counter() - t0
    n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
    step = cdds_train.jit_train_step(
        config, model_, shardings, mesh, steps_per_epoch=steps_per_epoch
    )
    batch = sharding.global_batch(batch_np, mesh)
    label = f"cdds_train B={batch_size}" + (f" {name}" if name else "")
    entry = _run_step(step, state, batch, settings, label=label)
    del state, batch
    flops = batch_size * sum(c["train_per_pair"] for c in cdds_flops(s, batch_size))
    entry.update(
        batch=batch_size,
        init_s=init_s,
        params=n_params,
        model_flops=flops,
        model_flops_per_pair=flops / batch_size,
        optimizer_flops_estimate=18.0 * n_params,
    )
    entry["memory_bytes"], entry["memory_source"] = _memory_of(entry)
    if "median_s" in entry:
        entry["achieved_gflops"] = flops / entry["median_s"] / 1e9
        entry["fraction_of_f32_gemm"] = (
            flops / entry["median_s"] / rate if rate else None
        )
        parts = [
            f"compile {entry['compile_s']:.1f} s",
            f"step {entry['median_s'] * 1e3:.1f} ms (median of {entry['reps']})",
            f"{flops / 1e12:.3f} TFLOP",
            f"{entry['achieved_gflops']:.1f} GFLOP/s",
        ]
        if rate:
            parts.append(f"{entry['fraction_of_f32_gemm']:.1%} of f32 GEMM")
        if entry["memory_bytes"] is not None:
            parts.append(f"memory {entry['memory_bytes'] / 2**30:.2f} GiB")
        log(f"{label}: " + ", ".join(parts))
    return entry


def measure_cdds_train(settings: Settings, ceilings: dict[str, Any]) -> dict[str, Any]:
    """The CDDS step through the driver's functions at each batch size."""
    s = settings.cdds
    mesh = _single_device_mesh()
    rate = ceilings["f32"]["gflops"] * 1e9 if ceilings else None
    rows = []
    log(
        f"cdds_train sizes: d {s.dim}, {s.heads} heads, P {s.image_tokens} x D_v "
        f"{s.image_dim}, L {s.text_tokens} x D_t {s.text_dim}, G {s.levels}, z "
        f"{s.samples}, K {s.bins}; B in {list(s.batches)}"
    )
    for batch_size in s.batches:
        rows.append(_cdds_row(s, batch_size, settings, mesh, rate))
    # The memory / compute options, off by default, at one batch size.
    options = []
    for name, overrides in (
        ("model.remat=True", {"remat": True}),
        ("model.dtype=bfloat16", {"dtype": "bfloat16"}),
    ):
        row = _cdds_row(
            s, settings.option_batch, settings, mesh, rate, model=overrides, name=name
        )
        options.append({"option": name, **row})

    return {
        "sizes": dataclasses.asdict(s),
        "rows": rows,
        "options": options,
        "memory_growth": memory_growth(rows),
        "memory_growth_limit": MEMORY_GROWTH_LIMIT,
        "flops_components": cdds_flops(s, s.batches[-1]),
        "flops_components_batch": s.batches[-1],
        "blocks_dense_only_per_pair": _blocks_dense_only(s),
        "issue_gflop_per_pair": ISSUE_GFLOP_PER_PAIR,
    }


# =====================================================================================
# 3. CDDS evaluation
# =====================================================================================


def _naive_ranks_impl(
    scores: jax.Array, caption_to_image: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """0-based ranks from full argsorts (the reference code's way), both directions."""
    n_img, n_cap = scores.shape
    cols = jnp.arange(n_cap)
    # i2t: every image sorts all captions; a caption's rank is its position.
    order = jnp.argsort(-scores, axis=1)  # [n_img, n_cap]
    rows = jnp.arange(n_img)[:, None]
    position = (
        jnp.zeros_like(order).at[rows, order].set(jnp.broadcast_to(cols, order.shape))
    )
    i2t = jax.ops.segment_min(
        position[caption_to_image, cols], caption_to_image, num_segments=n_img
    )
    # t2i: every caption sorts all images.
    order_t = jnp.argsort(-scores, axis=0)  # [n_img, n_cap]
    position_t = (
        jnp.zeros_like(order_t)
        .at[order_t, cols[None, :]]
        .set(jnp.broadcast_to(jnp.arange(n_img)[:, None], order_t.shape))
    )
    t2i = position_t[caption_to_image, cols]
    return i2t, t2i


_naive_ranks = jax.jit(_naive_ranks_impl)


def rank_disagreements(
    scores: np.ndarray,
    caption_to_image: np.ndarray,
    naive: tuple[np.ndarray, np.ndarray],
    counting: tuple[np.ndarray, np.ndarray],
) -> dict[str, int]:
    """Queries whose argsort rank differs from the counting rank, and how many of those
    an exact score tie with a positive explains.

    Counting ranks count candidates scoring strictly above the positive (ties favour
    it); an argsort places tied candidates in index order, so its rank lies in
    ``[greater, greater + equal]``. Random f32 scores of COCO-5K size do tie exactly
    (about one pair in 4e7 per row), so a few queries differ legitimately; any
    difference outside that interval is a bug in one of the two.

    Returns:
      ``{"differ": n, "explained_by_ties": m}`` over both directions.
    """
    scores = np.asarray(scores)
    c2i = np.asarray(caption_to_image)
    differ = explained = 0
    for i in np.flatnonzero(np.asarray(naive[0]) != np.asarray(counting[0])):
        row = scores[i]
        positives = row[c2i == i]
        greater = (row[None, :] > positives[:, None]).sum(axis=1)
        upper = greater + (row[None, :] == positives[:, None]).sum(axis=1) - 1
        differ += 1
        explained += int(counting[0][i] <= naive[0][i] <= upper.min())
    for c in np.flatnonzero(np.asarray(naive[1]) != np.asarray(counting[1])):
        column = scores[:, c]
        positive = column[c2i[c]]
        upper = int((column > positive).sum() + (column == positive).sum() - 1)
        differ += 1
        explained += int(counting[1][c] <= naive[1][c] <= upper)
    return {"differ": differ, "explained_by_ties": explained}


def measure_cdds_eval(settings: Settings, ceilings: dict[str, Any]) -> dict[str, Any]:
    """score_matrix + rank_metrics on random embeddings vs the GEMM floor and argsort."""
    block = int(flickr.get_config().eval.block_size)
    rate = ceilings["f32_highest"]["gflops"] * 1e9 if ceilings else None
    rows = []
    for case in settings.evals:
        rng = np.random.default_rng(1)
        img = rng.standard_normal((case.num_images, case.width), dtype=np.float32)
        cap = rng.standard_normal((case.num_captions, case.width), dtype=np.float32)
        c2i = (np.arange(case.num_captions) * case.num_images) // case.num_captions
        size = f"{case.num_images} x {case.num_captions}, width {case.width}"
        # Compile the block kernel on one block of each side (same shapes as the run).
        warm_s, _ = _timed(
            lambda img=img, cap=cap: retrieval.score_matrix(
                img[:block], cap[:block], block_size=block
            )
        )
        t_scores, scores = time_calls(
            lambda img=img, cap=cap: retrieval.score_matrix(img, cap, block_size=block),
            settings,
            min_reps=1,
            warmup=0,
        )
        log(
            f"cdds_eval {case.name} ({size}): score_matrix {t_scores['median_s']:.3f} s"
        )
        t_ranks, _ = time_calls(
            lambda scores=scores, c2i=c2i: retrieval.rank_metrics(scores, c2i),
            settings,
            min_reps=3,
            warmup=1,
        )
        log(f"cdds_eval {case.name}: rank_metrics {t_ranks['median_s']:.3f} s")
        c2i_dev = jnp.asarray(c2i, jnp.int32)
        t_naive, naive = time_calls(
            lambda scores=scores, c2i_dev=c2i_dev: jax.device_get(
                _naive_ranks(scores, c2i_dev)
            ),
            settings,
            min_reps=1,
            warmup=1,
        )
        counting = retrieval.retrieval_ranks(scores, c2i)
        diff = rank_disagreements(jax.device_get(scores), c2i, naive, counting)
        # Equal, or different only where an exact score tie allows it.
        agree = diff["differ"] == diff["explained_by_ties"]
        log(
            f"cdds_eval {case.name}: naive argsort ranks {t_naive['median_s']:.3f} s "
            f"(x{t_naive['median_s'] / t_ranks['median_s']:.1f} of counting), ranks "
            f"agree: {agree} ({diff['differ']} queries differ, "
            f"{diff['explained_by_ties']} of them by exact ties)"
        )
        flops = 2.0 * case.num_images * case.num_captions * case.width
        padded = -(-case.num_images // block) * -(-case.num_captions // block)
        padded_flops = 2.0 * padded * block * block * case.width
        floor_s = flops / rate if rate else None
        total = t_scores["median_s"] + t_ranks["median_s"]
        rows.append(
            {
                **dataclasses.asdict(case),
                "block_size": block,
                "score_compile_s": warm_s,
                "score_matrix": t_scores,
                "rank_metrics": t_ranks,
                "naive_argsort_ranks": t_naive,
                "ranks_agree": agree,
                "ranks_differ": diff["differ"],
                "ranks_differ_by_ties": diff["explained_by_ties"],
                "total_s": total,
                "gemm_flops": flops,
                "gemm_flops_computed": padded_flops,  # score_matrix pads to blocks
                "block_padding": padded_flops / flops,
                "gemm_floor_s": floor_s,
                "score_over_floor": t_scores["median_s"] / floor_s if floor_s else None,
                "total_over_floor": total / floor_s if floor_s else None,
                "naive_over_counting": t_naive["median_s"] / t_ranks["median_s"],
            }
        )
        del img, cap, scores
    return {"rows": rows}


# =====================================================================================
# 4. DecAlign train step
# =====================================================================================


def decalign_config(
    case: DecAlignCase, settings: Settings, variant: str = "head"
) -> ml_collections.ConfigDict:
    """The HEAD config of ``case.dataset``; ``alpha0`` / ``no_dropout`` variants."""
    c = decalign_base.get_config(case.dataset, None)
    for key, value in case.model:
        c.model[key] = value
    if settings.em_iters is not None:
        c.loss.em_iters = settings.em_iters
    if settings.ot_iters is not None:
        c.loss.ot_iters = settings.ot_iters
    if variant == "alpha0":
        c.loss.alpha = 0.0
    elif variant == "no_dropout":
        c.model.attn_dropout = (0.0, 0.0, 0.0)
        for key in ("relu", "res", "embed", "output", "text"):
            c.model[f"{key}_dropout"] = 0.0
    elif variant != "head":
        raise ValueError(f"variant: unknown {variant!r}")
    c.train.batch_size = case.batch
    return c


def decalign_batch(case: DecAlignCase, seed: int = 0) -> dict[str, np.ndarray]:
    """Random (text, audio, vision) features and labels in [-3, 3]."""
    rng = np.random.default_rng(seed)
    batch = {
        m: rng.standard_normal((case.batch, t, d), dtype=np.float32)
        for m, t, d in zip(
            ("text", "audio", "vision"), case.lengths, case.dims, strict=True
        )
    }
    batch["label"] = rng.uniform(-3.0, 3.0, size=case.batch).astype(np.float32)
    return batch


def _hetero_fn(config: ml_collections.ConfigDict) -> Callable[..., Any]:
    lc = config.loss

    def loss(pooled: tuple[jax.Array, ...]) -> jax.Array:
        return decalign_losses.hetero_loss(
            pooled,
            num_prototypes=lc.num_prototypes,
            em_iters=lc.em_iters,
            var_floor=lc.var_floor,
            ot_epsilon=lc.ot_epsilon,
            ot_iters=lc.ot_iters,
            cost_reduction=lc.cost_reduction,
            local_mahalanobis=lc.local_mahalanobis,
            log_domain=lc.ot_log_domain,
        )[0]

    return loss


def time_hetero(
    config: ml_collections.ConfigDict, batch: int, settings: Settings
) -> dict[str, Any]:
    """``losses.hetero_loss`` forward + backward alone on random ``[B, d]`` inputs."""
    fn = jax.jit(jax.value_and_grad(_hetero_fn(config)))
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    pooled = tuple(jax.random.normal(k, (batch, config.model.dim)) for k in keys)
    timing, _ = _time_jit(fn, (pooled,), settings)
    return timing


def measure_decalign(settings: Settings) -> dict[str, Any]:
    """DecAlign step (HEAD, alpha = 0, no dropout) and hetero_loss alone, per case."""
    mesh = _single_device_mesh()
    rows = []
    for case in settings.decalign:
        batch_np = decalign_batch(case)
        example = {k: v[:1] for k, v in batch_np.items()}
        entry: dict[str, Any] = {**dataclasses.asdict(case), "model": dict(case.model)}
        for variant in ("head", "alpha0", "no_dropout"):
            config = decalign_config(case, settings, variant)
            model = decalign_train.build_model(config)
            state, shardings = decalign_train.create_train_state(
                config, model, example, mesh, seed=0, steps_per_epoch=100
            )
            step = decalign_train.jit_train_step(config, model, shardings, mesh)
            batch = sharding.global_batch(batch_np, mesh)
            label = f"decalign {case.name} B={case.batch} [{variant}]"
            res = _run_step(step, state, batch, settings, label=label, guard=False)
            res["config_loss"] = {
                k: config.loss[k]
                for k in ("alpha", "num_prototypes", "em_iters", "ot_iters")
            }
            entry[variant] = res
            log(
                f"{label}: compile {res['compile_s']:.1f} s, step "
                f"{res['median_s'] * 1e3:.2f} ms (median of {res['reps']})"
            )
            del state, batch
        timing = time_hetero(decalign_config(case, settings), case.batch, settings)
        entry["hetero_fwd_bwd"] = timing
        head = entry["head"]["median_s"]
        entry["hetero_share"] = timing["median_s"] / head
        entry["alpha0_share"] = 1.0 - entry["alpha0"]["median_s"] / head
        entry["dropout_share"] = 1.0 - entry["no_dropout"]["median_s"] / head
        # The same shares from the fastest call of each (less sensitive to a noisy host).
        head_min = entry["head"]["min_s"]
        entry["hetero_share_min"] = timing["min_s"] / head_min
        entry["alpha0_share_min"] = 1.0 - entry["alpha0"]["min_s"] / head_min
        entry["dropout_share_min"] = 1.0 - entry["no_dropout"]["min_s"] / head_min
        log(
            f"decalign {case.name}: hetero_loss fwd+bwd {timing['median_s'] * 1e3:.2f} "
            f"ms = {entry['hetero_share']:.1%} of the step (alpha=0 cross-check "
            f"{entry['alpha0_share']:.1%}); dropout RNG {entry['dropout_share']:.1%}"
        )
        rows.append(entry)
    return {"rows": rows}


# =====================================================================================
# 5. Naive vs library kernels
# =====================================================================================


def _naive_pair_kl(
    x: jax.Array, xm: jax.Array, y: jax.Array, ym: jax.Array, num_bins: int
) -> jax.Array:
    """``[d, d]`` KL(column i of x || column j of y) of ONE pair (spec 3, histogram)."""
    big = jnp.inf
    lo = jnp.minimum(
        jnp.min(jnp.where(xm[:, None], x, big)), jnp.min(jnp.where(ym[:, None], y, big))
    )
    hi = jnp.maximum(
        jnp.max(jnp.where(xm[:, None], x, -big)),
        jnp.max(jnp.where(ym[:, None], y, -big)),
    )
    scale = jnp.maximum(1.0, jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
    width = jnp.maximum((hi - lo) / num_bins, semantics.HISTOGRAM_WIDTH_FLOOR * scale)
    centres = lo + (jnp.arange(num_bins) + 0.5) * width

    def hist(z: jax.Array, zm: jax.Array) -> jax.Array:
        u = (z[:, :, None] - centres) / width  # [N, d, K]
        h = jnp.sum(zm[:, None, None] * jnp.exp(-0.5 * u * u), axis=0)
        h = h + semantics.HISTOGRAM_EPS
        return h / jnp.sum(h, axis=-1, keepdims=True)

    p, q = hist(x, xm), hist(y, ym)
    return jnp.sum(p * jnp.log(p), axis=-1)[:, None] - jnp.matmul(
        p, jnp.log(q).T, precision=jax.lax.Precision.HIGHEST
    )


def _cos_flat(a: jax.Array, b: jax.Array) -> jax.Array:
    na = jnp.maximum(jnp.linalg.norm(a), semantics.NORM_EPS)
    nb = jnp.maximum(jnp.linalg.norm(b), semantics.NORM_EPS)
    return jnp.sum(a * b) / (na * nb)


def _naive_pair_scores_impl(q_v, q_t, w_v, w_t):
    """Scores by a per-pair vmap that forms X^v_b and X^t_a for every (a, b) pair."""

    def one(qv, qt):  # [G, d] each
        return _cos_flat(qv, qt @ w_v.T) + _cos_flat(qt, qv @ w_t.T)

    return jax.vmap(lambda qv: jax.vmap(lambda qt: one(qv, qt))(q_t))(q_v)


def _naive_gmm(
    x: jax.Array, num_components: int, num_iters: int, var_floor: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Spec EM (uncentred formulas) as a Python loop; returns (means, vars, gamma)."""
    b, d = x.shape
    means = x[prototypes.gmm_init_indices(b, num_components)]
    var0 = jnp.maximum(jnp.var(x, axis=0), var_floor)
    variances = jnp.broadcast_to(var0, (num_components, d))
    log_w = jnp.full((num_components,), -math.log(num_components))

    def e_step(log_w, means, variances):
        maha = jnp.sum(
            (x[:, None, :] - means[None]) ** 2 / variances[None], axis=-1
        )  # [B, K]
        log_det = jnp.sum(jnp.log(variances), axis=-1)
        return jax.nn.softmax(
            log_w[None] - 0.5 * (maha + log_det[None] + d * math.log(2 * math.pi)),
            axis=-1,
        )

    for _ in range(num_iters):
        gamma = e_step(log_w, means, variances)
        mass = jnp.maximum(jnp.sum(gamma, axis=0), 1e-6)
        means = (gamma.T @ x) / mass[:, None]
        variances = jnp.maximum(
            (gamma.T @ (x * x)) / mass[:, None] - means**2, var_floor
        )
        log_w = jnp.log(mass / b)
    return means, variances, e_step(log_w, means, variances)


def _gmm_objective(means, variances, gamma) -> jax.Array:
    return (
        jnp.sum(means)
        + jnp.sum(variances)
        + jnp.sum(gamma * jnp.arange(gamma.shape[1]))
    )


def _naive_sinkhorn_value(
    cost: jax.Array, marginals: tuple[jax.Array, ...], epsilon: float, num_iters: int
) -> jax.Array:
    """Log-domain 3-marginal Sinkhorn sweeps as a Python loop; the entropic value."""
    log_a, log_b, log_c = (jnp.log(jnp.maximum(m, 1e-30)) for m in marginals)
    log_k = -cost / epsilon
    lse = jax.nn.logsumexp
    f = jnp.zeros_like(log_a)
    g = jnp.zeros_like(log_b)
    h = jnp.zeros_like(log_c)
    for _ in range(num_iters):
        f = log_a - lse(log_k + g[None, :, None] + h, axis=(1, 2))
        g = log_b - lse(log_k + f[:, None, None] + h[None, None, :], axis=(0, 2))
        h = log_c - lse(log_k + f[:, None, None] + g[None, :, None], axis=(0, 1))
    log_plan = log_k + f[:, None, None] + g[None, :, None] + h
    plan = jnp.exp(log_plan)
    log_term = jnp.maximum(log_plan, math.log(1e-8))
    return jnp.sum(plan * cost) + epsilon * jnp.sum(plan * (log_term - 1.0))


def _kernel_row(
    name: str,
    size: str,
    naive_form: str,
    naive: dict[str, Any],
    library: dict[str, Any],
    max_abs_diff: float,
    **extra: Any,
) -> dict[str, Any]:
    row = {
        "kernel": name,
        "size": size,
        "naive_form": naive_form,
        "naive": naive,
        "library": library,
        "speedup": naive["median_s"] / library["median_s"],
        "max_abs_diff": float(max_abs_diff),
        **extra,
    }
    log(
        f"kernel {name} ({size}): {naive_form} {naive['median_s'] * 1e3:.2f} ms vs "
        f"library {library['median_s'] * 1e3:.2f} ms (x{row['speedup']:.1f}), "
        f"max |diff| {max_abs_diff:.2e}"
    )
    return row


def _time_jit(
    fn: Callable[..., Any], args: tuple[Any, ...], settings: Settings
) -> tuple[dict[str, Any], Any]:
    """Compile (timed) then time a jitted function of ``args``."""
    compile_s, _ = _timed(lambda: fn(*args))
    timing, out = time_calls(lambda: fn(*args), settings, min_reps=3)
    return {"compile_s": compile_s, **timing}, out


def kernels_cdds(settings: Settings) -> list[dict[str, Any]]:
    """KL correlation and pair scores: naive forms vs the library, CDDS sizes."""
    s = settings.cdds
    b, d, k, g = settings.kernel_batch, s.dim, s.bins, s.levels
    p, length = s.image_tokens, s.text_tokens
    chunk = int(flickr.get_config().semantics.kl_chunk_size) or None
    rng = np.random.default_rng(3)
    rows = []

    # -- KL correlation: per-pair loop / per-pair vmap [B, d, d] vs one GEMM.
    v = jnp.asarray(rng.standard_normal((b, p, d), dtype=np.float32))
    t = jnp.asarray(rng.standard_normal((b, length, d), dtype=np.float32))
    vm = jnp.ones((b, p), jnp.float32)
    lengths = rng.integers(max(1, length // 2), length + 1, size=b)
    tm = jnp.asarray(np.arange(length)[None, :] < lengths[:, None], jnp.float32)
    library = jax.jit(
        functools.partial(
            semantics.kl_correlation,
            estimator="histogram",
            num_bins=k,
            chunk_size=chunk,
        )
    )
    lib_t, lib_s = _time_jit(library, (v, vm, t, tm), settings)
    per_pair = jax.jit(functools.partial(_naive_pair_kl, num_bins=k))
    vmapped = jax.jit(
        lambda v, vm, t, tm: jnp.mean(
            jax.vmap(functools.partial(_naive_pair_kl, num_bins=k))(v, vm, t, tm),
            axis=0,
        )
    )

    def loop(v, vm, t, tm):
        acc = per_pair(v[0], vm[0], t[0], tm[0])
        for a in range(1, v.shape[0]):
            acc = acc + per_pair(v[a], vm[a], t[a], tm[a])
        return acc / v.shape[0]

    size = f"B {b}, P {p}, L {length}, d {d}, K {k}"
    vm_t, vm_s = _time_jit(vmapped, (v, vm, t, tm), settings)
    rows.append(
        _kernel_row(
            "KL correlation",
            size,
            "per-pair vmap, [B, d, d]",
            vm_t,
            lib_t,
            float(jnp.max(jnp.abs(vm_s - lib_s))),
            library_form=f"semantics.kl_correlation (chunk {chunk})",
        )
    )
    loop_t, loop_s = _time_jit(loop, (v, vm, t, tm), settings)
    rows.append(
        _kernel_row(
            "KL correlation",
            size,
            "Python loop over pairs",
            loop_t,
            lib_t,
            float(jnp.max(jnp.abs(loop_s - lib_s))),
            library_form=f"semantics.kl_correlation (chunk {chunk})",
        )
    )
    del v, t, vm, tm

    # -- Pair scores: per-pair tensors vs the GEMM of per-item embeddings.
    q_v = jnp.asarray(rng.standard_normal((b, g, d), dtype=np.float32))
    q_t = jnp.asarray(rng.standard_normal((b, g, d), dtype=np.float32))
    w_v = jax.nn.softmax(jnp.asarray(rng.standard_normal((d, d), dtype=np.float32)))
    w_t = jax.nn.softmax(jnp.asarray(rng.standard_normal((d, d), dtype=np.float32)))
    args = (q_v, q_t, w_v, w_t)
    lib_t, lib_s = _time_jit(jax.jit(semantics.pair_scores), args, settings)
    naive_t, naive_s = _time_jit(jax.jit(_naive_pair_scores_impl), args, settings)
    rows.append(
        _kernel_row(
            "pair scores",
            f"B {b} x {b}, G {g}, d {d}",
            "per-pair vmap forming X^v_b, X^t_a",
            naive_t,
            lib_t,
            float(jnp.max(jnp.abs(naive_s - lib_s))),
            library_form="semantics.pair_scores (one GEMM)",
        )
    )
    del q_v, q_t, w_v, w_t

    return rows


def kernels_decalign(settings: Settings) -> list[dict[str, Any]]:
    """EM and Sinkhorn (forward + backward): Python loops vs ``lax.fori_loop``.

    Sizes of the last DecAlign case (B, d, K, iterations of its HEAD config).
    """
    if not settings.decalign:
        return []
    rows = []
    case = settings.decalign[-1]
    config = decalign_config(case, settings)
    lc = config.loss
    kp, iters, floor = lc.num_prototypes, lc.em_iters, lc.var_floor
    x = jax.random.normal(jax.random.PRNGKey(4), (case.batch, config.model.dim))

    def lib_gmm(x):
        fit = prototypes.fit_diag_gmm(x, kp, num_iters=iters, var_floor=floor)
        return _gmm_objective(fit.means, fit.variances, fit.responsibilities)

    def naive_gmm(x):
        return _gmm_objective(*_naive_gmm(x, kp, iters, floor))

    lib_t, lib_v = _time_jit(jax.jit(jax.value_and_grad(lib_gmm)), (x,), settings)
    size = f"B {case.batch}, d {config.model.dim}, K {kp}, {iters} iterations"
    unrolled_t, unrolled_v = _time_jit(
        jax.jit(jax.value_and_grad(naive_gmm)), (x,), settings
    )
    eager_t, _ = _time_jit(jax.value_and_grad(naive_gmm), (x,), settings)
    lib_means = prototypes.fit_diag_gmm(x, kp, num_iters=iters, var_floor=floor)
    naive_means = _naive_gmm(x, kp, iters, floor)[0]
    diff = float(jnp.max(jnp.abs(lib_means.means - naive_means)))
    for form, timing in (
        ("eager Python loop", eager_t),
        ("jit of unrolled Python loop", unrolled_t),
    ):
        rows.append(
            _kernel_row(
                "EM (fwd+bwd)",
                size,
                form,
                timing,
                lib_t,
                diff,
                library_form="prototypes.fit_diag_gmm (lax.fori_loop)",
            )
        )

    key = jax.random.PRNGKey(5)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    pair = jnp.abs(jax.random.normal(k1, (3, kp, kp)))
    cost = prototypes.joint_cost(pair[0], pair[1], pair[2])
    marg = tuple(jax.nn.softmax(jax.random.normal(kk, (kp,))) for kk in (k2, k3, k4))
    eps, sweeps, log_domain = lc.ot_epsilon, lc.ot_iters, lc.ot_log_domain

    def lib_ot(cost):
        return prototypes.multi_marginal_sinkhorn(
            cost, marg, epsilon=eps, num_iters=sweeps, log_domain=log_domain
        )[1]

    def naive_ot(cost):
        return _naive_sinkhorn_value(cost, marg, eps, sweeps)

    size = f"K {kp}^3, {sweeps} sweeps, eps {eps}"
    lib_t, lib_v = _time_jit(jax.jit(jax.value_and_grad(lib_ot)), (cost,), settings)
    unrolled_t, unrolled_v = _time_jit(
        jax.jit(jax.value_and_grad(naive_ot)), (cost,), settings
    )
    eager_t, _ = _time_jit(jax.value_and_grad(naive_ot), (cost,), settings)
    diff = float(abs(lib_v[0] - unrolled_v[0]))
    for form, timing in (
        ("eager Python loop", eager_t),
        ("jit of unrolled Python loop", unrolled_t),
    ):
        rows.append(
            _kernel_row(
                "Sinkhorn 3-marginal (fwd+bwd)",
                size,
                form,
                timing,
                lib_t,
                diff,
                library_form="prototypes.multi_marginal_sinkhorn "
                f"({'log' if log_domain else 'plain'} domain, lax.fori_loop)",
            )
        )
    return rows


def measure_kernels(settings: Settings) -> dict[str, Any]:
    """Each library kernel against its naive form, same inputs, same run."""
    return {"rows": kernels_cdds(settings) + kernels_decalign(settings)}


# =====================================================================================
# Report
# =====================================================================================


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**30:.2f} GiB"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.1f} ms" if x < 10 else f"{x:.1f} s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _kernel_share(row: dict[str, Any]) -> str:
    proc = row.get("process")
    if not proc:
        return "-"
    calls = row.get("reps", 0) + len(row.get("warmup_s", []))
    faults = proc["minor_faults"] / max(calls, 1)
    return f"{proc['system_share']:.0%} ({faults / 1e6:.2f} M)"


def _agreement(row: dict[str, Any]) -> str:
    """Argsort vs counting ranks: equal, equal up to exact ties, or not."""
    if not row["ranks_agree"]:
        return f"**NO** ({row.get('ranks_differ')} queries differ)"
    ties = row.get("ranks_differ_by_ties", 0)
    return f"yes ({ties} exact ties)" if ties else "yes (equal)"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    """The issue's CPU targets, measured in this run: met or not, and the numbers."""
    rows = []
    train = results.get("cdds_train") or {}
    by_batch = {r["batch"]: r for r in train.get("rows", [])}
    ceil = results.get("ceilings") or {}
    end = (ceil.get("f32_end") or {}).get("gflops")
    if by_batch:
        batch = 64 if 64 in by_batch else max(by_batch)
        r = by_batch[batch]
        frac = r.get("fraction_of_f32_gemm")
        if frac is None:
            got, ok = r.get("skipped", "not measured"), None
        else:
            got = f"{frac:.1%} ({r['achieved_gflops']:.1f} GFLOP/s)"
            if end:
                got += f"; {r['achieved_gflops'] / end:.1%} of the end-of-run rate"
            ok = frac >= 0.5
        rows.append([f"CDDS train step at B = {batch}: >= 50% of the f32 GEMM rate",
                     got, ok])  # fmt: skip
    growth = train.get("memory_growth") or []
    if growth:
        worst = max((g["reported_per_doubling"] or 0.0 for g in growth), default=0.0)
        span = f"B {growth[0]['from']} -> {growth[-1]['to']}"
        rows.append(
            [
                "CDDS step memory: x2 batch -> at most x2.2",
                f"at most x{worst:.2f} per doubling ({span})",
                not any(g["violates"] for g in growth),
            ]
        )
    for r in (results.get("cdds_eval") or {}).get("rows", []):
        if r["name"].startswith("COCO"):
            rows.append(
                [
                    f"{r['name']} evaluation (scores + ranks) within 2x of its GEMM "
                    "floor",
                    f"x{r['total_over_floor']:.2f} ({r['total_s']:.1f} s vs "
                    f"{r['gemm_floor_s']:.1f} s)",
                    r["total_over_floor"] <= 2.0,
                ]
            )
    if not rows:
        return []
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    lines = [
        "",
        "## Targets",
        "",
        "The issue's targets for a CPU, from this run's numbers (the GEMM rate is the "
        "one measured at the start; the end-of-run rate shows the drift):",
        "",
    ]
    lines += _table(
        ["target", "measured", ""], [[t, g, verdict[ok]] for t, g, ok in rows]
    )
    if by_batch:
        lines += ["", _cdds_limits(by_batch[batch])]
    return lines


def _cdds_limits(row: dict[str, Any]) -> str:
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


def _options_table(train: dict[str, Any]) -> list[str]:
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
                "skipped" if "median_s" not in r else _ms(r["median_s"]),
                f"x{r['median_s'] / base['median_s']:.2f}" if ran else "-",
                "-" if "median_s" not in r else _pct(r.get("fraction_of_f32_gemm")),
                _gib(r["memory_bytes"]),
                f"x{r['memory_bytes'] / base['memory_bytes']:.2f}"
                if base and r["memory_bytes"] and base["memory_bytes"]
                else "-",
                "-" if "first_loss" not in r else f"{r['first_loss']:.4f}",
            ]
        )
    header = ["variant", "step", "time ratio", "of f32 GEMM", "memory", "memory ratio",
              "first-step loss"]  # fmt: skip
    if not any("first_loss" in r for r in [base, *options] if r):
        header, rows = header[:-1], [row[:-1] for row in rows]
    lines += _table(header, rows)
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """BENCHMARKS.md from the results dict (sections that did not run are skipped)."""
    meta, mach = results["meta"], results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {meta['date']} by `{meta['command']}` (mode `{meta['mode']}`, "
        f"commit `{meta.get('git_commit') or '?'}`, {meta.get('wall_s', 0):.0f} s). "
        "All numbers come from this one run; every number is also in "
        "`benchmarks.json`.",
        "",
        "## Machine",
        "",
    ]
    mem = mach.get("memory_bytes")
    lines += _table(
        ["", ""],
        [
            ["CPU", mach["cpu_model"]],
            ["cores", f"{mach['cpu_cores']} ({mach['cpu_cores_usable']} usable)"],
            ["memory", _gib(mem)],
            ["jax backend", mach["jax_backend"]],
            ["devices", f"{mach['device_count']} x {', '.join(mach['device_kinds'])}"],
            ["jax / jaxlib", f"{mach['jax']} / {mach['jaxlib']}"],
            ["python", mach["python"]],
            ["platform", mach["platform"]],
            ["XLA_FLAGS", f"`{mach['xla_flags']}`" if mach.get("xla_flags") else "-"],
            [
                "GLIBC_TUNABLES",
                f"`{mach['glibc_tunables']}`" if mach.get("glibc_tunables") else "-",
            ],
            ["transparent hugepages", mach.get("transparent_hugepages") or "-"],
        ],
    )
    lines += _targets(results)

    ceil = results.get("ceilings")
    if ceil:
        n = ceil["gemm_size"]
        lines += ["", "## Machine ceilings", ""]
        crow = [
            [
                f"f32 GEMM {n}^3",
                f"{ceil['f32']['gflops']:.1f} GFLOP/s",
                ceil["f32"]["reps"],
            ],
        ]
        end = ceil.get("f32_end")
        if end:
            crow.append(
                [
                    f"f32 GEMM {n}^3, again at the end of the run",
                    f"{end['gflops']:.1f} GFLOP/s",
                    end["reps"],
                ]
            )
        if "same_as" in ceil["f32_highest"]:
            crow.append([f"f32 GEMM {n}^3, HIGHEST", "same kernel on CPU", "-"])
        else:
            crow.append(
                [
                    f"f32 GEMM {n}^3, HIGHEST",
                    f"{ceil['f32_highest']['gflops']:.1f} GFLOP/s",
                    ceil["f32_highest"]["reps"],
                ]
            )
        bf = ceil["bf16"]
        crow.append(
            [
                f"bf16 GEMM {n}^3",
                f"{bf['gflops']:.1f} GFLOP/s" if bf.get("supported") else "unsupported",
                bf.get("reps", "-"),
            ]
        )
        mib = ceil["copy_bytes"] / 2**20
        for key, what in (
            ("copy_donated", "copy, donated in-place update"),
            ("copy_fresh", "copy, fresh output buffer"),
            ("copy_host", "copy, host np.copyto"),
        ):
            crow.append(
                [
                    f"{what} ({mib:.0f} MiB, read + write)",
                    f"{ceil[key]['gb_per_s']:.1f} GB/s",
                    ceil[key]["reps"],
                ]
            )
        lines += _table(["ceiling", "rate (median)", "reps"], crow)

    train = results.get("cdds_train")
    if train:
        sz = train["sizes"]
        lines += [
            "",
            "## CDDS train step",
            "",
            f"d {sz['dim']}, {sz['heads']} heads, P {sz['image_tokens']} image tokens of "
            f"D_v {sz['image_dim']}, L {sz['text_tokens']} caption tokens of D_t "
            f"{sz['text_dim']} (precomputed features), G {sz['levels']}, z "
            f"{sz['samples']}, K {sz['bins']}; `configs/flickr.py` with these "
            "overrides, built by `cdds_jax.train.build_model` / `create_train_state` / "
            "`train_step` (jitted with the driver's shardings and donation) on random "
            "inputs. Step time = median over `reps` calls after one warm-up call, "
            "blocking on the new state and metrics. Fraction = model FLOPs / step time "
            "/ the f32 GEMM rate above.",
            "",
        ]
        trow = []
        for r in train["rows"]:
            skipped = "skipped" in r
            trow.append(
                [
                    r["batch"],
                    f"{r['compile_s']:.1f} s",
                    "skipped" if skipped else f"{_ms(r['median_s'])} ({r['reps']})",
                    f"{r['model_flops'] / 1e9:.1f}",
                    "-" if skipped else f"{r['achieved_gflops']:.1f}",
                    "-" if skipped else _pct(r.get("fraction_of_f32_gemm")),
                    _gib(r["memory_bytes"]),
                    _kernel_share(r),
                    "-"
                    if r.get("xla_flops") is None
                    else f"{r['xla_flops'] / 1e9:.1f}",
                ]
            )
        lines += _table(
            [
                "B",
                "compile",
                "step (reps)",
                "model GFLOP/step",
                "GFLOP/s",
                "of f32 GEMM",
                "memory",
                "kernel CPU share (faults/step)",
                "XLA cost_analysis GFLOP",
            ],
            trow,
        )
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
            grow = []
            for g_ in train["memory_growth"]:
                fmt = lambda x: "-" if x is None else f"x{x:.2f}"
                grow.append(
                    [
                        f"{g_['from']} -> {g_['to']}",
                        fmt(g_["reported_per_doubling"]),
                        fmt(g_["analysis_temp_per_doubling"]),
                        "**VIOLATED**" if g_["violates"] else "ok",
                    ]
                )
            lines += _table(
                ["B", "memory (as reported)", "temp buffers only", "x2.2"], grow
            )
        lines += _options_table(train)

        comps = train["flops_components"]
        bb = train["flops_components_batch"]
        total = sum(c["train_per_pair"] for c in comps)
        lines += [
            "",
            f"### Model FLOPs per (image, caption) pair (B = {bb})",
            "",
            "Counted analytically (`cdds_flops` in `scripts/benchmark.py`); a "
            "multiply-add is 2 FLOPs; N = P or L tokens, r = MLP ratio 4. The multiplier "
            "turns the forward count into forward + backward: x3 for trainable paths, x2 "
            "for the input projections (inputs are data, no input gradient), x1 for the "
            "stop-gradient KL statistic. The AdamW update (~18 FLOPs per parameter per "
            "step) is not model FLOPs and not counted.",
            "",
        ]
        frow = [
            [
                c["name"],
                f"`{c['formula']}`",
                f"{c['forward_per_pair'] / 1e9:.4f}",
                f"x{c['multiplier']}",
                f"{c['train_per_pair'] / 1e9:.4f}",
                c["note"],
            ]
            for c in comps
        ]
        frow.append(["**total**", "", "", "", f"**{total / 1e9:.2f}**", ""])
        lines += _table(
            ["component", "forward formula", "fwd GFLOP", "", "fwd+bwd GFLOP", "note"],
            frow,
        )
        dense = train["blocks_dense_only_per_pair"]
        paper = _paper_cdds((64,))
        paper_total = sum(c["train_per_pair"] for c in cdds_flops(paper, 64))
        paper_dense = _blocks_dense_only(paper)
        lines += [
            "",
            f"Check against the issue's estimate (about "
            f"{train['issue_gflop_per_pair']:.0f} GFLOP per pair at paper sizes: d 512, "
            "P 197, L 32, z 4, G 32, K 16): the same formulas give "
            f"{paper_total / 1e9:.1f} GFLOP per pair at B = 64 "
            f"({64 * paper_total / 1e12:.2f} TFLOP per step). The dense layers of the "
            "18 transformer blocks alone (3 x (2 + 4z) x 24 (P + L) d^2) are "
            f"{paper_dense / 1e9:.1f} GFLOP, which matches the issue's figure; the "
            "difference is the attention scores and values (4 (P^2 + L^2) d per block, "
            "x 18 x 3), the UNet skip denses and the small terms "
            f"({paper_total / paper_dense - 1:+.0%}). At the sizes of this run: "
            f"{total / 1e9:.2f} GFLOP per pair, blocks' dense layers {dense / 1e9:.2f}. "
            "XLA's `cost_analysis` counts elementwise work too but counts each loop "
            "body (the chunked KL `lax.map`) once; it is a cross-check, not the "
            "reference.",
        ]

    ev = results.get("cdds_eval")
    if ev:
        lines += [
            "",
            "## CDDS evaluation (scores + ranks)",
            "",
            "Random embeddings of the retrieval width 2 G d; `retrieval.score_matrix` "
            f"(f32, HIGHEST, blocks of {ev['rows'][0]['block_size']}) + "
            "`retrieval.rank_metrics` (counting). GEMM floor = 2 n_img n_cap width FLOPs "
            "at the measured f32 (HIGHEST) GEMM rate. Block padding = FLOPs "
            "`score_matrix` computes (both sides zero-padded to whole blocks) / the "
            "floor's FLOPs. Naive ranks = full argsorts in both directions (jitted), "
            "checked against the counting ranks: equal, except for queries whose "
            "positive ties exactly with another candidate (random f32 scores of "
            "COCO-5K size do tie; counting ranks let ties favour the positive, an "
            "argsort orders them by index; each such query is verified to lie "
            "within its tie interval).",
            "",
        ]
        erow = []
        for r in ev["rows"]:
            erow.append(
                [
                    r["name"],
                    f"{r['num_images']} x {r['num_captions']}",
                    r["width"],
                    _ms(r["score_matrix"]["median_s"]),
                    _ms(r["rank_metrics"]["median_s"]),
                    _ms(r["gemm_floor_s"]),
                    "-"
                    if r["total_over_floor"] is None
                    else f"x{r['total_over_floor']:.2f}",
                    f"x{r['block_padding']:.2f}",
                    _ms(r["naive_argsort_ranks"]["median_s"]),
                    f"x{r['naive_over_counting']:.1f}",
                    _agreement(r),
                ]
            )
        lines += _table(
            [
                "set",
                "images x captions",
                "width",
                "score_matrix",
                "rank_metrics",
                "GEMM floor",
                "(scores + ranks) / floor",
                "block padding",
                "argsort ranks",
                "argsort / counting",
                "ranks agree",
            ],
            erow,
        )

    dec = results.get("decalign")
    if dec:
        lines += [
            "",
            "## DecAlign train step",
            "",
            "HEAD configs (`configs/decalign_base.py`), driver's `build_model` / "
            "`create_train_state` / `train_step` jitted with donation, random inputs. "
            "EM + Sinkhorn share = `losses.hetero_loss` forward + backward alone on "
            "[B, d] pooled inputs / the HEAD step; cross-check = 1 - step(alpha = 0) / "
            "step. Dropout RNG share = 1 - step(every dropout rate 0) / step. Shares "
            "use medians; a negative share is below this host's noise (the same shares "
            "from the fastest calls are in `benchmarks.json` as `*_share_min`).",
            "",
        ]
        drow = []
        for r in dec["rows"]:
            drow.append(
                [
                    r["name"],
                    r["batch"],
                    "/".join(map(str, r["lengths"])),
                    "/".join(map(str, r["dims"])),
                    f"{_ms(r['head']['median_s'])} ({r['head']['reps']}; "
                    f"{_ms(r['head']['min_s'])} - {_ms(r['head']['max_s'])})",
                    f"{r['head']['compile_s']:.1f} s",
                    _ms(r["hetero_fwd_bwd"]["median_s"]),
                    _pct(r["hetero_share"]),
                    f"{_ms(r['alpha0']['median_s'])} ({_pct(r['alpha0_share'])})",
                    f"{_ms(r['no_dropout']['median_s'])} ({_pct(r['dropout_share'])})",
                ]
            )
        lines += _table(
            [
                "set",
                "B",
                "T l/a/v",
                "D l/a/v",
                "step (reps; min - max)",
                "compile",
                "hetero_loss fwd+bwd",
                "EM + Sinkhorn share",
                "alpha = 0 step (share)",
                "no-dropout step (RNG share)",
            ],
            drow,
        )

    ker = results.get("kernels")
    if ker:
        lines += [
            "",
            "## Naive forms vs library kernels (same inputs, same run)",
            "",
            "Median times after compile + warm-up (jitted forms; the eager forms "
            "dispatch op by op). EM and Sinkhorn are timed forward + backward "
            "(`jax.value_and_grad`), the others forward. max |diff| compares the two "
            "results (EM: the fitted means; the naive EM uses the spec's uncentred "
            "formulas).",
            "",
        ]
        krow = [
            [
                r["kernel"],
                r["size"],
                r["naive_form"],
                _ms(r["naive"]["median_s"]),
                r.get("library_form", ""),
                _ms(r["library"]["median_s"]),
                f"x{r['speedup']:.1f}",
                f"{r['naive'].get('compile_s', 0):.2f} / "
                f"{r['library'].get('compile_s', 0):.2f} s",
                f"{r['max_abs_diff']:.1e}",
            ]
            for r in ker["rows"]
        ]
        if ev:
            for r in ev["rows"]:
                krow.append(
                    [
                        "retrieval ranks",
                        f"{r['num_images']} x {r['num_captions']}",
                        "full argsorts (jit)",
                        _ms(r["naive_argsort_ranks"]["median_s"]),
                        "retrieval.rank_metrics (counting)",
                        _ms(r["rank_metrics"]["median_s"]),
                        f"x{r['naive_over_counting']:.1f}",
                        "-",
                        _agreement(r),
                    ]
                )
        lines += _table(
            [
                "kernel",
                "size",
                "naive form",
                "naive",
                "library form",
                "library",
                "speed-up",
                "first call naive / library",
                "max abs diff",
            ],
            krow,
        )
    lines += [
        "",
        "## Method",
        "",
        "- Each measurement: compile (timed separately), warm-up call(s), then n timed "
        "calls blocking on the result; n = budget / (one call) clamped to [minimum, "
        f"max_reps] (budget {results['settings']['budget_s']:.0f} s, max "
        f"{results['settings']['max_reps']}); the median is reported, the count is "
        "in the tables and `benchmarks.json` (with min / max).",
        "- Ratios compare numbers from this run only; the machine ceilings drift "
        "between runs on shared CPUs.",
        "- A step whose compiled memory exceeds 90% of the available memory is "
        "compiled and reported, not run.",
        "",
    ]
    return "\n".join(lines)


def _write(results: dict[str, Any], out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(
        json.dumps(results, indent=2, default=_json_default)
    )
    (out / "BENCHMARKS.md").write_text(render_markdown(results))


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return repr(x)


# =====================================================================================
# Entry point
# =====================================================================================


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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


def use_cpu_memory_scheduler() -> bool:
    """Adds ``layers.CPU_MEMORY_SCHEDULER_FLAG`` to ``XLA_FLAGS`` unless the flag is
    already set either way; True if the flag is now on.

    Effective only before JAX's backend starts (``main`` calls it first). The step is
    measured as a memory-conscious CPU user runs it; set
    ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true`` to measure
    XLA's default instead.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {layers.CPU_MEMORY_SCHEDULER_FLAG}".strip()
    return layers.cpu_memory_scheduler_enabled()


#: glibc >= 2.35: back malloc's large (mmap) chunks with transparent hugepages.
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"


def reexec_with_hugepages() -> None:
    """Restarts this script with ``HUGETLB_TUNABLE`` in ``GLIBC_TUNABLES`` (Linux).

    XLA:CPU allocates a step's temporary buffer (GBs at paper sizes) at every call and
    frees it after; glibc serves it with a fresh ``mmap`` whose 4 KiB pages the kernel
    faults in and zeroes one by one. Measured here on the CDDS step at B = 32: 10.8 M
    page faults per 4 calls, 28% of the CPU time in the kernel and 30.4 s per step by
    default, 79 K faults and 24.9 s with the tunable (-18%). glibc reads tunables only
    at start-up, hence the restart; ``GLIBC_TUNABLES`` already naming
    ``glibc.malloc.hugetlb`` (either way) or ``XMODAL_BENCH_NO_REEXEC=1`` skips it.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        not sys.platform.startswith("linux")
        or "glibc.malloc.hugetlb" in tunables
        or os.environ.get("XMODAL_BENCH_NO_REEXEC") == "1"
    ):
        return
    env = dict(os.environ, XMODAL_BENCH_NO_REEXEC="1")
    env["GLIBC_TUNABLES"] = ":".join(x for x in (tunables, HUGETLB_TUNABLE) if x)
    log(f"restarting with GLIBC_TUNABLES={env['GLIBC_TUNABLES']}")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; returns the results written to ``benchmarks.json``."""
    args = parse_args(argv)
    if args.render:
        # Rewrite BENCHMARKS.md from a saved benchmarks.json; nothing is measured.
        source = pathlib.Path(args.render)
        results = json.loads(source.read_text())
        out = pathlib.Path(args.out) if args.out else source.parent
        out.mkdir(parents=True, exist_ok=True)
        (out / "BENCHMARKS.md").write_text(render_markdown(results))
        log(f"rendered {source} -> {out / 'BENCHMARKS.md'}")
        return results
    use_cpu_memory_scheduler()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    batches = (
        [int(x) for x in args.cdds_batches.split(",") if x.strip()]
        if args.cdds_batches
        else None
    )
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    accelerator = jax.default_backend() != "cpu"
    settings = make_settings(
        mode,
        accelerator=accelerator,
        cdds_batches=batches,
        budget_s=args.budget_s,
        max_reps=args.max_reps,
        sections=sections,
    )
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
            "git_commit": _git_commit(),
        },
        "machine": machine_info(),
        "settings": dataclasses.asdict(settings),
    }
    m = results["machine"]
    log(
        f"{mode} run on {m['cpu_model']} ({m['cpu_cores_usable']} cores), backend "
        f"{m['jax_backend']} {m['device_kinds']}, jax {m['jax']}; writing to {out}"
    )
    ceilings: dict[str, Any] = {}
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "ceilings": lambda: measure_ceilings(settings),
        "cdds_train": lambda: measure_cdds_train(settings, ceilings),
        "cdds_eval": lambda: measure_cdds_eval(settings, ceilings),
        "decalign": lambda: measure_decalign(settings),
        "kernels": lambda: measure_kernels(settings),
    }
    for name in settings.sections:
        log(f"--- {name}")
        results[name] = steps[name]()
        if name == "ceilings":
            ceilings = results[name]
        results["meta"]["wall_s"] = time.perf_counter() - start
        _write(results, out)
    if "ceilings" in results:
        results["ceilings"]["f32_end"] = f32_gemm_rate(settings)
        log(
            f"f32 GEMM {settings.gemm_size}^3 at the end: "
            f"{results['ceilings']['f32_end']['gflops']:.1f} GFLOP/s"
        )
    results["meta"]["wall_s"] = time.perf_counter() - start
    _write(results, out)
    log(f"done in {results['meta']['wall_s']:.0f} s: {out / 'BENCHMARKS.md'}")
    return results


if __name__ == "__main__":
    reexec_with_hugepages()
    main()
