"""``CodebookScaled``: one codebook shared by every segment, times each segment's scale.

``Y[p] = to(float32(codebook[code[p]]) * float32(scales[seg(p)]))`` (docs/format.md, part 1): the
decode of ``granularity: shared`` (algorithms/scaled_codebook.py), where many small weights share
one table and store one scale each instead of a 2^bits-entry table each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import bitpack
from onnxcompress.ops.numeric import np_type, segment_ids
from onnxcompress.ops.spec import OpSpec, floats, ints, stream

if TYPE_CHECKING:
    from onnxcompress.ops.functions import Body


def reference(
    codes: np.ndarray, codebook: np.ndarray, scales: np.ndarray, segments: np.ndarray, *, bits: int,
    size: int, to: int,
) -> np.ndarray:  # fmt: skip
    values = np.asarray(codebook).reshape(-1).astype(np.float32)[bitpack.decompress(codes, bits, size)]
    values *= np.asarray(scales).astype(np.float32)[segment_ids(segments, size)]
    return values.astype(np_type(to))


def body(b: Body) -> str:
    codes = b.read_codes("codes")
    return b.scaled_lookup("codebook", "scales", b.segment_ids("segments"), codes)


SPEC = OpSpec(
    name="CodebookScaled",
    inputs=(
        stream("codes", bits="bits", count="size"),
        floats("codebook"),
        floats("scales"),
        ints("segments"),
    ),
    attributes=("bits", "size", "to"),
    reference=reference,
    body=body,
    doc="Y[p] = codebook[code[p]] * scales[seg(p)]",
)
