"""``CodebookMask``: codes of the kept positions, placed by a 1-bit mask.

``pos`` = ascending positions of the set mask bits; ``Y`` is zero except
``Y[pos[i]] = codebook[seg(pos[i]), code[i]]`` (docs/format.md, part 1). The body decodes unmasked
positions through code 0, exactly zero in every row of a pruned codebook, because onnxruntime
does not constant-fold ``NonZero``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import bitpack
from onnxcompress.algorithms.sparse import decode_mask
from onnxcompress.ops.numeric import lookup, scatter
from onnxcompress.ops.spec import OpSpec, floats, ints, stream

if TYPE_CHECKING:
    from onnxcompress.ops.functions import Body


def reference(
    codes: np.ndarray, mask: np.ndarray, codebook: np.ndarray, segments: np.ndarray,
    *, bits: int, entries: int, size: int, to: int,
) -> np.ndarray:  # fmt: skip
    pos = decode_mask(bitpack.decompress(mask, 1, size))
    c = bitpack.decompress(codes, bits, entries)
    return scatter(size, pos, lookup(codebook, segments, pos, c, to), to)


def body(b: Body) -> str:
    keep, rank = b.mask_rank()
    # pruned positions take code 0, which is exactly zero in every row of a pruned codebook
    codes = b.kept_or_zero(keep, b.read_codes("codes"), rank, b.const(0))
    return b.lookup("codebook", b.segment_offsets("segments", "bits"), codes)


SPEC = OpSpec(
    name="CodebookMask",
    inputs=(
        stream("codes", bits="bits", count="entries"),
        stream("mask", bits=1, count="size"),
        floats("codebook"),
        ints("segments"),
    ),
    attributes=("bits", "entries", "size", "to"),
    reference=reference,
    body=body,
    kept="entries",
    positions="mask",
    doc="Y[pos[i]] = codebook[seg(pos[i]), code[i]] over the set mask bits, zero elsewhere",
)
