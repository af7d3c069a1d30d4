"""Pass protocol and manager (after onnx/ir-py's pass framework).

A pass implements :meth:`Pass.call` and returns a :class:`PassResult`; a pass with more to say
subclasses the result with typed fields (as ir-py's ``InlinePassResult`` adds ``id_count``), e.g.
:class:`onnxcompress.passes.check.CheckResult`. ``to_dict`` is what the compression report shows.
"""

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
    """The model after a pass and whether the pass changed it. ``details``: free-form extras of the
    passes that have no result type of their own yet; typed subclasses leave it empty."""

    model: onnx.ModelProto
    modified: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """This pass's section of the compression report."""
        return dict(self.details)


class Pass:
    """A graph transformation. Subclasses implement :meth:`call`; it may modify ``model`` in place."""

    name: str = "pass"
    #: shown in the compression report (a pass that only moves data, e.g. loading, says False)
    reported: bool = True

    def call(self, model: onnx.ModelProto) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        try:
            result = self.call(model)
        except OnnxCompressError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        except Exception as exc:  # an unexpected failure is still reported as this pass's failure
            raise PassError(f"pass {self.name} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, PassResult):
            raise TypeError(f"pass {self.name} returned {type(result).__name__}, not a PassResult")
        return result


class PassManager:
    """Runs passes in order. A failure propagates with the failing pass named (each pass prefixes
    its own errors) and, in ``ran_before``, the passes that completed before it."""

    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes = list(passes)

    def __call__(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, PassResult]]]:
        results: list[tuple[str, PassResult]] = []
        for p in self.passes:
            try:
                result = p(model)
            except OnnxCompressError as exc:
                exc.failed_pass = p.name  # type: ignore[attr-defined]
                exc.ran_before = tuple(name for name, _ in results)  # type: ignore[attr-defined]
                raise
            model = result.model
            results.append((p.name, result))
        return model, results
