"""The ``ai.onnxcompress`` decode operators (docs/format.md, part 1).

One file per operator (``codebook_dense.py``, ``codebook_relative.py``, ``codebook_mask.py``,
``codebook_scaled.py``, ``sparse_relative.py``, ``sparse_mask.py`` and the ``unpack.py`` helper they call), each defining
its :class:`~onnxcompress.ops.spec.OpSpec`: inputs (which are bit-packed streams, of what width
and count), attributes, the exact numpy ``reference`` and the ``body`` that builds its ONNX
function from standard ops. :mod:`onnxcompress.ops.registry` lists them in one table
(:data:`OPS`), which the encoder, the container, host decode and :mod:`onnxcompress.ops.functions`
read. Tests hold onnxruntime's folding of every body to its reference, bit for bit.

A new decode operator is one new file here plus one row in ``registry.py`` (and its section in
docs/format.md); the test suite then requires a test case for it in ``tests/test_decode_ops.py``.
"""

from onnxcompress.ops.registry import DECODE_OPS, HELPERS, OPS, get_op
from onnxcompress.ops.spec import DOMAIN, MIN_OPSET, VERSION, Input, OpSpec

__all__ = ["DECODE_OPS", "DOMAIN", "HELPERS", "MIN_OPSET", "OPS", "VERSION", "Input", "OpSpec", "get_op"]
