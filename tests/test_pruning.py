"""Pruning masks: exact counts, smallest magnitudes, deterministic ties, N:M blocks, exact round trip."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxcompress.algorithms import pruning
from onnxcompress.algorithms.pruning import (
    PrunedTensor,
    global_threshold,
    magnitude_mask,
    nm_mask,
    std_threshold,
    threshold_mask,
)
from onnxcompress.errors import ConfigError

weights = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float16]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
    elements=st.floats(-4, 4, width=16),  # width 16: many ties
)


@settings(max_examples=150, deadline=None)
@given(w=weights, sparsity=st.floats(0, 0.999))
def test_magnitude_mask_exact_count_smallest_and_ties(w, sparsity):
    mask = magnitude_mask(w, sparsity)
    assert mask.shape == w.shape and mask.dtype == np.bool_
    k = round(sparsity * w.size)
    assert int((~mask).sum()) == k
    a = np.abs(w.astype(np.float64)).ravel()
    m = mask.ravel()
    if 0 < k < w.size:
        assert a[~m].max() <= a[m].min()
    # Reference: stable sort by magnitude, prune the first k.
    ref = np.ones(w.size, bool)
    ref[np.argsort(a, kind="stable")[:k]] = False
    np.testing.assert_array_equal(m, ref)


def test_magnitude_mask_bf16_and_rounding():
    w = np.arange(1, 11, dtype=np.float32).astype(ml_dtypes.bfloat16)
    assert (~magnitude_mask(w, 0.25)).sum() == round(2.5) == 2  # Python's round: half to even
    assert (~magnitude_mask(w, 0.35)).sum() == 4
    assert magnitude_mask(w, 0.0).all()


@settings(max_examples=60, deadline=None)
@given(
    ws=st.lists(weights.filter(lambda a: a.dtype == np.float32), min_size=1, max_size=4),
    sparsity=st.floats(0, 0.99),
)
def test_global_threshold(ws, sparsity):
    t = global_threshold(ws, sparsity)
    allmag = np.concatenate([np.abs(w.astype(np.float64)).ravel() for w in ws])
    k = round(sparsity * allmag.size)
    pruned = sum(int((~threshold_mask(w, t)).sum()) for w in ws)
    assert (allmag <= t).sum() >= k
    if k == 0:
        assert pruned == 0 and t == -1.0
    else:
        assert (allmag < t).sum() < k  # t is the k-th smallest magnitude
        assert pruned >= k


def test_threshold_mask_is_strict():
    w = np.array([-0.5, 0.0, 0.5, 0.25, -0.0], dtype=np.float32)
    assert threshold_mask(w, 0.25).tolist() == [True, False, True, False, False]
    assert threshold_mask(w, 0.0).tolist() == [True, False, True, True, False]


def test_std_threshold():
    w = np.array([1.0, -1.0, 1.0, -1.0], dtype=np.float32)
    assert std_threshold(w, 0.7) == pytest.approx(0.7)
    with pytest.raises(ConfigError):
        std_threshold(w, -1)


@settings(max_examples=100, deadline=None)
@given(
    w=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=11),
        elements=st.floats(-3, 3, width=16),
    ),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 4)]),
    data=st.data(),
)
def test_nm_mask_blocks(w, nm, data):
    n, m = nm
    axis = data.draw(st.integers(-w.ndim, w.ndim - 1))
    mask = nm_mask(w, n, m, axis)
    assert mask.shape == w.shape
    a = np.moveaxis(np.abs(w.astype(np.float64)), axis, -1).reshape(-1, w.shape[axis])
    km = np.moveaxis(mask, axis, -1).reshape(-1, w.shape[axis])
    length = a.shape[1]
    for start in range(0, length, m):
        blk, kb = a[:, start : start + m], km[:, start : start + m]
        r = blk.shape[1]
        expect = n if r == m else math.ceil(n * r / m)
        assert (kb.sum(axis=1) == expect).all()
        for row in range(blk.shape[0]):
            kept, dropped = blk[row][kb[row]], blk[row][~kb[row]]
            if dropped.size:
                assert kept.min() >= dropped.max()


def test_nm_mask_ties_keep_lower_index_and_axis():
    w = np.ones((2, 8), dtype=np.float32)
    assert nm_mask(w, 2, 4, axis=1)[0].tolist() == [True, True, False, False] * 2
    w = np.array([[1.0, 5.0], [2.0, 1.0], [3.0, 0.0], [0.5, 9.0]], dtype=np.float32)
    mask = nm_mask(w, 2, 4, axis=0)
    assert mask[:, 0].tolist() == [False, True, True, False]
    assert mask[:, 1].tolist() == [True, False, False, True]


@pytest.mark.parametrize("args", [(2, 1, 0), (0, 4, 0), (2, 4, 2), (2, 4, -3), (2.5, 4, 0)])
def test_nm_mask_errors(args):
    with pytest.raises(ConfigError):
        nm_mask(np.ones((4, 4), np.float32), *args)


@settings(max_examples=80, deadline=None)
@given(w=weights, sparsity=st.floats(0, 0.95))
def test_compress_decompress_exact(w, sparsity):
    mask = magnitude_mask(w, sparsity)
    p = pruning.compress(w, mask)
    assert isinstance(p, PrunedTensor)
    assert p.positions.dtype == np.int64 and (np.diff(p.positions) > 0).all()
    assert p.values.dtype == w.dtype and p.nnz == int(mask.sum())
    d = pruning.decompress(p)
    assert d.dtype == w.dtype and d.shape == w.shape
    np.testing.assert_array_equal(
        d.view(np.uint16 if w.dtype == np.float16 else np.uint32)[mask],
        w.view(np.uint16 if w.dtype == np.float16 else np.uint32)[mask],
    )
    assert (d[~mask] == 0).all() and not np.signbit(d[~mask]).any()


def test_compress_bf16():
    w = np.array([[0.1, -2.0], [3.0, 0.01]], dtype=ml_dtypes.bfloat16)
    d = pruning.decompress(pruning.compress(w, magnitude_mask(w, 0.5)))
    assert d.dtype == w.dtype
    assert d.astype(np.float32).tolist() == [[0.0, -2.0], [3.0, 0.0]]


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "x"])
def test_bad_sparsity(sparsity):
    with pytest.raises(ConfigError):
        magnitude_mask(np.ones(4, np.float32), sparsity)
    with pytest.raises(ConfigError):
        global_threshold([np.ones(4, np.float32)], sparsity)


def test_bad_inputs():
    with pytest.raises(ConfigError):
        magnitude_mask(np.array([1.0, np.nan], np.float32), 0.5)
    with pytest.raises(ConfigError):
        magnitude_mask(np.arange(4), 0.5)
    with pytest.raises(ConfigError):
        pruning.compress(np.ones(4, np.float32), np.ones(3, bool))
    with pytest.raises(ConfigError):
        pruning.compress(np.ones(4, np.float32), np.ones(4, np.int8))
    with pytest.raises(ConfigError):
        global_threshold([], 0.5)
