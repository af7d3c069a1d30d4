"""onnxcompress: Deep Compression and CLIP-Q for exported ONNX models.

The public API is imported lazily so that ``import onnxcompress`` (and the CLI's start-up) does
not pay for onnxruntime until a session is actually needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "compress": ("onnxcompress.compressor", "compress_file"),
    "compress_model": ("onnxcompress.compressor", "compress_model"),
    "CompressionConfig": ("onnxcompress.config", "CompressionConfig"),
    "WeightConfig": ("onnxcompress.config", "WeightConfig"),
    "preset": ("onnxcompress.config", "preset"),
    "load_config": ("onnxcompress.config", "load_config"),
    "build_inventory": ("onnxcompress.inventory", "build_inventory"),
    "verify": ("onnxcompress.evaluation.verify", "verify"),
    "VerifyOptions": ("onnxcompress.evaluation.verify", "VerifyOptions"),
    "Gates": ("onnxcompress.evaluation.gates", "Gates"),
    "bench": ("onnxcompress.evaluation.bench", "bench"),
    "BenchOptions": ("onnxcompress.evaluation.bench", "BenchOptions"),
    "load": ("onnxcompress.loading", "load"),
    "load_model": ("onnxcompress.model_io", "open_model"),
    "open_model": ("onnxcompress.model_io", "open_model"),
    "make_session": ("onnxcompress.sessions", "make_session"),
    "search": ("onnxcompress.search.api", "search"),
    "StructuredSearch": ("onnxcompress.search.structured", "StructuredSearch"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'onnxcompress' has no attribute {name!r}")
