"""kmeans_1d: exact Lloyd (against a brute-force reference), weights, degenerate inputs, sklearn parity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcompress.algorithms.kmeans1d import kmeans_1d, kmeans_sse, lloyd_rows
from onnxcompress.errors import ConfigError


def _relocate_ref(x, w, lab, c_old, c_new, empty):
    """scikit-learn's rule on distinct values: farthest from their centroid move to the empty clusters."""
    vals = np.unique(x)
    vlab = np.array([lab[x == v][0] for v in vals])
    d = (vals - c_old[vlab]) ** 2
    order = np.lexsort((vals, -d))
    left = {j: np.unique(x[lab == j]).size for j in range(c_old.size)}
    picks, removed = [], {}
    for o in order:
        if d[o] <= 0 or len(picks) == empty.sum():
            break
        j = vlab[o]
        if left[j] <= 1:
            continue
        left[j] -= 1
        removed.setdefault(j, []).append(vals[o])
        picks.append(vals[o])
    for j, vs in removed.items():
        sel = (lab == j) & ~np.isin(x, vs)
        c_new[j] = np.average(x[sel], weights=w[sel])
    c_new[np.flatnonzero(empty)[: len(picks)]] = picks


def lloyd_ref(x, w, init_c, max_iter=300):
    """Textbook Lloyd: n*k distances, argmin (ties: lower), stop when labels repeat."""
    c = np.sort(np.asarray(init_c, dtype=np.float64))
    k = c.size
    prev = None
    last = c.copy()
    reloc = False
    for _ in range(max_iter):
        lab = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        if prev is not None and (lab == prev).all():
            break
        prev = lab
        new = c.copy()
        empty = np.array([not (lab == j).any() for j in range(k)])
        for j in range(k):
            if not empty[j]:
                new[j] = np.average(x[lab == j], weights=w[lab == j])
        reloc = bool(empty.any())
        if reloc:
            _relocate_ref(x, w, lab, c, new, empty)
        last = new.copy()
        c = np.sort(new)
    if not reloc:
        for j in range(k):
            if (prev == j).any():
                last[j] = np.average(x[prev == j], weights=w[prev == j])
    c = np.sort(last)
    return c, np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(5, 300),
    k=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    dist=st.sampled_from(["normal", "laplace", "uniform", "clusters"]),
    weighted=st.booleans(),
)
def test_matches_bruteforce_lloyd_from_linear_init(n, k, seed, dist, weighted):
    rng = np.random.default_rng(seed)
    x = {
        "normal": lambda: rng.standard_normal(n),
        "laplace": lambda: rng.laplace(size=n),
        "uniform": lambda: rng.uniform(-1, 1, n),
        "clusters": lambda: rng.choice([-3.0, 0.0, 5.0], n) + 0.01 * rng.standard_normal(n),
    }[dist]()
    w = rng.uniform(0.1, 3.0, n) if weighted else np.ones(n)
    if np.unique(x).size <= k:
        return
    c, lab = kmeans_1d(x, k, sample_weight=w if weighted else None)
    rc, rlab = lloyd_ref(x, w, np.linspace(x.min(), x.max(), k))
    np.testing.assert_allclose(c, rc, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(lab, rlab)
    assert c.dtype == np.float64 and lab.dtype == np.int64 and c.shape == (k,)
    assert (np.diff(c) >= 0).all()


def test_density_init_matches_reference():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(400)
    k = 6
    xs = np.sort(x)
    init = xs[np.searchsorted(np.arange(1, 401), (np.arange(k) + 0.5) / k * 400, side="right")]
    c, lab = kmeans_1d(x, k, init="density")
    rc, rlab = lloyd_ref(x, np.ones_like(x), init)
    np.testing.assert_allclose(c, rc, rtol=1e-9)
    np.testing.assert_array_equal(lab, rlab)


@pytest.mark.parametrize("init", ["linear", "density", "random", "kmeans++"])
def test_all_inits_valid_and_deterministic(init):
    x = np.random.default_rng(0).laplace(size=3000).astype(np.float32)
    c1, l1 = kmeans_1d(x, 16, init=init, seed=5)
    c2, l2 = kmeans_1d(x, 16, init=init, seed=5)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(l1, l2)
    assert (np.diff(c1) >= 0).all() and l1.min() >= 0 and l1.max() < 16
    # Labels are nearest centroids; centroids are means of their clusters (a Lloyd fixed point or
    # max_iter): at least every label is optimal for the returned centroids.
    d = np.abs(x[:, None].astype(np.float64) - c1[None, :])
    np.testing.assert_allclose(d[np.arange(x.size), l1], d.min(axis=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [4, 16])
def test_sse_not_worse_than_sklearn(seed, k):
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal(1500), rng.laplace(size=500)])
    init = np.linspace(x.min(), x.max(), k)
    km = sklearn_cluster.KMeans(k, init=init.reshape(-1, 1), n_init=1, algorithm="lloyd", max_iter=300, tol=0)
    km.fit(x.reshape(-1, 1))
    c, lab = kmeans_1d(x, k)
    ours = kmeans_sse(x, c, lab)
    theirs = kmeans_sse(x, km.cluster_centers_.ravel(), km.labels_)
    assert ours <= theirs * (1 + 1e-9)


@given(seed=st.integers(0, 10_000), k=st.integers(2, 8))
@settings(max_examples=30, deadline=None)
def test_integer_weights_equal_repetition(seed, k):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(60)
    reps = rng.integers(1, 5, 60)
    c_w, l_w = kmeans_1d(x, k, sample_weight=reps.astype(float))
    c_r, l_r = kmeans_1d(np.repeat(x, reps), k)
    np.testing.assert_allclose(c_w, c_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.repeat(l_w, reps), l_r)


def test_zero_weight_points_do_not_move_centroids_but_get_labels():
    x = np.array([0.0, 1.0, 10.0, 11.0, 100.0])
    c, lab = kmeans_1d(x, 2, sample_weight=np.array([1, 1, 1, 1, 0.0]))
    np.testing.assert_allclose(c, [0.5, 10.5])
    assert lab.tolist() == [0, 0, 1, 1, 1]
    # all-zero weights fall back to plain k-means instead of failing
    c0, _ = kmeans_1d(x, 2, sample_weight=np.zeros(5))
    np.testing.assert_allclose(c0, kmeans_1d(x, 2)[0])


def test_weighted_pulls_centroid():
    x = np.array([0.0, 1.0, 2.0, 10.0])
    c, _ = kmeans_1d(x, 2, sample_weight=np.array([1.0, 1.0, 8.0, 1.0]))
    np.testing.assert_allclose(c, [(0 + 1 + 16) / 10, 10.0])


def test_few_distinct_values_exact_with_padding():
    x = np.array([3.0, 1.0, 3.0, 2.0, 1.0], dtype=np.float32)
    c, lab = kmeans_1d(x, 5)
    assert c.tolist() == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert lab.tolist() == [2, 0, 2, 1, 0]
    assert kmeans_sse(x, c, lab) == 0.0
    c, lab = kmeans_1d(np.full(7, -0.5), 4)
    assert c.tolist() == [-0.5] * 4 and (lab == 0).all()
    # exactly k distinct values: zero error too
    c, lab = kmeans_1d(np.array([0.0, 5.0, 9.0, 5.0]), 3)
    assert c.tolist() == [0.0, 5.0, 9.0] and lab.tolist() == [0, 1, 2, 1]


def test_negative_zero_is_zero():
    c, lab = kmeans_1d(np.array([-0.0, 0.0, 1.0]), 2)
    assert c.tolist() == [0.0, 1.0] and lab.tolist() == [0, 0, 1]


def test_empty_clusters_get_reseeded():
    # Linear init on heavy-tailed data leaves many empty bins; the result must still use all k levels.
    x = np.concatenate([np.random.default_rng(0).standard_normal(2000) * 0.01, [50.0, -50.0]])
    c, lab = kmeans_1d(x, 16)
    assert np.unique(c).size == 16
    assert np.unique(lab).size == 16


def test_max_iter_and_tol():
    x = np.random.default_rng(0).laplace(size=5000)
    c0, _ = kmeans_1d(x, 8, max_iter=0)
    np.testing.assert_allclose(c0, np.linspace(x.min(), x.max(), 8))
    c1, l1 = kmeans_1d(x, 8, max_iter=1)
    rc, _ = lloyd_ref(x, np.ones_like(x), np.linspace(x.min(), x.max(), 8), max_iter=1)
    np.testing.assert_allclose(c1, rc, rtol=1e-9)
    ct, lt = kmeans_1d(x, 8, tol=1e-3)
    cf, lf = kmeans_1d(x, 8)
    assert kmeans_sse(x, cf, lf) <= kmeans_sse(x, ct, lt) * (1 + 1e-12)


def test_multi_row_solver_matches_single_rows():
    rng = np.random.default_rng(7)
    rows = [np.unique(rng.standard_normal(n)) for n in (50, 3, 0, 200, 17)]
    vals = np.concatenate(rows)
    ptr = np.concatenate([[0], np.cumsum([r.size for r in rows])])
    cent = lloyd_rows(vals, np.ones(vals.size), ptr, 6, init="linear", max_iter=300, tol=0.0, seed=0)
    for i, r in enumerate(rows):
        if r.size == 0:
            assert (cent[i] == 0).all()
        else:
            np.testing.assert_allclose(cent[i], kmeans_1d(r, 6)[0], rtol=1e-12)


def test_bf16_and_fp16_inputs():
    import ml_dtypes

    x = np.random.default_rng(0).standard_normal(1000)
    for dt in (np.float16, ml_dtypes.bfloat16):
        xd = x.astype(dt)
        c, lab = kmeans_1d(xd, 8)
        c2, lab2 = kmeans_1d(xd.astype(np.float64), 8)
        np.testing.assert_array_equal(c, c2)
        np.testing.assert_array_equal(lab, lab2)


def test_kmeans_sse():
    assert kmeans_sse([1.0, 2.0, 4.0], [1.5, 4.0], [0, 0, 1]) == pytest.approx(0.5)
    assert kmeans_sse([1.0, 2.0, 4.0], [1.5, 4.0], [0, 0, 1], sample_weight=[2, 0, 1]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"k": 2.5},
        {"k": 2, "init": "kmeans"},
        {"k": 2, "max_iter": -1},
        {"k": 2, "tol": -1.0},
        {"k": 2, "sample_weight": np.array([1.0, -1.0, 1.0])},
        {"k": 2, "sample_weight": np.ones(4)},
    ],
)
def test_config_errors(kwargs):
    with pytest.raises(ConfigError):
        kmeans_1d(np.array([1.0, 2.0, 3.0]), **kwargs)


def test_bad_data_errors():
    with pytest.raises(ConfigError):
        kmeans_1d(np.array([]), 2)
    with pytest.raises(ConfigError):
        kmeans_1d(np.array([1.0, np.nan]), 2)
