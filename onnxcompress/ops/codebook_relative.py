"""``CodebookRelative``: codes of the kept positions, placed by a relative index (Deep Compression).

``Y`` is zero except ``Y[pos[j]] = codebook[seg(pos[j]), code[j]]`` for the ``j``-th kept entry of
the gap stream; fillers (gap ``2^gap_bits - 1``) advance without a code (docs/format.md, part 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import bitpack
from onnxcompress.algorithms.sparse import decode_relative
from onnxcompress.ops.numeric import lookup, scatter
from onnxcompress.ops.spec import OpSpec, floats, ints, stream

if TYPE_CHECKING:
    from onnxcompress.ops.functions import Body


def reference(
    codes: np.ndarray, gaps: np.ndarray, codebook: np.ndarray, segments: np.ndarray,
    *, bits: int, gap_bits: int, entries: int, kept: int, size: int, to: int,
) -> np.ndarray:  # fmt: skip
    pos, real = decode_relative(bitpack.decompress(gaps, gap_bits, entries), gap_bits)
    pos = pos[real]
    c = bitpack.decompress(codes, bits, kept)
    return scatter(size, pos, lookup(codebook, segments, pos, c, to), to)


def body(b: Body) -> str:
    size = b.size()
    pos, real, rank = b.relative_entries()
    # fillers take code 0, exactly zero in every row, and land on pruned positions
    codes = b.kept_or_zero(real, b.read_codes("codes"), rank, b.const(0))
    per_position = b.segment_offsets("segments", "bits")
    offsets = None if per_position is None else b.op("Gather", per_position, pos, axis=0)
    return b.scatter(size, pos, b.lookup("codebook", offsets, codes))


SPEC = OpSpec(
    name="CodebookRelative",
    inputs=(
        stream("codes", bits="bits", count="kept"),
        stream("gaps", bits="gap_bits", count="entries"),
        floats("codebook"),
        ints("segments"),
    ),
    attributes=("bits", "gap_bits", "entries", "kept", "size", "to"),
    reference=reference,
    body=body,
    kept="kept",
    positions="gaps",
    doc="Y[pos[j]] = codebook[seg(pos[j]), code[j]] over the relative index, zero elsewhere",
)
