"""CLIP-Q: hand-computed examples of the paper's rule and a direct per-segment implementation."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcompress.algorithms import clipq
from onnxcompress.algorithms.codebook import decompress
from onnxcompress.errors import ConfigError

W = np.array([0.1, -0.2, 0.5, 0.9, -1.0, 0.05, 0.3, -0.6], dtype=np.float32)


def test_hand_example_magnitude_clip():
    # p = 0.25 of 8 -> clip the 2 smallest |w|: 0.05 and 0.1.
    # Remaining: -1.0, -0.6, -0.2, 0.3, 0.5, 0.9 on [-1.0, 0.9]; 2 bits -> 3 intervals of width 19/30:
    #   [-1.0, -0.3667): {-1.0, -0.6} -> -0.8;  [-0.3667, 0.2667): {-0.2} -> -0.2;  [0.2667, 0.9]: {0.3, 0.5, 0.9} -> 17/30
    t = clipq.compress(W, sparsity=0.25, bits=2)
    assert t.pruned and t.bits == 2
    np.testing.assert_allclose(t.codebook[0], [0.0, -0.8, -0.2, 17 / 30], rtol=1e-6)
    assert t.codes.tolist() == [0, 2, 3, 3, 1, 0, 3, 1]
    np.testing.assert_allclose(
        decompress(t), [0.0, -0.2, 17 / 30, 17 / 30, -0.8, 0.0, 17 / 30, -0.8], rtol=1e-6
    )


def test_hand_example_signed_clip_paper_rule():
    # Positives {0.1, 0.5, 0.9, 0.05, 0.3}: round(0.25 * 5) = 1 clipped (0.05).
    # Negatives {-0.2, -1.0, -0.6}: round(0.25 * 3) = 1 clipped (-0.2).
    # Remaining -1.0, -0.6 | 0.1 | 0.3, 0.5, 0.9 in the same three intervals.
    t = clipq.compress(W, sparsity=0.25, bits=2, clip="signed")
    np.testing.assert_allclose(t.codebook[0], [0.0, -0.8, 0.1, 17 / 30], rtol=1e-6)
    assert t.codes.tolist() == [2, 0, 3, 3, 1, 0, 3, 1]


def test_no_clipping_uses_all_levels_and_empty_intervals_get_midpoints():
    w = np.array([[0.0, 1.0], [4.0, 3.0]], dtype=np.float32)
    t = clipq.compress(w, sparsity=0.0, bits=2, granularity="channel", axis=1)
    assert not t.pruned
    # channel 0 = {0, 4}: intervals of width 1 on [0, 4]: means 0, (0.5+1.5... empty -> 1.5, 2.5), 4
    np.testing.assert_allclose(t.codebook[0], [0.0, 1.5, 2.5, 4.0])
    # channel 1 = {1, 3}: width 0.5 -> 1, 1.75, 2.25, 3
    np.testing.assert_allclose(t.codebook[1], [1.0, 1.75, 2.25, 3.0])
    np.testing.assert_array_equal(decompress(t), w)


def test_exact_zeros_clipped_under_signed_rule():
    w = np.array([0.0, 0.0, 1.0, 2.0, -1.0, -2.0], dtype=np.float32)
    t = clipq.compress(w, sparsity=0.1, bits=2, clip="signed")  # round(0.2) = 0 of each sign
    assert t.pruned and t.codes[:2].tolist() == [0, 0] and (t.codes[2:] > 0).all()


def _direct(w, p, bits, segments_rows, rule):
    """Straightforward per-segment implementation of the rule, for comparison."""
    out = []
    for x in segments_rows:
        x = x.astype(np.float64)
        n = x.size
        clipped = np.zeros(n, bool)
        if p > 0:
            if rule == "magnitude":
                clipped[np.argsort(np.abs(x), kind="stable")[: round(p * n)]] = True
            else:
                for sgn in (1, -1):
                    idx = np.flatnonzero(np.sign(x) == sgn)
                    clipped[idx[np.argsort(np.abs(x[idx]), kind="stable")[: round(p * idx.size)]]] = True
                clipped[x == 0] = True
        out.append((x, clipped))
    pruned = any(c.any() for _, c in out)
    levels = 2**bits - int(pruned)
    dec = []
    for x, c in out:
        r = x[~c]
        y = np.zeros_like(x)
        if r.size:
            lo, hi = r.min(), r.max()
            for i in range(levels):
                a = lo + (hi - lo) * i / levels
                b = lo + (hi - lo) * (i + 1) / levels
                sel = (~c) & (x >= a) & ((x < b) | (i == levels - 1))
                if sel.any():
                    y[sel] = x[sel].mean()
        dec.append(y)
    return pruned, dec


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    p=st.sampled_from([0.0, 0.2, 0.5, 0.9]),
    bits=st.integers(1, 4),
    gran=st.sampled_from(["tensor", "channel", "group"]),
    rule=st.sampled_from(["magnitude", "signed"]),
)
def test_matches_direct_implementation(seed, p, bits, gran, rule):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((5, 12)).astype(np.float32)
    axis = 1
    t = clipq.compress(w, sparsity=p, bits=bits, granularity=gran, axis=axis, group_size=3, clip=rule)
    flat = np.moveaxis(w, axis, 0).reshape(-1)
    rows = np.split(flat, t.segments[1:-1])
    pruned, dec = _direct(w, p, bits, rows, rule)
    assert t.pruned == pruned
    got = np.moveaxis(decompress(t), axis, 0).reshape(-1)
    np.testing.assert_allclose(got, np.concatenate(dec).astype(np.float32), rtol=1e-6, atol=1e-7)
    if pruned:
        assert (got[t.codes == 0] == 0).all() and (t.codebook[:, 0] == 0).all()
    assert (np.diff(t.codebook[:, int(t.pruned) :].astype(np.float64), axis=1) >= -1e-7).all()


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_narrow_dtypes_exact(dtype):
    w = np.random.default_rng(0).standard_normal((8, 16)).astype(dtype)
    t = clipq.compress(w, sparsity=0.5, bits=3, granularity="channel", codebook_dtype="float32")
    assert t.codebook.dtype == np.dtype(dtype)
    d = clipq.decompress(t)
    assert d.dtype == np.dtype(dtype)
    seg = t.segment_ids()
    np.testing.assert_array_equal(
        d.reshape(-1).view(np.uint16), t.codebook[seg, t.codes].astype(dtype).view(np.uint16)
    )
    # per-channel clipping: exactly half of every channel is zero
    assert ((t.codes.reshape(8, 16) == 0).sum(axis=1) == 8).all()


def test_fp16_codebook_for_fp32_weights():
    t = clipq.compress(W, sparsity=0.25, bits=3, codebook_dtype="float16")
    assert t.codebook.dtype == np.float16
    np.testing.assert_array_equal(clipq.decompress(t), t.codebook[0, t.codes].astype(np.float32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity": 1.0, "bits": 2},
        {"sparsity": -0.1, "bits": 2},
        {"sparsity": 0.5, "bits": 0},
        {"sparsity": 0.5, "bits": 2, "clip": "sym"},
        {"sparsity": 0.5, "bits": 2, "granularity": "layer"},
        {"sparsity": 0.5, "bits": 2, "axis": 1},
        {"sparsity": 0.5, "bits": 2, "codebook_dtype": "int8"},
    ],
)
def test_config_errors(kwargs):
    with pytest.raises(ConfigError):
        clipq.compress(W, **kwargs)
