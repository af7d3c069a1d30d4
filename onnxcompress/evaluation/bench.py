"""Benchmark models side by side: size on disk, load time, first run, latency, throughput, memory.

Why subprocesses: onnxruntime's arenas, the allocator's high-water mark, thread pools and CPU caches
persist within a process, so the second model measured in one process looks better (or worse) than
it is, and peak memory can only go up. Every measurement therefore runs in a fresh interpreter
(``python -m onnxcompress.evaluation.bench``, config as JSON on stdin, result as JSON on stdout)
whose own high-water mark (``VmHWM`` on Linux) is the peak resident memory (interpreter + numpy + onnxruntime baseline
included, so compare differences). A stock session of a plain ``.onnx`` runs in a process that
imports what a deployment does, not onnx; host decode and ``.onnxc`` containers need onnx (~15 MB
more before the session), so beside them read ``model_rss_bytes``, the peak minus the process just
before session creation. Models alternate over ``rounds``
(order reversed every other round so no model always goes first), and the report gives medians
over rounds plus the spread (min, max, IQR) of the per-round p50 latency.

Per round: ``create_s`` is the ``InferenceSession`` creation time (which includes constant-folding
the decode functions of a compressed model, or with ``decode="host"`` the numpy decode of
``onnxcompress.load``, and for ``.onnxc`` the container's entropy decode),
``first_run_s`` the first ``run``, then ``warmup``
untimed runs and ``runs`` timed runs give p50/p90/p99 latency. Throughput is
``batch_size / p50`` samples/s. Inputs are synthetic from the input spec (same seed for every
model, so identical) or the first batch of ``data``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcompress.errors import (
    ConfigError,
    ContainerError,
    DataError,
    InvalidModelError,
    OnnxCompressError,
)
from onnxcompress.model_io import check_data_path, size_on_disk
from onnxcompress.progress import ProgressCallback

RESULT_PREFIX = "ONNXCOMPRESS_BENCH_RESULT "


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BenchOptions:
    """How :func:`bench` measures (every field optional; the defaults are the CLI's).

    Per round and model: ``warmup`` untimed runs, then ``runs`` timed runs; ``rounds`` fresh
    processes per model. ``batch_size``: samples per run (default 1, or a fixed batch dimension).
    Inputs: the first batch of ``data``, else synthetic from the input spec (``shapes`` for
    symbolic dims, ``int_range`` for integer inputs, ``seed``). ``providers`` / ``allow_fallback``
    / ``threads`` / ``optimization_level``: the session. ``decode``: ``"onnxruntime"`` (a stock
    ``InferenceSession`` constant-folds the decode functions) or ``"host"`` (as
    ``onnxcompress.load``: weights decoded in numpy first).
    """

    runs: int = 100
    warmup: int = 10
    rounds: int = 3
    batch_size: int | None = None
    shapes: Mapping[str, Sequence[int]] | None = None
    int_range: Mapping[str, tuple[int, int]] | None = None
    data: str | None = None
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    optimization_level: str = "all"
    allow_fallback: bool = False
    seed: int = 0
    decode: str = "onnxruntime"

    def __post_init__(self) -> None:
        from onnxcompress.loading import check_decode_mode
        from onnxcompress.sessions import OPTIMIZATION_LEVELS

        check_decode_mode(self.decode)
        if self.runs < 1 or self.rounds < 1 or self.warmup < 0:
            raise ConfigError(
                f"need runs >= 1, rounds >= 1, warmup >= 0 (got {self.runs}, {self.rounds}, {self.warmup})"
            )
        if self.optimization_level not in OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"unknown optimization level {self.optimization_level!r}: use {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if self.data is not None:
            object.__setattr__(self, "data", os.fspath(self.data))
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (what the worker receives, and the report's ``config``)."""
        d = dataclasses.asdict(self)
        d["providers"] = list(self.providers) if self.providers is not None else None
        d["shapes"] = {k: list(v) for k, v in (self.shapes or {}).items()}
        d["int_range"] = {k: list(v) for k, v in (self.int_range or {}).items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchOptions:
        d = dict(data)
        d["shapes"] = {k: tuple(v) for k, v in (d.get("shapes") or {}).items()}
        d["int_range"] = {k: tuple(v) for k, v in (d.get("int_range") or {}).items()}
        return cls(**d)


@dataclass(frozen=True)
class RoundResult:
    """One fresh-process measurement of one model."""

    create_s: float
    first_run_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples/s at p50
    peak_rss_bytes: int | None
    providers: tuple[str, ...]
    #: median CPU time of the process per run (ms): on a shared machine wall time also counts the
    #: time slices other processes took while a run was preempted; CPU time does not
    cpu_p50_ms: float | None = None
    #: resident memory of the worker just before the session was created (Python, numpy, onnx and
    #: onnxruntime imported, no model yet): ``peak_rss_bytes`` minus this is what the model costs
    rss_before_create_bytes: int | None = None

    @property
    def model_rss_bytes(self) -> int | None:
        """Peak RSS the model added on top of the process and its imports. A ratio of whole-process
        peaks understates a model's saving by the ~100 MB every onnxruntime process holds anyway;
        this is the part a deployment can change."""
        if self.peak_rss_bytes is None or self.rss_before_create_bytes is None:
            return None
        return self.peak_rss_bytes - self.rss_before_create_bytes


@dataclass(frozen=True)
class ModelBench:
    """Medians over rounds for one model, with the spread of the per-round p50."""

    model: str
    size_bytes: int
    providers: tuple[str, ...]
    batch_size: int
    rounds: tuple[RoundResult, ...]
    #: FLOPs of one run (the measured batch), counted from the graph; None when not countable
    flops: int | None = None
    #: nodes whose shapes shape inference could not find (counted as zero FLOPs)
    flops_unknown: int = 0

    def _median(self, attr: str) -> float:
        return float(np.median([getattr(r, attr) for r in self.rounds]))

    @property
    def create_s(self) -> float:
        return self._median("create_s")

    @property
    def first_run_s(self) -> float:
        return self._median("first_run_s")

    @property
    def p50_ms(self) -> float:
        return self._median("p50_ms")

    @property
    def cpu_p50_ms(self) -> float | None:
        vals = [r.cpu_p50_ms for r in self.rounds if r.cpu_p50_ms is not None]
        return float(np.median(vals)) if vals else None

    @property
    def p90_ms(self) -> float:
        return self._median("p90_ms")

    @property
    def p99_ms(self) -> float:
        return self._median("p99_ms")

    @property
    def throughput(self) -> float:
        return self._median("throughput")

    @property
    def peak_rss_bytes(self) -> int | None:
        vals = [r.peak_rss_bytes for r in self.rounds if r.peak_rss_bytes is not None]
        return int(np.median(vals)) if vals else None

    @property
    def model_rss_bytes(self) -> int | None:
        """Median over rounds of the peak RSS the model added (see :attr:`RoundResult.model_rss_bytes`)."""
        vals = [v for v in (r.model_rss_bytes for r in self.rounds) if v is not None]
        return int(np.median(vals)) if vals else None

    @property
    def p50_spread(self) -> dict[str, float]:
        """min / max / IQR of the per-round p50 latency (ms)."""
        v = np.array([r.p50_ms for r in self.rounds])
        q1, q3 = np.percentile(v, [25, 75])
        return {"min": float(v.min()), "max": float(v.max()), "iqr": float(q3 - q1)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "size_bytes": self.size_bytes,
            "providers": list(self.providers),
            "batch_size": self.batch_size,
            "create_s": self.create_s,
            "first_run_s": self.first_run_s,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "cpu_p50_ms": self.cpu_p50_ms,
            "throughput_samples_per_s": self.throughput,
            "peak_rss_bytes": self.peak_rss_bytes,
            "model_rss_bytes": self.model_rss_bytes,
            "flops_per_run": self.flops,
            "flops_unknown_nodes": self.flops_unknown,
            "p50_spread_ms": self.p50_spread,
            "rounds": [
                {**r.__dict__, "providers": list(r.providers)}
                for r in self.rounds  # frozen dataclass fields
            ],
        }


@dataclass(frozen=True)
class BenchReport:
    models: tuple[ModelBench, ...]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        base = self.models[0]
        out = []
        for m in self.models:
            d = m.to_dict()
            d["ratios_vs_first"] = {
                "size": ratio(m.size_bytes, base.size_bytes),
                "create_s": ratio(m.create_s, base.create_s),
                "first_run_s": ratio(m.first_run_s, base.first_run_s),
                "p50_ms": ratio(m.p50_ms, base.p50_ms),
                "p90_ms": ratio(m.p90_ms, base.p90_ms),
                "p99_ms": ratio(m.p99_ms, base.p99_ms),
                "cpu_p50_ms": ratio(m.cpu_p50_ms, base.cpu_p50_ms),
                "throughput": ratio(m.throughput, base.throughput),
                "peak_rss": ratio(m.peak_rss_bytes, base.peak_rss_bytes),
                "model_rss": ratio(m.model_rss_bytes, base.model_rss_bytes),
                "flops": ratio(m.flops, base.flops),
            }
            paired = paired_p50_ratios(m, base)
            d["ratios_vs_first"]["p50_paired_by_round"] = {
                "median": float(np.median(paired)),
                "min": min(paired),
                "max": max(paired),
            }
            out.append(d)
        return {"config": self.config, "models": out}


def paired_p50_ratios(model: ModelBench, base: ModelBench) -> list[float]:
    """Per-round p50 ratios against the baseline. Rounds alternate the models back to back, so each
    pair shares the machine's conditions of that moment: on a busy machine their median is a steadier
    comparison than the ratio of the two medians."""
    return [m.p50_ms / b.p50_ms for m, b in zip(model.rounds, base.rounds, strict=False) if b.p50_ms > 0]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


# --------------------------------------------------------------------------- worker side


def current_rss_bytes() -> int | None:
    """This process's resident memory now (``VmRSS``), or None where ``/proc`` cannot tell."""
    return _proc_status_bytes("VmRSS:")


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory, or None where the platform cannot tell.

    On Linux ``VmHWM`` from ``/proc/self/status``, not ``ru_maxrss``: the latter survives fork +
    exec, so a worker started by a large parent (a benchmark that just loaded a 400 MB model)
    would report the parent's peak as its own.
    """
    hwm = _proc_status_bytes("VmHWM:")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def measure(model: str, options: BenchOptions) -> dict[str, Any]:
    """Measure one model in *this* process (the worker calls this; keep it the only work done).

    A stock session of a plain ``.onnx`` (``decode="onnxruntime"``) runs in a process like a
    deployment's: Python, numpy and onnxruntime, without onnx (its protobuf runtime held ~26 MB
    more before any model, which made every peak-RSS ratio look closer to 1 than a deployment sees).
    """
    import onnxruntime  # noqa: F401 -- imported before the clock starts: import time is not load time

    import onnxcompress.model_io

    if options.decode != "onnxruntime" or onnxcompress.model_io.is_container(model):
        # the whole loading path, host decode included, before the clock too: with --decode host
        # the uncompressed baseline used to pay these imports (~0.05-0.1 s) inside its session time
        import onnx  # noqa: F401

        import onnxcompress.container  # noqa: F401
        import onnxcompress.passes.host_decode  # noqa: F401
    from onnxcompress.evaluation.data import input_specs, open_data
    from onnxcompress.loading import load

    session_options: dict[str, Any] = {
        "providers": list(options.providers) if options.providers is not None else None,
        "threads": options.threads,
        "optimization_level": options.optimization_level,
        "allow_fallback": options.allow_fallback,
    }
    # one code path for every model, baseline and candidate alike: onnxcompress.load with the
    # decode mode asked for (a model without decode nodes goes to onnxruntime as a path either way)
    rss_before = current_rss_bytes()  # before the module snapshot: reading /proc imports a codec
    modules = set(sys.modules)
    t0 = time.perf_counter()
    session = load(model, decode=options.decode, **session_options)
    create_s = time.perf_counter() - t0
    imported_while_timed = sorted(set(sys.modules) - modules)
    specs = input_specs(session)
    source = open_data(
        options.data, specs, shapes=options.shapes, int_range=options.int_range, seed=options.seed
    )
    batch_size = source.batch_size_for(options.batch_size, 1)
    batch = next(source.batches(batch_size, limit=batch_size))
    feed = batch.inputs
    t0 = time.perf_counter()
    session.run(None, feed)
    first_run_s = time.perf_counter() - t0
    for _ in range(options.warmup):
        session.run(None, feed)
    lat = np.empty(options.runs)
    cpu = np.empty(options.runs)
    for i in range(options.runs):
        c0 = time.process_time()
        t0 = time.perf_counter()
        session.run(None, feed)
        lat[i] = time.perf_counter() - t0
        cpu[i] = time.process_time() - c0
    p50, p90, p99 = (float(x) * 1e3 for x in np.percentile(lat, [50, 90, 99]))
    return {
        "create_s": create_s,
        "first_run_s": first_run_s,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": float(lat.mean() * 1e3),
        "cpu_p50_ms": float(np.median(cpu) * 1e3),
        "throughput": batch.valid / (p50 / 1e3) if p50 > 0 else float("inf"),
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_create_bytes": rss_before,
        "providers": list(session.get_providers()),
        "batch_size": batch_size,
        "input_shapes": {k: list(np.shape(v)) for k, v in feed.items()},
        # modules first imported while the session was being created (their import time was
        # counted as load time): empty for a fair comparison
        "imported_while_timed": imported_while_timed,
    }


def worker_main() -> int:
    """Entry of the measuring subprocess: JSON config on stdin, one result line on stdout."""
    config = json.loads(sys.stdin.read())
    try:
        result: dict[str, Any] = {"ok": measure(config["model"], BenchOptions.from_dict(config["options"]))}
    except OnnxCompressError as exc:
        result = {"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}}
    except Exception as exc:  # noqa: BLE001 -- report anything else as a model failure, one line
        msg = " ".join(str(exc).split())[:400]
        result = {
            "error": {"type": "InvalidModelError", "message": f"{config.get('model')}: {msg}", "exit_code": 2}
        }
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- parent side

_ERRORS: dict[str, type[OnnxCompressError]] = {
    "InvalidModelError": InvalidModelError,
    "ConfigError": ConfigError,
    "DataError": DataError,
    "ContainerError": ContainerError,
}


def _run_worker(model: str, options: BenchOptions) -> dict[str, Any]:
    config = {"model": model, "options": options.to_dict()}
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "onnxcompress.evaluation.bench"],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        env=env,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            break
    else:
        tail = " ".join((proc.stderr or proc.stdout).split())[-400:]
        raise InvalidModelError(
            f"benchmark worker for {config['model']} died (exit {proc.returncode}, out of memory?): {tail}"
        )
    if "error" in result:
        err = result["error"]
        cls = _ERRORS.get(err["type"], OnnxCompressError)
        exc = cls(err["message"])
        exc.exit_code = int(err.get("exit_code", 2))
        raise exc
    return result["ok"]


def bench(
    models: Sequence[str | os.PathLike[str]],
    options: BenchOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    **fields: Any,
) -> BenchReport:
    """Benchmark ``models`` (paths), each measurement in a fresh subprocess; see the module docstring.

    ``options``: a :class:`BenchOptions`; keyword arguments named like its fields (``runs=``,
    ``rounds=``...) override it. ``progress`` is called once per measurement (task ``"bench"``).
    """
    from onnxcompress.sessions import resolve_providers

    try:
        opts = dataclasses.replace(options or BenchOptions(), **fields)
    except TypeError as exc:  # an unknown keyword
        known = ", ".join(f.name for f in dataclasses.fields(BenchOptions))
        raise TypeError(f"bench(): {exc}; options are {known}") from None
    if not models:
        raise ConfigError("bench needs at least one model")
    resolved = resolve_providers(opts.providers, allow_fallback=opts.allow_fallback)  # fail fast, before any spawn
    opts = dataclasses.replace(opts, providers=tuple(e[0] if isinstance(e, tuple) else e for e in resolved))
    sizes = [size_on_disk(m) for m in models]  # validates every model before any work
    if opts.data is not None:
        check_data_path(opts.data)
    per_model: list[list[dict[str, Any]]] = [[] for _ in models]
    total = opts.rounds * len(models)
    if progress:
        progress("bench", 0, total)
    for r in range(opts.rounds):
        order = list(range(len(models)))
        if r % 2 == 1:
            order.reverse()
        for i in order:
            per_model[i].append(_run_worker(str(models[i]), opts))
            if progress:
                progress("bench", sum(map(len, per_model)), total)
    results = []
    for m, size, meas in zip(models, sizes, per_model, strict=True):
        rr = tuple(
            RoundResult(
                create_s=x["create_s"],
                first_run_s=x["first_run_s"],
                p50_ms=x["p50_ms"],
                p90_ms=x["p90_ms"],
                p99_ms=x["p99_ms"],
                mean_ms=x["mean_ms"],
                cpu_p50_ms=x.get("cpu_p50_ms"),
                throughput=x["throughput"],
                peak_rss_bytes=x["peak_rss_bytes"],
                rss_before_create_bytes=x.get("rss_before_create_bytes"),
                providers=tuple(x["providers"]),
            )
            for x in meas
        )
        flops, unknown = _flops(str(m), meas[0].get("input_shapes") or {})
        results.append(
            ModelBench(str(m), size, rr[0].providers, int(meas[0]["batch_size"]), rr, flops, unknown)
        )
    config = {k: v for k, v in opts.to_dict().items() if k != "allow_fallback"}
    config["python"] = sys.version.split()[0]
    try:
        import onnxruntime

        config["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    config["cpu_count"] = os.cpu_count()
    return BenchReport(tuple(results), config)


def _flops(model: str, input_shapes: Mapping[str, Sequence[int]]) -> tuple[int | None, int]:
    """FLOPs of one run of ``model`` on inputs of ``input_shapes`` (what the worker fed), counted
    from the graph; ``(None, 0)`` when the graph cannot be read for it. Best effort: a decode
    function whose output shape inference cannot see leaves its consumer uncounted (listed)."""
    from onnxcompress.model_io import open_model
    from onnxcompress.structured.flops import count_flops

    try:
        count = count_flops(open_model(model, load_external=False), input_shapes=input_shapes)
    except Exception:  # a FLOP count must never fail a benchmark that measured fine
        return None, 0
    return count.total, len(count.unknown)


def bench_to_json(report: BenchReport) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


if __name__ == "__main__":
    sys.exit(worker_main())
