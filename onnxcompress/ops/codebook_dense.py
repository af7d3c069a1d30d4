"""``CodebookDense``: a code for every position, looked up in its segment's codebook row.

``Y[p] = codebook[seg(p), code[p]]`` (docs/format.md, part 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import bitpack
from onnxcompress.ops.numeric import lookup
from onnxcompress.ops.spec import OpSpec, floats, ints, stream

if TYPE_CHECKING:
    from onnxcompress.ops.functions import Body


def reference(
    codes: np.ndarray, codebook: np.ndarray, segments: np.ndarray, *, bits: int, size: int, to: int
) -> np.ndarray:
    return lookup(codebook, segments, None, bitpack.decompress(codes, bits, size), to)


def body(b: Body) -> str:
    codes = b.read_codes("codes")
    return b.lookup("codebook", b.segment_offsets("segments", "bits"), codes)


SPEC = OpSpec(
    name="CodebookDense",
    inputs=(stream("codes", bits="bits", count="size"), floats("codebook"), ints("segments")),
    attributes=("bits", "size", "to"),
    reference=reference,
    body=body,
    doc="Y[p] = codebook[seg(p), code[p]]",
)
