"""Raise the IR version and default opset to what the decode functions need."""

from __future__ import annotations

import onnx
from onnx import helper

from onnxcompress.ops import DOMAIN, MIN_OPSET, VERSION
from onnxcompress.passes.base import Pass, PassResult

MIN_IR_VERSION = 8  # model-local functions


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


class RaiseVersionsPass(Pass):
    """Opset 11 -> 12 is safe to do in place: every change between them is a backward-compatible
    extension (new attributes with neutral defaults, new types), so no node needs rewriting."""

    name = "raise-versions"

    def call(self, model: onnx.ModelProto) -> PassResult:
        details: dict[str, object] = {}
        if model.ir_version < MIN_IR_VERSION:
            details["ir_version"] = (model.ir_version, MIN_IR_VERSION)
            model.ir_version = MIN_IR_VERSION
        opset = default_opset(model)
        if opset == 0:
            model.opset_import.append(helper.make_opsetid("", MIN_OPSET))
            details["opset"] = (None, MIN_OPSET)
        elif opset < MIN_OPSET:
            if opset < 11:
                from onnxcompress.errors import InvalidModelError

                raise InvalidModelError(
                    f"the model uses opset {opset}; onnxcompress supports opset 11 and newer "
                    "(upgrade it with onnx.version_converter.convert_version(model, 13))"
                )
            for imp in model.opset_import:
                if imp.domain in ("", "ai.onnx"):
                    imp.version = MIN_OPSET
            details["opset"] = (opset, MIN_OPSET)
        if not any(imp.domain == DOMAIN for imp in model.opset_import):
            model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
        return PassResult(model, bool(details), details)
