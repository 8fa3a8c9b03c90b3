"""The CDDS model FLOPs per (image, caption) pair, counted analytically per component.

The ``cdds_train`` section divides these FLOPs by the step time and by the measured f32
GEMM rate; BENCHMARKS.md prints the table of components and its check against the
80 GFLOP-per-pair estimate at paper sizes (which is the transformer blocks' dense
layers alone: 77.8 GFLOP by ``blocks_dense_only``; every component gives 90.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks import markdown
from benchmarks.settings import CddsSizes, paper_cdds

__all__ = ["ISSUE_GFLOP_PER_PAIR", "blocks_dense_only", "cdds_flops", "render"]

#: A hand estimate of the dense layers, 80 GFLOP per pair (forward + backward, paper
#: sizes), that the count is checked against; written to ``benchmarks.json`` as
#: ``issue_gflop_per_pair``.
ISSUE_GFLOP_PER_PAIR = 80.0


def _component(
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
    row = _component
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


def blocks_dense_only(s: CddsSizes) -> float:
    """3 x the transformer blocks' dense layers only, per pair (the 80 GFLOP estimate)."""
    blocks = 2 + 4 * s.samples
    return (
        3.0
        * blocks
        * (8 + 4 * s.mlp_ratio)
        * (s.image_tokens + s.text_tokens)
        * (s.dim**2)
    )


def _check_against_estimate(train: Mapping[str, Any], total: float) -> str:
    """The paragraph that compares the count with the 80 GFLOP estimate."""
    dense = train["blocks_dense_only_per_pair"]
    paper = paper_cdds((64,))
    paper_total = sum(c["train_per_pair"] for c in cdds_flops(paper, 64))
    paper_dense = blocks_dense_only(paper)
    return (
        f"Check against a hand estimate of the dense layers (about "
        f"{train['issue_gflop_per_pair']:.0f} GFLOP per pair at paper sizes: d 512, "
        "P 197, L 32, z 4, G 32, K 16): the same formulas give "
        f"{paper_total / 1e9:.1f} GFLOP per pair at B = 64 "
        f"({64 * paper_total / 1e12:.2f} TFLOP per step). The dense layers of the "
        "18 transformer blocks alone (3 x (2 + 4z) x 24 (P + L) d^2) are "
        f"{paper_dense / 1e9:.1f} GFLOP, which matches that estimate; the "
        "difference is the attention scores and values (4 (P^2 + L^2) d per block, "
        "x 18 x 3), the UNet skip denses and the small terms "
        f"({paper_total / paper_dense - 1:+.0%}). At the sizes of this run: "
        f"{total / 1e9:.2f} GFLOP per pair, blocks' dense layers {dense / 1e9:.2f}. "
        "XLA's `cost_analysis` counts elementwise work too but counts each loop "
        "body (the chunked KL `lax.map`) once; it is a cross-check, not the "
        "reference."
    )


def render(train: Mapping[str, Any]) -> list[str]:
    """The ``### Model FLOPs per (image, caption) pair`` part of the CDDS section."""
    comps = train["flops_components"]
    bb = train["flops_components_batch"]
    total = sum(c["train_per_pair"] for c in comps)
    lines = [
        "",
        f"### Model FLOPs per (image, caption) pair (B = {bb})",
        "",
        "Counted analytically (`cdds_flops` in `benchmarks/cdds_flops.py`); a "
        "multiply-add is 2 FLOPs; N = P or L tokens, r = MLP ratio 4. The multiplier "
        "turns the forward count into forward + backward: x3 for trainable paths, x2 "
        "for the input projections (inputs are data, no input gradient), x1 for the "
        "stop-gradient KL statistic. The AdamW update (~18 FLOPs per parameter per "
        "step) is not model FLOPs and not counted.",
        "",
    ]
    rows = [
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
    rows.append(["**total**", "", "", "", f"**{total / 1e9:.2f}**", ""])
    lines += markdown.table(
        ["component", "forward formula", "fwd GFLOP", "", "fwd+bwd GFLOP", "note"],
        rows,
    )
    return [*lines, "", _check_against_estimate(train, total)]
