"""Run the ONNX checker with full shape inference on the result."""

from __future__ import annotations

import onnx

from onnxcompress.errors import EncodingError
from onnxcompress.model_io import PROTOBUF_LIMIT
from onnxcompress.passes.base import Pass, PassResult


def check_saved_model(path: str) -> None:
    """Full check of a saved model (the only way onnx.checker handles models above 2 GB)."""
    try:
        onnx.checker.check_model(path, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EncodingError(f"the compressed model fails onnx.checker: {str(exc).splitlines()[0]}") from None


class CheckModelPass(Pass):
    name = "check"

    def call(self, model: onnx.ModelProto) -> PassResult:
        if model.ByteSize() > PROTOBUF_LIMIT:
            # onnx.checker needs a file path above the protobuf limit: compress_file checks the saved file
            return PassResult(model, False, {"deferred": "model above 2 GB: checked from the saved file"})
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise EncodingError(
                f"the compressed model fails onnx.checker: {str(exc).splitlines()[0]}"
            ) from None
        return PassResult(model, False, {"full_check": True})
