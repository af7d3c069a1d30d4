"""Numerical checks of the calibrated algorithms on small synthetic problems (pure numpy)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxcompress.algorithms.calibrated.bias_correction import bias_shift
from onnxcompress.algorithms.calibrated.gptq_codebook import (
    decode_codes,
    gptq_codebook,
    kmeans_codebook,
    nearest_codes,
    row_segments,
    to_codebook_tensor,
)
from onnxcompress.algorithms.calibrated.hessian import (
    HessianAccumulator,
    im2col,
    inverse_cholesky_upper,
    output_error,
    relative_output_error,
)
from onnxcompress.algorithms.calibrated.ls_refit import ls_refit
from onnxcompress.algorithms.calibrated.obs_prune import obs_prune
from onnxcompress.algorithms.calibrated.weighted_kmeans import hessian_sensitivity, weighted_kmeans_codebook
from onnxcompress.algorithms.pruning import magnitude_mask, nm_mask


def correlated(seed: int = 0, n: int = 1500, d: int = 48, o: int = 24):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * 0.4
    x = rng.normal(size=(n, d)) @ mix + 0.3 * rng.normal(size=(n, d)) + 0.2
    w = rng.normal(size=(o, d))
    acc = HessianAccumulator(d)
    for chunk in np.array_split(x, 3):
        acc.add(chunk)
    return w, acc.hessian(), x


def test_accumulator_matches_numpy():
    w, h, x = correlated()
    np.testing.assert_allclose(h, x.T @ x / len(x), rtol=1e-10)


def test_obs_beats_magnitude_unstructured_and_nm():
    w, h, _ = correlated()
    mag = relative_output_error(w, w * magnitude_mask(w, 0.6), h)
    pruned, keep = obs_prune(w, h, sparsity=0.6, block_size=16)
    assert abs((1 - keep.mean()) - 0.6) < 1e-3
    assert np.all(pruned[~keep] == 0)
    assert relative_output_error(w, pruned, h) < 0.9 * mag
    nm = nm_mask(w, 2, 4, axis=1)
    pruned, keep = obs_prune(w, h, n=2, m=4)
    assert (keep.reshape(len(w), -1, 4).sum(-1) == 2).all()
    assert relative_output_error(w, pruned, h) < relative_output_error(w, w * nm, h)
    # a fixed mask: only the compensating update, which must help too
    pruned, keep = obs_prune(w, h, mask=nm)
    assert (keep == nm).all()
    assert relative_output_error(w, pruned, h) < relative_output_error(w, w * nm, h)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_gptq_beats_round_to_nearest(granularity):
    w, h, _ = correlated(1)
    seg = row_segments(len(w), granularity, 4)
    book = kmeans_codebook(w, seg, 3)
    rtn = relative_output_error(w, decode_codes(nearest_codes(w, book, seg, None), book, seg), h)
    codes = gptq_codebook(w, h, book, seg)
    assert codes.min() >= 0 and codes.max() < 8
    assert relative_output_error(w, decode_codes(codes, book, seg), h) < rtn


def test_weighted_kmeans_lowers_diagonal_error():
    w, h, _ = correlated(2)
    seg = row_segments(len(w), "tensor")
    sens = hessian_sensitivity(len(w), np.diag(h))
    plain = kmeans_codebook(w, seg, 2)
    weighted = weighted_kmeans_codebook(w, seg, 2, sens)

    def diag_err(book):
        return float(np.sum(sens * (w - decode_codes(nearest_codes(w, book, seg, None), book, seg)) ** 2))

    assert diag_err(weighted) <= diag_err(plain) * 1.0001


@pytest.mark.parametrize("seed,granularity,pruned,dtype", list(itertools.product(
    range(3), ["tensor", "channel"], [False, True], ["float32", "float16"])))  # fmt: skip
def test_ls_refit_never_increases_error(seed, granularity, pruned, dtype):
    w, h, _ = correlated(seed, d=32, o=12)
    seg = row_segments(len(w), granularity)
    keep = magnitude_mask(w, 0.5) if pruned else None
    book = kmeans_codebook(w, seg, 3, keep=keep).astype(dtype).astype(np.float64)
    codes = gptq_codebook(np.where(keep, w, 0) if pruned else w, h, book, seg, keep=keep)
    before, _ = output_error(w, decode_codes(codes, book, seg), h)
    new = ls_refit(w, h, codes, book, seg, pruned=pruned, codebook_dtype=dtype)
    assert new.dtype == np.dtype(dtype)
    after, _ = output_error(w, decode_codes(codes, new.astype(np.float64), seg), h)
    assert after <= before * (1 + 1e-12)
    if pruned:
        assert np.all(new[:, 0] == 0)


def test_gptq_output_is_a_valid_codebook_tensor():
    from onnxcompress.algorithms.codebook import decompress

    w, h, _ = correlated(3, d=32, o=12)
    keep = magnitude_mask(w, 0.5)
    seg = row_segments(len(w), "channel")
    book = kmeans_codebook(w, seg, 4, keep=keep)
    codes = gptq_codebook(np.where(keep, w, 0), h, book, seg, keep=keep)
    assert np.all(codes[~keep] == 0)
    shape = (32, 12)  # a MatMul weight [in, out]: channel axis 1, W2 = w.T
    ct = to_codebook_tensor(codes, book, seg, shape=shape, dtype=np.float32, axis=1, bits=4, pruned=True)
    dec = decompress(ct)
    np.testing.assert_array_equal(dec.T, decode_codes(codes, book.astype(np.float32), seg) * (codes != 0))


def test_bias_shift_cancels_mean_output_change():
    w, h, x = correlated(4)
    w_hat = w + np.random.default_rng(0).normal(size=w.shape) * 0.1
    shift = bias_shift(w, w_hat, x.mean(axis=0))
    np.testing.assert_allclose((x @ w_hat.T + shift).mean(0), (x @ w.T).mean(0), atol=1e-9)


def test_singular_hessian_is_dampened():
    x = np.random.default_rng(0).normal(size=(5, 20))  # rank 5 < 20 features
    u, d = inverse_cholesky_upper(x.T @ x, 0.0)
    assert np.isfinite(u).all() and d > 0


def _conv_brute(x, w, strides, pads, dilations, groups):
    n, c, hh, ww = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    oh = (xp.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    out = np.zeros((n, o, oh, ow))
    patches = [[] for _ in range(groups)]
    og = o // groups
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for g in range(groups):
                    patch = np.array([
                        xp[b, g * cg + ci, i * strides[0] + a * dilations[0], j * strides[1] + e * dilations[1]]
                        for ci in range(cg) for a in range(kh) for e in range(kw)
                    ])  # fmt: skip
                    patches[g].append(patch)
                    for oc in range(og):
                        out[b, g * og + oc, i, j] = patch @ w[g * og + oc].reshape(-1)
    return out, [np.array(p) for p in patches]


def test_im2col_matches_brute_force_strided_padded_grouped_conv():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 7, 6))
    w = rng.normal(size=(6, 2, 3, 2))
    strides, pads, dilations, groups = (2, 1), (1, 0, 2, 1), (1, 2), 2
    ref, ref_patches = _conv_brute(x, w, strides, pads, dilations, groups)
    cols = im2col(x, (3, 2), strides=strides, pads=pads, dilations=dilations, groups=groups)
    og = 3
    for g in range(groups):
        # brute-force order is (sample, i, j); im2col's is (sample, position) -- the same
        np.testing.assert_allclose(cols[g], ref_patches[g])
        np.testing.assert_allclose(cols[g].T @ cols[g], ref_patches[g].T @ ref_patches[g])
        y = cols[g] @ w[g * og : (g + 1) * og].reshape(og, -1).T
        np.testing.assert_allclose(
            y.reshape(2, -1, og).transpose(0, 2, 1).reshape(2, og, *ref.shape[2:]),
            ref[:, g * og : (g + 1) * og],
        )


# ------------------------------------------------------------------------------------------ grouped (batched) paths


def _grouped_problem(groups: int = 12, per: int = 2, k: int = 9, seed: int = 4):
    """A depthwise-like layer: ``groups`` row blocks of ``per`` rows, each with its own H [k, k]."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(groups * per, k))
    blocks = []
    for g in range(groups):
        x = rng.normal(size=(200, k)) @ rng.normal(size=(k, k)) * 0.5 + rng.normal(size=(200, k))
        blocks.append((slice(g * per, (g + 1) * per), x.T @ x / 200))
    return w, blocks


def test_grouped_im2col_and_accumulator_match_the_per_group_path():
    from onnxcompress.algorithms.calibrated.hessian import GroupedHessianAccumulator, im2col_grouped

    x = np.random.default_rng(0).normal(size=(3, 6, 9, 7)).astype(np.float32)
    opts = {"strides": (2, 1), "pads": (1, 0, 1, 2), "dilations": (1, 2)}
    per_group = im2col(x, (3, 2), groups=3, **opts)
    grouped = im2col_grouped(x, (3, 2), groups=3, **opts)
    for g in range(3):
        np.testing.assert_array_equal(grouped[g].T, per_group[g])
    acc = GroupedHessianAccumulator(3, per_group[0].shape[1])
    acc.add(grouped)
    for g in range(3):
        ref = HessianAccumulator(per_group[g].shape[1])
        ref.add(per_group[g])
        np.testing.assert_allclose(acc.hessians()[g], ref.hessian(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(acc.means()[g], ref.mean(), rtol=1e-5, atol=1e-7)
    # the pointwise shortcut (1x1, no padding, strided) against the general gather
    (fast,) = im2col(x, (1, 1), strides=(2, 3))
    np.testing.assert_array_equal(fast, im2col_grouped(x, (1, 1), strides=(2, 3))[0].T)


def test_batched_gptq_obs_and_refit_match_the_per_block_loop():
    from onnxcompress.algorithms.calibrated.gptq_codebook import gptq_codebook_blocks
    from onnxcompress.algorithms.calibrated.hessian import stacked
    from onnxcompress.algorithms.calibrated.obs_prune import obs_prune_blocks

    w, blocks = _grouped_problem()
    rows = w.shape[0]
    assert stacked(blocks, rows) is not None and stacked(blocks[::-1], rows) is None
    seg = row_segments(rows, "channel")
    book = kmeans_codebook(w, seg, 2)
    codes = gptq_codebook_blocks(w, blocks, book, seg)
    loop = np.concatenate([gptq_codebook(w[sl], h, book, seg[sl]) for sl, h in blocks])
    np.testing.assert_array_equal(codes, loop)

    pruned, keep = obs_prune_blocks(w, blocks, sparsity=0.5)
    for sl, h in blocks:
        ref_w, ref_keep = obs_prune(w[sl], h, sparsity=0.5)
        np.testing.assert_array_equal(keep[sl], ref_keep)
        np.testing.assert_allclose(pruned[sl], ref_w, rtol=1e-10, atol=1e-12)

    refit = ls_refit(w, blocks, codes, book, seg)
    refit_loop = ls_refit(w, blocks[::-1], codes, book, seg)  # not in row order: the per-block loop
    np.testing.assert_allclose(refit, refit_loop, rtol=1e-5, atol=1e-6)
    dec = decode_codes(codes, book, seg)
    np.testing.assert_allclose(output_error(w, dec, blocks), output_error(w, dec, blocks[::-1]), rtol=1e-10)
