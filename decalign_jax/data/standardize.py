"""Standardisation of audio and vision features with TRAIN statistics (MOSEI, SIMS).

Per feature dim, percentiles over (samples x time) of the TRAIN split (padded frames
included), clip, mean and population std (ddof 0) of the clipped train data, std floored
at :data:`STD_FLOOR` (so constant columns map to 0 instead of dividing by zero); every
split is then clipped and z-scored with the train statistics (docs/decalign.md, 'Data';
MOSEI clips to the [0.5, 99.5] percentiles, SIMS to [0.1, 99.9]). Statistics are computed
in float64, in blocks of at most :data:`BLOCK_ELEMS` elements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BLOCK_ELEMS",
    "STD_FLOOR",
    "Standardizer",
    "apply_standardizer",
    "check_percentiles",
    "fit_standardizer",
]

#: Floor on the per-dim standard deviation of the standardisation.
STD_FLOOR = 1e-6

#: Elements per float64 working block (128 MB), so MOSEI-sized arrays never need a full
#: float64 copy.
BLOCK_ELEMS = 1 << 24


@dataclasses.dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature-dim clip + z-score statistics fitted on a train split.

    Attributes:
      low, high: ``[D]`` float64 clip bounds (the requested percentiles).
      mean, std: ``[D]`` float64 statistics of the clipped train data; ``std`` is
        already floored at ``STD_FLOOR``.
      percentiles: the ``(low, high)`` percentiles used.
    """

    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    percentiles: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (for ``MMSASplit.meta``)."""
        return {
            "low": self.low,
            "high": self.high,
            "mean": self.mean,
            "std": self.std,
            "percentiles": self.percentiles,
        }


def check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` percentiles as floats with ``0 <= low < high <= 100``."""
    if len(percentiles) != 2:
        raise ValueError(f"clip_percentiles: expected (low, high), got {percentiles!r}")
    lo, hi = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(
            f"clip_percentiles: expected 0 <= low < high <= 100, got ({lo}, {hi})"
        )
    return lo, hi


def fit_standardizer(x: np.ndarray, percentiles: Sequence[float]) -> Standardizer:
    """Fit clip + z-score statistics per feature dim over samples x time.

    Args:
      x: ``[N, T, D]`` finite train features (padded frames included).
      percentiles: ``(low, high)`` in ``[0, 100]``, NumPy's default (linear)
        interpolation.

    Returns:
      A ``Standardizer``; statistics in float64, ``std = max(std, STD_FLOOR)``.
    """
    lo_p, hi_p = check_percentiles(percentiles)
    if x.ndim != 3:
        raise ValueError(f"x: expected [N, T, D], got shape {x.shape}")
    n, t, d = x.shape
    if n * t == 0:
        raise ValueError(f"x: cannot fit statistics on an empty train split {x.shape}")
    flat = x.reshape(n * t, d)
    low, high, mean, std = (np.empty(d, np.float64) for _ in range(4))
    # Blocks of feature dims keep the float64 working copy bounded (MOSEI unaligned
    # audio is 16326 x 500 x 74).
    cols = max(1, BLOCK_ELEMS // (n * t))
    for c0 in range(0, d, cols):
        block = np.asarray(flat[:, c0 : c0 + cols], dtype=np.float64)
        b_lo, b_hi = np.percentile(block, [lo_p, hi_p], axis=0)
        clipped = np.clip(block, b_lo, b_hi)
        low[c0 : c0 + cols], high[c0 : c0 + cols] = b_lo, b_hi
        mean[c0 : c0 + cols] = clipped.mean(axis=0)
        std[c0 : c0 + cols] = clipped.std(axis=0)
    return Standardizer(low, high, mean, np.maximum(std, STD_FLOOR), (lo_p, hi_p))


def apply_standardizer(x: np.ndarray, stats: Standardizer) -> np.ndarray:
    """``(clip(x, low, high) - mean) / std`` in float64, returned as float32.

    Args:
      x: ``[N, T, D]`` finite features.
      stats: from ``fit_standardizer`` (``D`` must match).

    Returns:
      ``[N, T, D]`` float32.
    """
    if x.ndim != 3 or x.shape[2] != stats.mean.shape[0]:
        raise ValueError(
            f"x: expected [N, T, D={stats.mean.shape[0]}], got shape {x.shape}"
        )
    out = np.empty(x.shape, np.float32)
    rows = max(1, BLOCK_ELEMS // max(1, x.shape[1] * x.shape[2]))
    for r0 in range(0, x.shape[0], rows):
        block = np.asarray(x[r0 : r0 + rows], dtype=np.float64)
        block = (np.clip(block, stats.low, stats.high) - stats.mean) / stats.std
        out[r0 : r0 + rows] = block
    return out
