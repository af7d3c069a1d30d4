"""The ``ai.onnxcompress`` decode operators (docs/format.md, part 1).

``functions.py`` builds each operator's ONNX function body from standard ops for a given opset;
``reference.py`` is the exact numpy semantics, one small function per operator, which tests hold
onnxruntime's output to bit for bit.
"""

DOMAIN = "ai.onnxcompress"
VERSION = 1
MIN_OPSET = 12
OP_TYPES = ("CodebookDense", "CodebookRelative", "CodebookMask", "SparseRelative", "SparseMask")
