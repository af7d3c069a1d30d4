"""onnxcompress: Deep Compression and CLIP-Q for exported ONNX models."""

from __future__ import annotations

__version__ = "0.1.0"
