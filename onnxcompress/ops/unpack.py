"""``Unpack``: the codes of a bit-packed stream, as uint8 (a helper the decode bodies call).

Not placed in graphs: every other body reads its streams through it, so its ~30 nodes are stored
once per model; it is listed before the operators that call it in ``ModelProto.functions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import bitpack
from onnxcompress.ops.spec import OpSpec, stream

if TYPE_CHECKING:
    from onnxcompress.ops.functions import Body


def reference(stream: np.ndarray, *, bits: int, count: int) -> np.ndarray:
    """uint8 [count]: code ``i`` is stream bits ``[i*bits, i*bits + bits)``, LSB first."""
    return bitpack.decompress(stream, bits, count)


def body(b: Body) -> str:
    return b.unpack("stream", "bits", "count")


SPEC = OpSpec(
    name="Unpack",
    inputs=(stream("stream", bits="bits", count="count"),),
    attributes=("bits", "count"),
    reference=reference,
    body=body,
    helper=True,
    doc="Y = the count codes of a bits-wide bit-packed stream, as uint8",
)
