"""What a search optimises and checks: built-in output metrics, a user's task metric, the gates.

A search evaluates hundreds of candidates, so the reference model's outputs are computed once and
each candidate is run once; every number below is derived from those outputs. The gates are the
very code ``verify`` uses (:func:`onnxcompress.evaluation.verify.check_gates` on the same
:class:`~onnxcompress.evaluation.metrics.OutputMetrics`), so a plan that passes here passes
``onnxcompress verify`` with the same flags on the same data.

Built-in metrics (direction ``max``): ``accuracy`` (top-1 against labels), ``agreement`` (top-1
agreement with the reference), ``cosine`` (mean per-sample cosine), ``nn_agreement`` (for
embedding models: the share of samples whose nearest neighbour by cosine among the other samples is
the same as with the reference outputs; :func:`nn_agreement`). A user metric is any callable
``fn(session, data) -> float`` (``data``: the dict of validation arrays, labels included under their
key) with a direction; from the command line ``--metric module:function`` (the function may carry a
``direction`` attribute, ``"max"`` by default).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from onnxcompress.errors import ConfigError, DataError
from onnxcompress.evaluation.metrics import OutputAccumulator, OutputMetrics
from onnxcompress.evaluation.verify import GateOutcome, Gates, check_gates

Direction = Literal["max", "min"]
BUILTIN_METRICS = ("accuracy", "agreement", "cosine", "nn_agreement")
UserMetricFn = Callable[[Any, Mapping[str, np.ndarray]], float]


@dataclass(frozen=True)
class Metric:
    """The number a search reports and, with a size target, optimises.

    ``name`` is a built-in (``accuracy``, ``agreement``, ``cosine``, ``nn_agreement``) or a label
    for ``fn``;
    ``limit`` (optional) is a gate on the metric itself: it must be >= limit (``max``) or <= limit
    (``min``) for a plan to pass, which is how a task metric such as CER or F1 gates a search.
    """

    name: str = "agreement"
    direction: Direction = "max"
    fn: UserMetricFn | None = None
    limit: float | None = None
    spec: str | None = None  # "module:function" it was loaded from (workers re-import it)

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min"):
            raise ConfigError(f"metric direction must be 'max' or 'min', got {self.direction!r}")
        if self.fn is None and self.name not in BUILTIN_METRICS:
            raise ConfigError(
                f"unknown metric {self.name!r}: use one of {', '.join(BUILTIN_METRICS)} or pass a callable"
            )

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b`` (NaN is worst)."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b if self.direction == "max" else a < b

    def passes_limit(self, value: float) -> bool:
        if self.limit is None:
            return True
        if math.isnan(value):
            return False
        return value >= self.limit if self.direction == "max" else value <= self.limit

    def shortfall(self, value: float) -> float:
        """How far ``value`` is from the limit (0 when it passes; inf for NaN)."""
        if self.limit is None:
            return 0.0
        if math.isnan(value):
            return math.inf
        gap = self.limit - value if self.direction == "max" else value - self.limit
        return max(0.0, gap)


def load_metric(spec: str, *, direction: Direction | None = None, limit: float | None = None) -> Metric:
    """A built-in name or ``module:function`` (imported; ``function.direction`` sets the default
    direction). Raises ConfigError with what to fix when it cannot be imported."""
    if spec in BUILTIN_METRICS:
        return Metric(spec, direction or "max", limit=limit)
    if ":" not in spec:
        raise ConfigError(
            f"--metric {spec!r}: use one of {', '.join(BUILTIN_METRICS)} or module:function (e.g. mytask:cer)"
        )
    module_name, func_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--metric {spec!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?"
        ) from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"--metric {spec!r}: {module_name} has no function {func_name!r}")
    d = direction or getattr(fn, "direction", "max")
    if d not in ("max", "min"):
        raise ConfigError(f"--metric {spec!r}: direction must be 'max' or 'min', got {d!r}")
    return Metric(func_name, "max" if d == "max" else "min", fn=fn, limit=limit, spec=spec)


@dataclass(frozen=True)
class Evaluation:
    """One candidate's outcome on the validation data."""

    metric: float
    outputs: tuple[OutputMetrics, ...]
    gates: tuple[GateOutcome, ...]
    metric_passed: bool
    shortfall: float  # total distance to passing: 0 when every gate passes (normalised units)

    @property
    def passed(self) -> bool:
        return self.metric_passed and all(g.passed for g in self.gates)

    def describe(self) -> str:
        fails = [g.describe() for g in self.gates if not g.passed]
        if not self.metric_passed:
            fails.append(f"metric {self.metric:.6g} misses its limit")
        return "; ".join(fails) if fails else "all gates passed"


def output_metrics(
    reference: list[np.ndarray],
    candidate: list[np.ndarray],
    names: list[str],
    labels: np.ndarray | None,
) -> tuple[OutputMetrics, ...]:
    out = []
    for name, r, c in zip(names, reference, candidate, strict=True):
        acc = OutputAccumulator(name)
        acc.update(r, c, labels)
        out.append(acc.result())
    return tuple(out)


def nearest_neighbours(e: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row (rows of ``e``: one sample each, flattened)."""
    e = np.asarray(e, dtype=np.float64).reshape(len(e), -1)
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return np.asarray(sim.argmax(1))


def nn_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of samples whose nearest other sample (cosine) is the same for ``candidate`` as for
    ``reference`` (one sample per row; other axes are flattened). Needs at least 2 samples."""
    if len(reference) != len(candidate):
        raise DataError(
            f"nn_agreement: {len(reference)} reference samples but {len(candidate)} candidate samples"
        )
    if len(reference) < 2:
        raise DataError(
            "metric 'nn_agreement' needs at least 2 validation samples (each is matched to another)"
        )
    return float(np.mean(nearest_neighbours(candidate) == nearest_neighbours(reference)))


def raw_value(name: str, reference: list[np.ndarray], candidate: list[np.ndarray]) -> float | None:
    """A built-in metric computed from the raw outputs (``nn_agreement``: the lowest over outputs);
    None for the metrics :func:`builtin_value` derives from the accumulated output metrics."""
    if name != "nn_agreement":
        return None
    vals = [nn_agreement(r, c) for r, c in zip(reference, candidate, strict=True)]
    return float(min(vals)) if vals else math.nan


def builtin_value(name: str, outputs: tuple[OutputMetrics, ...]) -> float:
    """A built-in metric over the outputs (the first class-like output for accuracy/agreement)."""
    if name == "cosine":
        vals = [o.mean_cosine for o in outputs]
        return float(min(vals)) if vals else math.nan
    attr = "cand_top1_accuracy" if name == "accuracy" else "top1_agreement"
    for o in outputs:
        v = getattr(o, attr)
        if v is not None:
            return float(v)
    what = "labels (--labels KEY)" if name == "accuracy" else "a class-like output ([N, C])"
    raise ConfigError(f"metric {name!r} needs {what}; choose --metric cosine or a task metric")


# Units that make shortfalls of different gates comparable (one accuracy point ~ 0.01 agreement).
_GATE_SCALE = {"max_accuracy_drop": 1.0, "min_agreement": 100.0, "min_cosine": 1000.0, "max_rel_error": 100.0}


def evaluate(
    metric: Metric,
    gates: Gates,
    outputs: tuple[OutputMetrics, ...],
    value: float,
    *,
    has_labels: bool,
) -> Evaluation:
    outcomes = check_gates(outputs, gates, has_labels=has_labels)
    shortfall = 0.0
    for g in outcomes:
        if not g.passed:
            shortfall += math.inf if math.isnan(g.margin) else -g.margin * _GATE_SCALE.get(g.gate, 1.0)
    shortfall += metric.shortfall(value)
    return Evaluation(value, outputs, outcomes, metric.passes_limit(value), shortfall)
