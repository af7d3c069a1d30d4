"""Verify a candidate (compressed) model against its reference on data, with pass/fail gates.

:func:`verify` streams batches through both models (each built by
:func:`onnxcompress.sessions.make_session`), accumulates :mod:`~onnxcompress.evaluation.metrics`
per output, then checks the :class:`Gates`. The result is a frozen :class:`VerifyResult` that the
reports module renders as a terminal table, JSON, Markdown or JUnit XML.

Gates (each ``None`` = not checked); a gate that applies to no output is a usage error (DataError,
exit 2), because a CI job that silently checks nothing is worse than one that fails:

==================  ======================================================  ================
gate                metric, per applicable output                           passes when
==================  ======================================================  ================
max_accuracy_drop   top-1 accuracy drop in percentage points (needs labels)  drop <= limit
min_agreement       top-1 agreement with the reference (class-like outputs)  value >= limit
min_cosine          mean per-sample cosine similarity (every output)        value >= limit
max_rel_error       relative L2 error (every output)                        value <= limit
==================  ======================================================  ================

A margin is reported for every gate: positive = slack left, negative = by how much it failed.
NaN metrics (non-finite outputs) fail every gate they meet.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcompress.errors import DataError, InvalidModelError
from onnxcompress.evaluation.data import DataSource, input_specs, open_data
from onnxcompress.evaluation.metrics import OutputAccumulator, OutputMetrics, _json_float
from onnxcompress.sessions import make_session, model_label

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Gates:
    """Pass/fail thresholds. Accuracy drop is in percentage points (0.5 = half a point)."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    max_rel_error: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in self.to_dict().values())

    def to_dict(self) -> dict[str, float | None]:
        return {
            "max_accuracy_drop": self.max_accuracy_drop,
            "min_agreement": self.min_agreement,
            "min_cosine": self.min_cosine,
            "max_rel_error": self.max_rel_error,
        }


# gate name -> (metric attribute, "max"/"min", human metric name, unit)
GATE_SPECS: dict[str, tuple[str, str, str, str]] = {
    "max_accuracy_drop": ("top1_drop_pts", "max", "top-1 accuracy drop", " pts"),
    "min_agreement": ("top1_agreement", "min", "top-1 agreement", ""),
    "min_cosine": ("mean_cosine", "min", "mean cosine", ""),
    "max_rel_error": ("rel_l2_error", "max", "relative L2 error", ""),
}


@dataclass(frozen=True)
class GateOutcome:
    """One gate checked on one output."""

    gate: str  # e.g. "max_accuracy_drop"
    output: str
    metric: str  # OutputMetrics attribute
    value: float
    threshold: float
    passed: bool
    margin: float  # >= 0: slack; < 0: by how much it failed (in the metric's unit)

    @property
    def cli_name(self) -> str:
        return "--" + self.gate.replace("_", "-")

    def describe(self) -> str:
        _, kind, human, unit = GATE_SPECS[self.gate]
        op = "<=" if kind == "max" else ">="
        status = "passed" if self.passed else "FAILED"
        text = f"{self.cli_name} {status} on {self.output!r}: {human} {_fmt(self.value)}{unit} (limit {op} "
        text += f"{_fmt(self.threshold)}{unit}"
        if math.isnan(self.value):
            return text + "; metric is NaN: the outputs hold NaN/inf)"
        word = "slack" if self.passed else "off by"
        return text + f"; {word} {_fmt(abs(self.margin))}{unit})"

    def to_dict(self) -> dict:
        return {
            "gate": self.gate,
            "output": self.output,
            "metric": self.metric,
            "value": _json_float(self.value),
            "threshold": self.threshold,
            "passed": self.passed,
            "margin": _json_float(self.margin),
            "description": self.describe(),
        }


def _fmt(v: float) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.6g}" if abs(v) < 1e4 else f"{v:.4e}"


@dataclass(frozen=True)
class VerifyResult:
    """Everything a verification found; ``passed`` is True when every gate passed."""

    reference: str
    candidate: str
    data: str
    samples: int
    batch_size: int
    labels_key: str | None
    reference_providers: tuple[str, ...]
    candidate_providers: tuple[str, ...]
    outputs: tuple[OutputMetrics, ...]
    gates: tuple[GateOutcome, ...]
    gate_config: Gates = field(default_factory=Gates)
    skipped_outputs: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failures(self) -> tuple[GateOutcome, ...]:
        return tuple(g for g in self.gates if not g.passed)

    def output(self, name: str) -> OutputMetrics:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    def summary(self) -> str:
        """One line for humans: PASS/FAIL, and each failed gate with its shortfall."""
        if not self.gates:
            return f"verify: no gates set; compared {len(self.outputs)} output(s) on {self.samples} samples"
        if self.passed:
            return f"verify: PASS, all {len(self.gates)} gate check(s) passed on {self.samples} samples"
        return "verify: FAIL: " + "; ".join(g.describe() for g in self.failures)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data,
            "samples": self.samples,
            "batch_size": self.batch_size,
            "labels_key": self.labels_key,
            "providers": {
                "reference": list(self.reference_providers),
                "candidate": list(self.candidate_providers),
            },
            "gate_config": self.gate_config.to_dict(),
            "gates": [g.to_dict() for g in self.gates],
            "outputs": [o.to_dict() for o in self.outputs],
            "skipped_outputs": list(self.skipped_outputs),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def check_gates(
    outputs: Sequence[OutputMetrics], gates: Gates, *, has_labels: bool
) -> tuple[GateOutcome, ...]:
    """Evaluate ``gates`` on each applicable output. A gate that applies nowhere raises DataError."""
    outcomes: list[GateOutcome] = []
    for gate, threshold in gates.to_dict().items():
        if threshold is None:
            continue
        attr, kind, human, _ = GATE_SPECS[gate]
        applicable = [o for o in outputs if getattr(o, attr) is not None]
        if not applicable:
            flag = "--" + gate.replace("_", "-")
            if gate == "max_accuracy_drop" and not has_labels:
                why = "the data has no labels (name them with --labels KEY)"
            elif gate in ("max_accuracy_drop", "min_agreement"):
                why = "no output is class-like ([N, C], C >= 2; name outputs with --class-outputs)"
            else:
                why = "no numeric output was compared"
            raise DataError(f"{flag} cannot be checked: {why}")
        for o in applicable:
            value = float(getattr(o, attr))
            if math.isnan(value):
                passed, margin = False, math.nan
            elif kind == "max":
                passed, margin = value <= threshold, threshold - value
            else:
                passed, margin = value >= threshold, value - threshold
            outcomes.append(GateOutcome(gate, o.name, attr, value, float(threshold), bool(passed), margin))
    return tuple(outcomes)


class _Progress:
    """Progress on stderr: rich when installed, else a plain line; off when not a TTY or disabled."""

    def __init__(self, total: int, enabled: bool, label: str = "verify") -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled and sys.stderr.isatty()
        self._rich = None
        self._task = None
        self.label = label
        self._last = 0.0

    def __enter__(self) -> _Progress:
        if not self.enabled:
            return self
        try:
            from rich.progress import Progress

            self._rich = Progress(transient=True, console=None)
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=self.total)
        except ImportError:
            self._rich = None
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
        elif time.monotonic() - self._last > 0.2 or self.done >= self.total:
            self._last = time.monotonic()
            print(f"\r{self.label}: {self.done}/{self.total} samples", end="", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.stop()
        else:
            print(file=sys.stderr)


def _is_session(obj: object) -> bool:
    return hasattr(obj, "run") and hasattr(obj, "get_inputs") and hasattr(obj, "get_outputs")


def _session(model: Any, providers, threads, decode: str = "onnxruntime") -> Any:
    """A session for ``model``; ``decode="host"`` rebuilds compressed weights in numpy first (as
    ``onnxcompress.load`` does: the same weights bit for bit, far less load time and memory)."""
    if _is_session(model):
        return model
    if decode == "host":
        import onnx

        from onnxcompress.loading import host_session, load

        if isinstance(model, onnx.ModelProto):
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # host decode edits in place; the caller's model stays as it was
            return host_session(copy, providers=providers, threads=threads)
        if isinstance(model, (str, os.PathLike)):
            return load(model, providers=providers, threads=threads)
    return make_session(model, providers=providers, threads=threads)


def verify(
    reference: Any,
    candidate: Any,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray] | DataSource | None = None,
    *,
    labels_key: str | None = None,
    batch_size: int | None = None,
    gates: Gates = Gates(),
    providers: Any = None,
    threads: int | None = None,
    progress: bool = True,
    shapes: Mapping[str, Sequence[int]] | None = None,
    int_range: Mapping[str, tuple[int, int]] | tuple[int, int] | None = None,
    samples: int | None = None,
    class_outputs: Sequence[str] | None = None,
    seed: int = 0,
    decode: str = "onnxruntime",
) -> VerifyResult:
    """Compare ``candidate`` with ``reference`` on ``data`` and check ``gates``.

    Models: paths (``.onnx``, ``.onnxc``), bytes, ``onnx.ModelProto`` or ready sessions. ``data``:
    None (synthetic from the input spec), an ``.npz``/``.npy`` file, a folder, a dict of arrays or a
    :class:`~onnxcompress.evaluation.data.DataSource`. ``samples`` caps how many samples are used
    (default: all of the data, 64 synthetic). ``class_outputs`` overrides which outputs are
    class-like. ``decode``: ``"onnxruntime"`` (a stock session folds the decode functions) or
    ``"host"`` (as ``onnxcompress.load``). Raises DataError / InvalidModelError / ConfigError on bad
    input (never on a failed gate: check ``result.passed``).
    """
    from onnxcompress.loading import check_decode_mode

    check_decode_mode(decode)
    start = time.perf_counter()
    ref = _session(reference, providers, threads, decode)
    cand = _session(candidate, providers, threads, decode)
    ref_specs = input_specs(ref)
    cand_specs = {s.name: s for s in input_specs(cand)}
    for s in ref_specs:
        other = cand_specs.get(s.name)
        if other is None:
            raise InvalidModelError(
                f"candidate has no input {s.name!r} (its inputs: {', '.join(cand_specs) or 'none'})"
            )
        if other.type_name != s.type_name:
            raise InvalidModelError(
                f"input {s.name!r}: reference takes {s.type_name}, candidate {other.type_name}"
            )
    ref_outputs = [o for o in ref.get_outputs()]
    cand_outputs = {o.name for o in cand.get_outputs()}
    missing = [o.name for o in ref_outputs if o.name not in cand_outputs]
    if missing:
        raise InvalidModelError(f"candidate lacks output(s) {', '.join(map(repr, missing))} of the reference")
    numeric = [o.name for o in ref_outputs if o.type.startswith("tensor(") and o.type != "tensor(string)"]
    skipped = tuple(o.name for o in ref_outputs if o.name not in numeric)
    if not numeric:
        raise InvalidModelError("the reference has no numeric tensor outputs to compare")
    if class_outputs:
        unknown = [n for n in class_outputs if n not in numeric]
        if unknown:
            raise DataError(f"--class-outputs names unknown output(s) {unknown}; outputs: {numeric}")
    if samples is not None and samples < 1:
        raise DataError(f"--samples must be >= 1, got {samples}")

    source = open_data(
        data, ref_specs, labels_key=labels_key, shapes=shapes, int_range=int_range, samples=samples, seed=seed
    )
    if gates.max_accuracy_drop is not None and not source.has_labels:
        raise DataError(
            "--max-accuracy-drop needs labels: "
            + (
                "no data was given (synthetic inputs have none)"
                if data is None
                else f"{source.description} has none"
            )
            + " (name the labels array with --labels KEY)"
        )
    bs = source.batch_size_for(batch_size, DEFAULT_BATCH_SIZE)
    total = len(source) if samples is None else min(samples, len(source))
    accs = {
        n: OutputAccumulator(n, class_like=(n in class_outputs) if class_outputs else None) for n in numeric
    }
    seen = 0
    with _Progress(total, progress) as bar:
        for batch in source.batches(bs, limit=samples):
            r_out = _run(ref, numeric, batch.inputs, "reference")
            c_out = _run(cand, numeric, batch.inputs, "candidate")
            labels = None if batch.labels is None else batch.labels[: batch.valid]
            for name, r, c in zip(numeric, r_out, c_out, strict=True):
                accs[name].update(np.asarray(r)[: batch.valid], np.asarray(c)[: batch.valid], labels)
            seen += batch.valid
            bar.advance(batch.valid)
    if seen == 0:
        raise DataError(f"{source.description}: no samples to verify")
    outputs = tuple(a.result() for a in accs.values())
    outcomes = check_gates(outputs, gates, has_labels=source.has_labels)
    return VerifyResult(
        reference=model_label(reference) if not _is_session(reference) else "<session>",
        candidate=model_label(candidate) if not _is_session(candidate) else "<session>",
        data=source.description,
        samples=seen,
        batch_size=bs,
        labels_key=source.labels_key if source.has_labels else None,
        reference_providers=tuple(ref.get_providers()),
        candidate_providers=tuple(cand.get_providers()),
        outputs=outputs,
        gates=outcomes,
        gate_config=gates,
        skipped_outputs=skipped,
        elapsed_s=time.perf_counter() - start,
    )


def _run(session: Any, names: list[str], feed: dict[str, np.ndarray], which: str) -> list:
    try:
        return session.run(names, feed)
    except Exception as exc:  # noqa: BLE001 -- ORT raises pybind types; one line for the user
        msg = " ".join(str(exc).split())
        if len(msg) > 400:
            msg = msg[:397] + "..."
        raise InvalidModelError(f"{which} model failed to run on the data: {msg}") from None
