"""CLIP-Q clip-and-quantize (Tung & Mori, CVPR 2018), as a standalone compression method.

CLIP-Q prunes by clipping small weights to zero and quantizes the survivors by *linear* partitioning:
the range [min, max] of the remaining weights is cut into ``2**bits - 1`` equal intervals and every
weight is replaced by the mean of the weights in its interval; zero is the extra level. Unlike k-means
weight sharing, the assignment is interval membership, not nearest level, which is why this lives in its
own module (and why codes are the interval index).

Clipping is done per segment: per tensor for ``granularity="tensor"`` -- the paper's per-layer rule --
and per channel / channel group otherwise, so every segment has the same sparsity.

Two clipping rules:

* ``clip="magnitude"`` (default): the ``round(sparsity * n)`` smallest-magnitude weights of each segment
  are zeroed, ties broken by position (channel-major order), as in
  :func:`onnxcompress.algorithms.pruning.magnitude_mask`.
* ``clip="signed"``: the paper's exact rule -- the fraction ``p`` of the positive weights closest to zero
  and the fraction ``p`` of the negative weights closest to zero (``round(p * count)`` of each), so the
  clipping interval ``[c-, c+]`` is asymmetric; weights that are exactly zero are always clipped.

The result is an ordinary :class:`~onnxcompress.algorithms.codebook.CodebookTensor`, so the encoder and
the reference decoder are shared with k-means quantization.

Pure numpy; never imports onnx or onnxruntime.
"""

from __future__ import annotations

import numpy as np

from onnxcompress.algorithms import codebook as _cb
from onnxcompress.algorithms.codebook import CodebookTensor
from onnxcompress.errors import ConfigError

__all__ = ["CLIP_RULES", "compress", "decompress"]

CLIP_RULES = ("magnitude", "signed")


def _ranks_within_groups(keys: np.ndarray, group_of: np.ndarray, n_groups: int) -> np.ndarray:
    """Rank of each element within its group under ``keys`` (groups occupy the high key bits).

    A stable argsort gives ties in position order, i.e. the lower channel-major index ranks first.
    """
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(group_of, minlength=n_groups)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(keys.size, dtype=np.int64)
    rank[order] = np.arange(keys.size, dtype=np.int64) - start[group_of[order]]
    return rank


def _clip_mask(flat32: np.ndarray, seg: np.ndarray, n_seg: int, p: float, rule: str) -> np.ndarray:
    """Boolean [n]: True where the weight is clipped to zero."""
    mag = _cb.f32_key(np.abs(flat32))
    if rule == "magnitude":
        group = seg
        n_groups = n_seg
        counts = np.bincount(group, minlength=n_groups)
    else:
        # Groups per segment: 0 = positive, 1 = negative, 2 = exact zero.
        sign = np.where(flat32 > 0, 0, np.where(flat32 < 0, 1, 2)).astype(np.int64)
        group = seg * 3 + sign
        n_groups = n_seg * 3
        counts = np.bincount(group, minlength=n_groups)
    rank = _ranks_within_groups((group << 32) | mag, group, n_groups)
    k = np.rint(p * counts).astype(np.int64)  # round-half-even, like Python's round()
    if rule == "signed":
        k[2::3] = counts[2::3] if p > 0 else 0
    return rank < k[group]


def compress(
    w: np.ndarray,
    *,
    sparsity: float,
    bits: int,
    granularity: str = "tensor",
    axis: int = 0,
    group_size: int = 1,
    codebook_dtype: str = "float32",
    clip: str = "magnitude",
) -> CodebookTensor:
    """Clip the smallest weights to zero, then quantize the rest to interval means (CLIP-Q).

    With nothing clipped anywhere in the tensor (``sparsity == 0``, or too few weights for any to be
    clipped) all ``2**bits`` levels are intervals and ``pruned=False``; otherwise code 0 is the exact zero
    and the kept weights use ``2**bits - 1`` intervals. An interval that no weight falls into gets its
    midpoint, which keeps every row ascending. Entries are rounded to the stored dtype (see
    :func:`onnxcompress.algorithms.codebook.store_dtype`), and a weight's code is its interval, so
    :func:`decompress` returns exactly the rounded interval means.
    """
    w = _cb.check_weight(w)
    bits = _cb.check_bits(bits)
    axis = _cb.check_axis(axis, w.ndim, w.shape)
    try:
        p = float(sparsity)
    except (TypeError, ValueError):
        raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= p < 1.0):
        raise ConfigError(f"CLIP-Q sparsity must be in [0, 1) (fraction clipped to zero), got {sparsity!r}")
    if clip not in CLIP_RULES:
        raise ConfigError(f"clip must be one of {', '.join(CLIP_RULES)}, got {clip!r}")
    sdt = _cb.store_dtype(w.dtype, codebook_dtype)
    segments = _cb.make_segments(w.shape, axis, granularity, group_size)
    s = segments.size - 1
    lay = _cb.layout(w, None, axis, segments)

    clipped = _clip_mask(lay.flat32, lay.seg, s, p, clip) if p > 0 else np.zeros(w.size, dtype=bool)
    pruned = bool(clipped.any())
    levels = (1 << bits) - int(pruned)
    kidx = np.flatnonzero(~clipped)
    v = lay.flat32[kidx].astype(np.float64)
    sg = lay.seg[kidx]

    # Per-segment range of the kept weights (kidx is ascending, so each segment is one run).
    ptr = np.searchsorted(kidx, segments)
    has = ptr[1:] > ptr[:-1]
    lo = np.zeros(s)
    hi = np.zeros(s)
    if has.any():
        starts = ptr[:-1][has]
        lo[has] = np.minimum.reduceat(v, starts)
        hi[has] = np.maximum.reduceat(v, starts)
        # reduceat's last run extends to the end of v, which is exactly the last non-empty segment.
    width = hi - lo
    wk = width[sg]
    t = np.divide((v - lo[sg]) * levels, wk, out=np.zeros_like(v), where=wk > 0)
    bins = np.minimum(np.floor(t).astype(np.int64), levels - 1)

    flat_bin = sg * levels + bins
    sums = np.bincount(flat_bin, weights=v, minlength=s * levels).reshape(s, levels)
    cnt = np.bincount(flat_bin, minlength=s * levels).reshape(s, levels)
    mids = lo[:, None] + (np.arange(levels)[None, :] + 0.5) * (width[:, None] / levels)
    table = np.where(cnt > 0, sums / np.maximum(cnt, 1), mids)
    learned = _cb.round_table(table, sdt)
    return _cb.build(w, axis, segments, bits, pruned, learned, bins, kidx if pruned else None)


def decompress(t: CodebookTensor) -> np.ndarray:
    """Same exact reference decoder as k-means codebooks."""
    return _cb.decompress(t)
