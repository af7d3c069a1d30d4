"""Numpy building blocks the operators' reference implementations share (docs/format.md, part 1).

The references are the specification in executable form: onnxruntime's folded output must equal
them bit for bit, the encoder's algorithms must decompress to the same arrays, and
``onnxcompress.load`` decodes whole models with them, so the lookups work in chunks.
"""

from __future__ import annotations

import numpy as np

# positions per chunk in the lookups: bounds the index temporaries on groups of 10^7+ weights
CHUNK = 1 << 20


def np_type(to: int) -> np.dtype:
    """The numpy dtype of the ``TensorProto`` data type ``to`` (onnx imported only when called)."""
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(to))


def lookup(
    codebook: np.ndarray, segments: np.ndarray, pos: np.ndarray | None, codes: np.ndarray, to: int
) -> np.ndarray:
    """``codebook[seg(pos[i]), codes[i]]`` cast to ``to`` (``pos`` None: every position in order).

    Chunked, so the temporaries (segment ids, flat indices) stay a few MB however large the group.
    """
    seg_bounds = np.asarray(segments, dtype=np.int64)
    k = codebook.shape[1]
    flat = np.asarray(codebook).reshape(-1)
    out = np.empty(codes.size, dtype=np_type(to))
    for a in range(0, codes.size, CHUNK):
        b = min(a + CHUNK, codes.size)
        p = np.arange(a, b, dtype=np.int64) if pos is None else pos[a:b]
        seg = np.searchsorted(seg_bounds, p, side="right") - 1
        out[a:b] = flat[seg * k + codes[a:b]]
    return out


def segment_ids(segments: np.ndarray, size: int) -> np.ndarray:
    """int64 [size]: the segment of every position (``segments`` holds the S + 1 bounds)."""
    bounds = np.asarray(segments, dtype=np.int64)
    return np.repeat(np.arange(bounds.size - 1, dtype=np.int64), np.diff(bounds))[:size]


def scatter(size: int, pos: np.ndarray, values: np.ndarray, to: int) -> np.ndarray:
    """``size`` zeros of type ``to`` with ``values`` at ``pos``."""
    y = np.zeros(size, dtype=np_type(to))
    y[pos] = values
    return y
