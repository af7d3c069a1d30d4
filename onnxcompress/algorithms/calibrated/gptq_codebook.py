"""GPTQ-style error-feedback quantization onto a (k-means) codebook.

Round-to-nearest maps every weight to its closest codebook value independently; GPTQ maps the
columns one at a time and pushes each column's rounding error onto the columns not yet quantized,
weighted by ``H^-1`` (the OBS update), so later weights compensate for earlier ones in the layer's
output. GPTQ was designed for uniform grids, but the update does not care what the grid is: here a
column is rounded to the nearest entry of its row's codebook (per-tensor, per-channel or
per-group codebooks; a segment's codebook is shared by its rows). Pruned positions are forced to
code 0 (exact zero) and their error is fed forward like any other, which is SparseGPT's joint
prune-and-quantize step.

Also here: the codebook plumbing shared by the calibrated methods (which row uses which codebook
row, initial k-means codebooks per segment, building a valid ``CodebookTensor``). Pure numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxcompress.algorithms.calibrated.hessian import (
    Blocks,
    inverse_cholesky_upper,
    inverse_cholesky_upper_stacked,
    stacked,
)
from onnxcompress.algorithms.codebook import GRANULARITIES
from onnxcompress.algorithms.kmeans1d import kmeans_1d
from onnxcompress.errors import ConfigError


def row_segments(rows: int, granularity: str, group_size: int = 8) -> np.ndarray:
    """Codebook row used by each weight row (output channel): [rows] int64."""
    if granularity == "tensor":
        return np.zeros(rows, dtype=np.int64)
    if granularity == "channel":
        return np.arange(rows, dtype=np.int64)
    if granularity == "group":
        return np.arange(rows, dtype=np.int64) // max(int(group_size), 1)
    raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")


def segment_offsets(seg_of_row: np.ndarray, cols: int) -> np.ndarray:
    """Flat channel-major ``segments`` [S+1] (element offsets) for contiguous row segments."""
    counts = np.bincount(seg_of_row)
    return np.concatenate([[0], np.cumsum(counts) * cols]).astype(np.int64)


def kmeans_codebook(
    w2: np.ndarray,
    seg_of_row: np.ndarray,
    bits: int,
    *,
    keep: np.ndarray | None = None,
    sample_weight: np.ndarray | None = None,
    init: str = "linear",
    seed: int = 0,
) -> np.ndarray:
    """One (weighted) k-means codebook per segment: ``[S, 2**bits]`` float64.

    With ``keep`` (a pruning mask) entry 0 of every row is exact zero and the other ``2**bits - 1``
    entries are fitted to the kept weights only, matching the ``CodebookTensor`` contract.
    """
    k = 1 << int(bits)
    segs = int(seg_of_row.max()) + 1 if seg_of_row.size else 0
    book = np.zeros((segs, k), dtype=np.float64)
    for s in range(segs):
        rows = seg_of_row == s
        x = w2[rows].reshape(-1)
        sw = None if sample_weight is None else sample_weight[rows].reshape(-1)
        if keep is not None:
            sel = keep[rows].reshape(-1)
            x = x[sel]
            sw = None if sw is None else sw[sel]
            if x.size == 0:
                continue
            cent, _ = (
                kmeans_1d(x, k - 1, init=init, sample_weight=sw, seed=seed) if k > 1 else (np.zeros(0), None)
            )
            book[s, 1:] = cent
        else:
            cent, _ = kmeans_1d(x, k, init=init, sample_weight=sw, seed=seed)
            book[s] = cent
    return book


class _Nearest:
    """Nearest codebook entry for a column of weights, each row with its own codebook row."""

    def __init__(self, codebook: np.ndarray, seg_of_row: np.ndarray) -> None:
        order = np.argsort(codebook, axis=1, kind="stable")
        srt = np.take_along_axis(codebook, order, axis=1)
        self.order = order[seg_of_row]  # [rows, K]: sorted position -> code
        self.values = srt[seg_of_row]  # [rows, K] sorted values
        self.mids = 0.5 * (self.values[:, 1:] + self.values[:, :-1])  # [rows, K-1]
        self.single = codebook.shape[0] == 1
        self.k = codebook.shape[1]
        self._rows = np.arange(seg_of_row.size)

    def __call__(self, col: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        r = self._rows if rows is None else rows
        if self.k == 1:
            pos = np.zeros(col.size, dtype=np.int64)
        elif self.single:
            pos = np.searchsorted(self.mids[0], col, side="left")
        else:
            # branchless binary search per row: pos = number of midpoints strictly below col
            mids = self.mids[r]
            pos = np.zeros(col.size, dtype=np.int64)
            step = 1 << (self.k - 1).bit_length()
            while step:
                cand = pos + step
                ok = cand <= self.k - 1
                idx = np.minimum(cand, self.k - 1) - 1
                below = np.take_along_axis(mids, idx[:, None], axis=1)[:, 0] < col
                pos = np.where(ok & below, cand, pos)
                step >>= 1
        return self.order[r, pos], self.values[r, pos]


def nearest_codes(
    w2: np.ndarray, codebook: np.ndarray, seg_of_row: np.ndarray, keep: np.ndarray | None
) -> np.ndarray:
    """Round-to-nearest codes ``[rows, cols]`` (the uncalibrated baseline); pruned -> code 0."""
    near = _Nearest(codebook, seg_of_row)
    codes = np.empty(w2.shape, dtype=np.int64)
    for c in range(w2.shape[1]):
        codes[:, c] = near(w2[:, c])[0]
    if keep is not None:
        codes[~keep] = 0
    return codes


def decode_codes(codes: np.ndarray, codebook: np.ndarray, seg_of_row: np.ndarray) -> np.ndarray:
    return codebook[seg_of_row[:, None], codes]


def gptq_codebook(
    w2: np.ndarray,
    h: np.ndarray,
    codebook: np.ndarray,
    seg_of_row: np.ndarray,
    *,
    keep: np.ndarray | None = None,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
) -> np.ndarray:
    """Codes ``[rows, cols]`` (int64 into each row's codebook) chosen with GPTQ error feedback.

    ``keep`` (True = keep) forces pruned positions to code 0, which must then be an exact zero in
    every codebook row. ``act_order`` processes columns by decreasing ``diag(H)``, GPTQ's heuristic
    that quantizes the most important inputs while the most freedom to compensate remains.
    """
    w = np.asarray(w2, dtype=np.float64)
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise ConfigError(f"H must be [{cols}, {cols}], got {h.shape}")
    if keep is not None and np.any(codebook[:, 0] != 0):
        raise ConfigError("with a pruning mask, code 0 of every codebook row must be exactly zero")
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(cols)
    w = w[:, perm]  # a copy (fancy indexing): the caller's w2 is never written
    hp = h[np.ix_(perm, perm)]
    kp = None if keep is None else keep[:, perm]
    u, _ = inverse_cholesky_upper(hp, damp)
    del hp
    near = _Nearest(codebook, seg_of_row)
    codes = np.zeros((rows, cols), dtype=np.int64)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            code, q = near(col)
            if kp is not None:
                pruned = ~kp[:, i1 + i]
                code = np.where(pruned, 0, code)
                q = np.where(pruned, 0.0, q)
            codes[:, i1 + i] = code
            e = (col - q) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        if i2 < cols:
            w[:, i2:] -= err1 @ u[i1:i2, i2:]
    out = np.empty_like(codes)
    out[:, perm] = codes
    return out


def gptq_codebook_blocks(
    w2: np.ndarray,
    blocks: Blocks,
    codebook: np.ndarray,
    seg_of_row: np.ndarray,
    *,
    keep: np.ndarray | None = None,
    damp: float = 0.01,
    block_size: int = 128,
) -> np.ndarray:
    """:func:`gptq_codebook` with one ``H`` per row block (grouped convolutions, gates of a GRU's R).

    Equal contiguous blocks (a depthwise convolution: one per channel) run as one batched column
    loop over all groups; other layouts run block by block.
    """
    rows, cols = w2.shape
    if len(blocks) == 1 and blocks[0][0] == slice(0, rows):
        return gptq_codebook(w2, blocks[0][1], codebook, seg_of_row, keep=keep, damp=damp, block_size=block_size)
    st = stacked(blocks, rows)
    if st is not None:
        return _gptq_stacked(w2, st[0], st[1], codebook, seg_of_row, keep, damp, block_size)
    codes = np.empty((rows, cols), dtype=np.int64)
    for sl, h in blocks:
        codes[sl] = gptq_codebook(
            w2[sl], h, codebook, seg_of_row[sl], keep=None if keep is None else keep[sl], damp=damp,
            block_size=block_size,
        )  # fmt: skip
    return codes


def _gptq_stacked(
    w2: np.ndarray,
    per: int,
    hs: np.ndarray,
    codebook: np.ndarray,
    seg_of_row: np.ndarray,
    keep: np.ndarray | None,
    damp: float,
    block_size: int,
) -> np.ndarray:
    """GPTQ of ``G`` row blocks of ``per`` rows, block ``g`` with ``hs[g]``: the steps of
    :func:`gptq_codebook` (act order per block), vectorised over the blocks."""
    rows, cols = w2.shape
    g = len(hs)
    if keep is not None and np.any(codebook[:, 0] != 0):
        raise ConfigError("with a pruning mask, code 0 of every codebook row must be exactly zero")
    perm = np.argsort(-np.diagonal(hs, axis1=1, axis2=2), axis=1, kind="stable")  # [G, cols]
    pw = perm[:, None, :]
    w = np.take_along_axis(np.asarray(w2, dtype=np.float64).reshape(g, per, cols), pw, axis=2)
    hp = np.take_along_axis(np.take_along_axis(hs, perm[:, :, None], axis=1), pw, axis=2)
    kp = None if keep is None else np.take_along_axis(keep.reshape(g, per, cols), pw, axis=2)
    u = inverse_cholesky_upper_stacked(hp, damp)
    del hp
    near = _Nearest(codebook, seg_of_row)
    codes = np.zeros((g, per, cols), dtype=np.int64)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, :, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, :, i]
            code, q = near(col.reshape(-1))
            code, q = code.reshape(g, per), q.reshape(g, per)
            if kp is not None:
                pruned = ~kp[:, :, i1 + i]
                code = np.where(pruned, 0, code)
                q = np.where(pruned, 0.0, q)
            codes[:, :, i1 + i] = code
            e = (col - q) / u1[:, i, i][:, None]
            w1[:, :, i:] -= e[:, :, None] * u1[:, None, i, i:]
            err1[:, :, i] = e
        if i2 < cols:
            w[:, :, i2:] -= np.matmul(err1, u[:, i1:i2, i2:])
    out = np.empty_like(codes)
    np.put_along_axis(out, np.broadcast_to(pw, codes.shape), codes, axis=2)
    return out.reshape(rows, cols)


def to_codebook_tensor(
    codes: np.ndarray,
    codebook: np.ndarray,
    seg_of_row: np.ndarray,
    *,
    shape: tuple[int, ...],
    dtype: Any,
    axis: int,
    bits: int,
    pruned: bool,
    codebook_dtype: str = "float32",
) -> Any:
    """A valid ``CodebookTensor`` from codes ``[rows, cols]`` in the channel-major view."""
    from onnxcompress.algorithms.codebook import CodebookTensor

    rows, cols = codes.shape
    return CodebookTensor(
        shape=tuple(shape),
        dtype=np.dtype(dtype),
        axis=int(axis),
        segments=segment_offsets(seg_of_row, cols),
        codebook=np.asarray(codebook, dtype=codebook_dtype),
        codes=np.ascontiguousarray(codes.reshape(-1).astype(np.uint8)),
        bits=int(bits),
        pruned=bool(pruned),
    )
