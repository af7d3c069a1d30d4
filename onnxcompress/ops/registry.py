"""The table of decode operators: op name -> :class:`~onnxcompress.ops.spec.OpSpec`.

The only list of operators in the package. The encoder, the container (which inputs are
bit-packed streams), host decode (the numpy references) and the function builder all read it.
Listed in hand-written order (helpers first, as ``ModelProto.functions`` needs them), never
discovered by scanning modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from onnxcompress.ops import (
    codebook_dense,
    codebook_mask,
    codebook_relative,
    codebook_scaled,
    sparse_mask,
    sparse_relative,
    unpack,
)
from onnxcompress.ops.spec import OpSpec

OPS: Mapping[str, OpSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            unpack.SPEC,
            codebook_dense.SPEC,
            codebook_relative.SPEC,
            codebook_mask.SPEC,
            codebook_scaled.SPEC,
            sparse_relative.SPEC,
            sparse_mask.SPEC,
        )
    }
)
"""Every operator of the domain, helpers included."""

DECODE_OPS: Mapping[str, OpSpec] = MappingProxyType({n: s for n, s in OPS.items() if not s.helper})
"""The operators the encoder places in graphs (one node per group of weights)."""

HELPERS: tuple[str, ...] = tuple(n for n, s in OPS.items() if s.helper)
"""Operators only called from other bodies (``Unpack``)."""


def get_op(op_type: str) -> OpSpec:
    """The spec of ``op_type``; ``ValueError`` naming the known operators when there is none."""
    try:
        return OPS[op_type]
    except KeyError:
        raise ValueError(f"unknown decode operator {op_type!r} (known: {', '.join(OPS)})") from None
