"""Section ``heads`` (stub, not yet in ``runner.SECTION_MODULES``): pairs/s per head.

For each Table 4 head (``cdds_jax.heads.HEADS``) and each token layout (36 BUTD regions
at d 1024 as the SCAN precomp runs; 197 ViT patches at d 512 as LAPS), one
``[image_block, caption_block]`` block of ``heads.blocked.block_kernel`` (evaluation
mode, f32 at ``Precision.HIGHEST``) is timed: pairs/s = block pairs / median time, the
FLOP floor = `flops_per_pair` (docs/cdds.md §15.6) x pairs at the measured f32
(HIGHEST) GEMM rate of the ``ceilings`` section, and the block's device memory from
XLA's memory analysis (``heads.block_memory_bytes``), plus the time a whole
Flickr30K 1K x 5K / COCO 5K x 25K matrix would take at that rate.

Not measured yet: it has never been run, so BENCHMARKS.md has no rows for it. To add
it, put ``heads`` in ``benchmarks.runner.SECTION_MODULES`` (after ``cdds_eval``) and
its title in ``tests/test_benchmark.py``'s ``SECTION_TITLES``, then run
``python scripts/benchmark.py --sections ceilings,heads``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from benchmarks import markdown
from benchmarks.settings import Settings
from benchmarks.timing import log, time_jit
from cdds_jax import heads
from cdds_jax.heads import blocked
from cdds_jax.heads.laps import has_cls_token, laps_sizes

__all__ = ["NAME", "HeadCase", "cases", "flops_per_pair", "measure", "render"]

NAME = "heads"

_SIM_DIM = 256  # SGR's sim_dim
_SGR_STEPS = 3


@dataclasses.dataclass(frozen=True)
class HeadCase:
    """One token layout: P image tokens, L words, width d, and the block sizes."""

    name: str
    image_tokens: int
    words: int
    dim: int
    image_block: int
    caption_block: int


#: Token layouts per mode (``Settings.mode``); the splits are sized in ``render``.
_CASES: dict[str, tuple[HeadCase, ...]] = {
    "full": (
        HeadCase("regions", 36, 32, 1024, 64, 128),
        HeadCase("patches", 197, 32, 512, 32, 64),
    ),
    "quick": (HeadCase("regions", 36, 16, 256, 16, 32),),
    "smoke": (HeadCase("tiny", 9, 5, 16, 2, 3),),
}

#: The published head of each name, as benchmarked (SCAN t2i LSE, SGR, CHAN mean
#: pooling, LAPS with the ViT ratios).
_HEADS: dict[str, dict[str, Any]] = {
    "vse": {},
    "scan": dict(heads.SCAN_CONFIGS["f30k_t2i_lse"]),
    "sgr": {"sim_dim": _SIM_DIM, "sgr_step": _SGR_STEPS},
    "chan": {"pooling": "mean"},
    "laps": {"sparse_ratio": 0.5, "aggr_ratio": 0.4},
}

#: The splits whose whole-matrix time is extrapolated: (name, images, captions).
_SPLITS = (("F30K 1K", 1000, 5000), ("COCO 5K", 5000, 25000))


def cases(mode: str) -> tuple[HeadCase, ...]:
    """The token layouts of ``mode``."""
    return _CASES[mode]


def flops_per_pair(name: str, p: int, length: int, d: int) -> float:
    """Forward FLOPs of one image-caption pair, the per-pair terms of docs/cdds.md
    §15.6 (per-item work, e.g. LAPS's MLP per image, is left out)."""
    if name == "vse":
        return 2.0 * d
    if name == "scan":
        return 4.0 * p * length * d
    if name == "chan":
        return 2.0 * p * length * d
    if name == "sgr":
        n, s = length + 1, _SIM_DIM
        graph = _SGR_STEPS * (6.0 * n * s * s + 4.0 * n * n * s)
        return 4.0 * p * length * d + 2.0 * length * d * s + graph
    if name == "laps":
        spatial = p - 1 if has_cls_token(p) else p
        _, n_s = laps_sizes(spatial, sparse_ratio=0.5, aggr_ratio=0.4)
        return 2.0 * (n_s * spatial * d + (n_s + 2) * length * d + spatial * d)
    raise ValueError(f"unknown head {name!r}; known: {tuple(_HEADS)}")


def _measure_one(
    name: str, case: HeadCase, settings: Settings, rate: float | None
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    bi, bt = case.image_block, case.caption_block
    img = rng.standard_normal((bi, case.image_tokens, case.dim), dtype=np.float32)
    cap = rng.standard_normal((bt, case.words, case.dim), dtype=np.float32)
    img_mask = np.ones(img.shape[:2], bool)
    cap_mask = np.ones(cap.shape[:2], bool)
    head = heads.make_head(name, precision=jax.lax.Precision.HIGHEST, **_HEADS[name])
    variables = jax.jit(head.init)(jax.random.PRNGKey(0), img, img_mask, cap, cap_mask)
    args = (head, variables, img, img_mask, cap, cap_mask)
    timing, _ = time_jit(blocked.block_kernel, args, settings)
    pairs_per_s = bi * bt / timing["median_s"]
    flops = flops_per_pair(name, case.image_tokens, case.words, case.dim)
    floor_pairs_per_s = rate / flops if rate else None
    log(f"heads {name} {case.name}: {pairs_per_s:.3g} pairs/s")
    return {
        "head": name,
        **dataclasses.asdict(case),
        "block": timing,
        "pairs_per_s": pairs_per_s,
        "flops_per_pair": flops,
        "floor_share": pairs_per_s / floor_pairs_per_s if floor_pairs_per_s else None,
        "block_memory_bytes": heads.block_memory_bytes(
            head,
            variables,
            num_image_tokens=case.image_tokens,
            num_words=case.words,
            dim=case.dim,
            image_block=bi,
            caption_block=bt,
        ),
    }


def measure(settings: Settings, results: Mapping[str, Any]) -> dict[str, Any]:
    """One block per (head, token layout): pairs/s, share of the FLOP floor, memory."""
    ceilings = results.get("ceilings")
    rate = ceilings["f32_highest"]["gflops"] * 1e9 if ceilings else None
    rows = [
        _measure_one(name, case, settings, rate)
        for case in cases(settings.mode)
        for name in _HEADS
    ]
    return {"rows": rows}


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## Retrieval heads (Table 4): all-pairs evaluation`` table."""
    rows = []
    for r in results[NAME]["rows"]:
        splits = [
            markdown.ms(n_img * n_cap / r["pairs_per_s"]) for _, n_img, n_cap in _SPLITS
        ]
        rows.append(
            [
                r["head"],
                f"{r['name']} (P {r['image_tokens']}, L {r['words']}, d {r['dim']})",
                f"{r['image_block']} x {r['caption_block']}",
                f"{r['pairs_per_s']:.3g}",
                f"{r['flops_per_pair'] / 1e6:.3g}",
                markdown.pct(r["floor_share"]),
                markdown.gib(r["block_memory_bytes"]),
                *splits,
            ]
        )
    header = [
        "head",
        "tokens",
        "block",
        "pairs/s",
        "MFLOP / pair",
        "share of FLOP floor",
        "block memory",
        *(f"{name} matrix" for name, _, _ in _SPLITS),
    ]
    intro = [
        "",
        "## Retrieval heads (Table 4): all-pairs evaluation",
        "",
        "One block of `heads.blocked.block_kernel` (evaluation mode, f32 HIGHEST) per "
        "head; FLOP floor = the per-pair FLOPs of docs/cdds.md §15.6 at the measured "
        "f32 (HIGHEST) GEMM rate; a split's matrix time = its pairs / pairs/s ("
        + ", ".join(f"{n}: {i * c:,} pairs" for n, i, c in _SPLITS)
        + ").",
        "",
    ]
    return intro + markdown.table(header, rows)
