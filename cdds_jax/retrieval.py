"""Image-text retrieval evaluation: block-wise scores and recall by counting.

The evaluation protocol of the VSE / SCAN / LAPS line (docs/cdds.md, 'Evaluation'),
written so that it scales to COCO 5K (5,000 images x 25,010 captions) without a single
sort:

* `score_matrix` builds ``image_emb @ caption_emb.T`` in fixed-size ``[B, B]`` blocks
  under one jitted function (the last blocks are zero-padded, so there is one compile
  for any number of images / captions), streaming host blocks to the device.
* `retrieval_ranks` / `rank_metrics` compute 0-based ranks by COUNTING the candidates
  that score at least as high as the positive, in fixed-size chunks of rows / columns
  under jit (memory ``O(chunk * n)``, no argsort):

  - text -> image rank of caption ``c``: ``#{i != c2i[c] : s[i, c] >= s[c2i[c], c]}``;
  - image -> text rank of image ``i``: ``#{c : c2i[c] != i, s[i, c] >= best_i}`` with
    ``best_i = max_{c' : c2i[c'] = i} s[i, c']`` (the best of the image's captions, as
    in VSE-infinity / LAPS ``i2t``; the other positives never count against it).

  The positive scores are gathered from the same matrix, never recomputed.
* `evaluate_protocols` runs the named protocols (``"full"``; ``"1k_5fold"`` = COCO 1K)
  on embeddings with an explicit caption -> image index (captions need not be
  contiguous nor five per image), and `format_table` prints the numbers the way the
  papers tabulate them.
* `degeneracy` (and the ``collapse_floor`` option of `rank_metrics` /
  `evaluate_protocols`) says whether a score matrix carries no ranking at all: its
  spread below a floor, or the positives tied with most candidates (a collapsed model,
  docs/cdds.md, 'Evaluation').

Tie rule (pessimistic): a candidate that scores exactly as high as the positive COUNTS
AGAINST it, in both directions and in every protocol. The rank is therefore the worst
position the positive can take under any tie-breaking order, and recall is a lower
bound: a constant score matrix ranks every positive last (R@K = 0 unless there are
fewer than K negatives), so a collapsed model can never look perfect. With continuous
scores ties do not occur and the rule agrees with the reference code's reversed
``np.argsort``. No epsilon is used anywhere: all comparisons are exact on the scores as
stored (scores in float64 are rounded to float32 first unless ``jax_enable_x64`` is on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cdds_jax.score_matrix import (
    block_scores_kernel,
    host_embeddings,
    is_floating,
    positive_int,
    score_matrix,
)

__all__ = [
    "DEGENERACY_KEYS",
    "DEGENERATE_TIE_FRACTION",
    "METRIC_KEYS",
    "PROTOCOLS",
    "ScoreFn",
    "block_scores_kernel",
    "degeneracy",
    "evaluate_protocols",
    "evaluate_score_protocols",
    "format_table",
    "rank_metrics",
    "retrieval_ranks",
    "score_matrix",
    "summarize_runs",
]

#: Keys of the dict returned by `rank_metrics`, in table order.
METRIC_KEYS: tuple[str, ...] = (
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "rsum",
    "i2t_medr",
    "i2t_meanr",
    "t2i_medr",
    "t2i_meanr",
)

#: Keys `degeneracy` returns (and `rank_metrics` adds with ``collapse_floor``).
DEGENERACY_KEYS: tuple[str, ...] = ("score_std", "tie_fraction", "degenerate")

#: A direction in which every query's positive ties with more than this fraction of
#: its negatives is degenerate (`degeneracy`): a majority, so that a healthy model with
#: a few coarse-grained exact ties (quantised features, duplicated captions) never
#: trips it, while a tower that maps (almost) every input to one embedding does.
DEGENERATE_TIE_FRACTION = 0.5

#: Protocol names understood by `evaluate_protocols`.
PROTOCOLS: tuple[str, ...] = ("full", "1k_5fold")

_RECALL_KS = (1, 5, 10)
_NUM_FOLDS = 5
_MAX_LISTED = 5  # ids listed in an error message


# ------------------------------------------------------------------ validation helpers


def _first_ids(ids: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:_MAX_LISTED])
    return shown + (", ..." if ids.size > _MAX_LISTED else "")


def _validate_index(caption_to_image: Any, n_img: int, n_cap: int) -> np.ndarray:
    """Checks the caption -> image index; returns it as int32 `[n_cap]`."""
    c2i = np.asarray(caption_to_image)
    if c2i.ndim != 1:
        raise ValueError(
            f"caption_to_image must be 1-D [n_cap], got shape {c2i.shape} "
            f"(ndim {c2i.ndim})"
        )
    if not np.issubdtype(c2i.dtype, np.integer):
        raise ValueError(
            f"caption_to_image must have an integer dtype, got {c2i.dtype} "
            f"(shape {c2i.shape})"
        )
    if c2i.shape[0] != n_cap:
        raise ValueError(
            f"caption_to_image has length {c2i.shape[0]} but there are {n_cap} "
            "captions (one image id per caption is required)"
        )
    bad = np.flatnonzero((c2i < 0) | (c2i >= n_img))
    if bad.size:
        raise ValueError(
            f"caption_to_image values must be in [0, {n_img}) (the number of images); "
            f"{bad.size} captions are out of range, first at caption {int(bad[0])} "
            f"with value {int(c2i[bad[0]])}"
        )
    counts = np.bincount(c2i, minlength=n_img)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(
            f"every image needs at least one caption in caption_to_image; "
            f"{missing.size} images have none: {_first_ids(missing)}"
        )
    return c2i.astype(np.int32, copy=False)


def _validate_scores(scores: Any) -> jax.Array | np.ndarray:
    """Checks `scores` is 2-D, non-empty, floating and finite; no host copy of jax arrays."""
    on_device = isinstance(scores, jax.Array)
    arr = scores if on_device else np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(
            f"scores must be 2-D [n_img, n_cap], got shape {arr.shape} (ndim {arr.ndim})"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"scores must be non-empty, got shape {arr.shape}")
    if not is_floating(arr.dtype):
        raise ValueError(
            f"scores must have a floating dtype, got {arr.dtype} (shape {arr.shape})"
        )
    if on_device:
        finite = bool(jnp.isfinite(arr).all())
    else:
        # Round to the dtype JAX will use first (float64 -> float32 without x64), so
        # that a value overflowing in that rounding is reported here.
        with np.errstate(over="ignore"):
            arr = np.asarray(arr, dtype=jax.dtypes.canonicalize_dtype(arr.dtype))
        check = arr if arr.dtype.kind == "f" else arr.astype(np.float32)  # ml_dtypes
        finite = bool(np.isfinite(check).all())
    if not finite:
        bad = np.argwhere(~np.isfinite(np.asarray(arr, dtype=np.float32)))
        i, j = (int(v) for v in bad[0])
        raise ValueError(
            f"scores must be finite; {len(bad)} entries of the {arr.shape} matrix are "
            f"NaN/inf, first at [image {i}, caption {j}] (check the embeddings)"
        )
    return arr


# ------------------------------------------------------------------ ranks by counting


def _count_at_least(
    scores: jax.Array, thresholds: jax.Array, *, axis: int, chunk_size: int
) -> tuple[jax.Array, jax.Array]:
    """Per-entry counts of `scores` at least as high as, and equal to, a threshold.

    ``axis=0``: ``ge[i] = #{j : scores[i, j] >= thresholds[i]}`` and ``eq[i]`` the same
    with ``==`` (thresholds ``[n_img]``); ``axis=1``: the same down each column
    (thresholds ``[n_cap]``). Chunks are ``min(chunk_size, n)`` rows (columns); the
    last chunk start is clamped so that it overlaps the previous one instead of running
    past the end, and the overlapping entries are rewritten with the same counts.
    Returns two int32 ``[n]``.
    """
    n = scores.shape[axis]
    chunk = min(chunk_size, n)
    num_chunks = -(-n // chunk)
    other = 1 - axis

    def body(
        k: jax.Array, counts: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, jax.Array]:
        start = jnp.minimum(k * chunk, n - chunk)
        block = lax.dynamic_slice_in_dim(scores, start, chunk, axis=axis)
        thr = jnp.expand_dims(lax.dynamic_slice_in_dim(thresholds, start, chunk), other)
        ge = jnp.sum(block >= thr, axis=other, dtype=jnp.int32)
        eq = jnp.sum(block == thr, axis=other, dtype=jnp.int32)
        return (
            lax.dynamic_update_slice_in_dim(counts[0], ge, start, axis=0),
            lax.dynamic_update_slice_in_dim(counts[1], eq, start, axis=0),
        )

    zeros = jnp.zeros((n,), jnp.int32)
    return lax.fori_loop(0, num_chunks, body, (zeros, zeros))


class _Counts(NamedTuple):
    """What one pass of the counting kernel returns (all on the device)."""

    i2t: jax.Array  # [n_img] int32 pessimistic ranks
    t2i: jax.Array  # [n_cap] int32 pessimistic ranks
    i2t_ties: jax.Array  # [n_img] negatives scoring exactly the best positive
    t2i_ties: jax.Array  # [n_cap] other images scoring exactly the positive
    i2t_negatives: jax.Array  # [n_img] captions of other images
    std: jax.Array  # scalar float32 population std of every score


def _count_ranks_impl(
    scores: jax.Array, caption_to_image: jax.Array, *, chunk_size: int
) -> _Counts:
    """Pessimistic 0-based ranks and tie counts of ``scores [n_img, n_cap]``."""
    n_img, n_cap = scores.shape
    positives = scores[caption_to_image, jnp.arange(n_cap)]  # [n_cap], gathered
    best = jax.ops.segment_max(positives, caption_to_image, num_segments=n_img)
    # The positives of image i scoring >= best_i (= exactly best_i, at least one) are
    # in the row count but are not candidates against it.
    at_best = jax.ops.segment_sum(
        (positives == best[caption_to_image]).astype(jnp.int32),
        caption_to_image,
        num_segments=n_img,
    )
    per_image = jax.ops.segment_sum(
        jnp.ones((n_cap,), jnp.int32), caption_to_image, num_segments=n_img
    )
    ge_i, eq_i = _count_at_least(scores, best, axis=0, chunk_size=chunk_size)
    ge_t, eq_t = _count_at_least(scores, positives, axis=1, chunk_size=chunk_size)
    # The positive image is in its own column count exactly once (s >= s, s == s).
    return _Counts(
        i2t=ge_i - at_best,
        t2i=ge_t - 1,
        i2t_ties=eq_i - at_best,
        t2i_ties=eq_t - 1,
        i2t_negatives=n_cap - per_image,
        std=jnp.std(scores),  # two-pass (mean first), float32
    )


_count_ranks = jax.jit(_count_ranks_impl, static_argnames=("chunk_size",))


def _counts(scores: Any, caption_to_image: Any, chunk_size: int) -> _Counts:
    """Validates the inputs and runs the counting kernel; host NumPy results."""
    arr = _validate_scores(scores)
    n_img, n_cap = arr.shape
    c2i = _validate_index(caption_to_image, n_img, n_cap)
    chunk = positive_int("chunk_size", chunk_size)
    out = jax.device_get(_count_ranks(arr, jnp.asarray(c2i), chunk_size=chunk))
    return _Counts(*(np.asarray(x) for x in out))


def retrieval_ranks(
    scores: Any, caption_to_image: Any, *, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """0-based pessimistic retrieval ranks in both directions, by counting (no sort).

    Args:
      scores: ``[n_img, n_cap]`` finite floating scores (host array or jax array).
      caption_to_image: ``[n_cap]`` integer image id of each caption, in
        ``[0, n_img)``; every image needs at least one caption.
      chunk_size: rows / columns counted per step (keyword-only, positive).

    Returns:
      ``(i2t [n_img], t2i [n_cap])`` int32 host arrays: ``i2t[i]`` = number of captions
      of OTHER images scoring at least as high as image ``i``'s best positive caption,
      ``t2i[c]`` = number of other images scoring at least as high as caption ``c``'s
      image (ties count against the positive).
    """
    counts = _counts(scores, caption_to_image, chunk_size)
    return counts.i2t, counts.t2i


def _metrics_from_ranks(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in _RECALL_KS:
            out[f"{name}_r{k}"] = float(100.0 * np.mean(ranks < k))
    out["rsum"] = float(
        sum(out[f"{name}_r{k}"] for name in ("i2t", "t2i") for k in _RECALL_KS)
    )
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_medr"] = float(np.floor(np.median(ranks)) + 1.0)
        out[f"{name}_meanr"] = float(np.mean(ranks, dtype=np.float64) + 1.0)
    return {key: out[key] for key in METRIC_KEYS}


def _tie_fraction(ties: np.ndarray, negatives: np.ndarray | int) -> float:
    """Smallest fraction over queries of the negatives tied with the positive."""
    negatives = np.broadcast_to(np.asarray(negatives), ties.shape)
    frac = np.where(negatives > 0, ties / np.maximum(negatives, 1), 0.0)
    return float(np.min(frac))


def _degeneracy_from_counts(
    counts: _Counts, n_img: int, floor: float
) -> dict[str, float]:
    tie = max(
        _tie_fraction(counts.i2t_ties, counts.i2t_negatives),
        _tie_fraction(counts.t2i_ties, n_img - 1),
    )
    std = float(counts.std)
    flag = std < floor or tie > DEGENERATE_TIE_FRACTION
    return {"score_std": std, "tie_fraction": tie, "degenerate": float(flag)}


def degeneracy(
    scores: Any,
    caption_to_image: Any,
    *,
    floor: float,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Whether a score matrix ranks anything at all (the collapse guard's dev check).

    A model whose scores collapsed to one value (or to a few values shared by most
    candidates) has no ranking left; with pessimistic ranks it scores at most chance,
    and this check names it so that model selection can refuse it (docs/cdds.md,
    'Evaluation').

    * ``score_std``: population standard deviation of all entries (float32, two-pass).
    * ``tie_fraction``: for each query, the fraction of its negatives (captions of other
      images for i2t, other images for t2i) that score EXACTLY its positive (the best
      positive for i2t); the minimum over the queries of one direction, then the
      larger of the two directions. Above ``DEGENERATE_TIE_FRACTION`` (one half) it
      means: in one direction EVERY query's positive is tied with most candidates
      (e.g. one tower mapping every input to the same embedding, which leaves the
      matrix's spread intact but makes every row, or column, constant).
    * ``degenerate``: ``1.0`` when ``score_std < floor`` or ``tie_fraction >
      DEGENERATE_TIE_FRACTION``, else ``0.0``.

    Args:
      scores: ``[n_img, n_cap]`` finite floating scores.
      caption_to_image: ``[n_cap]`` integer image id of each caption.
      floor: smallest healthy score spread, in score units (``collapse.floor``).
      chunk_size: rows / columns counted per jitted step (keyword-only, positive).

    Returns:
      ``{"score_std", "tie_fraction", "degenerate"}`` as Python floats.
    """
    counts = _counts(scores, caption_to_image, chunk_size)
    return _degeneracy_from_counts(counts, np.shape(scores)[0], float(floor))


def rank_metrics(
    scores: Any,
    caption_to_image: Any,
    *,
    chunk_size: int = 1024,
    collapse_floor: float | None = None,
) -> dict[str, float]:
    """Recall@{1,5,10}, rSum, median and mean rank in both directions.

    Args:
      scores: ``[n_img, n_cap]`` finite floating scores (higher = more similar).
      caption_to_image: ``[n_cap]`` integer image id of each caption, in
        ``[0, n_img)``; every image needs at least one caption (any number, any order).
      chunk_size: rows / columns counted per jitted step (keyword-only, positive).
      collapse_floor: when given, the `degeneracy` keys (``DEGENERACY_KEYS``) are
        added, computed in the same pass with this ``floor``.

    Returns:
      Python floats keyed by `METRIC_KEYS`: ``{i2t,t2i}_r{1,5,10}`` = 100 * fraction
      of queries with 0-based rank < K (in percent), ``rsum`` = sum of the six
      recalls, ``*_medr = floor(median(rank)) + 1`` and ``*_meanr = mean(rank) + 1``
      (1-based, as VSE-infinity / LAPS report them). Ranks are those of
      `retrieval_ranks` (ties count against the positive).
    """
    counts = _counts(scores, caption_to_image, chunk_size)
    out = _metrics_from_ranks(counts.i2t, counts.t2i)
    if collapse_floor is not None:
        out.update(
            _degeneracy_from_counts(counts, np.shape(scores)[0], float(collapse_floor))
        )
    return out


# ------------------------------------------------------------------ protocols


def _validate_protocols(protocols: Any) -> list[str]:
    if isinstance(protocols, str):
        raise ValueError(
            f"protocols must be a sequence of names, got the string {protocols!r}; "
            f"did you mean ({protocols!r},)?"
        )
    names = list(protocols)
    if not names:
        raise ValueError(f"protocols must name at least one of {PROTOCOLS}")
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; known: {PROTOCOLS}")
    return list(dict.fromkeys(names))  # drop repeats, keep order


def evaluate_protocols(
    image_emb: Any,
    caption_emb: Any,
    caption_to_image: Any,
    *,
    protocols: Sequence[str],
    block_size: int = 1024,
    collapse_floor: float | None = None,
) -> dict[str, dict[str, float]]:
    """Retrieval metrics under the named evaluation protocols.

    Protocols:
      ``"full"``: all images against all captions (Flickr30K 1K test = 1,000 x 5,000,
        COCO 5K = 5,000 x 25,000 or 25,010).
      ``"1k_5fold"`` (COCO 1K): the images are split into 5 consecutive folds of
        ``n_img / 5``; fold ``f`` is scored against the captions whose image lies in
        it (found through `caption_to_image`, so captions need not be contiguous);
        every metric, rSum and medr / meanr included, is the mean over the folds (as
        the reference code averages them). When ``"full"`` is also requested the fold
        matrices are sliced from the full one instead of recomputed.

    Every protocol ranks pessimistically (ties count against the positive).

    Args:
      image_emb: ``[n_img, d]`` floating host array, one row per unique image.
      caption_emb: ``[n_cap, d]`` floating host array, one row per caption.
      caption_to_image: ``[n_cap]`` integer image id of each caption.
      protocols: names from `PROTOCOLS` (keyword-only; repeats are ignored).
      block_size: block size of `score_matrix` (keyword-only).
      collapse_floor: when given, every protocol's metrics also carry the
        `degeneracy` keys; over the COCO 1K folds ``score_std`` and ``tie_fraction``
        are the fold means and ``degenerate`` is 1 when any fold is degenerate.

    Returns:
      ``{protocol: metrics}`` with metrics as in `rank_metrics`.
    """
    _validate_protocols(protocols)
    images = host_embeddings("image_emb", image_emb)
    captions = host_embeddings("caption_emb", caption_emb)

    def scores(rows: slice, cols: slice | np.ndarray) -> np.ndarray:
        return score_matrix(images[rows], captions[cols], block_size=block_size)

    return evaluate_score_protocols(
        scores,
        caption_to_image,
        num_images=images.shape[0],
        num_captions=captions.shape[0],
        protocols=protocols,
        collapse_floor=collapse_floor,
    )


#: ``score_fn(image_rows, caption_rows) -> [n_rows, n_cols]`` scores, for
#: `evaluate_score_protocols`: image rows are a slice, caption rows a slice or an index
#: array into the split.
ScoreFn = Callable[[slice, Any], Any]


def evaluate_score_protocols(
    score_fn: ScoreFn,
    caption_to_image: Any,
    *,
    num_images: int,
    num_captions: int,
    protocols: Sequence[str],
    collapse_floor: float | None = None,
) -> dict[str, dict[str, float]]:
    """`evaluate_protocols` for any score function (cross-attention heads).

    The same protocols, rank counting and fold rules as `evaluate_protocols`, with the
    scores of a block of the split asked from `score_fn` instead of an embedding GEMM
    (``cdds_jax.heads.evaluate_head`` passes a blocked head evaluation): once for all
    pairs with ``"full"``, else once per COCO 1K fold (its images against their
    captions only).

    Args:
      score_fn: ``score_fn(image_rows, caption_rows)`` -> ``[n_rows, n_cols]``
        finite floating scores (host or device array); ``image_rows`` is a slice of
        the split's images, ``caption_rows`` a slice or an int index array of its
        captions.
      caption_to_image: ``[n_cap]`` integer image id of each caption.
      num_images, num_captions: ``n_img`` and ``n_cap`` of the split (keyword-only).
      protocols: names from `PROTOCOLS` (keyword-only; repeats are ignored).
      collapse_floor: as in `evaluate_protocols`.

    Returns:
      ``{protocol: metrics}`` with metrics as in `rank_metrics`.
    """
    names = _validate_protocols(protocols)
    n_img, n_cap = int(num_images), int(num_captions)
    c2i = _validate_index(caption_to_image, n_img, n_cap)
    if "1k_5fold" in names and n_img % _NUM_FOLDS:
        raise ValueError(
            f"protocol '1k_5fold' needs a number of images divisible by {_NUM_FOLDS}, "
            f"got {n_img} images"
        )

    full_scores = None
    if "full" in names:
        full_scores = score_fn(slice(0, n_img), slice(0, n_cap))

    results: dict[str, dict[str, float]] = {}
    for name in names:
        if name == "full":
            results[name] = rank_metrics(
                full_scores, c2i, collapse_floor=collapse_floor
            )
            continue
        fold = n_img // _NUM_FOLDS
        per_fold = []
        for f in range(_NUM_FOLDS):  # five folds, each a full evaluation
            lo, hi = f * fold, (f + 1) * fold
            caps = np.flatnonzero((c2i >= lo) & (c2i < hi))
            if full_scores is not None:
                scores = full_scores[lo:hi][:, caps]
            else:
                scores = score_fn(slice(lo, hi), caps)
            per_fold.append(
                rank_metrics(scores, c2i[caps] - lo, collapse_floor=collapse_floor)
            )
        results[name] = {
            key: float(
                np.max([m[key] for m in per_fold])
                if key == "degenerate"
                else np.mean([m[key] for m in per_fold])
            )
            for key in per_fold[0]
        }
    return results


# ------------------------------------------------------------------ table

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("i2t_r1", "i2t R@1"),
    ("i2t_r5", "R@5"),
    ("i2t_r10", "R@10"),
    ("t2i_r1", "t2i R@1"),
    ("t2i_r5", "R@5"),
    ("t2i_r10", "R@10"),
    ("rsum", "rSum"),
    ("i2t_medr", "i2t medr"),
    ("i2t_meanr", "meanr"),
    ("t2i_medr", "t2i medr"),
    ("t2i_meanr", "meanr"),
)


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Fixed-width text table, one row per protocol, values with one decimal.

    Columns: i2t R@1 R@5 R@10, t2i R@1 R@5 R@10, rSum, i2t medr meanr, t2i medr meanr
    (the order of the papers' tables). `results` is what `evaluate_protocols` returns.
    """
    for name, metrics in results.items():
        missing = [key for key, _ in _COLUMNS if key not in metrics]
        if missing:
            raise ValueError(f"results[{name!r}] lacks metrics {missing}")
    width = max([len("protocol"), *(len(str(name)) for name in results)])
    cols = [max(len(title), 6) + 2 for _, title in _COLUMNS]
    header = f"{'protocol':<{width}}" + "".join(
        f"{title:>{w}}" for (_, title), w in zip(_COLUMNS, cols, strict=True)
    )
    lines = [header, "-" * len(header)]
    for name, metrics in results.items():
        lines.append(
            f"{name!s:<{width}}"
            + "".join(
                f"{float(metrics[key]):>{w}.1f}"
                for (key, _), w in zip(_COLUMNS, cols, strict=True)
            )
        )
    return "\n".join(lines)


def summarize_runs(
    tests: Sequence[Mapping[str, Mapping[str, float]]],
) -> tuple[dict[str, dict[str, dict[str, float]]], str]:
    """Mean and std (population) over runs of every protocol's metrics.

    Args:
      tests: one ``{protocol: metrics}`` per run (what ``evaluate_protocols`` returns).

    Returns:
      ``({protocol: {metric: {"mean", "std"}}}, table)`` where the table has a mean
      row and a std row per protocol (:func:`format_table`).
    """
    summary: dict[str, dict[str, dict[str, float]]] = {}
    rows: dict[str, dict[str, float]] = {}
    for protocol in tests[0]:
        metrics = {}
        for key in tests[0][protocol]:
            values = np.asarray([float(t[protocol][key]) for t in tests])
            metrics[key] = {"mean": float(values.mean()), "std": float(values.std())}
        summary[protocol] = metrics
        rows[f"{protocol} mean"] = {k: v["mean"] for k, v in metrics.items()}
        rows[f"{protocol} std"] = {k: v["std"] for k, v in metrics.items()}
    return summary, format_table(rows)
