"""Capture the inputs of chosen layers on calibration data (for importance and refit).

Runs a probe copy of the model (only the nodes the requested tensors need, built by
:func:`onnxcompress.calibration.capture.probe_model`) through a session from
:func:`onnxcompress.sessions.make_session`, and returns the requested tensors over all calibration
samples. Structured pruning targets small and medium models with a few hundred calibration
samples, so the activations are held in memory (``max_samples`` bounds them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnxcompress.calibration.capture import probe_model
from onnxcompress.errors import DataError


def batches_of(
    data: Mapping[str, np.ndarray], batch_size: int = 64, max_samples: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Split a dict of equally long input arrays into batches (at most ``max_samples`` rows)."""
    if not data:
        raise DataError("calibration data is empty")
    n = min(len(v) for v in data.values())
    if max_samples is not None:
        n = min(n, max_samples)
    if n == 0:
        raise DataError("calibration data has no samples")
    return [{k: v[s : s + batch_size] for k, v in data.items()} for s in range(0, n, batch_size)]


def capture(
    model: onnx.ModelProto, tensors: Sequence[str], batches: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The values of ``tensors`` over every batch, concatenated along the first axis."""
    from onnxcompress.sessions import make_session

    names = list(dict.fromkeys(tensors))
    if not names:
        return {}
    probe = probe_model(model, names)
    session = make_session(probe, optimization_level="basic")
    feeds = {i.name for i in session.get_inputs()}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in batches:
        outs = session.run(names, {k: v for k, v in batch.items() if k in feeds})
        for n, v in zip(names, outs, strict=True):
            parts[n].append(np.asarray(v))
    if not parts[names[0]]:
        raise DataError("the calibration data yielded no batches")
    return {n: _join(v) for n, v in parts.items()}


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Batches of one shape are stacked; batches of varying shapes (token sequences of different
    lengths, given unpadded) become rows of their last axis, ``[rows, features]``: the layout that
    MatMul / Gemm consumers reduce over. Convolution inputs must keep their shape."""
    if len({p.shape[1:] for p in parts}) == 1:
        return np.concatenate(parts)
    if len({p.shape[-1] for p in parts}) != 1 or min(p.ndim for p in parts) < 2:
        raise DataError("calibration batches of different shapes must agree on their last axis")
    return np.concatenate([p.reshape(-1, p.shape[-1]) for p in parts])
