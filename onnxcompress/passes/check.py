"""Run the ONNX checker with full shape inference on the result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class CheckResult(PassResult):
    """``deferred``: why the check was left for the saved file (None when it ran on the model)."""

    deferred: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"deferred": self.deferred} if self.deferred is not None else {"full_check": True}


class CheckModelPass(Pass):
    name = "check"

    def call(self, model: onnx.ModelProto) -> CheckResult:
        if model.ByteSize() > PROTOBUF_LIMIT:
            # onnx.checker needs a file path above the protobuf limit: compress_file checks the saved file
            return CheckResult(model, False, deferred="model above 2 GB: checked from the saved file")
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise EncodingError(
                f"the compressed model fails onnx.checker: {str(exc).splitlines()[0]}"
            ) from None
        return CheckResult(model, False)
