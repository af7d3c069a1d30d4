"""Pass protocol and manager."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxcompress.errors import OnnxCompressError


class PassError(OnnxCompressError):
    """A pass failed on this model; the message names the pass."""


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool
    details: dict[str, Any] = field(default_factory=dict)


class Pass:
    """A graph transformation. Subclasses implement :meth:`call`; it may modify ``model`` in place."""

    name: str = "pass"

    def call(self, model: onnx.ModelProto) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        try:
            return self.call(model)
        except OnnxCompressError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        except Exception as exc:  # an unexpected failure is still reported as this pass's failure
            raise PassError(f"pass {self.name} failed: {type(exc).__name__}: {exc}") from exc


class PassManager:
    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes = list(passes)

    def __call__(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, PassResult]]]:
        results: list[tuple[str, PassResult]] = []
        for p in self.passes:
            result = p(model)
            model = result.model
            results.append((p.name, result))
        return model, results
