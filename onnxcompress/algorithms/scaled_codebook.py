"""A codebook shared by many small weights, each with its own scale (``granularity: shared``).

Why: an 8-bit codebook costs 256 entries (1 KB in fp32) whatever the size of the weight it
serves. A model with dozens of small convolutions (depthwise filters, squeeze-excite layers)
spent more on codebooks than the 8-bit bound allows (MobileNet-style classifier: 39 KB of
codebooks on 137 KB of indices). Here the weights share one codebook ``q`` fitted once on all of
them, each normalised by its largest magnitude, and each weight stores one float32 scale ``s``:
weight ``i`` decodes to ``float32(q[code]) * s`` (4 bytes per weight instead of a table).

Exactness: :func:`quantize_scaled` returns an ordinary :class:`CodebookTensor` whose one row is
the float32 products ``q * s`` themselves, so :func:`codebook.decompress` is the reference
unchanged, and ``shared``/``scales`` say how the encoder stores it; onnxruntime's float32 ``Mul``
(one correctly rounded product) gives the same bits.

Pure numpy; never imports onnx or onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from onnxcompress.algorithms.codebook import CodebookTensor, check_bits, check_weight, quantize
from onnxcompress.errors import ConfigError

__all__ = ["SAMPLE_CAP", "fit_shared", "normalised_sample", "quantize_scaled"]

#: at most this many values of one weight enter the shared fit (a strided sample beyond that),
#: so fitting over a large model's weights stays a few MB
SAMPLE_CAP = 1 << 18
_ROUNDS = 4  # scale refits (least squares on the chosen codes, then a fresh assignment)


def normalised_sample(w: np.ndarray, cap: int = SAMPLE_CAP) -> np.ndarray:
    """``w`` divided by its largest magnitude, as float32 (a strided sample of at most ``cap``
    values); empty for an all-zero weight, which carries no shape information."""
    x = np.asarray(w, dtype=np.float32).reshape(-1)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not peak > 0:
        return np.zeros(0, dtype=np.float32)
    if x.size > cap:
        x = x[:: -(-x.size // cap)]
    return (x / np.float32(peak)).astype(np.float32)


def fit_shared(
    samples: Iterable[np.ndarray], *, bits: int, codebook_dtype: str = "float32", seed: int = 0
) -> np.ndarray:
    """The shared ``2**bits``-entry codebook (ascending, in ``codebook_dtype``): k-means over the
    pooled :func:`normalised_sample` of every weight that shares it."""
    bits = check_bits(bits)
    parts = [np.asarray(s, dtype=np.float32).reshape(-1) for s in samples]
    pooled = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if not pooled.size:  # only all-zero weights: any grid decodes them exactly with scale 0
        pooled = np.array([-1.0, 1.0], dtype=np.float32)
    return quantize(pooled, bits=bits, codebook_dtype=codebook_dtype, seed=seed).codebook[0]


def _nearest(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the non-decreasing ``table`` for each ``x`` (ties: lower)."""
    t = table.astype(np.float64)
    mids = 0.5 * (t[:-1] + t[1:])
    return np.searchsorted(mids, x.astype(np.float64), side="left").astype(np.uint8)


def quantize_scaled(w: np.ndarray, shared: np.ndarray, *, bits: int) -> CodebookTensor:
    """``w`` (float32) as codes into ``float32(shared) * s``, with the scale ``s`` of least squared
    error found from ``max|w| / max|shared|`` by alternating least-squares refits and fresh
    nearest-entry assignments (the best round is kept)."""
    w = check_weight(w)
    bits = check_bits(bits)
    if w.dtype != np.float32:
        raise ConfigError(f"granularity shared needs float32 weights, got {w.dtype}; use granularity tensor")
    q = np.asarray(shared)
    if q.shape != (1 << bits,) or q.dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ConfigError(
            f"a shared codebook must be float32/float16 of shape ({1 << bits},), got {q.dtype}{q.shape}"
        )
    q32 = q.astype(np.float32)
    if (np.diff(q32) < 0).any() or not np.isfinite(q32).all():
        raise ConfigError("a shared codebook must be finite and ascending")
    x = w.reshape(-1) + np.float32(0.0)
    x64 = x.astype(np.float64)
    peak_q = float(np.max(np.abs(q32)))
    s = np.float32(float(np.max(np.abs(x))) / peak_q) if peak_q > 0 else np.float32(0.0)
    best: tuple[float, np.float32, np.ndarray] | None = None
    for _ in range(_ROUNDS):
        table = q32 * s
        codes = _nearest(table, x)
        err = float(np.sum((x64 - table[codes]) ** 2))
        if best is None or err < best[0]:
            best = (err, s, codes)
        qc = q32[codes].astype(np.float64)
        denom = float(qc @ qc)
        if not denom > 0:
            break
        refit = np.float32((x64 @ qc) / denom)
        if not refit > 0 or refit == s:
            break
        s = refit
    assert best is not None
    _, s, codes = best
    n = x.size
    return CodebookTensor(
        shape=tuple(w.shape), dtype=w.dtype, axis=0, segments=np.array([0, n], dtype=np.int64),
        codebook=(q32 * s)[None, :], codes=codes, bits=bits, pruned=False,
        shared=q, scales=np.array([s], dtype=np.float32),
    )  # fmt: skip
