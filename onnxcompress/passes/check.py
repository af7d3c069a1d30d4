"""Run the ONNX checker with full shape inference on the result."""

from __future__ import annotations

import onnx

from onnxcompress.errors import EncodingError
from onnxcompress.model_io import PROTOBUF_LIMIT
from onnxcompress.passes.base import Pass, PassResult


class CheckModelPass(Pass):
    name = "check"

    def call(self, model: onnx.ModelProto) -> PassResult:
        if model.ByteSize() > PROTOBUF_LIMIT:
            return PassResult(model, False, {"skipped": "model above 2 GB; checked after saving"})
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise EncodingError(
                f"the compressed model fails onnx.checker: {str(exc).splitlines()[0]}"
            ) from None
        return PassResult(model, False, {"full_check": True})
