"""SmoothQuant's per-channel migration of activation outliers into weights (pure numpy).

Xiao et al., "SmoothQuant" (ICML 2023): ``X W = (X diag(s)^-1) (diag(s) W)`` for any positive
``s``; with ``s_j = max|X_j|^alpha / max|W_j,:|^(1 - alpha)`` the input channels that carry
outliers are divided down and the weight rows that read them scaled up, so one int8 scale per
activation tensor (onnxruntime's ``DynamicQuantizeLinear``) wastes fewer levels on a few channels.
``alpha`` 0.5 is the paper's default. The transform is exact in real arithmetic; what changes is
only how much each side loses when it is quantized.
"""

from __future__ import annotations

import numpy as np

from onnxcompress.errors import ConfigError

#: scales are kept inside this range: a channel that never fires, or a weight row of zeros, keeps 1
SCALE_RANGE = (1e-4, 1e4)


def smoothing_scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """float32 ``s`` per input channel: ``act^alpha / w^(1 - alpha)``, 1 where either is 0.

    ``act_absmax``: max |X| per input channel over the calibration data; ``weight_absmax``: max |W|
    per input row over every weight that reads the input (they all get ``diag(s) W``)."""
    if isinstance(alpha, bool) or not 0 < float(alpha) <= 1:
        raise ConfigError(f"smoothing alpha must be in (0, 1], got {alpha!r}")
    a = np.asarray(act_absmax, dtype=np.float64)
    w = np.asarray(weight_absmax, dtype=np.float64)
    if a.shape != w.shape or a.ndim != 1:
        raise ValueError(f"expected two vectors of one length, got {a.shape} and {w.shape}")
    ok = (a > 0) & (w > 0) & np.isfinite(a) & np.isfinite(w)
    s = np.ones_like(a)
    s[ok] = a[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, *SCALE_RANGE).astype(np.float32)


def smooth_weight(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``diag(s) W`` for ``W [in, out]`` (a MatMul's second input), in W's dtype."""
    return (np.asarray(w, dtype=np.float32) * s[:, None]).astype(w.dtype)


def _fake_dynamic_uint8(x: np.ndarray) -> np.ndarray:
    """``x`` through onnxruntime's ``DynamicQuantizeLinear`` and back: one uint8 scale and zero
    point for the whole tensor, its range stretched to include 0."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    return ((np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)


def _fake_int8_columns(w: np.ndarray) -> np.ndarray:
    """``W [in, out]`` through symmetric int8 with one scale per output column and back."""
    scale = np.abs(w).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.rint(w / scale), -127, 127) * scale).astype(np.float32)


def int8_matmul_error(x: np.ndarray, weights: list[np.ndarray], s: np.ndarray | None = None) -> float:
    """Squared error of ``x @ W`` summed over ``weights`` when both sides go through int8 (``x``
    per tensor as onnxruntime quantizes activations at run time, ``W`` per output column), with
    the inputs smoothed by ``s`` or not. Decides, on calibration rows, whether smoothing helps:
    it does on LayerNorm outputs with a few outlier channels, and can hurt elsewhere (measured on
    MiniLM-L6: the FFN-down inputs, GELU outputs, lost agreement when smoothed)."""
    x = np.asarray(x, dtype=np.float32)
    xq = _fake_dynamic_uint8(x if s is None else x / s)
    err = 0.0
    for w in weights:
        w = np.asarray(w, dtype=np.float32)
        wq = _fake_int8_columns(w if s is None else smooth_weight(w, s))
        err += float(np.sum((x @ w - xq @ wq) ** 2, dtype=np.float64))
    return err
