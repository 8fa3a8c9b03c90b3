"""DecAlign evaluation metrics (host-side NumPy), docs/decalign.md §6.

Predictions are the raw model outputs (a regression scalar per sample, or class
logits) concatenated over a whole split; the functions here run once per split on
the host, so they are plain float64 NumPy (no JAX, no scikit-learn at run time).

All accuracies and F1 scores are returned as **fractions in [0, 1]**; MAE and Corr in
their natural units. The trainer multiplies by 100 for display / CSV export (the
official code stores ``round(100 * x, 2)`` for every metric, MAE and Corr included).

Conventions shared by every function:

* Inputs are flattened (``[N]`` and ``[N, 1]`` are both accepted for regression).
* Weighted F1 follows ``sklearn.metrics.f1_score(average="weighted",
  zero_division=0)``: per-class F1 = 2 TP / (2 TP + FP + FN) (0 when the denominator
  is 0), averaged with weights = class support in ``y_true``; 0 when every support is 0.
* Rounding is ``np.round`` (half-to-even), as in the official code and torch.

Model selection (docs/decalign.md §5.4) is summarised in :data:`SELECTION`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "IEMOCAP_KEYS",
    "MOSI_KEYS",
    "REPORTS",
    "SELECTION",
    "SIMS_KEYS",
    "Report",
    "accuracy",
    "batch_mean_loss",
    "display_scale",
    "format_table",
    "iemocap_metrics",
    "mosi_metrics",
    "pearson",
    "report",
    "sims_metrics",
    "weighted_f1",
]

MOSI_KEYS: Final = (
    "MAE",
    "Corr",
    "Acc_2",
    "F1",
    "Acc_2_has0",
    "F1_has0",
    "Acc_5",
    "Acc_7",
)
"""Keys returned by :func:`mosi_metrics` (MOSI and MOSEI)."""

SIMS_KEYS: Final = ("Acc_2", "Acc_3", "Acc_5", "F1", "MAE", "Corr")
"""Keys returned by :func:`sims_metrics` (CH-SIMS)."""

IEMOCAP_KEYS: Final = ("WAcc", "WAF1")
"""Keys returned by :func:`iemocap_metrics`."""

SELECTION: Final[dict[str, tuple[str, str]]] = {
    "mosi": ("loss", "min"),
    "mosei": ("Acc_2", "max"),
    "sims": ("F1", "max"),
    "iemocap": ("WAF1", "max"),
}
"""Per-dataset validation model-selection rule ``dataset -> (metric, mode)`` (§5.4).

* MOSI: the validation task loss as the official trainer computes it (its ``"MOSI"``
  key): the **mean over evaluation batches of each batch's mean MSE**, at the official
  eval batch size (the training batch, 32) with the short last batch included - not
  the per-sample mean: MOSI's 229 valid samples make 8 batches, the last of 5 samples
  weighs 1/8 (:func:`batch_mean_loss`), minimised. ``"loss"`` is not produced by
  :func:`mosi_metrics`; the trainer adds it.
* MOSEI: non-zero binary accuracy ``Acc_2``, maximised.
* CH-SIMS: 2-class weighted ``F1``, maximised.
* IEMOCAP: weighted F1 ``WAF1``, maximised.

A checkpoint is kept when the selection value improves strictly.
"""

# CH-SIMS bucket edges; classes are the half-open intervals (lo, hi].
_SIMS_EDGES_2: Final = np.array([-1.01, 0.0, 1.01])
_SIMS_EDGES_3: Final = np.array([-1.01, -0.1, 0.1, 1.01])
_SIMS_EDGES_5: Final = np.array([-1.01, -0.7, -0.1, 0.1, 0.7, 1.01])


def _flat_pair(
    pred: ArrayLike, label: ArrayLike, *, names: tuple[str, str] = ("pred", "label")
) -> tuple[np.ndarray, np.ndarray]:
    """Flattens two arrays to ``[N]`` float64 and checks they have equal size."""
    p = np.asarray(pred, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    if p.size != y.size:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of elements; got "
            f"{names[0]}.shape={p.shape}, {names[1]}.shape={y.shape}"
        )
    for name, a in zip(names, (p, y), strict=True):
        if a.ndim > 1 and a.size != a.shape[0]:
            raise ValueError(
                f"{name} must be [N] or [N, 1]; got {name}.shape={a.shape}"
            )
    return p.reshape(-1), y.reshape(-1)


def batch_mean_loss(per_sample: ArrayLike, batch_size: int) -> float:
    """Mean over consecutive batches of each batch's mean loss (the last may be short).

    The official evaluation loop sums ``loss.item()`` (a batch mean) over its batches
    and divides by their number, so a short last batch of n samples weighs as much
    as a full one: ``mean_b mean_{i in batch b} l_i`` over ``ceil(N / batch_size)``
    batches in split order.

    Args:
      per_sample: ``[N]`` per-sample losses in the split's order (N >= 1).
      batch_size: the evaluation batch size (>= 1).

    Returns:
      The batch-mean loss (float64).
    """
    values = np.asarray(per_sample, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("per_sample must hold at least one loss; got none")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    starts = np.arange(0, values.size, batch_size)
    sums = np.add.reduceat(values, starts)
    counts = np.minimum(values.size - starts, batch_size)
    return float(np.mean(sums / counts))


def _flat_labels(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_pred`` flattened to ``[N]``, dtypes kept (labels are compared
    exactly); a size mismatch names both shapes."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(
            f"y_true and y_pred must have the same size; got y_true.shape="
            f"{np.shape(y_true)}, y_pred.shape={np.shape(y_pred)}"
        )
    return t, p


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of exact matches (``sklearn.metrics.accuracy_score``).

    Args:
      y_true: ``[N]`` labels (any comparable dtype).
      y_pred: ``[N]`` predicted labels.

    Returns:
      ``mean(y_true == y_pred)``; NaN when ``N == 0``.
    """
    t, p = _flat_labels(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def weighted_f1(
    y_true: ArrayLike, y_pred: ArrayLike, labels: ArrayLike | None = None
) -> float:
    """Support-weighted F1 score, as ``f1_score(average="weighted", zero_division=0)``.

    Per class c: F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), defined as 0 when the
    denominator is 0 (class never true and never predicted). The result is
    ``sum_c support_c F1_c / sum_c support_c`` with ``support_c = #(y_true == c)``,
    and 0 when every support is 0 (scikit-learn's ``zero_division=0``).

    Args:
      y_true: ``[N]`` true labels (ints, bools or floats; compared exactly).
      y_pred: ``[N]`` predicted labels.
      labels: optional ``[C]`` label set to average over. Default: the sorted union of
        the values in ``y_true`` and ``y_pred`` (scikit-learn's default). Samples whose
        true label is outside ``labels`` still count as false positives of their
        predicted class (as in scikit-learn).

    Returns:
      The weighted F1 in [0, 1]; NaN when ``N == 0`` and ``labels`` is None.
    """
    t, p = _flat_labels(y_true, y_pred)
    if t.dtype == np.bool_:
        t = t.astype(np.int64)
    if p.dtype == np.bool_:
        p = p.astype(np.int64)
    if labels is None:
        if t.size == 0:
            return float("nan")
        lab = np.union1d(t, p)
    else:
        lab = np.unique(np.asarray(labels).reshape(-1))
        if lab.dtype == np.bool_:
            lab = lab.astype(np.int64)
        if lab.size == 0:
            raise ValueError(f"labels must be non-empty; got labels.shape={lab.shape}")
    num = lab.size

    def index_of(v: np.ndarray) -> np.ndarray:
        # Index into the sorted label set, or `num` (an overflow bin) if absent.
        idx = np.clip(np.searchsorted(lab, v), 0, num - 1)
        return np.where(lab[idx] == v, idx, num)

    ti, pi = index_of(t), index_of(p)
    support = np.bincount(ti, minlength=num + 1)[:num].astype(np.float64)
    pred_count = np.bincount(pi, minlength=num + 1)[:num].astype(np.float64)
    tp = np.bincount(ti[ti == pi], minlength=num + 1)[:num].astype(np.float64)
    denom = support + pred_count  # = 2 TP + FP + FN
    f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1.0), 0.0)
    total = support.sum()
    if total == 0:
        return 0.0
    return float(np.sum(f1 * support) / total)


def pearson(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson correlation coefficient of two ``[N]`` vectors (float64).

    Same value as ``np.corrcoef(a, b)[0, 1]`` / ``scipy.stats.pearsonr``.

    Returns:
      The correlation clipped to [-1, 1]; **NaN** when ``N < 2`` or either input is
      constant (zero variance). Callers that want the official "NaN -> 0" rule apply
      it themselves (:func:`mosi_metrics` and :func:`sims_metrics` do).
    """
    x, y = _flat_pair(a, b, names=("a", "b"))
    if x.size < 2:
        return float("nan")
    xc = x - x.mean()
    yc = y - y.mean()
    sxx = float(np.dot(xc, xc))
    syy = float(np.dot(yc, yc))
    if sxx == 0.0 or syy == 0.0:
        return float("nan")
    r = float(np.dot(xc, yc)) / np.sqrt(sxx * syy)
    return float(np.clip(r, -1.0, 1.0))


def _nan_to_zero(x: float) -> float:
    return 0.0 if np.isnan(x) else x


def _bucketise(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Class index i such that ``edges[i] < x <= edges[i + 1]`` (``[N]`` int)."""
    return np.searchsorted(edges, x, side="left") - 1


def mosi_metrics(pred: ArrayLike, label: ArrayLike) -> dict[str, float]:
    """CMU-MOSI / CMU-MOSEI regression metrics (docs/decalign.md §6.2).

    Args:
      pred: ``[N]`` or ``[N, 1]`` raw regression outputs.
      label: ``[N]`` or ``[N, 1]`` sentiment scores in [-3, 3].

    Returns:
      A dict with the keys of :data:`MOSI_KEYS`:

      * ``MAE``: mean |pred - label| on **unclipped** values.
      * ``Corr``: Pearson correlation, 0 when undefined (constant pred or label).
      * ``Acc_2``, ``F1``: the **non0** binary task (the headline numbers): samples
        with ``label != 0`` only, classes ``pred > 0`` vs ``label > 0``, accuracy and
        weighted F1. **NaN** when no label is non-zero.
      * ``Acc_2_has0``, ``F1_has0``: negative vs non-negative, ``pred >= 0`` vs
        ``label >= 0`` over all samples, accuracy and weighted F1.
      * ``Acc_5``: clip both to [-2, 2], round half-to-even, fraction equal.
      * ``Acc_7``: clip both to [-3, 3], round half-to-even, fraction equal.

      Accuracies / F1 are fractions in [0, 1] (multiply by 100 for display).
      Every value is NaN when ``N == 0``.
    """
    p, y = _flat_pair(pred, label)
    if p.size == 0:
        return dict.fromkeys(MOSI_KEYS, float("nan"))
    non0 = y != 0
    if np.any(non0):
        t2, p2 = y[non0] > 0, p[non0] > 0
        acc2, f1 = accuracy(t2, p2), weighted_f1(t2, p2)
    else:
        acc2 = f1 = float("nan")
    t_has0, p_has0 = y >= 0, p >= 0

    def round_acc(bound: float) -> float:
        return accuracy(
            np.round(np.clip(y, -bound, bound)), np.round(np.clip(p, -bound, bound))
        )

    return {
        "MAE": float(np.mean(np.abs(p - y))),
        "Corr": _nan_to_zero(pearson(p, y)),
        "Acc_2": acc2,
        "F1": f1,
        "Acc_2_has0": accuracy(t_has0, p_has0),
        "F1_has0": weighted_f1(t_has0, p_has0),
        "Acc_5": round_acc(2.0),
        "Acc_7": round_acc(3.0),
    }


def sims_metrics(pred: ArrayLike, label: ArrayLike) -> dict[str, float]:
    """CH-SIMS regression metrics (docs/decalign.md §6.3).

    Both ``pred`` and ``label`` are clipped to [-1, 1] **first**, so MAE and Corr use
    clipped predictions. Buckets are the half-open intervals (lo, hi] of the edges
    2-class ``[-1.01, 0, 1.01]`` (label 0 is negative), 3-class
    ``[-1.01, -0.1, 0.1, 1.01]`` and 5-class ``[-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]``.

    Args:
      pred: ``[N]`` or ``[N, 1]`` raw regression outputs.
      label: ``[N]`` or ``[N, 1]`` sentiment scores in [-1, 1].

    Returns:
      A dict with the keys of :data:`SIMS_KEYS`: ``Acc_2``, ``Acc_3``, ``Acc_5``
      (bucket accuracies), ``F1`` (weighted F1 on the 2-class buckets), ``MAE`` and
      ``Corr`` (Pearson on clipped values, 0 when undefined). Fractions in [0, 1];
      every value NaN when ``N == 0``.
    """
    p, y = _flat_pair(pred, label)
    if p.size == 0:
        return dict.fromkeys(SIMS_KEYS, float("nan"))
    p = np.clip(p, -1.0, 1.0)
    y = np.clip(y, -1.0, 1.0)
    p2, y2 = _bucketise(p, _SIMS_EDGES_2), _bucketise(y, _SIMS_EDGES_2)
    return {
        "Acc_2": accuracy(y2, p2),
        "Acc_3": accuracy(_bucketise(y, _SIMS_EDGES_3), _bucketise(p, _SIMS_EDGES_3)),
        "Acc_5": accuracy(_bucketise(y, _SIMS_EDGES_5), _bucketise(p, _SIMS_EDGES_5)),
        "F1": weighted_f1(y2, p2),
        "MAE": float(np.mean(np.abs(p - y))),
        "Corr": _nan_to_zero(pearson(p, y)),
    }


def iemocap_metrics(
    logits: ArrayLike, label: ArrayLike, *, num_classes: int
) -> dict[str, float]:
    """IEMOCAP classification metrics (docs/decalign.md §6.4).

    Args:
      logits: ``[N, num_classes]`` class scores (argmax is taken; ties go to the
        lowest index, as ``np.argmax`` / ``torch.argmax``).
      label: ``[N]`` integer class ids in ``[0, num_classes)``.
      num_classes: number of classes C (6 for the DecAlign IEMOCAP setup).

    Returns:
      ``{"WAcc": accuracy, "WAF1": weighted F1 over labels 0..C-1 with
      zero_division=0}``, fractions in [0, 1]; NaN when ``N == 0``.
    """
    z = np.asarray(logits)
    y = np.asarray(label).reshape(-1)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if z.ndim != 2 or z.shape[1] != num_classes:
        raise ValueError(
            f"logits must be [N, num_classes={num_classes}]; got logits.shape={z.shape}"
        )
    if z.shape[0] != y.size:
        raise ValueError(
            f"logits and label disagree on N; got logits.shape={z.shape}, "
            f"label.shape={np.shape(label)}"
        )
    if y.size == 0:
        return dict.fromkeys(IEMOCAP_KEYS, float("nan"))
    y = y.astype(np.int64)
    pred = np.argmax(z, axis=1)
    return {
        "WAcc": accuracy(y, pred),
        "WAF1": weighted_f1(y, pred, labels=np.arange(num_classes)),
    }


# =====================================================================================
# Per-dataset reporting: which metrics, which table columns, which trivial baseline
# =====================================================================================


def _regression_baseline(train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """MAE of predicting the training mean on the test labels."""
    return {"train_mean_MAE": float(np.mean(np.abs(test - train.mean())))}


def _majority_baseline(train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Weighted accuracy (%) of predicting the training majority class."""
    majority = np.bincount(train.astype(np.int64)).argmax()
    return {"majority_class_WAcc": float(np.mean(test == majority) * 100)}


@dataclasses.dataclass(frozen=True)
class Report:
    """How one dataset is scored and shown.

    Attributes:
      metrics: ``(outputs, labels, num_classes) -> metrics`` (fractions).
      columns: the paper-shaped table's columns, in order.
      baseline: ``(train labels, test labels) -> reference numbers``.
    """

    metrics: Callable[[np.ndarray, np.ndarray, int], dict[str, float]]
    columns: tuple[str, ...]
    baseline: Callable[[np.ndarray, np.ndarray], dict[str, float]]


REPORTS: Final[dict[str, Report]] = {
    "mosi": Report(
        lambda p, y, c: mosi_metrics(p, y),
        ("MAE", "Corr", "Acc_2", "F1", "Acc_7", "Acc_5", "Acc_2_has0", "F1_has0"),
        _regression_baseline,
    ),
    "sims": Report(
        lambda p, y, c: sims_metrics(p, y),
        ("MAE", "Corr", "Acc_2", "Acc_3", "Acc_5", "F1"),
        _regression_baseline,
    ),
    "iemocap": Report(
        lambda p, y, c: iemocap_metrics(p, y, num_classes=c),
        ("WAcc", "WAF1"),
        _majority_baseline,
    ),
}
REPORTS["mosei"] = REPORTS["mosi"]
"""``dataset -> Report``; MOSEI is scored as MOSI."""

# Display: accuracies / F1 in percent as in the papers, MAE / Corr / loss as they are.
_PERCENT: Final = ("Acc", "F1", "WA")


def report(dataset: str) -> Report:
    """The :class:`Report` of ``dataset``; a clear error for an unknown name."""
    if dataset not in REPORTS:
        raise ValueError(
            f"data.dataset: unknown {dataset!r} (one of {sorted(REPORTS)})"
        )
    return REPORTS[dataset]


def display_scale(metric: str) -> float:
    """100 for metrics shown in percent (accuracies, F1), else 1."""
    return 100.0 if metric.startswith(_PERCENT) else 1.0


def format_table(
    dataset: str, summary: Mapping[str, Mapping[str, float]], n: int
) -> str:
    """A paper-shaped table: one row, mean ± std over ``n`` seeds (display units)."""
    cols = report(dataset).columns
    head = f"{'dataset':<10}" + "".join(f"{c:>16}" for c in cols)
    row = f"{dataset:<10}"
    for c in cols:
        s = summary[c]
        fmt = "{:.3f}" if display_scale(c) == 1.0 and s["mean"] < 10 else "{:.2f}"
        cell = fmt.format(s["mean"]) + (f" ± {fmt.format(s['std'])}" if n > 1 else "")
        row += f"{cell:>16}"
    note = (
        f"({n} seed{'s' if n > 1 else ''}; Acc/F1 in %, Acc_2/F1 exclude zero labels)"
    )
    return "\n".join([head, "-" * len(head), row, note])
