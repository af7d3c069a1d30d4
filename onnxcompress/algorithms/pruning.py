"""Magnitude pruning (Deep Compression, stage 1) and N:M structured sparsity.

Masks are boolean arrays of the weight's shape with ``True`` meaning *keep*. Every selection here is
deterministic: ties in magnitude are broken by flat (C-order) index, lower index pruned first, so the
same weights and settings always give the same mask on every machine -- the encoder and the tests
rely on being able to recompute a mask bit for bit.

Pure numpy; never imports onnx or onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from onnxcompress.errors import ConfigError

__all__ = [
    "PrunedTensor",
    "compress",
    "decompress",
    "global_threshold",
    "magnitude_mask",
    "nm_mask",
    "std_threshold",
    "threshold_mask",
]


def _check_sparsity(sparsity: float) -> float:
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0):
        raise ConfigError(
            f"sparsity must be in [0, 1) (fraction of weights to prune), got {sparsity!r}; "
            "use e.g. 0.9 to prune 90% of the weights"
        )
    return s


def _check_float_array(w: np.ndarray, name: str = "w") -> np.ndarray:
    w = np.asarray(w)
    if w.dtype.kind != "f" and w.dtype.name != "bfloat16":
        raise ConfigError(f"{name} must be a floating-point array, got dtype {w.dtype}")
    return w


def _abs_flat(w: np.ndarray) -> np.ndarray:
    """``|w|`` flattened, for ranking magnitudes: float32 for weights of at most 4 bytes (fp32,
    fp16, bf16 convert to it exactly, so order, ties and the k-th value are those of float64) at
    half the memory of float64, computed in place on one copy; wider weights stay float64."""
    dtype = np.float32 if np.dtype(w.dtype).itemsize <= 4 else np.float64
    a = np.asarray(w).astype(dtype).reshape(-1)  # a copy: abs in place
    np.abs(a, out=a)
    if np.isnan(a).any():
        raise ConfigError(
            "weights contain NaN; magnitude pruning needs finite weights -- fix the model first"
        )
    return a


def _smallest_k_mask(a: np.ndarray, k: int) -> np.ndarray:
    """Flat keep-mask that prunes the k smallest of ``a``; ties go to the lower flat index.

    O(n) via partition instead of a full stable sort: everything strictly below the k-th smallest
    value is pruned, then just enough of the entries equal to it, in index order.
    """
    n = a.size
    keep = np.ones(n, dtype=bool)
    if k <= 0:
        return keep
    if k >= n:
        keep[:] = False
        return keep
    t = np.partition(a, k - 1)[k - 1]  # a copy: ``a`` stays in index order
    below = a < t
    keep[below] = False
    need = k - int(np.count_nonzero(below))
    if need > 0:
        keep[np.flatnonzero(a == t)[:need]] = False
    return keep


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Prune exactly ``round(sparsity * w.size)`` smallest-magnitude weights of one tensor.

    An exact count (rather than a threshold) lets a plan promise a sparsity per layer even when
    many weights share a magnitude, e.g. fp16 weights or weights that are already zero.
    """
    w = _check_float_array(w)
    s = _check_sparsity(sparsity)
    k = int(round(s * w.size))
    return _smallest_k_mask(_abs_flat(w), k).reshape(w.shape)


def threshold_mask(w: np.ndarray, threshold: float) -> np.ndarray:
    """Keep ``|w| > threshold``; the strict inequality makes a threshold of 0 prune exact zeros only."""
    w = _check_float_array(w)
    t = float(threshold)
    if math.isnan(t):
        raise ConfigError("threshold is NaN; pass a finite magnitude threshold")
    a = np.asarray(w).astype(np.float64)  # compared in float64 like the threshold; abs in place
    np.abs(a, out=a)
    return (a > t).reshape(w.shape)


def global_threshold(weights: Iterable[np.ndarray], sparsity: float) -> float:
    """One magnitude threshold shared by several layers (global magnitude pruning).

    Returns the ``k``-th smallest magnitude over all elements, ``k = round(sparsity * N)``, so at
    least the requested fraction lies at or below it (more when magnitudes tie at the threshold).
    Apply it with :func:`threshold_mask`. When nothing should be pruned (``k == 0``) it returns
    ``-1.0`` so that ``threshold_mask`` keeps everything, including exact zeros; a finite value keeps
    the result JSON-serializable.

    ``weights`` may be a generator: each weight is needed only while its magnitudes are taken, so
    the peak is the magnitudes (4 bytes per fp32 weight, twice while they are concatenated) rather
    than the weights plus float64 copies.
    """
    s = _check_sparsity(sparsity)
    parts = [_abs_flat(_check_float_array(w, "weights[i]")) for w in weights]
    if not parts:
        raise ConfigError("global_threshold needs at least one weight tensor")
    a = np.concatenate(parts) if len(parts) > 1 else parts[0]
    del parts
    k = int(round(s * a.size))
    if k == 0:
        return -1.0
    a.partition(k - 1)  # in place: ``a`` is our own copy
    return float(a[k - 1])


def std_threshold(w: np.ndarray, quality: float) -> float:
    """Deep Compression's per-layer threshold: ``quality * std(w)``.

    Han et al. pick the threshold as a quality parameter times the layer's weight standard
    deviation, so one knob adapts to every layer's scale.
    """
    w = _check_float_array(w)
    q = float(quality)
    if not (q >= 0.0 and math.isfinite(q)):
        raise ConfigError(f"quality must be a finite number >= 0, got {quality!r}")
    if w.size == 0:
        raise ConfigError("std_threshold of an empty tensor is undefined; skip empty weights")
    return q * float(np.std(np.asarray(w, dtype=np.float64)))


def nm_mask(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """N:M structured sparsity along the reduction axis ``axis``.

    In every block of ``m`` consecutive elements along ``axis`` the ``n`` largest magnitudes are kept
    (ties: lower index kept). When the axis length is not a multiple of ``m`` the trailing partial
    block of length ``r`` keeps ``ceil(n * r / m)`` elements: the same density, rounded towards
    keeping, so the tail is never pruned harder than a full block. (Hardware N:M kernels need the axis
    padded to a multiple of ``m`` anyway; a padded block of zeros would keep the real elements just
    as this rule does.)
    """
    w = _check_float_array(w)
    if isinstance(n, bool) or isinstance(m, bool) or int(n) != n or int(m) != m:
        raise ConfigError(f"n and m must be integers, got n={n!r}, m={m!r}")
    n, m = int(n), int(m)
    if not (1 <= n <= m):
        raise ConfigError(f"N:M sparsity needs 1 <= n <= m, got {n}:{m}; e.g. use n=2, m=4")
    if w.ndim == 0:
        raise ConfigError("N:M sparsity needs a tensor with at least one axis")
    if not (-w.ndim <= axis < w.ndim):
        raise ConfigError(f"axis {axis} out of range for a weight of shape {w.shape}")
    axis = axis % w.ndim

    a = np.moveaxis(np.abs(np.asarray(w, dtype=np.float64)), axis, -1)
    if np.isnan(a).any():
        raise ConfigError("weights contain NaN; N:M pruning needs finite weights -- fix the model first")
    lead = a.shape[:-1]
    length = a.shape[-1]
    a2 = a.reshape(-1, length)
    keep = np.zeros(a2.shape, dtype=bool)
    full = (length // m) * m

    def block_keep(blocks: np.ndarray, n_keep: int) -> np.ndarray:
        # Stable argsort of -|w|: the largest first, equal magnitudes in index order.
        order = np.argsort(-blocks, axis=-1, kind="stable")
        out = np.zeros(blocks.shape, dtype=bool)
        np.put_along_axis(out, order[..., :n_keep], True, axis=-1)
        return out

    if full:
        blocks = a2[:, :full].reshape(a2.shape[0], full // m, m)
        keep[:, :full] = block_keep(blocks, n).reshape(a2.shape[0], full)
    r = length - full
    if r:
        keep[:, full:] = block_keep(a2[:, full:], -(-n * r // m))
    return np.moveaxis(keep.reshape(*lead, length), -1, axis)


@dataclass(frozen=True)
class PrunedTensor:
    """A pruned tensor stored as (sorted flat positions, kept values); pruned entries decode to +0."""

    shape: tuple[int, ...]
    dtype: np.dtype
    positions: np.ndarray  # int64, flat C-order indices of kept entries, strictly ascending
    values: np.ndarray  # kept values, in the weight's own dtype (exact)

    @property
    def nnz(self) -> int:
        return int(self.positions.size)


def compress(w: np.ndarray, mask: np.ndarray) -> PrunedTensor:
    """Keep the masked entries verbatim; values stay in the weight's dtype so decoding is exact."""
    w = _check_float_array(w)
    mask = np.asarray(mask)
    if mask.shape != w.shape:
        raise ConfigError(f"mask shape {mask.shape} does not match weight shape {w.shape}")
    if mask.dtype != np.bool_:
        raise ConfigError(f"mask must be a bool array (True = keep), got dtype {mask.dtype}")
    positions = np.flatnonzero(mask.reshape(-1)).astype(np.int64)
    values = np.ascontiguousarray(w.reshape(-1)[positions])
    return PrunedTensor(shape=tuple(w.shape), dtype=w.dtype, positions=positions, values=values)


def decompress(p: PrunedTensor) -> np.ndarray:
    """Exact reference decoder: zeros of the original dtype with the kept values scattered back."""
    out = np.zeros(int(np.prod(p.shape, dtype=np.int64)), dtype=p.dtype)
    out[p.positions] = p.values
    return out.reshape(p.shape)
