"""Tests of cdds_jax.kl_statistics against float64 NumPy loop references (under jit)."""

import functools

import chex
import jax
import numpy as np
import pytest

from cdds_jax import kl_statistics

D = 6


def _ref_sources(batches, momentum, window):
    """float64 loop: after each batch, the EMA (first = batch) and the window mean."""
    ema = None
    out = []
    for k, s in enumerate(batches):
        s = np.asarray(s, np.float64)
        ema = s if ema is None else momentum * ema + (1 - momentum) * s
        recent = [
            np.asarray(b, np.float64) for b in batches[max(0, k + 1 - window) : k + 1]
        ]
        out.append((ema, sum(recent) / len(recent)))
    return out


def test_statistics_ema_and_window_match_reference():
    rng = np.random.default_rng(15)
    window, steps = 3, 7
    batches_v = [rng.uniform(0, 1, (D, D)).astype(np.float32) for _ in range(steps)]
    batches_t = [rng.uniform(0, 1, (D, D)).astype(np.float32) for _ in range(steps)]
    stats = kl_statistics.init_statistics(D, window_steps=window)
    update = jax.jit(functools.partial(kl_statistics.update_statistics, momentum=0.9))
    train_src = jax.jit(kl_statistics.training_correlation, static_argnames="source")
    ref_v = _ref_sources(batches_v, 0.9, window)
    ref_t = _ref_sources(batches_t, 0.9, window)
    for k in range(steps):
        s_v, s_t = batches_v[k], batches_t[k]
        stats = update(stats, s_v, s_t)
        assert int(stats["count"]) == k + 1
        got_b = train_src(stats, s_v, s_t, source="batch")
        got_e = train_src(stats, s_v, s_t, source="ema")
        got_w = train_src(stats, s_v, s_t, source="window")
        np.testing.assert_array_equal(got_b[0], s_v)
        np.testing.assert_array_equal(got_b[1], s_t)
        for got, want in ((got_e, 0), (got_w, 1)):
            np.testing.assert_allclose(got[0], ref_v[k][want], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got[1], ref_t[k][want], rtol=1e-5, atol=1e-6)
        if k == 0:  # the first step of "ema" uses the batch's own S
            np.testing.assert_array_equal(got_e[0], s_v)
    ev = kl_statistics.evaluation_correlation(stats, source="window")
    np.testing.assert_allclose(ev[0], ref_v[-1][1], rtol=1e-5, atol=1e-6)
    for source in ("batch", "ema"):
        ev = kl_statistics.evaluation_correlation(stats, source=source)
        np.testing.assert_allclose(ev[1], ref_t[-1][0], rtol=1e-5, atol=1e-6)


def test_statistics_shapes_and_errors():
    plain = kl_statistics.init_statistics(D)
    assert set(plain) == {"S_v", "S_t", "count"}
    windowed = kl_statistics.init_statistics(D, window_steps=4)
    chex.assert_shape(windowed["S_v_window"], (4, D, D))
    # Before any update the window mean is zero, not NaN.
    np.testing.assert_array_equal(
        kl_statistics.evaluation_correlation(windowed, source="window")[0], 0.0
    )
    s = np.zeros((D, D), np.float32)
    with pytest.raises(ValueError, match="window_steps"):
        kl_statistics.training_correlation(plain, s, s, source="window")
    with pytest.raises(ValueError, match="source"):
        kl_statistics.training_correlation(plain, s, s, source="epoch")
    with pytest.raises(ValueError, match="s_v"):
        kl_statistics.update_statistics(plain, s[:2], s, momentum=0.9)


def test_dataset_sources_read_the_refreshed_statistics_and_identity_reads_none():
    rng = np.random.default_rng(3)
    stats = kl_statistics.init_statistics(D)
    batch_v, batch_t = (rng.uniform(0, 1, (D, D)).astype(np.float32) for _ in range(2))
    data_v, data_t = (rng.uniform(0, 1, (D, D)).astype(np.float32) for _ in range(2))
    refreshed = jax.jit(kl_statistics.refresh_statistics)(stats, data_v, data_t)
    assert int(refreshed["count"]) == 1
    np.testing.assert_array_equal(refreshed["S_v"], data_v)
    np.testing.assert_array_equal(refreshed["S_t"], data_t)
    train_src = jax.jit(kl_statistics.training_correlation, static_argnames="source")
    for source in kl_statistics.DATASET_SOURCES:
        # Training and evaluation both read the refreshed S, never this batch's.
        got = train_src(refreshed, batch_v, batch_t, source=source)
        np.testing.assert_array_equal(got[0], data_v)
        np.testing.assert_array_equal(got[1], data_t)
        ev = kl_statistics.evaluation_correlation(refreshed, source=source)
        np.testing.assert_array_equal(ev[0], data_v)
    got = train_src(refreshed, batch_v, batch_t, source="identity")
    np.testing.assert_array_equal(got[0], 0.0)
    ev = kl_statistics.evaluation_correlation(refreshed, source="identity")
    np.testing.assert_array_equal(ev[1], 0.0)
    with pytest.raises(ValueError, match="s_v"):
        kl_statistics.refresh_statistics(stats, data_v[:2], data_t)
