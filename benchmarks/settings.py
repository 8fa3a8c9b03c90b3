"""What a benchmark run measures and how hard it tries: sizes per mode, repetitions.

``mode_settings(mode, accelerator=...)`` holds the table of sizes of the three modes
(``full``: paper sizes; ``quick``: laptop sizes, about 6 minutes on 2 CPU cores;
``smoke``: trivial sizes for the tests). The command-line overrides (batch sizes,
budget, sections) are applied by ``benchmarks.runner.make_settings``.

A section that needs sizes of its own (a later backbone section, say) reads
``Settings.mode`` and keeps its per-mode table in its own module, so adding it does not
touch this one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "CddsSizes",
    "DecAlignCase",
    "EvalCase",
    "Settings",
    "mode_settings",
    "paper_cdds",
]


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
    """Everything a run measures and how hard it tries.

    Written to ``benchmarks.json`` as ``settings`` (``dataclasses.asdict``, fields in
    this order).
    """

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
    sections: tuple[str, ...] = ()  # filled by benchmarks.runner.make_settings
    backbone_kinds: tuple[str, ...] = ()  # section backbones: only these; () = all
    backbone_batches: tuple[int, ...] = ()  # section cdds_backbones: () = by mode
    # section decalign: a checkout of the official DecAlign code, timed beside ours
    official_src: str | None = None


def paper_cdds(batches: tuple[int, ...]) -> CddsSizes:
    """CDDS at paper sizes: d 512, 8 heads, P 197 x 768, L 32 x 768, G 32, z 4, K 16."""
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


def _mosi_mosei() -> tuple[DecAlignCase, ...]:
    """MOSI at B = 32 and MOSEI at B = 128, 50 steps per modality, dataset feature dims."""
    return (
        DecAlignCase("MOSI", "mosi", 32, (50, 50, 50), (768, 5, 20)),
        DecAlignCase("MOSEI", "mosei", 128, (50, 50, 50), (768, 74, 35)),
    )


def _full(accelerator: bool) -> Settings:
    return Settings(
        mode="full",
        gemm_size=8192 if accelerator else 2048,
        copy_bytes=(1024 if accelerator else 256) * 2**20,
        cdds=paper_cdds((8, 16, 32, 64, 128, 256) if accelerator else (8, 16, 32, 64)),
        evals=(
            EvalCase("Flickr30K 1K", 1000, 5000, 2 * 32 * 512),
            EvalCase("COCO 5K", 5000, 25000, 2 * 32 * 512),
        ),
        decalign=_mosi_mosei(),
        kernel_batch=64,
        option_batch=16,
        budget_s=60.0,
        max_reps=20,
        step_min_reps=3,
    )


def _quick() -> Settings:
    return Settings(
        mode="quick",
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
        decalign=_mosi_mosei(),
        kernel_batch=16,
        option_batch=8,
        budget_s=5.0,
        max_reps=20,
        step_min_reps=3,
    )


def _smoke() -> Settings:
    tiny = (("dim", 16), ("num_heads", 2), ("num_layers", 1), ("pde_dim", 16))
    return Settings(
        mode="smoke",
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


def mode_settings(mode: str, *, accelerator: bool) -> Settings:
    """The sizes of ``mode`` (``full``, ``quick`` or ``smoke``) on this backend.

    ``accelerator`` (a GPU / TPU backend) raises the full run's GEMM and copy sizes and
    adds CDDS batches 128 and 256; the other modes are the same everywhere.
    """
    if mode == "full":
        return _full(accelerator)
    if mode == "quick":
        return _quick()
    if mode == "smoke":
        return _smoke()
    raise ValueError(f"mode must be 'full', 'quick' or 'smoke'; got {mode!r}")
