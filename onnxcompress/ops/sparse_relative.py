"""``SparseRelative``: raw kept values, placed by a relative index (pruning without a codebook).

As ``CodebookRelative`` with ``Y[pos[j]] = values[j]`` (docs/format.md, part 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import bitpack
from onnxcompress.algorithms.sparse import decode_relative
from onnxcompress.ops.numeric import np_type, scatter
from onnxcompress.ops.spec import OpSpec, floats, stream

if TYPE_CHECKING:
    from onnxcompress.ops.functions import Body


def reference(
    values: np.ndarray, gaps: np.ndarray, *, gap_bits: int, entries: int, kept: int, size: int, to: int
) -> np.ndarray:
    pos, real = decode_relative(bitpack.decompress(gaps, gap_bits, entries), gap_bits)
    return scatter(size, pos[real], np.asarray(values)[:kept].astype(np_type(to)), to)


def body(b: Body) -> str:
    size = b.size()
    pos, real, rank = b.relative_entries()
    zero = b.cast_to(b.const([0.0], np.float32))
    return b.scatter(size, pos, b.kept_or_zero(real, b.cast_to("values"), rank, zero))


SPEC = OpSpec(
    name="SparseRelative",
    inputs=(floats("values"), stream("gaps", bits="gap_bits", count="entries")),
    attributes=("gap_bits", "entries", "kept", "size", "to"),
    reference=reference,
    body=body,
    kept="kept",
    positions="gaps",
    doc="Y[pos[j]] = values[j] over the relative index, zero elsewhere",
)
