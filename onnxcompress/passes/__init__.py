"""Graph passes: each takes a ModelProto and returns a :class:`PassResult`.

Passes touch the graph only; they never import onnxruntime. The :class:`PassManager` runs them in
order and, when one fails, says which (after onnx/ir-py's pass framework).
"""

from onnxcompress.passes.base import Pass, PassError, PassManager, PassResult
from onnxcompress.passes.check import CheckModelPass
from onnxcompress.passes.encode_weights import EncodeWeightsPass
from onnxcompress.passes.versions import RaiseVersionsPass

__all__ = [
    "CheckModelPass",
    "EncodeWeightsPass",
    "Pass",
    "PassError",
    "PassManager",
    "PassResult",
    "RaiseVersionsPass",
]
