"""Bias correction: cancel the mean shift that compressing a layer's weights causes.

Compression error is not zero-mean in the output: ``E[W_hat x] - E[W x] = (W_hat - W) E[x]``
shifts every output channel by a constant, which the next layers (and ReLUs) amplify. Subtracting
it from the bias (Nagel et al., data-free quantization) is nearly free and undoes the first-order
part of the damage. Pure numpy.
"""

from __future__ import annotations

import numpy as np


def bias_shift(
    w2: np.ndarray, w_hat: np.ndarray, mean_x: np.ndarray | list[tuple[slice, np.ndarray]]
) -> np.ndarray:
    """The amount to *add* to the bias, ``-(W_hat - W) E[x]`` ``[rows]`` (per group for grouped convs)."""
    d = np.asarray(w_hat, dtype=np.float64) - np.asarray(w2, dtype=np.float64)
    blocks = [(slice(0, d.shape[0]), mean_x)] if isinstance(mean_x, np.ndarray) else mean_x
    out = np.zeros(d.shape[0], dtype=np.float64)
    for sl, mx in blocks:
        out[sl] = -(d[sl] @ np.asarray(mx, dtype=np.float64))
    return out
