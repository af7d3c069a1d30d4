"""Hessian-aware pruning with weight updates (SparseGPT / Optimal Brain Compression).

Magnitude pruning zeroes the smallest weights and leaves the rest alone; on correlated inputs the
remaining weights could have compensated. The Optimal Brain Surgeon step removes weight ``q`` and
moves the others by ``-w_q / [H^-1]_qq * H^-1[:, q]``, the exact minimiser of the layer's output
error ``tr(dW H dW^T)`` for that removal. SparseGPT makes it affordable: columns are processed left
to right with the upper Cholesky factor ``U`` of ``H^-1`` (row ``i`` of ``U`` is the update
direction for column ``i`` once columns ``< i`` are fixed), the mask is chosen per block of
``block_size`` columns by the OBS saliency ``w^2 / U_ii^2``, and updates to later blocks are
applied lazily as one matrix product per block.

Works on ``W2 [rows, cols]`` with one ``H [cols, cols]`` (see :mod:`.hessian`); grouped
convolutions call it once per group. float64 throughout. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from onnxcompress.algorithms.calibrated.hessian import inverse_cholesky_upper
from onnxcompress.errors import ConfigError


def _nm_prune_counts(length: int, n: int, m: int) -> list[tuple[int, int, int]]:
    """(start, width, how many to prune) per N:M block along the columns, tail as in ``nm_mask``."""
    out = []
    full = (length // m) * m
    for s in range(0, full, m):
        out.append((s, m, m - n))
    r = length - full
    if r:
        out.append((full, r, r - (-(-n * r // m))))
    return out


def obs_prune(
    w2: np.ndarray,
    h: np.ndarray,
    *,
    sparsity: float | None = None,
    n: int | None = None,
    m: int | None = None,
    mask: np.ndarray | None = None,
    damp: float = 0.01,
    block_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Prune ``w2`` by OBS with weight updates; returns ``(pruned float64 [rows, cols], keep mask)``.

    Exactly one way to choose what is pruned: ``sparsity`` (fraction of the whole tensor, chosen
    adaptively per column block, so the total count is exact), ``n``/``m`` (keep ``n`` of every ``m``
    consecutive columns per row, like :func:`~onnxcompress.algorithms.pruning.nm_mask`), or a fixed
    ``mask`` (True = keep; only the compensating updates are computed).
    """
    w = np.array(w2, dtype=np.float64, copy=True)
    if w.ndim != 2:
        raise ConfigError(f"obs_prune works on a 2-D [rows, cols] view, got shape {w.shape}")
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise ConfigError(
            f"H must be [{cols}, {cols}] for a weight with {cols} input features, got {h.shape}"
        )
    modes = sum(x is not None for x in (sparsity, mask)) + (n is not None)
    if modes != 1:
        raise ConfigError("obs_prune needs exactly one of sparsity, n/m or mask")
    if n is not None:
        if m is None or not 1 <= n <= m:
            raise ConfigError(f"N:M pruning needs 1 <= n <= m, got n={n}, m={m}")
        # N:M blocks must not straddle lazy-update blocks: round the block size to a multiple of m
        block_size = max(m, (block_size // m) * m)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != w.shape:
            raise ConfigError(f"mask shape {mask.shape} does not match the weight view {w.shape}")
    u, _ = inverse_cholesky_upper(h, damp)
    keep = np.ones((rows, cols), dtype=bool)
    total_prune = int(round(float(sparsity) * w.size)) if sparsity is not None else 0
    pruned_so_far = 0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d = np.diag(u1)
        if mask is not None:
            keep1 = mask[:, i1:i2].copy()
        elif sparsity is not None:
            # adaptive mask per block: prune the block's share of the total by OBS saliency
            target = int(round(total_prune * i2 / cols)) - pruned_so_far
            keep1 = np.ones_like(w1, dtype=bool)
            if target > 0:
                score = (w1 / d[None, :]) ** 2
                idx = np.argpartition(score.reshape(-1), target - 1)[:target]
                keep1.reshape(-1)[idx] = False
            pruned_so_far += max(target, 0)
        else:
            keep1 = np.ones_like(w1, dtype=bool)
        nm_blocks = _nm_prune_counts(i2 - i1, n, m) if n is not None and m is not None else []
        nm_at = {s: (width, cnt) for s, width, cnt in nm_blocks}
        for i in range(i2 - i1):
            if i in nm_at:
                width, cnt = nm_at[i]
                if cnt > 0:
                    # saliency with the current (already updated) weights of this N:M block
                    score = (w1[:, i : i + width] / d[None, i : i + width]) ** 2
                    order = np.argsort(score, axis=1, kind="stable")[:, :cnt]
                    np.put_along_axis(keep1[:, i : i + width], order, False, axis=1)
            col = w1[:, i]
            q = np.where(keep1[:, i], col, 0.0)
            q1[:, i] = q
            e = (col - q) / d[i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        w[:, i1:i2] = q1
        keep[:, i1:i2] = keep1
        if i2 < cols:
            w[:, i2:] -= err1 @ u[i1:i2, i2:]
    w[~keep] = 0.0
    return w, keep
