"""Codebook quantization: pruned zeros, reserved code 0, nearest rounded entry, dtypes, layout."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcompress.algorithms.codebook import CodebookTensor, decompress, make_segments, quantize
from onnxcompress.algorithms.kmeans1d import kmeans_1d
from onnxcompress.algorithms.pruning import magnitude_mask
from onnxcompress.errors import ConfigError

BF16 = np.dtype(ml_dtypes.bfloat16)


def _rows_of(t: CodebookTensor, x: np.ndarray) -> list[np.ndarray]:
    """Channel-major flat array split by segments."""
    return np.split(x, t.segments[1:-1])


def _check_invariants(w, t, mask=None):
    """Everything the encoder relies on."""
    assert t.shape == w.shape and t.dtype == w.dtype
    assert t.codes.dtype == np.uint8 and t.codes.shape == (w.size,)
    assert t.codebook.shape == (t.segments.size - 1, 2**t.bits)
    assert t.segments[0] == 0 and t.segments[-1] == w.size and (np.diff(t.segments) > 0).all()
    d = decompress(t)
    assert d.dtype == w.dtype and d.shape == w.shape
    # decoded value == codebook entry cast to the weight dtype, bit for bit
    seg = t.segment_ids()
    expect = t.codebook[seg, t.codes].astype(w.dtype)
    moved = np.moveaxis(d, t.axis, 0).reshape(-1)
    np.testing.assert_array_equal(moved.view(np.uint8), expect.view(np.uint8))
    book64 = t.codebook.astype(np.float64)
    # rows sorted ascending (after the zero when pruned)
    start = 1 if t.pruned else 0
    assert (np.diff(book64[:, start:], axis=1) >= 0).all()
    x = np.moveaxis(w, t.axis, 0).reshape(-1).astype(np.float64)
    if t.pruned:
        assert (t.codebook[:, 0].astype(np.float64) == 0).all()
        assert not np.signbit(t.codebook[:, 0].astype(np.float32)).any()
        keep = np.moveaxis(mask, t.axis, 0).reshape(-1)
        assert (t.codes[~keep] == 0).all()
        assert (t.codes[keep] >= 1).all()
        assert (moved[~keep].astype(np.float64) == 0).all()
    else:
        keep = np.ones(w.size, bool)
    # each kept weight sits at its nearest (rounded) learned entry
    for r, (xr, cr, kr) in enumerate(
        zip(_rows_of(t, x), _rows_of(t, t.codes), _rows_of(t, keep), strict=True)
    ):
        if not kr.any():
            continue
        entries = book64[r, start:]
        best = np.abs(xr[kr, None] - entries[None, :]).min(axis=1)
        got = np.abs(xr[kr] - book64[r, cr[kr]])
        np.testing.assert_array_equal(got, best)
    return d


@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from([(7,), (6, 5), (4, 3, 5), (2, 9, 3)]),
    bits=st.integers(1, 5),
    gran=st.sampled_from(["tensor", "channel", "group"]),
    group_size=st.integers(1, 4),
    sparsity=st.sampled_from([0.0, 0.3, 0.7]),
    dtype=st.sampled_from([np.float32, np.float16, BF16]),
    cb_dtype=st.sampled_from(["float32", "float16"]),
    init=st.sampled_from(["linear", "density", "random", "kmeans++"]),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_invariants(shape, bits, gran, group_size, sparsity, dtype, cb_dtype, init, seed, data):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(dtype)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    mask = magnitude_mask(w, sparsity) if sparsity else None
    t = quantize(
        w,
        bits=bits,
        mask=mask,
        granularity=gran,
        axis=axis,
        group_size=group_size,
        init=init,
        codebook_dtype=cb_dtype,
        seed=seed,
    )
    assert t.axis == axis % len(shape)
    assert t.pruned == (mask is not None and not mask.all())
    if dtype == np.float32:
        assert t.codebook.dtype == np.dtype(cb_dtype)
    else:
        assert t.codebook.dtype == np.dtype(dtype)
    _check_invariants(w, t, mask)


def test_kept_near_zero_never_gets_code_zero():
    w = np.array([0.0, 1e-30, -1e-30, 1e-8, 2.0, -2.0, 0.5, 0.0], dtype=np.float32)
    mask = np.array([False, True, True, True, True, True, True, False])
    t = quantize(w, bits=2, mask=mask, codebook_dtype="float16")
    assert t.pruned
    assert (t.codes[mask] >= 1).all() and (t.codes[~mask] == 0).all()
    _check_invariants(w, t, mask)


def test_pruned_weights_do_not_pull_centroids():
    w = np.array([0.0] * 50 + [1.0, 1.1, 3.0, 3.1, 5.0, 5.2], dtype=np.float32)
    mask = w != 0
    t = quantize(w, bits=2, mask=mask)  # 3 learned levels + the reserved zero
    np.testing.assert_allclose(t.codebook[0], [0.0, 1.05, 3.05, 5.1], rtol=1e-6)
    d = decompress(t)
    assert (d[:50] == 0).all()


def test_all_true_mask_is_unpruned():
    w = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    t = quantize(w, bits=3, mask=np.ones(100, bool))
    assert not t.pruned and t.codes.max() <= 7


def test_error_decreases_with_bits():
    w = np.random.default_rng(0).standard_normal((64, 80)).astype(np.float32)
    mse = [float(np.mean((decompress(quantize(w, bits=b)) - w) ** 2)) for b in range(1, 9)]
    assert all(b < a for a, b in zip(mse, mse[1:], strict=False)), mse
    mse_ch = [
        float(np.mean((decompress(quantize(w, bits=b, granularity="channel")) - w) ** 2)) for b in (2, 4)
    ]
    assert mse_ch[1] < mse_ch[0]


def test_channel_rows_equal_kmeans_1d_per_channel():
    w = np.random.default_rng(1).standard_normal((5, 40, 3)).astype(np.float32)
    t = quantize(w, bits=3, granularity="channel", axis=1)
    assert t.codebook.shape == (40, 8)
    for c in range(40):
        ref, _ = kmeans_1d(w[:, c, :], 8)
        np.testing.assert_array_equal(t.codebook[c], ref.astype(np.float32))
        # segment c holds exactly channel c
        seg = t.codes[t.segments[c] : t.segments[c + 1]]
        np.testing.assert_array_equal(t.codebook[c][seg], decompress(t)[:, c, :].reshape(-1))


def test_segments_layout():
    np.testing.assert_array_equal(make_segments((3, 5, 4), 1, "tensor"), [0, 60])
    np.testing.assert_array_equal(make_segments((3, 5, 4), 1, "channel"), np.arange(6) * 12)
    np.testing.assert_array_equal(make_segments((3, 5, 4), 1, "group", 2), [0, 24, 48, 60])
    w = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    t = quantize(w, bits=2, granularity="group", axis=1, group_size=2)
    assert t.num_segments == 3 and t.moved_shape == (5, 3, 4)
    d = decompress(t)
    for g, chans in enumerate([[0, 1], [2, 3], [4]]):
        vals = set(d[:, chans, :].ravel().tolist())
        assert vals <= set(t.codebook[g].tolist())


def test_few_distinct_values_exact_and_padding():
    w = np.array([[1.0, 2.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0]], dtype=np.float32)
    t = quantize(w, bits=2, granularity="channel")
    np.testing.assert_array_equal(decompress(t), w)
    assert t.codebook.tolist() == [[1.0, 2.0, 2.0, 2.0], [5.0] * 4]
    mask = np.array([[True, True, False, True], [False] * 4])
    t = quantize(w, bits=3, granularity="channel", mask=mask)
    np.testing.assert_array_equal(decompress(t), w * mask)
    assert t.codebook[0].tolist() == [0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert t.codebook[1].tolist() == [0.0] * 8  # a fully pruned row


def test_rounded_centroids_collapse_deterministically():
    # Centroids that round to the same fp16 value are merged and the row is padded with the last one.
    w = np.array([1.0, 1.0 + 1e-5, 1.0 + 2e-5, 7.0], dtype=np.float32)
    t = quantize(w, bits=2, codebook_dtype="float16")
    assert t.codebook.dtype == np.float16
    assert t.codebook[0].tolist() == [1.0, 7.0, 7.0, 7.0]
    assert t.codes.tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_narrow_weights_keep_their_dtype_exactly(dtype):
    w = (np.random.default_rng(0).standard_normal((16, 33)) * 3).astype(dtype)
    for cb in ("float32", "float16"):
        t = quantize(w, bits=4, granularity="channel", codebook_dtype=cb)
        assert t.codebook.dtype == np.dtype(dtype)
        _check_invariants(w, t)
    # with 8 bits and at most 256 distinct values per channel fp16 weights are lossless
    t = quantize(w[:, :8], bits=8, granularity="channel")
    np.testing.assert_array_equal(decompress(t).view(np.uint16), w[:, :8].view(np.uint16))


def test_sample_weight():
    x = np.array([0.0, 1.0, 2.0, 10.0], dtype=np.float32)
    t = quantize(x, bits=1, sample_weight=np.array([1.0, 1.0, 8.0, 1.0]))
    np.testing.assert_allclose(t.codebook[0], [1.7, 10.0], rtol=1e-6)
    # a row whose importance is all zero still quantizes (plain k-means)
    w = np.random.default_rng(0).standard_normal((3, 20)).astype(np.float32)
    sw = np.ones_like(w)
    sw[1] = 0
    t = quantize(w, bits=2, granularity="channel", sample_weight=sw)
    np.testing.assert_array_equal(t.codebook[1], quantize(w[1], bits=2).codebook[0])
    _check_invariants(w, t)


def test_fp16_codebook_overflow_is_a_config_error():
    with pytest.raises(ConfigError, match="float32"):
        quantize(np.array([1e6, -1e6, 0.5], np.float32), bits=2, codebook_dtype="float16")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 0},
        {"bits": 9},
        {"bits": 2.0},
        {"bits": 2, "granularity": "row"},
        {"bits": 2, "axis": 2},
        {"bits": 2, "axis": -3},
        {"bits": 2, "granularity": "group", "group_size": 0},
        {"bits": 2, "mask": np.ones((3, 2), bool)},
        {"bits": 2, "mask": np.ones((2, 3), np.int8)},
        {"bits": 2, "init": "kmeans"},
        {"bits": 2, "codebook_dtype": "bfloat16"},
        {"bits": 2, "sample_weight": -np.ones((2, 3))},
    ],
)
def test_config_errors(kwargs):
    with pytest.raises(ConfigError):
        quantize(np.ones((2, 3), np.float32), **kwargs)


def test_bad_weights():
    for w in (np.ones(3, np.float64), np.array(1.0, np.float32), np.zeros((0, 3), np.float32)):
        with pytest.raises(ConfigError):
            quantize(w, bits=2)
    with pytest.raises(ConfigError):
        quantize(np.array([1.0, np.inf], np.float32), bits=2)
