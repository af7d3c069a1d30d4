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


def segment_ids(segments: np.ndarray, size: int) -> np.ndarray:
    seg = np.asarray(segments, dtype=np.int64)
    return np.repeat(np.arange(seg.size - 1), np.diff(seg))[:size]


def _lookup(codebook: np.ndarray, seg: np.ndarray, codes: np.ndarray, to: int) -> np.ndarray:
    return codebook[seg, codes].astype(_np_type(to))


def _scatter(size: int, pos: np.ndarray, values: np.ndarray, to: int) -> np.ndarray:
    y = np.zeros(size, dtype=_np_type(to))
    y[pos] = values
    return y


def codebook_dense(codes, codebook, segments, *, bits: int, size: int, to: int) -> np.ndarray:
    c = bitpack.decompress(codes, bits, size)
    return _lookup(codebook, segment_ids(segments, size), c, to)


def codebook_relative(
    codes, gaps, codebook, segments, *, bits, gap_bits, entries, kept, size, to
) -> np.ndarray:
    pos, real = decode_relative(bitpack.decompress(gaps, gap_bits, entries), gap_bits)
    pos = pos[real]
    c = bitpack.decompress(codes, bits, kept)
    return _scatter(size, pos, _lookup(codebook, segment_ids(segments, size)[pos], c, to), to)


def codebook_mask(codes, mask, codebook, segments, *, bits, entries, size, to) -> np.ndarray:
    pos = decode_mask(bitpack.decompress(mask, 1, size))
    c = bitpack.decompress(codes, bits, entries)
    return _scatter(size, pos, _lookup(codebook, segment_ids(segments, size)[pos], c, to), to)


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
