"""Evaluation: data sources, comparison metrics, verification with gates, reports and benchmarks.

Public entry points (import from here):

* :func:`verify`, :class:`VerifyOptions`, :class:`VerifyResult` - compare a compressed model with
  its reference (``onnxcompress verify``);
* :data:`GATES`, :class:`Gate`, :class:`Gates`, :class:`GateOutcome` - the quality gates, one
  table (``onnxcompress.evaluation.gates``);
* :class:`OutputMetrics`, :func:`compare_outputs` - the metrics on their own;
* :func:`open_data` and the data sources - streamed batches from npz / folders / synthetic inputs;
* ``onnxcompress.evaluation.reports`` - text / JSON / Markdown / JUnit renderers;
* :class:`BenchOptions` and ``onnxcompress.evaluation.bench.bench`` - latency / load / memory
  benchmark in fresh subprocesses.

Submodules are imported lazily so ``import onnxcompress.evaluation`` stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "verify": "onnxcompress.evaluation.verify",
    "VerifyOptions": "onnxcompress.evaluation.verify",
    "VerifyResult": "onnxcompress.evaluation.verify",
    "GATES": "onnxcompress.evaluation.gates",
    "Gate": "onnxcompress.evaluation.gates",
    "Gates": "onnxcompress.evaluation.gates",
    "GateOutcome": "onnxcompress.evaluation.gates",
    "GateNotApplicableError": "onnxcompress.evaluation.gates",
    "BenchOptions": "onnxcompress.evaluation.bench",
    "OutputMetrics": "onnxcompress.evaluation.metrics",
    "compare_outputs": "onnxcompress.evaluation.metrics",
    "open_data": "onnxcompress.evaluation.data",
    "DataSource": "onnxcompress.evaluation.data",
    "TensorSpec": "onnxcompress.evaluation.data",
    "input_specs": "onnxcompress.evaluation.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
