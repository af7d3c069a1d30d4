"""Quality gates, defined once: :data:`GATES` is the table that builds everything else.

Each :class:`Gate` row gives the metric it reads, its direction, the valid range of its threshold
and its help text. From the table come the :class:`Gates` thresholds (one keyword per row),
:func:`check_gates` (the checking and the per-output :class:`GateOutcome` report rows) and the
command-line flags (``onnxcompress.commands.verify.add_gate_arguments``, ``--max-accuracy-drop``
and friends, also used by ``compress --verify-data`` and ``search``). A new gate is one new row.

A gate that applies to no output raises :class:`GateNotApplicableError` (a DataError, exit 2):
a CI job that silently checks nothing is worse than one that fails. NaN metrics (non-finite
outputs) fail every gate they meet. A margin is reported for every check: positive = slack left,
negative = by how much it failed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from onnxcompress.errors import ConfigError, DataError
from onnxcompress.evaluation.metrics import OutputMetrics, json_float

__all__ = ["GATES", "Gate", "GateNotApplicableError", "GateOutcome", "Gates", "check_gates", "gate"]


@dataclass(frozen=True)
class Gate:
    """One quality gate.

    ``metric``: the :class:`~onnxcompress.evaluation.metrics.OutputMetrics` attribute it reads (an
    output where it is None is not checked). ``bound``: ``"max"`` passes when value <= threshold,
    ``"min"`` when value >= threshold. ``needs``: what an output must have for the metric to
    exist (``"labels"``, ``"classes"`` or ``"numbers"``), which names the reason when no output
    qualifies. ``lo``/``hi``: the valid thresholds.
    """

    name: str
    metric: str
    bound: Literal["max", "min"]
    label: str  # human name of the metric
    unit: str
    lo: float
    hi: float
    metavar: str
    help: str
    needs: Literal["labels", "classes", "numbers"] = "numbers"

    @property
    def flag(self) -> str:
        """How the gate is spelled on the command line and in reports, e.g. ``--max-accuracy-drop``."""
        return "--" + self.name.replace("_", "-")

    @property
    def op(self) -> str:
        return "<=" if self.bound == "max" else ">="

    def validate(self, threshold: float) -> float:
        """``threshold`` as a float; ConfigError when it is not a number in ``[lo, hi]``."""
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name} must be a number, got {threshold!r}") from None
        if not self.lo <= value <= self.hi:
            raise ConfigError(f"{self.name} must be between {self.lo:g} and {self.hi:g}, got {threshold!r}")
        return value

    def judge(self, value: float, threshold: float) -> tuple[bool, float]:
        """``(passed, margin)`` of ``value`` against ``threshold``."""
        if math.isnan(value):
            return False, math.nan
        if self.bound == "max":
            return value <= threshold, threshold - value
        return value >= threshold, value - threshold


#: Every gate, in the order they are checked and shown.
GATES: tuple[Gate, ...] = (
    Gate(
        "max_accuracy_drop", "top1_drop_pts", "max", "top-1 accuracy drop", " pts", -100.0, 100.0, "PTS",
        "largest allowed top-1 accuracy drop in percentage points (0.5 = half a point); needs labels",
        needs="labels",
    ),
    Gate(
        "min_agreement", "top1_agreement", "min", "top-1 agreement", "", 0.0, 1.0, "F",
        "smallest allowed top-1 agreement with the reference on class-like outputs (0..1)",
        needs="classes",
    ),
    Gate("min_cosine", "mean_cosine", "min", "mean cosine", "", -1.0, 1.0, "F", "smallest allowed mean cosine similarity"),
    Gate(
        "max_rel_error", "rel_l2_error", "max", "relative L2 error", "", 0.0, math.inf, "F",
        "largest allowed relative L2 error ||cand - ref|| / ||ref||",
    ),
)  # fmt: skip

_BY_NAME: dict[str, Gate] = {g.name: g for g in GATES}


def gate(name: str) -> Gate:
    """The gate called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown gate {name!r}; gates: {', '.join(_BY_NAME)}") from None


class Gates(Mapping[str, float]):
    """Thresholds, one keyword per :data:`GATES` row (``Gates(max_accuracy_drop=0.5)``; a gate left
    out or None is not checked). Immutable and hashable; reads as ``gates.min_cosine`` or as a
    mapping of the set gates, in :data:`GATES` order."""

    __slots__ = ("_limits",)
    _limits: dict[str, float]

    def __init__(self, **thresholds: float | None) -> None:
        limits: dict[str, float] = {}
        for name in thresholds:
            gate(name)
        for g in GATES:
            value = thresholds.get(g.name)
            if value is not None:
                limits[g.name] = g.validate(value)
        object.__setattr__(self, "_limits", limits)

    def __getattr__(self, name: str) -> float | None:
        if name in _BY_NAME:
            return self._limits.get(name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Gates is immutable; use replace()")

    def __getitem__(self, name: str) -> float:
        return self._limits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._limits)

    def __len__(self) -> int:
        return len(self._limits)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Gates) and self._limits == other._limits

    def __hash__(self) -> int:
        return hash(tuple(self._limits.items()))

    def __repr__(self) -> str:
        return "Gates(" + ", ".join(f"{k}={v!r}" for k, v in self._limits.items()) + ")"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite __slots__ and __setattr__
        return (_rebuild, (dict(self._limits),))

    def replace(self, **thresholds: float | None) -> Gates:
        """A copy with some thresholds changed (None unsets one)."""
        return Gates(**{**self._limits, **thresholds})

    def any(self) -> bool:
        return bool(self._limits)

    def to_dict(self) -> dict[str, float | None]:
        """Every gate's threshold, None for the unchecked ones."""
        return {g.name: self._limits.get(g.name) for g in GATES}


def _rebuild(limits: dict[str, float]) -> Gates:
    return Gates(**limits)


@dataclass(frozen=True)
class GateOutcome:
    """One gate checked on one output (a report row)."""

    gate: str  # e.g. "max_accuracy_drop"
    output: str
    metric: str  # OutputMetrics attribute
    value: float
    threshold: float
    passed: bool
    margin: float  # >= 0: slack; < 0: by how much it failed (in the metric's unit)

    @property
    def spec(self) -> Gate:
        return _BY_NAME[self.gate]

    @property
    def cli_name(self) -> str:
        return self.spec.flag

    def describe(self) -> str:
        g = self.spec
        status = "passed" if self.passed else "FAILED"
        text = f"{g.flag} {status} on {self.output!r}: {g.label} {_fmt(self.value)}{g.unit} (limit {g.op} "
        text += f"{_fmt(self.threshold)}{g.unit}"
        if math.isnan(self.value):
            return text + "; metric is NaN: the outputs hold NaN/inf)"
        word = "slack" if self.passed else "off by"
        return text + f"; {word} {_fmt(abs(self.margin))}{g.unit})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "output": self.output,
            "metric": self.metric,
            "value": json_float(self.value),
            "threshold": self.threshold,
            "passed": self.passed,
            "margin": json_float(self.margin),
            "description": self.describe(),
        }


def _fmt(v: float) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.6g}" if abs(v) < 1e4 else f"{v:.4e}"


class GateNotApplicableError(DataError):
    """A gate was set that no output can be checked against. ``gate`` names it; ``reason`` is
    ``"no-labels"``, ``"no-class-output"`` or ``"no-numeric-output"``."""

    def __init__(self, message: str, *, gate: str, reason: str) -> None:
        super().__init__(message)
        self.gate = gate
        self.reason = reason


_WHY = {
    "no-labels": "the data has no labels",
    "no-class-output": "no output is class-like ([N, C] with C >= 2)",
    "no-numeric-output": "no numeric output was compared",
}


def check_gates(
    outputs: Sequence[OutputMetrics], gates: Gates, *, has_labels: bool
) -> tuple[GateOutcome, ...]:
    """Evaluate ``gates`` on each applicable output; GateNotApplicableError for a gate that applies nowhere."""
    outcomes: list[GateOutcome] = []
    for g in GATES:
        threshold = gates.get(g.name)
        if threshold is None:
            continue
        applicable = [o for o in outputs if getattr(o, g.metric) is not None]
        if not applicable:
            if g.needs == "labels" and not has_labels:
                reason = "no-labels"
            elif g.needs in ("labels", "classes"):
                reason = "no-class-output"
            else:
                reason = "no-numeric-output"
            raise GateNotApplicableError(
                f"{g.name} cannot be checked: {_WHY[reason]}", gate=g.name, reason=reason
            )
        for o in applicable:
            value = float(getattr(o, g.metric))
            passed, margin = g.judge(value, threshold)
            outcomes.append(GateOutcome(g.name, o.name, g.metric, value, threshold, bool(passed), margin))
    return tuple(outcomes)
