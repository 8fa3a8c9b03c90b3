"""Section ``cdds_eval``: CDDS retrieval evaluation (scores + ranks) on random embeddings.

``retrieval.score_matrix`` + ``retrieval.rank_metrics`` on random embeddings of the
retrieval width ``2 G d`` at Flickr30K (1K x 5K) and COCO-5K (5K x 25K) sizes, against
the GEMM floor ``2 n_img n_cap width`` FLOPs at the measured f32 (HIGHEST) rate, and
against the naive ranks from full argsorts (the kernels table lists them too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import cdds_setup, markdown
from benchmarks.markdown import Target, Targets
from benchmarks.settings import EvalCase, Settings
from benchmarks.timing import log, time_calls, timed
from cdds_jax import retrieval

__all__ = [
    "NAME",
    "agreement",
    "measure",
    "naive_rank_rows",
    "naive_ranks",
    "rank_disagreements",
    "render",
    "targets",
]

NAME = "cdds_eval"


@jax.jit
def naive_ranks(
    scores: jax.Array, caption_to_image: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """0-based ranks from full argsorts (the reference code's way), both directions.

    Args:
      scores: ``[n_img, n_cap]`` similarities.
      caption_to_image: ``[n_cap]`` image index of each caption.

    Returns:
      ``(i2t [n_img], t2i [n_cap])``: the best positive caption's position in each
      image's sorted row, and the positive image's position in each caption's column.
    """
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


def rank_disagreements(
    scores: np.ndarray,
    caption_to_image: np.ndarray,
    naive: tuple[np.ndarray, np.ndarray],
    counting: tuple[np.ndarray, np.ndarray],
) -> dict[str, int]:
    """Queries whose argsort rank differs from the counting rank, and how many of those
    an exact score tie with a positive explains.

    Counting ranks count every negative scoring at least as high as the positive (a
    tie counts against it); an argsort places tied candidates in index order, so its
    rank lies in ``[greater, counting]`` where ``greater`` counts the candidates
    strictly above the positive. Random f32 scores of COCO-5K size do tie exactly
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
        greater = int((row[None, :] > positives[:, None]).sum(axis=1).min())
        differ += 1
        explained += int(greater <= naive[0][i] <= counting[0][i])
    for c in np.flatnonzero(np.asarray(naive[1]) != np.asarray(counting[1])):
        column = scores[:, c]
        greater = int((column > column[c2i[c]]).sum())
        differ += 1
        explained += int(greater <= naive[1][c] <= counting[1][c])
    return {"differ": differ, "explained_by_ties": explained}


def _measure_case(
    case: EvalCase, settings: Settings, block: int, rate: float | None
) -> dict[str, Any]:
    """score_matrix, rank_metrics and the argsort ranks of one synthetic set."""
    rng = np.random.default_rng(1)
    img = rng.standard_normal((case.num_images, case.width), dtype=np.float32)
    cap = rng.standard_normal((case.num_captions, case.width), dtype=np.float32)
    c2i = (np.arange(case.num_captions) * case.num_images) // case.num_captions
    size = f"{case.num_images} x {case.num_captions}, width {case.width}"
    # Compile the block kernel on one block of each side (same shapes as the run).
    warm_s, _ = timed(
        lambda: retrieval.score_matrix(img[:block], cap[:block], block_size=block)
    )
    t_scores, scores = time_calls(
        lambda: retrieval.score_matrix(img, cap, block_size=block),
        settings,
        min_reps=1,
        warmup=0,
    )
    log(f"cdds_eval {case.name} ({size}): score_matrix {t_scores['median_s']:.3f} s")
    t_ranks, _ = time_calls(
        lambda: retrieval.rank_metrics(scores, c2i), settings, min_reps=3, warmup=1
    )
    log(f"cdds_eval {case.name}: rank_metrics {t_ranks['median_s']:.3f} s")
    c2i_dev = jnp.asarray(c2i, jnp.int32)
    t_naive, naive = time_calls(
        lambda: jax.device_get(naive_ranks(scores, c2i_dev)),
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
    return {
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


def measure(settings: Settings, results: Mapping[str, Any]) -> dict[str, Any]:
    """score_matrix + rank_metrics on random embeddings vs the GEMM floor and argsort."""
    block = cdds_setup.eval_block_size()
    ceilings = results.get("ceilings")
    rate = ceilings["f32_highest"]["gflops"] * 1e9 if ceilings else None
    return {"rows": [_measure_case(c, settings, block, rate) for c in settings.evals]}


# -- Report ---------------------------------------------------------------------------


def agreement(row: Mapping[str, Any]) -> str:
    """Argsort vs counting ranks: equal, equal up to exact ties, or not."""
    if not row["ranks_agree"]:
        return f"**NO** ({row.get('ranks_differ')} queries differ)"
    ties = row.get("ranks_differ_by_ties", 0)
    return f"yes ({ties} exact ties)" if ties else "yes (equal)"


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## CDDS evaluation (scores + ranks)`` table."""
    ev = results[NAME]
    lines = [
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
        "COCO-5K size do tie; counting ranks count ties against the positive, an "
        "argsort orders them by index; each such query is verified to lie "
        "within its tie interval).",
        "",
    ]
    rows = [
        [
            r["name"],
            f"{r['num_images']} x {r['num_captions']}",
            r["width"],
            markdown.ms(r["score_matrix"]["median_s"]),
            markdown.ms(r["rank_metrics"]["median_s"]),
            markdown.ms(r["gemm_floor_s"]),
            markdown.ratio(r["total_over_floor"]),
            f"x{r['block_padding']:.2f}",
            markdown.ms(r["naive_argsort_ranks"]["median_s"]),
            f"x{r['naive_over_counting']:.1f}",
            agreement(r),
        ]
        for r in ev["rows"]
    ]
    header = [
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
    ]
    return lines + markdown.table(header, rows)


def naive_rank_rows(results: Mapping[str, Any]) -> list[list[str]]:
    """The argsort-vs-counting ranks as rows of the kernels table (none if not run)."""
    ev = results.get(NAME)
    if not ev:
        return []
    return [
        [
            "retrieval ranks",
            f"{r['num_images']} x {r['num_captions']}",
            "full argsorts (jit)",
            markdown.ms(r["naive_argsort_ranks"]["median_s"]),
            "retrieval.rank_metrics (counting)",
            markdown.ms(r["rank_metrics"]["median_s"]),
            f"x{r['naive_over_counting']:.1f}",
            "-",
            agreement(r),
        ]
        for r in ev["rows"]
    ]


def targets(results: Mapping[str, Any]) -> Targets:
    """The CPU target on evaluation: COCO-5K scores + ranks within 2x of the GEMM floor."""
    rows = [
        Target(
            f"{r['name']} evaluation (scores + ranks) within 2x of its GEMM floor",
            f"x{r['total_over_floor']:.2f} ({r['total_s']:.1f} s vs "
            f"{r['gemm_floor_s']:.1f} s)",
            r["total_over_floor"] <= 2.0,
        )
        for r in (results.get(NAME) or {}).get("rows", [])
        if r["name"].startswith("COCO")
    ]
    return Targets(tuple(rows))
