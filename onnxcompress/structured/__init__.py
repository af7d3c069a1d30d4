"""Structured pruning on the ONNX graph: remove whole channels and neurons, keep the model dense.

``analyze`` finds the dependency groups, ``prune_model`` removes the least important channels of
each (optionally refitting the next layers on calibration data) and returns an ordinary, smaller
ONNX model. See :mod:`onnxcompress.structured.graph` for what is followed and what is refused.
"""

from onnxcompress.structured.api import prune_model
from onnxcompress.structured.config import StructuredConfig, structured_from_dict
from onnxcompress.structured.flops import count_flops
from onnxcompress.structured.graph import Analysis, Group, analyze
from onnxcompress.structured.report import StructuredReport

__all__ = [
    "Analysis", "Group", "StructuredConfig", "StructuredReport", "analyze", "count_flops",
    "prune_model", "structured_from_dict",
]  # fmt: skip
