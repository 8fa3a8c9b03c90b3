"""Tests for decalign_jax.metrics against scikit-learn / SciPy references."""

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error

from decalign_jax import metrics


def _rounding_edges(rng, n):
    """Labels/preds on a 1/3-grid plus exact 0 and +-k.5 rounding edges."""
    grid = np.round(rng.uniform(-3.5, 3.5, n) * 3) / 3
    edges = np.array([0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5, 3.0, -3.0])
    idx = rng.choice(n, size=len(edges), replace=False)
    grid[idx] = edges
    return grid


def _sk_f1(t, p, labels=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f1_score(t, p, average="weighted", zero_division=0, labels=labels)


# ----------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_weighted_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    t = rng.integers(0, 5, n)
    p = rng.integers(0, 6, n)  # includes a class never true
    assert metrics.weighted_f1(t, p) == pytest.approx(_sk_f1(t, p), abs=1e-12)
    labels = np.arange(7)  # includes a class never true nor predicted
    assert metrics.weighted_f1(t, p, labels=labels) == pytest.approx(
        _sk_f1(t, p, labels=labels), abs=1e-12
    )
    # A label subset: samples of other classes become FP/FN of the listed ones.
    sub = np.array([1, 3])
    assert metrics.weighted_f1(t, p, labels=sub) == pytest.approx(
        _sk_f1(t, p, labels=sub), abs=1e-12
    )


def test_weighted_f1_bool_and_degenerate():
    t = np.array([True, False, True, True])
    p = np.array([True, True, False, True])
    assert metrics.weighted_f1(t, p) == pytest.approx(_sk_f1(t, p), abs=1e-12)
    # Single class everywhere, all correct.
    assert metrics.weighted_f1([1, 1, 1], [1, 1, 1]) == pytest.approx(1.0)
    # Only predicted classes that never occur: support 0 everywhere for those.
    assert metrics.weighted_f1([0, 0], [1, 1]) == pytest.approx(_sk_f1([0, 0], [1, 1]))
    # Listed labels with zero support -> 0 (zero_division=0).
    assert metrics.weighted_f1([0, 0], [1, 1], labels=[2, 3]) == 0.0
    assert np.isnan(metrics.weighted_f1([], []))
    with pytest.raises(ValueError, match="y_true"):
        metrics.weighted_f1([0, 1], [0])


def test_batch_mean_loss_matches_a_brute_force_batch_loop():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.0, 3.0, size=229)  # MOSI valid: 7 x 32 + a batch of 5
    batch_means = []
    for start in range(0, 229, 32):  # the official loop: sum of batch means / count
        batch_means.append(np.mean(losses[start : start + 32]))
    assert len(batch_means) == 8
    want = sum(batch_means) / len(batch_means)
    assert metrics.batch_mean_loss(losses, 32) == pytest.approx(want, rel=1e-12)
    # The last 5 samples weigh 1/8, not 5/229: not the per-sample mean.
    assert abs(metrics.batch_mean_loss(losses, 32) - np.mean(losses)) > 1e-3
    assert metrics.batch_mean_loss(losses, 229) == pytest.approx(np.mean(losses))
    assert metrics.batch_mean_loss(losses[:64], 32) == pytest.approx(
        np.mean(losses[:64])
    )
    with pytest.raises(ValueError, match="batch_size"):
        metrics.batch_mean_loss(losses, 0)
    with pytest.raises(ValueError, match="at least one"):
        metrics.batch_mean_loss([], 32)


def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    assert metrics.accuracy(t, p) == pytest.approx(accuracy_score(t, p))
    assert np.isnan(metrics.accuracy([], []))


@pytest.mark.parametrize("seed", range(4))
def test_pearson_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=30)
    b = 0.3 * a + rng.normal(size=30)
    assert metrics.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
    assert metrics.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert metrics.pearson(a, -a) == pytest.approx(-1.0)


def test_pearson_undefined_is_nan():
    assert np.isnan(metrics.pearson(np.ones(5), np.arange(5.0)))
    assert np.isnan(metrics.pearson([1.0], [2.0]))


# ----------------------------------------------------------------------------------
# MOSI / MOSEI
# ----------------------------------------------------------------------------------


def _mosi_reference(pred, label):
    """sklearn / scipy reference written straight from docs/decalign.md §6."""
    non0 = label != 0
    out = {
        "MAE": mean_absolute_error(label, pred),
        "Corr": stats.pearsonr(pred, label)[0],
        "Acc_2": accuracy_score(label[non0] > 0, pred[non0] > 0),
        "F1": _sk_f1(label[non0] > 0, pred[non0] > 0),
        "Acc_2_has0": accuracy_score(label >= 0, pred >= 0),
        "F1_has0": _sk_f1(label >= 0, pred >= 0),
    }
    for name, b in (("Acc_5", 2), ("Acc_7", 3)):
        out[name] = accuracy_score(
            np.round(np.clip(label, -b, b)).astype(int),
            np.round(np.clip(pred, -b, b)).astype(int),
        )
    return out


@pytest.mark.parametrize("seed", range(5))
def test_mosi_metrics_match_reference(seed):
    rng = np.random.default_rng(seed)
    n = 80
    label = _rounding_edges(rng, n)
    pred = np.where(
        rng.random(n) < 0.5, _rounding_edges(rng, n), label + rng.normal(0, 1, n)
    )
    pred[:3] = [0.0, 2.5, -0.5]  # prediction exactly 0 and on rounding ties
    got = metrics.mosi_metrics(pred[:, None].astype(np.float32), label)
    ref = _mosi_reference(pred.astype(np.float32).astype(np.float64), label)
    assert set(got) == set(metrics.MOSI_KEYS)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


def test_mosi_rounding_is_half_to_even():
    # label 0.5 rounds to 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2; pred chosen to match.
    label = np.array([0.5, 1.5, 2.5, -2.5, 3.4])
    pred = np.array([0.0, 2.0, 2.0, -2.0, 3.0])
    m = metrics.mosi_metrics(pred, label)
    assert m["Acc_7"] == 1.0
    # Acc_5 clips to [-2, 2] first: 3.4 -> 2 vs 3.0 -> 2 still equal.
    assert m["Acc_5"] == 1.0
    # Half-away-from-zero rounding (0.5 -> 1, +-2.5 -> +-3) would score 2/5.
    away = np.sign(label) * np.floor(np.abs(label) + 0.5)
    assert np.mean(np.clip(away, -3, 3) == pred) == pytest.approx(0.4)


def test_mosi_constant_prediction_corr_zero_and_no_nonzero_labels():
    label = np.array([0.0, 0.0, 0.0, 0.0])
    pred = np.array([0.1, -0.2, 0.0, 0.3])
    m = metrics.mosi_metrics(pred, label)
    assert np.isnan(m["Acc_2"]) and np.isnan(m["F1"])
    assert m["Corr"] == 0.0  # constant label
    assert m["Acc_2_has0"] == pytest.approx(accuracy_score(label >= 0, pred >= 0))
    m2 = metrics.mosi_metrics(np.full(4, 0.7), np.array([1.0, -1.0, 2.0, 0.0]))
    assert m2["Corr"] == 0.0  # constant prediction
    assert m2["MAE"] == pytest.approx(mean_absolute_error([1, -1, 2, 0], [0.7] * 4))


def test_mosi_mae_is_unclipped_and_errors():
    m = metrics.mosi_metrics(np.array([10.0, -10.0]), np.array([3.0, -3.0]))
    assert m["MAE"] == pytest.approx(7.0)
    assert m["Acc_7"] == 1.0
    with pytest.raises(ValueError, match="pred"):
        metrics.mosi_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"\[N\] or \[N, 1\]"):
        metrics.mosi_metrics(np.zeros((2, 2)), np.zeros(4))
    assert all(np.isnan(v) for v in metrics.mosi_metrics([], []).values())


# ----------------------------------------------------------------------------------
# CH-SIMS
# ----------------------------------------------------------------------------------


def _sims_buckets_ref(x, edges):
    out = np.full(x.shape, -1)
    for i in range(len(edges) - 1):
        for n in range(len(x)):
            if edges[i] < x[n] <= edges[i + 1]:
                out[n] = i
    assert np.all(out >= 0)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_sims_metrics_match_reference(seed):
    rng = np.random.default_rng(seed)
    n = 70
    label = np.round(rng.uniform(-1, 1, n) * 5) / 5  # multiples of 0.2
    pred = rng.uniform(-1.6, 1.6, n)
    # Bucket edges and clipping edge cases.
    pred[:9] = [0.0, -0.1, 0.1, -0.7, 0.7, 1.0, -1.0, 5.0, -5.0]
    label[:4] = [0.0, -1.0, 1.0, 0.0]
    got = metrics.sims_metrics(pred, label)
    assert set(got) == set(metrics.SIMS_KEYS)
    pc, lc = np.clip(pred, -1, 1), np.clip(label, -1, 1)
    e2 = [-1.01, 0.0, 1.01]
    e3 = [-1.01, -0.1, 0.1, 1.01]
    e5 = [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    b = {k: (_sims_buckets_ref(lc, e), _sims_buckets_ref(pc, e)) for k, e in
         (("2", e2), ("3", e3), ("5", e5))}  # fmt: skip
    assert got["Acc_2"] == pytest.approx(accuracy_score(*b["2"]))
    assert got["Acc_3"] == pytest.approx(accuracy_score(*b["3"]))
    assert got["Acc_5"] == pytest.approx(accuracy_score(*b["5"]))
    assert got["F1"] == pytest.approx(_sk_f1(*b["2"]), abs=1e-12)
    assert got["MAE"] == pytest.approx(mean_absolute_error(lc, pc))
    assert got["Corr"] == pytest.approx(stats.pearsonr(pc, lc)[0], abs=1e-12)


def test_sims_zero_label_is_negative_and_clipping():
    # y = 0 belongs to the negative bucket (interval (-1.01, 0]).
    m = metrics.sims_metrics(np.array([-0.3, 0.0, 0.4]), np.array([0.0, 0.0, 0.2]))
    assert m["Acc_2"] == 1.0
    # Clipping before MAE: pred 3 -> 1.
    assert metrics.sims_metrics([3.0, -1.0], [1.0, -1.0])["MAE"] == 0.0
    assert metrics.sims_metrics([0.5, 0.5], [1.0, -1.0])["Corr"] == 0.0


# ----------------------------------------------------------------------------------
# IEMOCAP
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_iemocap_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 50, 6
    logits = rng.normal(size=(n, c)).astype(np.float32)
    logits[:, 5] -= 10.0  # class 5 never predicted -> zero_division path
    label = rng.integers(0, c - 1, n)  # class 5 never true either for some seeds
    got = metrics.iemocap_metrics(logits, label.astype(np.float32), num_classes=c)
    pred = np.argmax(logits, axis=1)
    assert got["WAcc"] == pytest.approx(accuracy_score(label, pred))
    assert got["WAF1"] == pytest.approx(
        _sk_f1(label, pred, labels=list(range(c))), abs=1e-12
    )


def test_iemocap_errors():
    with pytest.raises(ValueError, match="logits"):
        metrics.iemocap_metrics(np.zeros((4, 5)), np.zeros(4), num_classes=6)
    with pytest.raises(ValueError, match="label"):
        metrics.iemocap_metrics(np.zeros((4, 6)), np.zeros(3), num_classes=6)


def test_selection_table():
    assert metrics.SELECTION == {
        "mosi": ("loss", "min"),
        "mosei": ("Acc_2", "max"),
        "sims": ("F1", "max"),
        "iemocap": ("WAF1", "max"),
    }
    for ds, (key, mode) in metrics.SELECTION.items():
        assert mode in ("min", "max")
        keys = {
            "mosi": metrics.MOSI_KEYS,
            "mosei": metrics.MOSI_KEYS,
            "sims": metrics.SIMS_KEYS,
            "iemocap": metrics.IEMOCAP_KEYS,
        }[ds]
        assert key == "loss" or key in keys
