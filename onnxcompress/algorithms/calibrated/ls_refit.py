"""Least-squares refit of codebook values with the assignments fixed.

k-means places centroids to minimise the *weight* error; what matters is the *output* error
``sum_blocks tr((W - W_hat) H (W - W_hat)^T)``. With every weight's code fixed, ``W_hat`` is linear
in the codebook values ``c``, so the best codebook solves the normal equations
``(G + lambda I) c = b + lambda c0`` with ``G[(s,k),(s,l)] = sum_{r in s} A_rk^T H A_rl`` (``A_rk`` the
indicator of row ``r``'s weights with code ``k``) and ``b = sum_r A_r^T H W_r``. This closes the gap
after GPTQ, whose assignments were made for the k-means values.

Forming ``G`` explicitly costs ``rows * cols^2`` *per codebook value* with gathers; applying it costs
one dense ``[rows, cols] @ [cols, cols]`` product (BLAS) plus a ``bincount``. So the system is solved
matrix-free by preconditioned conjugate gradients started at the current codebook: every CG
iterate lowers the (ridge-regularised) objective, so the output error can only go down, and CG
reaches the closed-form solution in at most ``S * K`` steps (in practice a few dozen). Code 0 stays
an exact zero when the weight is pruned; the result is rounded to the codebook dtype last, and if
that rounding ever made the error worse than the input codebook, the input is returned. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from onnxcompress.algorithms.calibrated.hessian import Blocks, as_blocks, output_error, stacked


def _objective(w: np.ndarray, w_hat: np.ndarray, blocks: Blocks) -> float:
    if len(blocks) > 1 and stacked(blocks, w.shape[0]) is not None:  # grouped: batched, not per group
        return output_error(w, w_hat, blocks)[0]
    d = w - w_hat
    return float(sum(np.einsum("ij,ij->", d[sl] @ hb, d[sl]) for sl, hb in blocks))


def ls_refit(
    w2: np.ndarray,
    h: np.ndarray | Blocks,
    codes: np.ndarray,
    codebook: np.ndarray,
    seg_of_row: np.ndarray,
    *,
    pruned: bool = False,
    ridge: float = 1e-4,
    max_iter: int = 64,
    tol: float = 1e-8,
    codebook_dtype: str = "float32",
) -> np.ndarray:
    """A codebook ``[S, K]`` (rounded to ``codebook_dtype``) no worse than ``codebook`` in output error."""
    w = np.asarray(w2, dtype=np.float64)
    rows, cols = w.shape
    blocks = as_blocks(h, rows)
    c0 = np.asarray(codebook, dtype=np.float64)
    s_count, k = c0.shape
    flat = (seg_of_row[:, None] * k + codes).reshape(-1)
    free = np.ones((s_count, k), dtype=bool)
    if pruned:
        free[:, 0] = False
    used = np.bincount(flat, minlength=s_count * k).reshape(s_count, k) > 0
    free &= used  # unused entries have no gradient: leave them where they are

    st = stacked(blocks, rows)

    def apply_h(m: np.ndarray) -> np.ndarray:
        if st is not None:  # equal row blocks (a grouped convolution): one batched product
            return np.matmul(m.reshape(len(st[1]), st[0], cols), st[1]).reshape(rows, cols)
        out = np.empty_like(m)
        for sl, hb in blocks:
            out[sl] = m[sl] @ hb
        return out

    def gather(mh: np.ndarray) -> np.ndarray:
        g = np.bincount(flat, weights=mh.reshape(-1), minlength=s_count * k).reshape(s_count, k)
        return np.where(free, g, 0.0)

    def decode(c: np.ndarray) -> np.ndarray:
        return c[seg_of_row[:, None], codes]

    # Jacobi preconditioner: the diagonal of G restricted to each weight's own H_cc
    diag_cols = np.empty((rows, cols))
    if st is not None:
        diag_cols[:] = np.repeat(np.diagonal(st[1], axis1=1, axis2=2), st[0], axis=0)
    for sl, hb in blocks if st is None else ():
        diag_cols[sl] = np.diag(hb)[None, :]
    pdiag = np.bincount(flat, weights=diag_cols.reshape(-1), minlength=s_count * k).reshape(s_count, k)
    lam = ridge * (float(pdiag[free].mean()) if free.any() else 0.0)
    pdiag = np.where(free, pdiag + lam, 1.0)
    pdiag = np.where(pdiag > 0, pdiag, 1.0)

    def op(v: np.ndarray) -> np.ndarray:
        return gather(apply_h(decode(v))) + lam * np.where(free, v, 0.0)

    c = c0.copy()
    if free.any():
        r = gather(apply_h(w - decode(c)))  # b + lam c0 - (G + lam) c0 at c = c0
        z = r / pdiag
        p = z.copy()
        rz = float(np.sum(r * z))
        r0 = np.sqrt(float(np.sum(r * r)))
        for _ in range(max_iter):
            if r0 == 0 or np.sqrt(float(np.sum(r * r))) <= tol * r0:
                break
            ap = op(p)
            pap = float(np.sum(p * ap))
            if pap <= 0:
                break
            alpha = rz / pap
            c = c + alpha * p
            r = r - alpha * ap
            z = r / pdiag
            rz_new = float(np.sum(r * z))
            p = z + (rz_new / rz) * p
            rz = rz_new
    if pruned:
        c[:, 0] = 0.0
    out = c.astype(codebook_dtype).astype(np.float64)
    base = c0.astype(codebook_dtype).astype(np.float64)
    if _objective(w, decode(out), blocks) > _objective(w, decode(base), blocks):
        return base.astype(codebook_dtype)
    return out.astype(codebook_dtype)
