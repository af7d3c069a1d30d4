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
    from onnx import numpy_helper  # not at import time: the CLI's --help must not load onnx

    size = b.size()
    pos, real, rank = b.relative_entries()
    # the value indices are scattered (int32), then the values gathered: no float Where/Scatter
    zeros = b.op("ConstantOfShape", size, value=numpy_helper.from_array(np.array([0], np.int32)))
    index = b.op("ScatterElements", zeros, pos, b.kept_index(real, rank), axis=0)
    return b.gather_values(index)


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
