"""``SparseMask``: raw kept values, placed by a 1-bit mask (pruning without a codebook).

As ``CodebookMask`` with ``Y[pos[i]] = values[i]`` (docs/format.md, part 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import bitpack
from onnxcompress.algorithms.sparse import decode_mask
from onnxcompress.ops.numeric import np_type, scatter
from onnxcompress.ops.spec import OpSpec, floats, stream

if TYPE_CHECKING:
    from onnxcompress.ops.functions import Body


def reference(values: np.ndarray, mask: np.ndarray, *, entries: int, size: int, to: int) -> np.ndarray:
    pos = decode_mask(bitpack.decompress(mask, 1, size))
    return scatter(size, pos, np.asarray(values).astype(np_type(to)), to)


def body(b: Body) -> str:
    keep, rank = b.mask_rank()
    return b.gather_values(b.kept_index(keep, rank))


SPEC = OpSpec(
    name="SparseMask",
    inputs=(floats("values"), stream("mask", bits=1, count="size")),
    attributes=("entries", "size", "to"),
    reference=reference,
    body=body,
    kept="entries",
    positions="mask",
    doc="Y[pos[i]] = values[i] over the set mask bits, zero elsewhere",
)
