"""Blockwise affine (integer) codes: the weight formats onnxruntime executes without decoding.

A weight is viewed as ``W2 [rows, cols]`` (rows = output channels, cols = the reduction axis, the
layout of :mod:`onnxcompress.algorithms.calibrated.hessian`) and cut along ``cols`` into blocks of
``block_size`` values (the last block is padded with zeros). Every block ``b`` of row ``r`` has a
scale ``s`` and an integer zero point ``z`` in ``[0, 2^bits)``; a code ``q`` in ``[0, 2^bits)``
decodes to ``(q - z) * s``. That is exactly the arithmetic of ``com.microsoft.MatMulNBits``,
``GatherBlockQuantized`` and ONNX ``DequantizeLinear`` with uint codes, so what we decode in numpy
is what onnxruntime computes with.

Because ``z`` is an integer code, the code ``q == z`` decodes to exactly 0: pruned weights (``mask``)
stay exactly zero. Symmetric codes fix ``z = 2^(bits-1)`` (MatMulNBits' default when no zero point
is stored: no zero-point bytes at all).

Choosing the scale: instead of the block's min/max (which lets one outlier stretch the grid for
the whole block), we search both orientations of the symmetric grid (a negative scale puts its
extra level on the positive side) and a shrinking clipping range per block and keep, per block, the one with
the smallest squared error, then refit the scale by least squares for the chosen codes (the optimal
scale for fixed codes, so the error can only go down). With a calibration Hessian ``H`` of the
layer's inputs, :func:`gptq` rounds column by column and feeds each column's rounding error back
into the columns not yet rounded (GPTQ), which minimises the layer's *output* error instead.

Pure numpy; :func:`decompress` is exact (it is the reference the graph tests compare against).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcompress.errors import ConfigError

#: columns per lazy batch of :func:`gptq` (GPTQ's B)
LAZY_BATCH = 128

#: clipping factors tried per block (1.0 = the block's own range)
CLIP_GRID = tuple(float(a) for a in np.linspace(1.0, 0.5, 11))


@dataclass(frozen=True)
class AffineCodes:
    """Blockwise affine codes of a ``[rows, cols]`` matrix.

    ``codes``: uint8 ``[rows, blocks * block_size]`` (one code per byte; padding codes equal the
    block's zero point, so they decode to 0). ``scales``: float32 ``[rows, blocks]``.
    ``zero_points``: uint8 ``[rows, blocks]``, or None for symmetric codes (``z = 2^(bits-1)``).
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    block_size: int
    cols: int

    @property
    def rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def blocks(self) -> int:
        return int(self.scales.shape[1])

    def zero_point_array(self) -> np.ndarray:
        """The zero points as a uint8 ``[rows, blocks]`` array (the implicit one when symmetric)."""
        if self.zero_points is not None:
            return self.zero_points
        return np.full(self.scales.shape, 1 << (self.bits - 1), dtype=np.uint8)


def _check(bits: int, block_size: int) -> None:
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ConfigError(f"runtime-native codes need bits from 2 to 8, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ConfigError(
            f"block_size must be a power of 2 and at least 16 (onnxruntime's rule), got {block_size}"
        )


def _blocked(w2: np.ndarray, block_size: int) -> np.ndarray:
    rows, cols = w2.shape
    nb = -(-cols // block_size)
    out = np.zeros((rows, nb * block_size), dtype=np.float32)
    out[:, :cols] = w2
    return out.reshape(rows, nb, block_size)


def _quantize(x: np.ndarray, s: np.ndarray, z: np.ndarray, qmax: int) -> np.ndarray:
    """Codes of blocks ``x [r, nb, bs]`` for scales/zero points ``[r, nb]`` (float arrays)."""
    safe = np.where(s != 0, s, 1.0)
    return np.clip(np.rint(x / safe[..., None]) + z[..., None], 0, qmax)


def _params(
    lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    qmax = (1 << bits) - 1
    if symmetric:
        half = 1 << (bits - 1)
        # the grid is -half..half-1 times s; with a negative scale (``flip``) the extra level -half
        # lands on the positive side (onnxruntime's quantizer always puts it on the larger extreme)
        if flip:
            s = -np.maximum(hi / half, -lo / max(half - 1, 1))
        else:
            s = np.maximum(hi / max(half - 1, 1), -lo / half)
        z = np.full_like(s, half)
    else:
        s = (hi - lo) / qmax
        z = np.clip(np.rint(-lo / np.where(s > 0, s, 1.0)), 0, qmax)
    return s.astype(np.float32), z


def compress(
    w2: np.ndarray, *, bits: int = 8, block_size: int = 32, symmetric: bool = True,
    mask: np.ndarray | None = None, clip_grid: tuple[float, ...] = CLIP_GRID, refit: bool = True,
) -> AffineCodes:  # fmt: skip
    """Blockwise affine codes of ``w2 [rows, cols]`` minimising the squared error per block.

    ``mask`` (same shape, True = kept): pruned weights get the zero-point code (exactly 0) and do
    not count in the error, so the grid fits the weights that remain.
    """
    _check(bits, block_size)
    w2 = np.asarray(w2, dtype=np.float32)
    if w2.ndim != 2:
        raise ConfigError(f"expected a 2-D [rows, cols] matrix, got shape {w2.shape}")
    rows, cols = w2.shape
    qmax = (1 << bits) - 1
    x = _blocked(w2, block_size)
    keep = _blocked(np.ones_like(w2) if mask is None else mask.astype(np.float32), block_size) > 0
    x = np.where(keep, x, 0.0)
    lo = np.minimum(x.min(axis=2), 0.0)
    hi = np.maximum(x.max(axis=2), 0.0)
    best_err = np.full(lo.shape, np.inf)
    best_s = np.zeros(lo.shape, dtype=np.float32)
    best_z = np.zeros(lo.shape)
    for a, flip in [(a, f) for a in clip_grid for f in ((False, True) if symmetric else (False,))]:
        s, z = _params(lo * a, hi * a, bits, symmetric, flip)
        q = _quantize(x, s, z, qmax)
        err = (((q - z[..., None]) * s[..., None] - x) ** 2 * keep).sum(axis=2)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
        best_z = np.where(better, z, best_z)
    q = _quantize(x, best_s, best_z, qmax)
    if refit:
        # least-squares scale for the chosen codes: s* = <x, q - z> / <q - z, q - z>
        d = (q - best_z[..., None]) * keep
        num = (x * d).sum(axis=2)
        den = (d * d).sum(axis=2)
        s_ls = np.where(den > 0, num / np.where(den > 0, den, 1.0), best_s).astype(np.float32)
        same_sign = s_ls * best_s > 0
        err_ls = ((d * s_ls[..., None] - x) ** 2 * keep).sum(axis=2)
        err_old = ((d * best_s[..., None] - x) ** 2 * keep).sum(axis=2)
        best_s = np.where((err_ls <= err_old) & same_sign, s_ls, best_s)
    q = np.where(keep, q, best_z[..., None])
    codes = q.astype(np.uint8).reshape(rows, -1)
    return AffineCodes(
        codes=codes,
        scales=best_s.astype(np.float32),
        zero_points=None if symmetric else best_z.astype(np.uint8),
        bits=bits,
        block_size=block_size,
        cols=cols,
    )


def decompress(c: AffineCodes) -> np.ndarray:
    """The exact float32 ``[rows, cols]`` matrix the codes stand for: ``(q - z) * s`` per block,
    computed in float32 as onnxruntime does."""
    q = c.codes.reshape(c.rows, c.blocks, c.block_size).astype(np.float32)
    z = c.zero_point_array().astype(np.float32)
    out = (q - z[..., None]) * c.scales[..., None]
    return out.reshape(c.rows, -1)[:, : c.cols]


def gptq(
    w2: np.ndarray, h: np.ndarray, *, bits: int = 8, block_size: int = 32, symmetric: bool = True,
    mask: np.ndarray | None = None, damp: float = 0.01, act_order: bool = True, refit: bool = True,
) -> AffineCodes:  # fmt: skip
    """GPTQ-style rounding with the scales of :func:`compress` (fixed per block before rounding):
    columns are rounded in order and each column's error, weighted by the inverse Hessian, is
    pushed onto the columns not yet rounded. Pruned weights (``mask`` False) take the zero-point
    code, so they stay exactly zero, and their whole value is fed back like any rounding error (the
    kept weights after them compensate, as in SparseGPT with a fixed mask).

    ``act_order``: round the columns by decreasing ``diag(H)`` (GPTQ's "act-order"): the inputs
    with the most energy are rounded first, while every other column can still absorb their
    error. The block scales were fixed beforehand from the unrounded weights ("static groups"), so
    the order changes no stored layout. ``refit``: with the codes fixed, re-solve every row's block
    scales by least squares on the *output* error (:func:`refit_scales`); kept per row only where
    it lowers that error."""
    from onnxcompress.algorithms.calibrated.hessian import inverse_cholesky_upper

    base = compress(w2, bits=bits, block_size=block_size, symmetric=symmetric, mask=mask, refit=False)
    rows, cols = w2.shape
    h64 = np.asarray(h, dtype=np.float64)
    perm = np.argsort(-np.diag(h64), kind="stable") if act_order else np.arange(cols)
    hinv, _ = inverse_cholesky_upper(h64[np.ix_(perm, perm)], damp)
    w = np.array(w2, dtype=np.float64)[:, perm]  # a copy: the caller's w2 is never written
    keep = (np.ones_like(w, dtype=bool) if mask is None else mask.astype(bool))[:, perm]
    s = base.scales.astype(np.float64)
    z = base.zero_point_array().astype(np.float64)
    qmax = (1 << bits) - 1
    block_of = perm // block_size  # the block (of the stored layout) of each column in rounding order
    rounded = np.empty((rows, cols), dtype=np.uint8)
    # GPTQ's lazy batch updates: within a batch of columns the error goes to the batch's later columns
    # at once; the columns after the batch get the whole batch's error in one matrix product (the
    # same sums in another order, with far less memory traffic than one outer product per column)
    for c0 in range(0, cols, LAZY_BATCH):
        c1 = min(c0 + LAZY_BATCH, cols)
        errs = np.empty((rows, c1 - c0))
        for j in range(c0, c1):
            b = block_of[j]
            sj = np.where(s[:, b] != 0, s[:, b], 1.0)
            q = np.clip(np.rint(w[:, j] / sj) + z[:, b], 0, qmax)
            q = np.where(keep[:, j], q, z[:, b])
            rounded[:, j] = q
            deq = (q - z[:, b]) * s[:, b]
            err = (w[:, j] - deq) / hinv[j, j]
            errs[:, j - c0] = err
            if j + 1 < c1:
                w[:, j + 1 : c1] -= np.outer(err, hinv[j, j + 1 : c1])
        if c1 < cols:
            w[:, c1:] -= errs @ hinv[c0:c1, c1:]
    codes = np.repeat(base.zero_point_array(), block_size, axis=1)  # padding: the zero point
    codes[:, perm] = rounded
    out = AffineCodes(
        codes=codes,
        scales=base.scales,
        zero_points=base.zero_points,
        bits=bits,
        block_size=block_size,
        cols=cols,
    )
    return refit_scales(out, w2, h64, damp=damp) if refit else out


def _scale_objective(s: np.ndarray, m: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Per row, the output error of scales ``s`` less its constant part: ``s^T M s - 2 s^T r``."""
    return np.einsum("rb,rbc,rc->r", s, m, s) - 2 * np.einsum("rb,rb->r", s, rhs)


def refit_scales(c: AffineCodes, w2: np.ndarray, h: np.ndarray, *, damp: float = 0.01) -> AffineCodes:
    """The block scales that minimise the output error ``(w - w_hat) H (w - w_hat)^T`` of every row
    for the codes ``c`` holds (zero points and codes unchanged, so pruned weights stay exactly 0).

    With the codes fixed, a row's decoded weight is linear in its block scales, ``w_hat = D s``
    (``D``: the codes minus the zero point, one column per block), so the best scales solve the
    small system ``(D^T H D) s = D^T H w`` (``blocks x blocks`` per row). ``H`` is damped as GPTQ
    damps it (``damp`` x its mean diagonal), which also keeps the weight-space error in the
    objective. A row keeps its old scales where the new ones do not lower that objective (a
    float32 rounding of the solution, or a block whose codes are all zero points)."""
    rows, cols = w2.shape
    bs, nb = c.block_size, c.blocks
    width = nb * bs
    hp = np.zeros((width, width))
    hp[:cols, :cols] = h
    dmean = float(np.mean(np.diag(h))) if cols else 1.0
    hp[np.arange(cols), np.arange(cols)] += float(damp) * (dmean if dmean > 0 else 1.0)
    wp = np.zeros((rows, width))
    wp[:, :cols] = w2
    z = np.repeat(c.zero_point_array().astype(np.float64), bs, axis=1)
    d = c.codes.astype(np.float64) - z  # [rows, width]; padding columns are zero-point codes: 0
    hb = hp.reshape(nb, bs, width)
    s_old = c.scales.astype(np.float64)
    new = c.scales.copy()
    chunk = max(1, (32 << 20) // max(1, 8 * nb * width))  # ~32 MB of float64 products at a time
    for r0 in range(0, rows, chunk):
        dc = d[r0 : r0 + chunk].reshape(-1, nb, bs)  # [n, nb, bs]
        n = len(dc)
        t = np.matmul(dc.transpose(1, 0, 2), hb)  # [nb, n, width]: block b's codes times H's rows
        m = np.einsum("brck,rck->rbc", t.reshape(nb, n, nb, bs), dc)  # D^T H D per row
        rhs = np.einsum("brj,rj->rb", t, wp[r0 : r0 + n])  # D^T H w per row
        tr = np.trace(m, axis1=1, axis2=2) / nb
        lam = 1e-9 * np.where(tr > 0, tr, 1.0)
        eye = np.eye(nb)
        so = s_old[r0 : r0 + n]
        sol = np.linalg.solve(m + lam[:, None, None] * eye, (rhs + lam[:, None] * so)[..., None])[..., 0]
        s32 = sol.astype(np.float32).astype(np.float64)
        better = np.isfinite(s32).all(axis=1) & (_scale_objective(s32, m, rhs) < _scale_objective(so, m, rhs))
        new[r0 : r0 + n] = np.where(better[:, None], s32, so).astype(np.float32)
    return AffineCodes(
        codes=c.codes, scales=new, zero_points=c.zero_points, bits=c.bits, block_size=bs, cols=c.cols
    )


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack each row of uint8 codes ``[rows, n]`` LSB first into ``ceil(n * bits / 8)`` bytes: the
    layout of MatMulNBits blobs and GatherBlockQuantized rows (low-order bits first)."""
    rows, n = codes.shape
    if bits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    bitplanes = ((codes[..., None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
    flat = bitplanes.reshape(rows, n * bits)
    return np.packbits(flat, axis=1, bitorder="little")


def unpack_rows(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`."""
    if bits == 8:
        return np.asarray(packed[:, :n], dtype=np.uint8)
    rows = packed.shape[0]
    flat = np.unpackbits(packed, axis=1, bitorder="little")[:, : n * bits].reshape(rows, n, bits)
    return (flat << np.arange(bits, dtype=np.uint8)).sum(axis=2).astype(np.uint8)
