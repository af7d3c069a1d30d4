"""Exact numpy semantics of the decode operators (docs/format.md, part 1).

These are the specification in executable form: onnxruntime's folded output must equal them bit
for bit, and the encoder's algorithms must decompress to the same arrays.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxcompress.algorithms import bitpack
from onnxcompress.algorithms.sparse import decode_mask, decode_relative


def _np_type(to: int) -> np.dtype:
    return helper.tensor_dtype_to_np_dtype(to)


# positions per chunk in the lookups: bounds the index temporaries on groups of 10^7+ weights
CHUNK = 1 << 20


def _lookup(
    codebook: np.ndarray, segments: np.ndarray, pos: np.ndarray | None, codes: np.ndarray, to: int
) -> np.ndarray:
    """``codebook[seg(pos[i]), codes[i]]`` cast to ``to`` (``pos`` None: every position in order).

    Chunked, so the temporaries (segment ids, flat indices) stay a few MB however large the group:
    ``onnxcompress.load`` decodes whole models with these functions.
    """
    seg_bounds = np.asarray(segments, dtype=np.int64)
    k = codebook.shape[1]
    flat = np.asarray(codebook).reshape(-1)
    out = np.empty(codes.size, dtype=_np_type(to))
    for a in range(0, codes.size, CHUNK):
        b = min(a + CHUNK, codes.size)
        p = np.arange(a, b, dtype=np.int64) if pos is None else pos[a:b]
        seg = np.searchsorted(seg_bounds, p, side="right") - 1
        out[a:b] = flat[seg * k + codes[a:b]]
    return out


def _scatter(size: int, pos: np.ndarray, values: np.ndarray, to: int) -> np.ndarray:
    y = np.zeros(size, dtype=_np_type(to))
    y[pos] = values
    return y


def codebook_dense(codes, codebook, segments, *, bits: int, size: int, to: int) -> np.ndarray:
    c = bitpack.decompress(codes, bits, size)
    return _lookup(codebook, segments, None, c, to)


def codebook_relative(
    codes, gaps, codebook, segments, *, bits, gap_bits, entries, kept, size, to
) -> np.ndarray:
    pos, real = decode_relative(bitpack.decompress(gaps, gap_bits, entries), gap_bits)
    pos = pos[real]
    c = bitpack.decompress(codes, bits, kept)
    return _scatter(size, pos, _lookup(codebook, segments, pos, c, to), to)


def codebook_mask(codes, mask, codebook, segments, *, bits, entries, size, to) -> np.ndarray:
    pos = decode_mask(bitpack.decompress(mask, 1, size))
    c = bitpack.decompress(codes, bits, entries)
    return _scatter(size, pos, _lookup(codebook, segments, pos, c, to), to)


def sparse_relative(values, gaps, *, gap_bits, entries, kept, size, to) -> np.ndarray:
    pos, real = decode_relative(bitpack.decompress(gaps, gap_bits, entries), gap_bits)
    return _scatter(size, pos[real], np.asarray(values)[:kept].astype(_np_type(to)), to)


def sparse_mask(values, mask, *, entries, size, to) -> np.ndarray:
    pos = decode_mask(bitpack.decompress(mask, 1, size))
    return _scatter(size, pos, np.asarray(values).astype(_np_type(to)), to)


REFERENCE = {
    "CodebookDense": codebook_dense,
    "CodebookRelative": codebook_relative,
    "CodebookMask": codebook_mask,
    "SparseRelative": sparse_relative,
    "SparseMask": sparse_mask,
}
