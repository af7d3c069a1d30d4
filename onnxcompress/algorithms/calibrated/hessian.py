"""Second-moment accumulators and im2col: the layer-local statistics calibrated methods need.

Every calibrated method minimises the *output* error of one layer, ``||X W^T - X W_hat^T||_F^2``,
which only depends on the data through ``H = X^T X`` over the reduction features. So calibration
never keeps activations: each batch is folded into ``H`` (float64, because the sums run over up
to millions of rows and the methods invert ``H``) and thrown away.

Layout convention shared by the whole package: a weight is viewed as ``W2 [rows, cols]`` with
rows = output channels in channel-major order (``np.moveaxis(w, axis, 0).reshape(rows, -1)``,
the same layout as a :class:`CodebookTensor`'s codes) and cols = the reduction features that
``H`` is indexed by. A grouped convolution has one ``H`` per group, applying to that group's
rows: such a weight is described by ``blocks = [(row_slice, H_g), ...]``.

Pure numpy.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxcompress.errors import ConfigError

Blocks = list[tuple[slice, np.ndarray]]


class HessianAccumulator:
    """Running ``sum x x^T`` and ``sum x`` over rows of feature matrices (float64)."""

    def __init__(self, features: int) -> None:
        self.features = int(features)
        self.xtx = np.zeros((self.features, self.features), dtype=np.float64)
        self.xsum = np.zeros(self.features, dtype=np.float64)
        self.count = 0

    def add(self, x: np.ndarray) -> None:
        """Fold rows ``x [n, features]`` in; the caller may discard ``x`` afterwards."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ConfigError(f"expected activations [n, {self.features}], got shape {x.shape}")
        if x.shape[0] == 0:
            return
        # float32 activations: the product runs in float32 (twice as fast) on chunks short enough that
        # the sums stay accurate (~1e-6 relative), and is accumulated in float64 across chunks
        if x.dtype == np.float32:
            for s in range(0, x.shape[0], 8192):
                xc = x[s : s + 8192]
                self.xtx += (xc.T @ xc).astype(np.float64)
                # float32 column sums per chunk (a float64 reduction over axis 0 casts element by
                # element: it cost as much as the product), accumulated in float64 like xtx
                self.xsum += xc.sum(axis=0)
        else:
            x64 = x.astype(np.float64, copy=False)
            self.xtx += x64.T @ x64
            self.xsum += x64.sum(axis=0)
        self.count += x.shape[0]

    def hessian(self) -> np.ndarray:
        """``H = X^T X / n`` (the mean, so dampening fractions and errors do not scale with n)."""
        return self.xtx / max(self.count, 1)

    def mean(self) -> np.ndarray:
        return self.xsum / max(self.count, 1)


class GroupedHessianAccumulator:
    """One ``sum x x^T`` per group of a grouped convolution, kept as ``[G, F, F]`` and updated with
    one batched product per chunk: a depthwise convolution has as many groups as channels, and one
    :class:`HessianAccumulator` per group cost a Python call per group and batch."""

    def __init__(self, groups: int, features: int) -> None:
        self.groups, self.features = int(groups), int(features)
        self.xtx = np.zeros((self.groups, self.features, self.features), dtype=np.float64)
        self.xsum = np.zeros((self.groups, self.features), dtype=np.float64)
        self.count = 0

    def add(self, xt: np.ndarray) -> None:
        """Fold ``xt [G, features, n]`` (each group's rows as columns) in."""
        if xt.shape[:2] != (self.groups, self.features):
            raise ConfigError(f"expected activations [{self.groups}, {self.features}, n], got {xt.shape}")
        for s in range(0, xt.shape[2], 8192):  # float32 products on short chunks, as HessianAccumulator
            xc = xt[:, :, s : s + 8192]
            self.xtx += np.matmul(xc, xc.transpose(0, 2, 1)).astype(np.float64)
            self.xsum += xc.sum(axis=2)
        self.count += xt.shape[2]

    def hessians(self) -> np.ndarray:
        return self.xtx / max(self.count, 1)

    def means(self) -> np.ndarray:
        return self.xsum / max(self.count, 1)


class RowCountAccumulator:
    """How often each row of an embedding table is looked up: its sensitivity (error weight)."""

    def __init__(self, rows: int) -> None:
        self.rows = int(rows)
        self.counts = np.zeros(self.rows, dtype=np.float64)

    def add(self, indices: np.ndarray) -> None:
        idx = np.asarray(indices).reshape(-1).astype(np.int64)
        idx = np.where(idx < 0, idx + self.rows, idx)
        idx = idx[(idx >= 0) & (idx < self.rows)]
        self.counts += np.bincount(idx, minlength=self.rows)[: self.rows]


def conv_pads(
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str = "NOTSET",
) -> list[int]:
    """ONNX Conv padding as ``[begin_0, ..., begin_k, end_0, ..., end_k]``, resolving ``auto_pad``."""
    nd = len(spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for s, k, st, d in zip(spatial, kernel, strides, dilations, strict=True):
            out = -(-s // st)
            total = max((out - 1) * st + (k - 1) * d + 1 - s, 0)
            small, big = total // 2, total - total // 2
            b, e = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
            begin.append(b)
            end.append(e)
        return begin + end
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    return list(pads) if pads else [0] * (2 * nd)


def im2col(
    x: np.ndarray,
    kernel: Sequence[int],
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    groups: int = 1,
    auto_pad: str = "NOTSET",
) -> list[np.ndarray]:
    """Patches of an N-d convolution input, one matrix per group.

    ``x`` is ``[N, C, *spatial]``. Returns ``groups`` matrices ``[N * L, (C / groups) * prod(kernel)]``
    (``L`` output positions) whose columns are ordered like ``weight[o].reshape(-1)`` (channel, then
    kernel offsets in C order), so ``patches_g @ W2_g.T`` is the convolution output of group ``g``.
    """
    x = np.asarray(x)
    if x.ndim < 3:
        raise ConfigError(f"im2col needs [N, C, *spatial], got shape {x.shape}")
    nd = x.ndim - 2
    kernel = [int(k) for k in kernel]
    strides = list(strides) if strides else [1] * nd
    dilations = list(dilations) if dilations else [1] * nd
    n, c = x.shape[:2]
    if c % groups:
        raise ConfigError(f"{c} input channels do not split into {groups} groups")
    p = conv_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    if groups == 1 and all(k == 1 for k in kernel) and not any(p):  # pointwise: the rows are the pixels
        xs = x[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in strides)]
        return [np.ascontiguousarray(np.moveaxis(xs, 1, -1).reshape(-1, c))]
    grouped = im2col_grouped(
        x, kernel, strides=strides, pads=pads, dilations=dilations, groups=groups, auto_pad=auto_pad
    )
    return [np.ascontiguousarray(g.T) for g in grouped]


def im2col_grouped(
    x: np.ndarray,
    kernel: Sequence[int],
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    groups: int = 1,
    auto_pad: str = "NOTSET",
) -> np.ndarray:
    """The patches of :func:`im2col` for every group at once, transposed: ``[G, (C / G) * prod(kernel),
    N * L]`` (group ``g``'s matrix is ``out[g].T``), for :class:`GroupedHessianAccumulator`."""
    x = np.asarray(x)
    nd = x.ndim - 2
    kernel = [int(k) for k in kernel]
    strides = list(strides) if strides else [1] * nd
    dilations = list(dilations) if dilations else [1] * nd
    n, c = x.shape[:2]
    if c % groups:
        raise ConfigError(f"{c} input channels do not split into {groups} groups")
    p = conv_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p[i], p[nd + i]) for i in range(nd)]) if any(p) else x
    out_sp = [(xp.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(nd)]
    if min(out_sp) <= 0:
        raise ConfigError(f"convolution of input {x.shape} with kernel {kernel} has an empty output")
    k = int(np.prod(kernel))
    cg = c // groups
    length = int(np.prod(out_sp))
    # [G, cg, K, N, *out]: group-major, then the weight's column order, then the rows in im2col's order
    cols = np.empty((groups, cg, k, n, *out_sp), dtype=x.dtype)
    xg = xp.reshape(n, groups, cg, *xp.shape[2:])
    for ki, offs in enumerate(itertools.product(*[range(kk) for kk in kernel])):
        sl = tuple(
            slice(o * d, o * d + (os - 1) * st + 1, st)
            for o, d, os, st in zip(offs, dilations, out_sp, strides, strict=True)
        )
        cols[:, :, ki] = np.moveaxis(xg[(slice(None), slice(None), slice(None)) + tuple(sl)], 0, 2)
    return cols.reshape(groups, cg * k, n * length)


def stacked(blocks: Blocks, rows: int) -> tuple[int, np.ndarray] | None:
    """``(rows per block, H [G, c, c])`` when ``blocks`` are ``G >= 2`` equal, contiguous row blocks
    covering ``rows`` in order (a grouped convolution), so per-group work can run as batched numpy
    instead of a Python loop over the groups; None otherwise."""
    if len(blocks) < 2:
        return None
    per = rows // len(blocks)
    if per * len(blocks) != rows:
        return None
    for g, (sl, h) in enumerate(blocks):
        if sl.start != g * per or sl.stop != (g + 1) * per or sl.step not in (None, 1) or h.shape != blocks[0][1].shape:
            return None
    return per, np.stack([h for _, h in blocks])


def as_blocks(h: np.ndarray | Blocks, rows: int) -> Blocks:
    """Normalise one ``H`` (shared by all rows) or per-group blocks to ``[(row_slice, H)]``."""
    if isinstance(h, np.ndarray):
        return [(slice(0, rows), h)]
    return list(h)


def output_error(w2: np.ndarray, w_hat: np.ndarray, h: np.ndarray | Blocks) -> tuple[float, float]:
    """``(tr(dW H dW^T), tr(W H W^T))``: the layer's squared output error and squared output norm.

    Their ratio's square root estimates ``||X W^T - X W_hat^T||_F / ||X W^T||_F`` on the calibration
    data; it is what every calibrated method is judged by.
    """
    w = np.asarray(w2, dtype=np.float64)
    d = w - np.asarray(w_hat, dtype=np.float64)
    blocks = as_blocks(h, w.shape[0])
    st = stacked(blocks, w.shape[0])
    if st is not None:
        per, hs = st
        dg, wg = d.reshape(len(hs), per, -1), w.reshape(len(hs), per, -1)
        err = float(np.einsum("gij,gij->", np.matmul(dg, hs), dg))
        norm = float(np.einsum("gij,gij->", np.matmul(wg, hs), wg))
        return max(err, 0.0), max(norm, 0.0)
    err = norm = 0.0
    for sl, hb in blocks:
        err += float(np.einsum("ij,ij->", d[sl] @ hb, d[sl]))
        norm += float(np.einsum("ij,ij->", w[sl] @ hb, w[sl]))
    return max(err, 0.0), max(norm, 0.0)


def relative_output_error(w2: np.ndarray, w_hat: np.ndarray, h: np.ndarray | Blocks) -> float:
    err, norm = output_error(w2, w_hat, h)
    return float(np.sqrt(err / norm)) if norm > 0 else 0.0


def row_weighted_error(w2: np.ndarray, w_hat: np.ndarray, row_weights: np.ndarray) -> float:
    """Relative error of an embedding table whose rows are looked up ``row_weights`` times."""
    w = np.asarray(w2, dtype=np.float64)
    d = w - np.asarray(w_hat, dtype=np.float64)
    rw = np.asarray(row_weights, dtype=np.float64)
    norm = float(rw @ np.einsum("ij,ij->i", w, w))
    return float(np.sqrt(float(rw @ np.einsum("ij,ij->i", d, d)) / norm)) if norm > 0 else 0.0


def dampen(h: np.ndarray, damp: float) -> np.ndarray:
    """``H + damp * mean(diag H) * I`` (float64 copy); dead features get a unit diagonal."""
    h = np.array(h, dtype=np.float64, copy=True)
    diag = np.diag(h).copy()
    mean = float(diag.mean()) if diag.size and diag.mean() > 0 else 1.0
    dead = diag <= 0
    h[dead, dead] = mean
    h[np.diag_indices_from(h)] += damp * mean
    return h


def inverse_cholesky_upper_stacked(hs: np.ndarray, damp: float) -> np.ndarray:
    """:func:`inverse_cholesky_upper` of every ``H`` in ``hs [G, c, c]`` at once (batched LAPACK:
    the same steps, matrix by matrix). When any factorisation fails, each matrix is redone on its
    own, with the dampening escalation."""
    hs = np.array(hs, dtype=np.float64, copy=True)
    diag = np.diagonal(hs, axis1=1, axis2=2).copy()  # [G, c]
    dmean = diag.mean(axis=1)
    mean = np.where(dmean > 0, dmean, 1.0) if diag.shape[1] else np.ones(len(hs))
    idx = np.arange(hs.shape[1])
    hs[:, idx, idx] = np.where(diag <= 0, mean[:, None], diag) + float(damp) * mean[:, None]
    try:
        lower = np.linalg.cholesky(hs)
        linv = np.linalg.inv(lower)
        u = np.linalg.cholesky(np.matmul(linv.transpose(0, 2, 1), linv)).transpose(0, 2, 1)
        if np.isfinite(u).all():
            return u
    except np.linalg.LinAlgError:
        pass
    return np.stack([inverse_cholesky_upper(h, damp)[0] for h in hs])


class InverseMemo:
    """Opt-in memo of :func:`inverse_cholesky_upper` by the exact bytes of ``H`` (and damp, tries).

    Calibrating one weight under many settings (a search) factorises the same ``H`` every time
    (OBS and GPTQ each invert it: ~40% of a 784-wide layer's calibration). Inside ``with
    InverseMemo():`` a repeated ``H`` returns the factor computed the first time: the same array
    bit for bit, so results do not change. Bounded by ``max_bytes`` of kept factors; off by default.
    """

    active: InverseMemo | None = None

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self.entries: dict[tuple[Any, ...], tuple[np.ndarray, float]] = {}
        self.hits = 0
        self._previous: InverseMemo | None = None

    def __enter__(self) -> InverseMemo:
        self._previous, InverseMemo.active = InverseMemo.active, self
        return self

    def __exit__(self, *exc: object) -> None:
        InverseMemo.active = self._previous

    def key(self, h: np.ndarray, damp: float, tries: int) -> tuple[Any, ...]:
        a = np.ascontiguousarray(h)
        return (a.shape, a.dtype.str, hashlib.blake2b(a.data, digest_size=16).digest(), float(damp), tries)

    def put(self, key: tuple[Any, ...], value: tuple[np.ndarray, float]) -> None:
        if value[0].nbytes > self.max_bytes:
            return
        value[0].setflags(write=False)  # shared by every later caller: an in-place write would raise
        while self.entries and sum(v[0].nbytes for v in self.entries.values()) + value[0].nbytes > self.max_bytes:
            self.entries.pop(next(iter(self.entries)))  # oldest first
        self.entries[key] = value


def inverse_cholesky_upper(h: np.ndarray, damp: float, *, tries: int = 8) -> tuple[np.ndarray, float]:
    """Upper Cholesky factor ``U`` of ``(H + damp)^-1`` (``U^T U = H^-1``), as GPTQ/SparseGPT use.

    A calibration ``H`` is often singular (fewer samples than features, dead inputs): on a
    factorisation failure the dampening grows tenfold, up to ``tries`` times. Returns ``(U, damp used)``.
    Inside ``with InverseMemo():`` a repeated ``H`` is factorised once (callers never write ``U``).
    """
    memo = InverseMemo.active
    if memo is not None:
        key = memo.key(h, damp, tries)
        hit = memo.entries.get(key)
        if hit is not None:
            memo.hits += 1
            return hit
        found = _inverse_cholesky_upper(h, damp, tries)
        memo.put(key, found)
        return found
    return _inverse_cholesky_upper(h, damp, tries)


def _inverse_cholesky_upper(h: np.ndarray, damp: float, tries: int) -> tuple[np.ndarray, float]:
    d = float(damp)
    for _ in range(tries):
        try:
            # each [cols, cols] intermediate is released as soon as the next one exists: two of
            # them at a time, not five (8 MiB each at 1024 features, 32 MiB at 2048)
            hd = dampen(h, d)
            lower = np.linalg.cholesky(hd)
            del hd
            linv = np.linalg.inv(lower)
            del lower
            hinv = linv.T @ linv
            del linv
            u = np.linalg.cholesky(hinv).T
            del hinv
            if np.isfinite(u).all():
                return u, d
        except np.linalg.LinAlgError:
            pass
        d = max(d * 10.0, 1e-6)
    raise ConfigError(
        "the calibration Hessian stays singular even with heavy dampening; use more calibration samples "
        "or a larger damp"
    )
