"""Verify a candidate (compressed) model against its reference on data, with pass/fail gates.

:func:`verify` streams batches through both models (each built by
:func:`onnxcompress.sessions.make_session`), accumulates :mod:`~onnxcompress.evaluation.metrics`
per output, then checks the gates (:mod:`onnxcompress.evaluation.gates`, one table of gate
definitions). The options are one frozen :class:`VerifyOptions`; the result is a frozen
:class:`VerifyResult` that :mod:`~onnxcompress.evaluation.reports` renders as a terminal table,
JSON, Markdown or JUnit XML.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcompress.errors import ConfigError, DataError, InvalidModelError
from onnxcompress.evaluation.data import DataSource, input_specs, open_data
from onnxcompress.evaluation.gates import GATES, Gate, GateNotApplicableError, GateOutcome, Gates, check_gates
from onnxcompress.evaluation.metrics import OutputAccumulator, OutputMetrics
from onnxcompress.progress import ProgressCallback
from onnxcompress.sessions import make_session, model_label

__all__ = [
    "GATES",
    "Gate",
    "GateNotApplicableError",
    "GateOutcome",
    "Gates",
    "VerifyOptions",
    "VerifyResult",
    "check_gates",
    "verify",
]

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class VerifyOptions:
    """How :func:`verify` compares two models (every field optional).

    ``gates``: the thresholds to check. ``labels_key``: the labels array in the data (default
    ``labels`` when present). ``batch_size``: samples per run (default 32, or what a fixed batch
    dimension demands). ``samples``: at most this many samples (default all of the data, 64
    synthetic). ``shapes``/``int_range``/``seed``: synthetic inputs for symbolic dims and integer
    inputs. ``class_outputs``: the outputs treated as class scores (default: 2-D ``[N, C]`` with
    ``C >= 2``). ``providers``/``threads``: the sessions' execution providers and intra-op threads.
    ``decode``: ``"onnxruntime"`` (a stock session folds the decode functions) or ``"host"`` (as
    ``onnxcompress.load``: weights rebuilt in numpy first).
    """

    gates: Gates = field(default_factory=Gates)
    labels_key: str | None = None
    batch_size: int | None = None
    samples: int | None = None
    shapes: Mapping[str, Sequence[int]] | None = None
    int_range: Mapping[str, tuple[int, int]] | tuple[int, int] | None = None
    seed: int = 0
    class_outputs: tuple[str, ...] | None = None
    providers: Any = None
    threads: int | None = None
    decode: str = "onnxruntime"

    def __post_init__(self) -> None:
        from onnxcompress.loading import check_decode_mode

        check_decode_mode(self.decode)
        if not isinstance(self.gates, Gates):
            raise ConfigError(f"gates must be a Gates, got {type(self.gates).__name__}")
        for name in ("batch_size", "samples", "threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise DataError(f"{name} must be an integer >= 1, got {v!r}")
        if self.class_outputs is not None:
            object.__setattr__(self, "class_outputs", tuple(self.class_outputs) or None)


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
            return (
                f"verify: no gate set: nothing was checked ({len(self.outputs)} output(s) compared "
                f"on {self.samples} samples)"
            )
        if self.passed:
            return f"verify: PASS, all {len(self.gates)} gate check(s) passed on {self.samples} samples"
        return "verify: FAIL: " + "; ".join(g.describe() for g in self.failures)

    def to_dict(self) -> dict[str, Any]:
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
    options: VerifyOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    **fields: Any,
) -> VerifyResult:
    """Compare ``candidate`` with ``reference`` on ``data`` and check the gates.

    Models: paths (``.onnx``, ``.onnxc``), bytes, ``onnx.ModelProto`` or ready sessions. ``data``:
    None (synthetic from the input spec), an ``.npz``/``.npy`` file, a folder, a dict of arrays or a
    :class:`~onnxcompress.evaluation.data.DataSource`. ``options``: a :class:`VerifyOptions`;
    keyword arguments named like its fields (``gates=``, ``samples=``...) override it.
    ``progress`` is called as samples go through. Raises DataError / InvalidModelError /
    ConfigError on bad input (never on a failed gate: check ``result.passed``).
    """
    try:
        opts = dataclasses.replace(options or VerifyOptions(), **fields)
    except TypeError as exc:  # an unknown keyword
        known = ", ".join(f.name for f in dataclasses.fields(VerifyOptions))
        raise TypeError(f"verify(): {exc}; options are {known}") from None
    gates = opts.gates
    class_outputs = opts.class_outputs
    start = time.perf_counter()
    ref = _session(reference, opts.providers, opts.threads, opts.decode)
    cand = _session(candidate, opts.providers, opts.threads, opts.decode)
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
            raise DataError(f"class outputs name unknown output(s) {unknown}; outputs: {numeric}")

    samples = opts.samples
    source = open_data(
        data, ref_specs, labels_key=opts.labels_key, shapes=opts.shapes, int_range=opts.int_range,
        samples=samples, seed=opts.seed,
    )  # fmt: skip
    if gates.max_accuracy_drop is not None and not source.has_labels:
        raise GateNotApplicableError(
            "max_accuracy_drop needs labels: "
            + ("no data was given (synthetic inputs have none)" if data is None else f"{source.description} has none"),
            gate="max_accuracy_drop",
            reason="no-labels",
        )  # fmt: skip
    bs = source.batch_size_for(opts.batch_size, DEFAULT_BATCH_SIZE)
    total = len(source) if samples is None else min(samples, len(source))
    accs = {
        n: OutputAccumulator(n, class_like=(n in class_outputs) if class_outputs else None) for n in numeric
    }
    seen = 0
    if progress:
        progress("verify", 0, total)
    for batch in source.batches(bs, limit=samples):
        r_out = _run(ref, numeric, batch.inputs, "reference")
        c_out = _run(cand, numeric, batch.inputs, "candidate")
        labels = None if batch.labels is None else batch.labels[: batch.valid]
        for name, r, c in zip(numeric, r_out, c_out, strict=True):
            accs[name].update(np.asarray(r)[: batch.valid], np.asarray(c)[: batch.valid], labels)
        seen += batch.valid
        if progress:
            progress("verify", seen, total)
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
