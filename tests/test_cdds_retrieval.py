"""Tests for `cdds_jax.retrieval` against brute-force float64 NumPy references.

The references sort (``np.argsort`` per row / column, as the VSE / LAPS code does) or
count with a differently chunked NumPy loop; the library counts under jit.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdds_jax import retrieval
from cdds_jax import score_matrix as score_matrix_module

# ------------------------------------------------------------------ references


def _ref_ranks(scores, c2i):
    """0-based ranks by full descending argsort (float64), as in VSE-infinity / LAPS."""
    s = np.asarray(scores, dtype=np.float64)
    n_img, n_cap = s.shape
    i2t = np.empty(n_img, dtype=np.int64)
    for i in range(n_img):
        order = np.argsort(s[i])[::-1]
        i2t[i] = np.flatnonzero(c2i[order] == i).min()  # best of the image's captions
    t2i = np.empty(n_cap, dtype=np.int64)
    for c in range(n_cap):
        order = np.argsort(s[:, c])[::-1]
        t2i[c] = np.flatnonzero(order == c2i[c])[0]
    return i2t, t2i


def _ref_metrics(i2t, t2i):
    m = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            m[f"{name}_r{k}"] = 100.0 * len(np.where(ranks < k)[0]) / len(ranks)
        m[f"{name}_medr"] = np.floor(np.median(ranks)) + 1
        m[f"{name}_meanr"] = ranks.mean() + 1
    m["rsum"] = sum(m[f"{n}_r{k}"] for n in ("i2t", "t2i") for k in (1, 5, 10))
    return m


def _np_count_ranks(scores, c2i, rows=512, *, pessimistic=True):
    """Chunked NumPy count (row chunks for both directions), independent of the kernel.

    ``pessimistic=False`` counts only strictly higher candidates (ties favour the
    positive), to show that planted ties change the ranks.
    """
    n_img, n_cap = scores.shape
    pos = scores[c2i, np.arange(n_cap)]
    best = np.full(n_img, -np.inf, dtype=scores.dtype)
    np.maximum.at(best, c2i, pos)
    above = np.greater_equal if pessimistic else np.greater
    i2t = np.empty(n_img, dtype=np.int64)
    t2i = np.zeros(n_cap, dtype=np.int64)
    for lo in range(0, n_img, rows):
        block = scores[lo : lo + rows]
        negative = c2i[None, :] != np.arange(lo, lo + block.shape[0])[:, None]
        hit = above(block, best[lo : lo + rows, None]) & negative
        i2t[lo : lo + rows] = hit.sum(axis=1)
        t2i += (above(block, pos[None, :]) & negative).sum(axis=0)
    return i2t, t2i


def _assert_metrics_close(got, want):
    assert list(got) == list(retrieval.METRIC_KEYS)
    assert all(isinstance(v, float) for v in got.values())
    for key in retrieval.METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key


# ------------------------------------------------------------------ fixtures


def _coco_like_index(rng, counts):
    """Shuffled caption -> image index with ``counts[i]`` captions for image i."""
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def _coco_counts(n5, n6, n7, rng):
    return rng.permutation(np.array([5] * n5 + [6] * n6 + [7] * n7))


def _random_scores(rng, c2i, n_img, signal=3.0):
    """Continuous scores with positives lifted by U(0, signal), made tie-free.

    Float64 normals are replaced by their rank times 2**-12: distinct values, exact in
    float32 (fewer than 2**24 entries), same order, so argsort and counting agree.
    """
    n_cap = c2i.shape[0]
    s = rng.standard_normal((n_img, n_cap))
    s[c2i, np.arange(n_cap)] += rng.uniform(0.0, signal, n_cap)
    assert s.size < 2**24
    ranks = np.empty(s.size)
    ranks[np.argsort(s, axis=None)] = np.arange(s.size)
    out = (ranks.reshape(s.shape) * 2.0**-12).astype(np.float32)
    assert np.unique(out).size == out.size
    return out


# ------------------------------------------------------------------ rank_metrics


def test_rank_metrics_five_contiguous_captions_matches_argsort():
    rng = np.random.default_rng(0)
    n_img = 120
    c2i = np.arange(5 * n_img) // 5
    scores = _random_scores(rng, c2i, n_img)
    i2t, t2i = retrieval.retrieval_ranks(scores, c2i, chunk_size=32)
    ref_i2t, ref_t2i = _ref_ranks(scores, c2i)
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i, ref_t2i)
    got = retrieval.rank_metrics(scores, c2i, chunk_size=32)
    _assert_metrics_close(got, _ref_metrics(ref_i2t, ref_t2i))
    assert 0.0 < got["i2t_r1"] < 100.0 and 0.0 < got["t2i_r10"] < 100.0  # non-trivial


@pytest.fixture(scope="module")
def coco_like_small():
    """COCO Karpathy-test-like structure at 1/10 scale: 5-7 captions, shuffled."""
    rng = np.random.default_rng(1)
    counts = _coco_counts(480, 15, 5, rng)  # 500 images, 2,525 captions
    c2i = _coco_like_index(rng, counts)
    scores = _random_scores(rng, c2i, len(counts))
    return scores, c2i, _ref_ranks(scores, c2i)


def test_rank_metrics_uneven_shuffled_index_matches_argsort(coco_like_small):
    scores, c2i, (ref_i2t, ref_t2i) = coco_like_small
    assert set(np.bincount(c2i)) == {5, 6, 7}
    got = retrieval.rank_metrics(scores, c2i)
    _assert_metrics_close(got, _ref_metrics(ref_i2t, ref_t2i))


@pytest.mark.parametrize("chunk_size", [7, 64, 10_000])
def test_rank_metrics_chunk_size_not_dividing_n(coco_like_small, chunk_size):
    scores, c2i, (ref_i2t, ref_t2i) = coco_like_small
    i2t, t2i = retrieval.retrieval_ranks(scores, c2i, chunk_size=chunk_size)
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i, ref_t2i)


def test_rank_counts_full_coco_5k_25010_structure():
    # The exact Karpathy-test shape: 5,000 images, 25,010 captions (5-7 per image).
    rng = np.random.default_rng(2)
    counts = _coco_counts(4991, 8, 1, rng)
    assert counts.sum() == 25_010
    c2i = _coco_like_index(rng, counts)
    # Embedding-like scores from a rank-16 product (cheaper to draw than 125M normals).
    img = rng.standard_normal((5000, 16), dtype=np.float32)
    scores = img @ rng.standard_normal((25_010, 16), dtype=np.float32).T
    scores[c2i, np.arange(25_010)] += rng.uniform(0.0, 12.0, 25_010).astype(np.float32)
    i2t, t2i = retrieval.retrieval_ranks(scores, c2i)
    ref_i2t, ref_t2i = _np_count_ranks(scores, c2i)
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i, ref_t2i)
    assert 0 < np.mean(t2i == 0) < 1 and i2t.max() > 100  # ranks span a wide range


def test_rank_metrics_planted_perfect_retrieval():
    rng = np.random.default_rng(3)
    counts = _coco_counts(40, 6, 4, rng)
    c2i = _coco_like_index(rng, counts)
    scores = rng.random((len(counts), len(c2i)), dtype=np.float32)
    scores[c2i, np.arange(len(c2i))] += 10.0
    got = retrieval.rank_metrics(scores, c2i, chunk_size=16)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert got[key] == 100.0
    assert got["rsum"] == 600.0
    assert got["i2t_medr"] == got["t2i_medr"] == 1.0
    assert got["i2t_meanr"] == got["t2i_meanr"] == 1.0


def test_rank_metrics_random_scores_near_chance():
    rng = np.random.default_rng(4)
    n_img = 1000
    c2i = np.arange(5 * n_img) // 5
    scores = jnp.asarray(rng.standard_normal((n_img, 5 * n_img), dtype=np.float32))
    got = retrieval.rank_metrics(scores, c2i)  # a device array is accepted as is
    # Chance: t2i R@10 = 1%, i2t R@10 ~= 1%; t2i rank ~ U{0..999} (mean 499.5, sd of
    # the mean ~4); i2t rank = min of 5 uniform positions among 5,000 (mean ~832).
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert got[key] < 3.0, key
    assert got["i2t_r1"] <= got["i2t_r5"] <= got["i2t_r10"]
    assert got["t2i_r1"] <= got["t2i_r5"] <= got["t2i_r10"]
    assert abs(got["t2i_meanr"] - 500.5) < 40.0
    assert abs(got["i2t_meanr"] - 833.5) < 150.0
    assert 400 <= got["t2i_medr"] <= 600


def _ref_pessimistic_ranks(scores, c2i):
    """Pessimistic 0-based ranks by brute force: every tied negative counts against.

    Counted directly, one query at a time, in float64 NumPy.
    """
    s = np.asarray(scores, dtype=np.float64)
    n_img, n_cap = s.shape
    i2t = np.empty(n_img, dtype=np.int64)
    for i in range(n_img):
        best = s[i, c2i == i].max()
        i2t[i] = sum(1 for c in range(n_cap) if c2i[c] != i and s[i, c] >= best)
    t2i = np.empty(n_cap, dtype=np.int64)
    for c in range(n_cap):
        pos = s[c2i[c], c]
        t2i[c] = sum(1 for i in range(n_img) if i != c2i[c] and s[i, c] >= pos)
    return i2t, t2i


def _ref_worst_order_ranks(scores, c2i):
    """Pessimistic ranks as positions in a descending sort that puts, among equal
    scores, every negative before every positive (the worst tie-breaking order)."""
    s = np.asarray(scores, dtype=np.float64)
    n_img, n_cap = s.shape
    i2t = np.empty(n_img, dtype=np.int64)
    for i in range(n_img):
        order = np.lexsort(((c2i == i).astype(int), -s[i]))  # last key sorts first
        i2t[i] = np.flatnonzero(c2i[order] == i).min()
    t2i = np.empty(n_cap, dtype=np.int64)
    for c in range(n_cap):
        order = np.lexsort(((np.arange(n_img) == c2i[c]).astype(int), -s[:, c]))
        t2i[c] = np.flatnonzero(order == c2i[c])[0]
    return i2t, t2i


def _tied_scores(rng, c2i, n_img, levels):
    """Scores on a coarse grid of ``levels`` values: many exact ties of every kind
    (a positive tied with some negatives, with other positives, with everything)."""
    s = rng.integers(0, levels, (n_img, len(c2i))).astype(np.float32)
    s[c2i, np.arange(len(c2i))] += rng.integers(0, 2, len(c2i))  # some signal
    return s


def test_rank_metrics_ties_count_against_the_positive():
    c2i = np.array([0, 0, 1, 1, 2])
    scores = np.zeros((3, 5), dtype=np.float32)  # everything tied
    i2t, t2i = retrieval.retrieval_ranks(scores, c2i)
    # Every negative ties: image 0 has 3 negative captions, image 1 3, image 2 4;
    # every caption has 2 other images.
    np.testing.assert_array_equal(i2t, [3, 3, 4])
    np.testing.assert_array_equal(t2i, [2, 2, 2, 2, 2])
    scores[1, 0] = 1.0  # image 1 now strictly above caption 0's image
    scores[2, 1] = -1.0  # image 2 strictly below caption 1's image
    scores[0, 0] = 0.5  # image 0's best positive (caption 0) above its row
    i2t, t2i = retrieval.retrieval_ranks(scores, c2i)
    # image 0: best 0.5, no negative >= 0.5 -> 0; image 1: best 0, caption 0 (1.0)
    # and captions 1, 4 (ties) -> 3; image 2: best 0, captions 0, 2, 3 tie (caption 1
    # is below) -> 3.
    np.testing.assert_array_equal(i2t, [0, 3, 3])
    # caption 0: image 1 (1.0 >= 0.5) -> 1; caption 1: image 1 ties, image 2 below -> 1.
    np.testing.assert_array_equal(t2i, [1, 1, 2, 2, 2])


def test_constant_scores_give_no_recall():
    # A collapsed model: 10 images x 50 captions, every score 0.
    c2i = np.arange(50) // 5
    got = retrieval.rank_metrics(np.zeros((10, 50), np.float32), c2i)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5"):
        assert got[key] == 0.0, key
    assert got["t2i_r10"] == 100.0  # only 10 images: any ranking puts it in the top 10
    assert got["i2t_meanr"] == 46.0 and got["t2i_meanr"] == 10.0  # last place
    assert got["rsum"] == 100.0
    protocols = retrieval.evaluate_protocols(
        np.zeros((10, 4), np.float32),
        np.zeros((50, 4), np.float32),
        c2i,
        protocols=("full", "1k_5fold"),
    )
    assert protocols["full"] == got
    folds = protocols["1k_5fold"]  # 2 images x 10 captions per fold, all tied
    assert folds["i2t_r1"] == folds["t2i_r1"] == 0.0
    assert folds["i2t_meanr"] == 6.0 and folds["t2i_meanr"] == 2.0


@pytest.mark.parametrize("levels", [2, 3, 8])
def test_rank_ties_match_brute_force(levels):
    # Planted partial ties: a coarse grid, uneven shuffled captions per image.
    rng = np.random.default_rng(10 + levels)
    counts = _coco_counts(30, 6, 4, rng)  # 40 images, 5-7 captions
    c2i = _coco_like_index(rng, counts)
    scores = _tied_scores(rng, c2i, len(counts), levels)
    want = _ref_pessimistic_ranks(scores, c2i)
    worst = _ref_worst_order_ranks(scores, c2i)
    np.testing.assert_array_equal(want[0], worst[0])
    np.testing.assert_array_equal(want[1], worst[1])
    for chunk_size in (7, 1024):
        i2t, t2i = retrieval.retrieval_ranks(scores, c2i, chunk_size=chunk_size)
        np.testing.assert_array_equal(i2t, want[0])
        np.testing.assert_array_equal(t2i, want[1])
    _assert_metrics_close(
        retrieval.rank_metrics(scores, c2i, chunk_size=7), _ref_metrics(*want)
    )
    # Ties really were planted and really matter: the optimistic count differs.
    optimistic = _np_count_ranks(scores, c2i, pessimistic=False)
    assert (optimistic[0] < want[0]).any() and (optimistic[1] < want[1]).any()
    assert (optimistic[0] == want[0]).any()  # and some queries have no tie


def test_positive_tied_with_another_positive_is_not_counted():
    # Two captions of image 0 tie at the top: neither counts against the other.
    c2i = np.array([0, 0, 1, 1])
    scores = np.array([[2.0, 2.0, 1.0, 2.0], [0.0, 0.0, 1.0, 1.0]], np.float32)
    i2t, t2i = retrieval.retrieval_ranks(scores, c2i)
    np.testing.assert_array_equal(i2t, [1, 0])  # image 0: caption 3 ties its best
    np.testing.assert_array_equal(t2i, [0, 0, 1, 1])  # captions 2, 3: image 0 >=


def test_fold_protocol_ranks_ties_pessimistically():
    rng = np.random.default_rng(12)
    counts = _coco_counts(40, 7, 3, rng)  # 50 images (5 folds of 10)
    c2i = _coco_like_index(rng, counts)
    # Embeddings on a coarse grid: exact ties inside folds.
    img = rng.integers(-1, 2, (50, 3)).astype(np.float32)
    cap = (img[c2i] + rng.integers(-1, 2, (len(c2i), 3))).astype(np.float32)
    got = retrieval.evaluate_protocols(img, cap, c2i, protocols=("1k_5fold",))
    s = img.astype(np.float64) @ cap.astype(np.float64).T
    folds = []
    for f in range(5):
        caps = np.flatnonzero((c2i >= 10 * f) & (c2i < 10 * (f + 1)))
        sub = s[10 * f : 10 * (f + 1)][:, caps]
        folds.append(_ref_metrics(*_ref_pessimistic_ranks(sub, c2i[caps] - 10 * f)))
    want = {k: sum(m[k] for m in folds) / 5 for k in folds[0]}
    _assert_metrics_close(got["1k_5fold"], want)


# ------------------------------------------------------------------ degeneracy


def test_degeneracy_flags_constant_and_tied_matrices():
    c2i = np.arange(50) // 5
    const = retrieval.degeneracy(np.zeros((10, 50), np.float32), c2i, floor=1e-3)
    assert const == {"score_std": 0.0, "tie_fraction": 1.0, "degenerate": 1.0}
    # Spread intact, but every caption embedding equal: each row is constant.
    rows = np.repeat(np.arange(10, dtype=np.float32)[:, None], 50, axis=1)
    tied = retrieval.degeneracy(rows, c2i, floor=1e-3)
    assert tied["score_std"] > 1.0 and tied["tie_fraction"] == 1.0
    assert tied["degenerate"] == 1.0
    # Healthy: continuous scores with signal.
    rng = np.random.default_rng(13)
    scores = _random_scores(rng, c2i, 10)
    ok = retrieval.degeneracy(scores, c2i, floor=1e-3)
    assert ok["tie_fraction"] == 0.0 and ok["degenerate"] == 0.0
    np.testing.assert_allclose(ok["score_std"], np.std(scores.astype(np.float64)), 1e-5)
    # Spread under the floor (but no ties) is degenerate too.
    small = retrieval.degeneracy(scores * 1e-6, c2i, floor=1e-3)
    assert small["tie_fraction"] == 0.0 and small["degenerate"] == 1.0
    # rank_metrics adds the same keys in the same pass.
    both = retrieval.rank_metrics(scores, c2i, collapse_floor=1e-3)
    assert list(both) == [*retrieval.METRIC_KEYS, *retrieval.DEGENERACY_KEYS]
    assert {k: both[k] for k in retrieval.DEGENERACY_KEYS} == ok


def test_degeneracy_tie_fraction_is_the_least_tied_query():
    # Half the rows constant, half healthy: not every query is tied -> not degenerate.
    c2i = np.arange(40) // 4
    rng = np.random.default_rng(14)
    scores = _random_scores(rng, c2i, 10)
    scores[:5] = 0.0
    got = retrieval.degeneracy(scores, c2i, floor=1e-3)
    assert got["tie_fraction"] < retrieval.DEGENERATE_TIE_FRACTION
    assert got["degenerate"] == 0.0


def test_evaluate_protocols_collapse_floor_per_protocol():
    c2i = np.arange(50) // 5
    img = np.zeros((10, 4), np.float32)
    cap = np.zeros((50, 4), np.float32)
    got = retrieval.evaluate_protocols(
        img, cap, c2i, protocols=("full", "1k_5fold"), collapse_floor=1e-3
    )
    for name in ("full", "1k_5fold"):
        assert got[name]["degenerate"] == 1.0 and got[name]["score_std"] == 0.0
    plain = retrieval.evaluate_protocols(img, cap, c2i, protocols=("full",))
    assert list(plain["full"]) == list(retrieval.METRIC_KEYS)


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        (np.zeros(6, np.float32), "scores must be 2-D"),
        (np.zeros((3, 0), np.float32), "non-empty"),
        (np.zeros((3, 6), np.int32), "floating dtype"),
        (
            np.where(np.eye(3, 6) > 0, np.nan, 0.0),
            r"NaN/inf, first at \[image 0, caption 0\]",
        ),
        (
            np.where(np.eye(3, 6, k=2) > 0, np.inf, 0.0),
            r"3 entries .* first at \[image 0, caption 2\]",
        ),
        (np.full((3, 6), 1e39), "scores must be finite"),  # overflows float32
    ],
)
def test_rank_metrics_bad_scores(scores, match):
    with pytest.raises(ValueError, match=match):
        retrieval.rank_metrics(scores, np.arange(6) % 3)


def test_rank_metrics_bad_scores_on_device():
    scores = jnp.zeros((3, 6)).at[1, 4].set(jnp.nan)
    with pytest.raises(ValueError, match=r"first at \[image 1, caption 4\]"):
        retrieval.rank_metrics(scores, np.arange(6) % 3)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_rank_metrics_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        retrieval.rank_metrics(
            np.zeros((3, 6)), np.arange(6) % 3, chunk_size=chunk_size
        )


# ------------------------------------------------------------------ score_matrix


@pytest.mark.parametrize(("n_img", "n_cap"), [(37, 101), (70, 23)])
def test_score_matrix_matches_float64_matmul(n_img, n_cap):
    rng = np.random.default_rng(5)
    img = rng.standard_normal((n_img, 24), dtype=np.float32)
    cap = rng.standard_normal((n_cap, 24), dtype=np.float32)
    got = retrieval.score_matrix(img, cap, block_size=16)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    chex.assert_shape(got, (n_img, n_cap))
    want = img.astype(np.float64) @ cap.astype(np.float64).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_score_matrix_bfloat16_compute_accumulates_in_float32(tmp_path):
    rng = np.random.default_rng(6)
    img = rng.standard_normal((19, 300), dtype=np.float32)
    cap = rng.standard_normal((45, 300), dtype=np.float32)
    np.save(tmp_path / "cap.npy", cap)
    cap_mm = np.load(tmp_path / "cap.npy", mmap_mode="r")  # memmaps are read lazily
    got = retrieval.score_matrix(img, cap_mm, block_size=8, dtype=jnp.bfloat16)
    rounded = [np.asarray(x.astype(jnp.bfloat16), np.float64) for x in (img, cap)]
    want_bf16 = rounded[0] @ rounded[1].T  # exact products of the rounded inputs
    np.testing.assert_allclose(got, want_bf16, rtol=1e-5, atol=1e-4)
    exact = img.astype(np.float64) @ cap.astype(np.float64).T
    assert np.abs(got - exact).max() > 1e-2  # the inputs really were rounded


def test_score_matrix_one_compile_for_different_sizes(monkeypatch):
    chex.clear_trace_counter()
    counted = jax.jit(
        chex.assert_max_traces(retrieval.block_scores_kernel, n=1),
        static_argnames=("compute_dtype", "precision"),
    )
    monkeypatch.setattr(score_matrix_module, "_block_scores", counted)
    rng = np.random.default_rng(7)
    # Two sizes, each smaller side cached on a different side; same width and block.
    for n_img, n_cap in [(5, 40), (70, 23)]:
        img = rng.standard_normal((n_img, 8), dtype=np.float32)
        cap = rng.standard_normal((n_cap, 8), dtype=np.float32)
        got = retrieval.score_matrix(img, cap, block_size=32)
        np.testing.assert_allclose(got, img @ cap.T, rtol=1e-5, atol=1e-5)


def test_score_matrix_empty_side():
    got = retrieval.score_matrix(np.zeros((0, 4)), np.ones((3, 4)), block_size=2)
    chex.assert_shape(got, (0, 3))


@pytest.mark.parametrize(
    ("img", "cap", "kwargs", "match"),
    [
        (np.zeros((3, 4)), np.zeros((5, 6)), {}, r"same width d.*\(3, 4\).*\(5, 6\)"),
        (np.zeros(4), np.zeros((5, 4)), {}, "image_emb must be 2-D"),
        (
            np.zeros((3, 4)),
            np.zeros((5, 4), np.int32),
            {},
            "caption_emb must have a floating",
        ),
        (
            np.zeros((3, 4)),
            np.zeros((5, 4)),
            {"block_size": 0},
            "block_size must be a positive",
        ),
        (
            np.zeros((3, 4)),
            np.zeros((5, 4)),
            {"dtype": jnp.int8},
            "dtype must be a floating",
        ),
    ],
)
def test_score_matrix_bad_inputs(img, cap, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval.score_matrix(img, cap, **kwargs)


# ------------------------------------------------------------------ evaluate_protocols


@pytest.fixture(scope="module")
def small_dataset():
    """50 images (5 folds of 10), 5-7 captions each, shuffled (not contiguous)."""
    rng = np.random.default_rng(8)
    counts = _coco_counts(40, 7, 3, rng)
    c2i = _coco_like_index(rng, counts)
    img = rng.standard_normal((50, 16), dtype=np.float32)
    cap = 0.6 * img[c2i] + rng.standard_normal((len(c2i), 16), dtype=np.float32)
    return img, cap.astype(np.float32), c2i


def _ref_protocols(img, cap, c2i):
    s = img.astype(np.float64) @ cap.astype(np.float64).T
    full = _ref_metrics(*_ref_ranks(s, c2i))
    folds = []
    for f in range(5):
        caps = [c for c in range(len(c2i)) if 10 * f <= c2i[c] < 10 * (f + 1)]
        sub = s[10 * f : 10 * (f + 1)][:, caps]
        folds.append(_ref_metrics(*_ref_ranks(sub, c2i[caps] - 10 * f)))
    fold_mean = {k: sum(m[k] for m in folds) / 5 for k in folds[0]}
    return full, fold_mean


def test_evaluate_protocols_matches_brute_force(small_dataset):
    img, cap, c2i = small_dataset
    ref_full, ref_folds = _ref_protocols(img, cap, c2i)
    both = retrieval.evaluate_protocols(
        img, cap, c2i, protocols=["full", "1k_5fold"], block_size=16
    )
    assert list(both) == ["full", "1k_5fold"]
    _assert_metrics_close(both["full"], ref_full)
    _assert_metrics_close(both["1k_5fold"], ref_folds)
    # Without "full", folds are scored separately; same numbers.
    alone = retrieval.evaluate_protocols(img, cap, c2i, protocols=("1k_5fold",))
    _assert_metrics_close(alone["1k_5fold"], ref_folds)
    assert ref_folds["rsum"] != ref_full["rsum"]  # the two protocols differ here


def _bad_index_cases(c2i):
    no_caption = c2i.copy()
    no_caption[no_caption == 7] = 8
    return [
        (
            np.where(np.arange(len(c2i)) == 3, 50, c2i),
            r"must be in \[0, 50\).*caption 3 with value 50",
        ),
        (np.where(np.arange(len(c2i)) == 0, -1, c2i), r"must be in \[0, 50\)"),
        (c2i[:-1], f"has length {len(c2i) - 1} but there are {len(c2i)} captions"),
        (c2i.astype(np.float64), "caption_to_image must have an integer dtype"),
        (c2i[None, :], "caption_to_image must be 1-D"),
        (no_caption, "1 images have none: 7"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_evaluate_protocols_bad_index(small_dataset, case):
    img, cap, c2i = small_dataset
    bad, match = _bad_index_cases(c2i)[case]
    with pytest.raises(ValueError, match=match):
        retrieval.evaluate_protocols(img, cap, bad, protocols=["full"])
    with pytest.raises(ValueError, match=match):  # same check in rank_metrics
        retrieval.rank_metrics(np.zeros((50, len(c2i)), np.float32), bad)


def test_rank_metrics_missing_captions_listed():
    c2i = np.array([0, 2, 2, 4, 9])
    with pytest.raises(ValueError, match=r"6 images have none: 1, 3, 5, 6, 7, \.\.\."):
        retrieval.rank_metrics(np.zeros((10, 5), np.float32), c2i)


def test_evaluate_protocols_other_errors(small_dataset):
    img, cap, c2i = small_dataset
    nan_img = img.copy()
    nan_img[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"scores must be finite.*image 4"):
        retrieval.evaluate_protocols(nan_img, cap, c2i, protocols=["full"])
    keep = c2i < 49
    with pytest.raises(ValueError, match="divisible by 5"):
        retrieval.evaluate_protocols(
            img[:49], cap[keep], c2i[keep], protocols=["1k_5fold"]
        )
    with pytest.raises(ValueError, match="unknown protocols"):
        retrieval.evaluate_protocols(img, cap, c2i, protocols=["5k"])
    with pytest.raises(ValueError, match="did you mean"):
        retrieval.evaluate_protocols(img, cap, c2i, protocols="full")
    with pytest.raises(ValueError, match="at least one"):
        retrieval.evaluate_protocols(img, cap, c2i, protocols=[])


# ------------------------------------------------------------------ format_table


def test_format_table():
    values = dict(zip(retrieval.METRIC_KEYS, np.arange(11) * 10.0 + 0.25, strict=True))
    text = retrieval.format_table({"full": values, "1k_5fold": values})
    lines = text.splitlines()
    assert len(lines) == 4
    assert "rSum" in lines[0] and "i2t R@1" in lines[0] and "t2i medr" in lines[0]
    assert len({len(line) for line in lines}) == 1  # fixed width
    row = lines[2].split()
    assert row[0] == "full"
    want = [values[k] for k in retrieval.METRIC_KEYS]  # table order = METRIC_KEYS
    np.testing.assert_allclose([float(x) for x in row[1:]], want, atol=0.051)
    assert lines[3].startswith("1k_5fold")
    with pytest.raises(ValueError, match="lacks metrics"):
        retrieval.format_table({"full": {"i2t_r1": 1.0}})
