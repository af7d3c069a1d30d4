"""Build and measure one candidate: plan -> CompressionConfig -> compress_model -> bytes -> session.

Everything goes through the public pipeline (``compress_model``, the ``.onnxc`` packer,
``make_session``); the size is the length of the exact bytes ``compress`` would write (the
serialized ``.onnx``, or the container for an ``.onnxc`` output), so the searched size is the
file size; with the ``ram`` objective it is :func:`~onnxcompress.resident.resident_bytes` of the
built model instead (what an onnxruntime session keeps after constant folding, estimated), and
with ``latency`` the predicted batch latency in nanoseconds (:mod:`~onnxcompress.search.latency`:
the model's measured p50 plus each weight's measured change). The reference outputs are computed once; each candidate runs once on the validation data
(or on its first ``quick`` samples, to drop hopeless candidates early).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx

from onnxcompress.compressor import CompressionReport, WeightHook, compress_model
from onnxcompress.config import CompressionConfig
from onnxcompress.errors import ConfigError, DataError, NoCompressibleWeightsError
from onnxcompress.evaluation.data import input_specs, open_data
from onnxcompress.evaluation.metrics import OutputMetrics
from onnxcompress.evaluation.verify import Gates
from onnxcompress.inventory import build_inventory
from onnxcompress.search.latency import LatencyTable
from onnxcompress.search.metrics import Evaluation, Metric, builtin_value, evaluate, output_metrics, raw_value
from onnxcompress.search.space import Plan
from onnxcompress.sessions import make_session

#: Coded container streams kept across candidates (payload bytes) before the memo starts over.
STREAM_MEMO_BYTES = 256 << 20
# built candidates kept for reuse: at most this many, holding at most this many bytes (each holds
# the whole serialized model and its file: 256 MiniLM candidates were 24 GB and the OOM killer
# stopped the search)
BUILT_MEMO_COUNT = 256
BUILT_MEMO_BYTES = 1 << 30

Objective = Literal["size", "ram", "latency"]
OBJECTIVES: tuple[str, ...] = ("size", "ram", "latency")


def cost_text(value: float, objective: str) -> str:
    """A searched cost as reports print it: bytes for ``size``/``ram``, milliseconds for
    ``latency`` (whose integer costs are nanoseconds, an internal unit no figure shows)."""
    if objective == "latency":
        return f"{value / 1e6:.4f} ms"
    return f"{int(value):,} B"

HookFactory = Callable[[onnx.ModelProto, CompressionConfig], "WeightHook | None"]


@dataclass(frozen=True)
class Layer:
    """A compressible weight as the search sees it."""

    name: str
    shape: tuple[int, ...]
    params: int
    op_types: tuple[str, ...]
    fp32_bytes: int


@dataclass
class Built:
    """A compressed candidate: its file bytes (what is written), the plain ONNX bytes (what runs)
    and, when the objective is ``ram``, its resident-bytes estimate, with ``latency`` its predicted
    latency (ns)."""

    plan: Plan
    config: CompressionConfig
    file_bytes: bytes
    onnx_bytes: bytes
    report: CompressionReport | None
    seconds: float
    resident: int | None = None  # resident_bytes of the model (set with objective "ram")
    latency: int | None = None  # predicted latency in ns (set with objective "latency")

    @property
    def file_size(self) -> int:
        return len(self.file_bytes)

    @property
    def size(self) -> int:
        """What the search minimises: the predicted latency (ns) or the RAM estimate when the
        objective asked for them, else the file's bytes."""
        if self.latency is not None:
            return self.latency
        return self.resident if self.resident is not None else len(self.file_bytes)


@dataclass
class Measured:
    built: Built
    evaluation: Evaluation
    samples: int
    seconds: float
    outputs: list[np.ndarray] = field(default_factory=list, repr=False)


def load_arrays(
    data: str | os.PathLike[str] | Mapping[str, np.ndarray], session: Any, labels_key: str | None
) -> tuple[dict[str, np.ndarray], np.ndarray | None, str | None]:
    """All validation samples in memory (a search reruns them hundreds of times)."""
    source = open_data(data, input_specs(session), labels_key=labels_key)
    n = len(source)
    if n == 0:
        raise DataError("the validation data holds no samples")
    feeds: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    bs = source.batch_size_for(None, min(n, 1024))
    for batch in source.batches(bs):
        for k, v in batch.inputs.items():
            feeds.setdefault(k, []).append(np.asarray(v)[: batch.valid])
        if batch.labels is not None:
            labels.append(np.asarray(batch.labels)[: batch.valid])
    arrays = {k: np.concatenate(v) for k, v in feeds.items()}
    lab = np.concatenate(labels) if labels and source.has_labels else None
    return arrays, lab, (source.labels_key if source.has_labels else None)


class Candidates:
    """The model, data, metric and gates of one search; builds and measures plans.

    ``container``: sizes are ``.onnxc`` sizes (entropy-coded) rather than ``.onnx``.
    ``hook_factory(model, config)``: calibrated methods (the model copy being compressed is passed,
    since calibration may edit its biases). ``threads``: onnxruntime intra-op threads (1 keeps
    workers from fighting over cores). ``reference``: the model the gates and the size ratio
    compare against when ``model`` is a derived copy (a structurally pruned one): its outputs are
    the gates' reference and its file size :attr:`original_size`; :meth:`output_error` (stage 1's
    additive proxy) still measures against ``model``'s own outputs, so a weight's error is its own.
    ``objective``: ``size`` (file bytes), ``ram`` (:func:`~onnxcompress.resident.resident_bytes`)
    or ``latency`` (the predicted batch latency in ns from ``latency``, a
    :class:`~onnxcompress.search.latency.LatencyTable` measured on this model: until one is given,
    by the constructor or :meth:`attach_latency`, nothing can be built): what :attr:`Built.size`
    and :attr:`original_size` count, so every stage minimises it.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | onnx.ModelProto,
        data: str | os.PathLike[str] | Mapping[str, np.ndarray],
        *,
        base: CompressionConfig,
        metric: Metric,
        gates: Gates,
        container: bool,
        labels_key: str | None = None,
        threads: int | None = 1,
        hook_factory: HookFactory | None = None,
        reference: str | os.PathLike[str] | onnx.ModelProto | None = None,
        objective: Objective = "size",
        latency: LatencyTable | None = None,
    ) -> None:
        from onnxcompress.model_io import open_model, size_on_disk
        from onnxcompress.resident import resident_bytes

        self.objective = objective

        self.model = model if isinstance(model, onnx.ModelProto) else open_model(model)
        self.model_bytes = self.model.SerializeToString()
        # the ratio's denominator: the input file on disk (external data included), else its bytes
        self.original_size = len(self.model_bytes)
        if isinstance(model, (str, os.PathLike)):
            self.original_size = size_on_disk(model)
        self.reference_model: onnx.ModelProto | None = None
        if reference is not None:
            self.reference_model = reference if isinstance(reference, onnx.ModelProto) else open_model(reference)
            self.original_size = (
                size_on_disk(reference) if isinstance(reference, (str, os.PathLike))
                else len(self.reference_model.SerializeToString())
            )  # fmt: skip
        #: the input file's size on disk (the ratio's denominator with objective "size")
        self.original_file_size = self.original_size
        #: the resident-bytes estimate of the input (or of the reference)
        self.original_resident = resident_bytes(self.reference_model or self.model)
        if objective == "ram":
            self.original_size = self.original_resident
        self.latency: LatencyTable | None = None
        self.base = base
        self.metric = metric
        self.gates = gates
        self.container = container
        self.threads = threads
        self.hook_factory = hook_factory
        inv = build_inventory(self.model, min_elements=base.min_elements)
        self.layers = [
            Layer(w.name, tuple(w.shape), int(w.size), tuple(w.op_types), int(w.nbytes))
            for w in inv.weights
            if w.compressible and base.resolve(w.name, w.op_types) is not None
        ]
        if not self.layers:
            raise NoCompressibleWeightsError("the model has no compressible weight to search over")
        ref = make_session(self.model_bytes, threads=threads)
        self.output_names = [o.name for o in ref.get_outputs()]
        self.data, self.labels, self.labels_key = load_arrays(data, ref, labels_key)
        if self.labels is not None and self.labels_key is not None:
            self.data_with_labels = {**self.data, self.labels_key: self.labels}
        else:
            self.data_with_labels = dict(self.data)
        self.samples = len(self.labels) if self.labels is not None else len(next(iter(self.data.values())))
        #: this model's own outputs (stage 1's error proxy) and the gates' reference outputs
        self.own_outputs = ref.run(self.output_names, self.data)
        self.reference_outputs = self.own_outputs
        ref_session = ref
        if self.reference_model is not None:
            ref_session = make_session(self.reference_model.SerializeToString(), threads=threads)
            self.reference_outputs = ref_session.run(self.output_names, self.data)
        if metric.fn is None and metric.name == "accuracy" and self.labels is None:
            raise DataError("metric 'accuracy' needs labels in the data (name them with --labels KEY)")
        ref_eval = self._evaluate(self.reference_outputs, ref_session, self.samples)
        self.reference_metric = ref_eval.metric
        #: the uncompressed ``model`` measured against the reference (== the reference's own
        #: evaluation when there is no separate reference)
        self.base_evaluation = ref_eval if self.reference_model is None else self._evaluate(self.own_outputs, ref, self.samples)
        self.evaluations = 0
        self._cache: dict[Any, Built] = {}
        self._cache_bytes = 0
        # coded container streams by tensor content: a candidate differs from the last in a few
        # weights, so only those are entropy-coded again (same bytes; see pack_bytes)
        self._streams: dict[tuple[Any, ...], tuple[int, int, int, int, int, bytes]] = {}
        self._stream_bytes = 0
        if latency is not None:
            self.attach_latency(latency)

    def attach_latency(self, table: LatencyTable) -> None:
        """Use ``table`` for the ``latency`` objective: from here built candidates carry their
        predicted latency and :attr:`original_size` is the reference model's measured p50 (ns)."""
        if self.objective != "latency":
            raise ConfigError(f"a latency table is for objective latency, not {self.objective!r}")
        self.latency = table
        self.original_size = table.reference_ns
        self.forget()

    # ------------------------------------------------------------------ identity (for caches)

    def fingerprint(self) -> str:
        """Changes whenever the model, the data or what sizes mean changes."""
        h = hashlib.sha256(self.model_bytes)
        if self.reference_model is not None:  # the gates' reference
            h.update(hashlib.sha256(self.reference_model.SerializeToString()).digest())
        for k in sorted(self.data):
            h.update(k.encode())
            h.update(np.ascontiguousarray(self.data[k]).tobytes())
        if self.labels is not None:
            h.update(self.labels.tobytes())
        calibration = None
        if self.hook_factory is not None:  # how candidates are calibrated changes every measurement
            how = getattr(self.hook_factory, "calibration_config", None)
            calibration = (type(self.hook_factory).__name__, how().to_dict() if callable(how) else None,
                           str(getattr(self.hook_factory, "data", "")))  # fmt: skip
        what: tuple[Any, ...] = (self.container, self.base.to_dict(), calibration)
        if self.objective != "size":  # sizes of another kind (the size objective's key is unchanged)
            what = (*what, self.objective)
        if self.latency is not None:  # predicted latencies change with the timings behind them
            what = (*what, self.latency.fingerprint())
        h.update(repr(what).encode())
        return h.hexdigest()[:20]

    # ------------------------------------------------------------------ build

    def config(self, plan: Plan) -> CompressionConfig:
        return plan.to_config(self.base, [layer.name for layer in self.layers])

    def build(self, plan: Plan) -> Built:
        key = plan.key()
        if key in self._cache:
            return self._cache[key]
        if self.objective == "latency" and self.latency is None:
            raise ConfigError("objective latency: measure the latency table first (Candidates.attach_latency)")
        t0 = time.perf_counter()
        config = self.config(plan)
        report = None
        built_model = self.model
        if not plan.compresses_anything:
            onnx_bytes = self.model_bytes
        else:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            hook = self.hook_factory(model, config) if self.hook_factory is not None else None
            try:
                result = compress_model(model, config, keep_decoded=False, weight_hook=hook)
                onnx_bytes = result.model.SerializeToString()
                report = result.report
                built_model = result.model
            except NoCompressibleWeightsError:  # every chosen setting would grow its weight
                onnx_bytes = self.model_bytes
        file_bytes = onnx_bytes
        if self.container:
            from onnxcompress.container.pack import pack_bytes

            if self._stream_bytes > STREAM_MEMO_BYTES:
                self._streams.clear()
                self._stream_bytes = 0
            n_before = len(self._streams)
            file_bytes, _ = pack_bytes(onnx_bytes, verify=False, memo=self._streams)
            if len(self._streams) != n_before:
                self._stream_bytes = sum(len(v[5]) for v in self._streams.values())
        resident = None
        if self.objective == "ram":
            from onnxcompress.resident import resident_bytes

            resident = resident_bytes(built_model)
        latency = self.latency.predict(plan) if self.latency is not None else None
        built = Built(plan, config, file_bytes, onnx_bytes, report, time.perf_counter() - t0, resident, latency)
        held = len(built.onnx_bytes) + (len(built.file_bytes) if built.file_bytes is not built.onnx_bytes else 0)
        if len(self._cache) >= BUILT_MEMO_COUNT or self._cache_bytes + held > BUILT_MEMO_BYTES:
            self._cache.clear()
            self._cache_bytes = 0
        self._cache[key] = built
        self._cache_bytes += held
        return built

    def resident(self, built: Built) -> int:
        """``built``'s resident-bytes estimate (computed here when the objective is not ``ram``)."""
        if built.resident is not None:
            return built.resident
        from onnxcompress.resident import resident_bytes

        return resident_bytes(onnx.load_from_string(built.onnx_bytes))

    def forget(self) -> None:
        """Drop the memo of built candidates (after the way candidates are built changed)."""
        self._cache.clear()
        self._cache_bytes = 0

    # ------------------------------------------------------------------ measure

    def _evaluate(self, outputs: list[np.ndarray], session: Any, n: int) -> Evaluation:
        labels = None if self.labels is None else self.labels[:n]
        metrics: tuple[OutputMetrics, ...] = output_metrics(
            [r[:n] for r in self.reference_outputs], outputs, self.output_names, labels
        )
        if self.metric.fn is not None:
            data = (
                self.data_with_labels
                if n >= self.samples
                else {k: v[:n] for k, v in self.data_with_labels.items()}
            )
            value = float(self.metric.fn(session, data))
        else:
            raw = raw_value(self.metric.name, [r[:n] for r in self.reference_outputs], outputs)
            value = builtin_value(self.metric.name, metrics) if raw is None else raw
        return evaluate(self.metric, self.gates, metrics, value, has_labels=labels is not None)

    def measure(self, built: Built, samples: int | None = None) -> Measured:
        """Run the candidate on the first ``samples`` validation samples (default: all)."""
        t0 = time.perf_counter()
        n = self.samples if samples is None else max(1, min(samples, self.samples))
        session = make_session(built.onnx_bytes, threads=self.threads)
        feed = self.data if n >= self.samples else {k: v[:n] for k, v in self.data.items()}
        outputs = session.run(self.output_names, feed)
        evaluation = self._evaluate(outputs, session, n)
        self.evaluations += 1
        return Measured(built, evaluation, n, time.perf_counter() - t0, outputs)

    def output_error(self, outputs: list[np.ndarray]) -> float:
        """Relative squared output error summed over outputs: the additive proxy of stage 2
        (independent small perturbations of different layers add up in squared error)."""
        total = 0.0
        for r, c in zip(self.own_outputs, outputs, strict=True):
            r = np.asarray(r[: len(c)], dtype=np.float64)
            d = np.asarray(c, dtype=np.float64) - r
            denom = float(np.sum(r * r)) or 1.0
            e = float(np.sum(d * d)) / denom
            total += e if math.isfinite(e) else math.inf
        return total
