"""The ``latency`` objective: predicted batch latency of a plan from per-weight timings.

Why a table and not a clock per trial: the three stages need an additive, deterministic cost
(stage 1's per-choice deltas, stage 2's knapsack, stage 3's early stop compare exact numbers), and
timing every candidate would make two runs of one search disagree. So, at the start of a search,
every searched weight's consumer nodes are cut out of the model into a micro-model (the nodes that
read the weight, fed with the activations the real model gives them on the first ``batch``
validation samples), the micro-model is compressed through :func:`~onnxcompress.compressor.compress_model`
for each runtime-relevant choice (so the timed op is the one the full model will run: ``MatMulNBits``,
``GatherBlockQuantized``...) and timed in a :func:`~onnxcompress.sessions.make_session` session.

Which choices differ: a codebook choice (any sparsity, bits, granularity) is folded by onnxruntime
to a dense float initializer at session creation, so it runs exactly as the float weight does; the
table has one ``float`` entry per weight (keep and every codebook choice) and one per runtime bit
width. A runtime choice that is folded back to float too (a Conv weight without int8 activations:
its dequantize chain folds at load; told by :func:`~onnxcompress.resident.resident_bytes`, which
counts the dense tensor a folded chain becomes) is not timed: it gets the float time, exactly. The predicted latency of a plan is the measured p50 of the uncompressed model plus, per
weight, ``t(choice) - t(float)``, in integer nanoseconds (so the stages' integer sizes carry it).

Timings are medians over rounds of each round's median, the sessions of one weight run in
alternating order and its runtime entries are the float time plus the median of their per-round
differences to it (:func:`time_sessions`). Entries are cached on disk (``OUT.latency.json``), keyed by the consumer ops and
their attributes, the shapes, the choice and the compression settings that shape the timed op, the
onnxruntime version, the CPU model and the thread count: a rerun on the same machine reads the same
numbers and needs no timing, and identical (op, shapes, choice) entries, e.g. the Q, K and V
projections of a transformer layer, share one measurement. Weight values never matter for the
timing, so candidates' calibration (GPTQ codes) is not applied to the micro-models.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxcompress.errors import ConfigError, DataError, EncodingError, NoCompressibleWeightsError
from onnxcompress.search.space import Choice, Plan

if TYPE_CHECKING:  # candidates imports this module (Candidates holds a LatencyTable)
    from onnxcompress.search.candidates import Candidates

FORMAT = 1
FLOAT = "float"  # the table entry of keep and of every codebook choice (dense float after load)
#: a choice's time within this fraction of the float time counts as the float time: two sessions of
#: one op differ by a few percent between rounds (up to 13% measured on the residual CNN's Conv
#: layers on a 2-core machine another process was loading; 1-3% when quiet), and a smaller "gain"
#: is noise the search must not trade accuracy for
NOISE_FLOOR = 0.05


def entry_of(choice: Choice) -> str:
    """The latency-table entry that times ``choice``: ``float`` for keep and codebook choices
    (onnxruntime folds codebooks to dense float at load), ``rt<bits>`` for runtime ones."""
    return f"rt{choice.bits}" if choice.format == "runtime" and not choice.kept else FLOAT


def ms(ns: float) -> str:
    """``ns`` nanoseconds as the milliseconds every report shows."""
    return f"{ns / 1e6:.4f} ms"


@dataclass(frozen=True)
class Timing:
    """How one session is timed: ``warmup`` runs, then ``rounds`` rounds of ``runs`` runs each
    (``runs`` grown so a round lasts at least ``min_round_s``, at most ``max_runs``); the time is
    the median over rounds of each round's median, and the sessions timed together are compared
    round by round (:func:`time_sessions`)."""

    warmup: int = 10
    rounds: int = 9
    runs: int = 5  # a 50 ms model: 9 rounds of 5 runs, 2-3 s a session
    max_runs: int = 400
    min_round_s: float = 0.02  # a 10 us op: rounds of 400 runs (4 ms), a few timer ticks no longer matter

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.rounds < 1 or self.runs < 1 or self.max_runs < self.runs:
            raise ConfigError(
                f"latency timing needs warmup >= 0, rounds >= 1 and 1 <= runs <= max_runs, got {self}"
            )


Feed = dict[str, np.ndarray]
#: times each (session, feed) in alternating rounds; returns nanoseconds per session
Timer = Callable[[Sequence[tuple[Any, Feed]], Timing], list[int]]


def time_sessions(pairs: Sequence[tuple[Any, Feed]], timing: Timing) -> list[int]:
    """Run time of each (session, feed), rounds alternating in order: the first session's median
    over rounds of each round's median; every other session's, that plus the median over rounds
    of its difference to the first in the same round. Paired differences: a burst of load from
    another process lifts both sides of a round, so it cancels in the difference rather than
    landing on whichever session happened to run then (on a shared 2-core machine, unpaired medians
    of one 10 us op moved by 30% between runs)."""
    runs: list[int] = []
    for session, feed in pairs:
        t0 = time.perf_counter()
        for _ in range(max(1, timing.warmup)):
            session.run(None, feed)
        one = (time.perf_counter() - t0) / max(1, timing.warmup)
        want = math.ceil(timing.min_round_s / one) if one > 0 else timing.runs
        runs.append(int(min(timing.max_runs, max(timing.runs, want))))
    per_round: list[list[float]] = [[] for _ in pairs]
    for r in range(timing.rounds):
        order = list(range(len(pairs)))
        if r % 2:
            order.reverse()
        for k in order:
            session, feed = pairs[k]
            t = np.empty(runs[k])
            for i in range(runs[k]):
                t0 = time.perf_counter_ns()
                session.run(None, feed)
                t[i] = time.perf_counter_ns() - t0
            per_round[k].append(float(np.median(t)))
    first = np.asarray(per_round[0])
    t0 = float(np.median(first))
    return [int(round(t0))] + [int(round(t0 + float(np.median(np.asarray(v) - first)))) for v in per_round[1:]]


def environment(threads: int | None) -> dict[str, Any]:
    """What a timing depends on besides the op: the cache key's machine part."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"onnxruntime": onnxruntime.__version__, "cpu": cpu, "threads": threads}


@dataclass
class LatencyTable:
    """Per weight, the measured time of its consumer micro-model per entry (``float``, ``rt4``...),
    and the measured p50 of the whole uncompressed model (``base_ns``), in nanoseconds.

    ``reference_ns``: the p50 of the reference model when the searched model is a derived copy (a
    structurally pruned one), else ``base_ns``: the denominator of the reported speed-up.
    ``unmeasured``: weights whose consumers could not be cut out (inside a subgraph, or a choice
    that does not build alone), with the reason: their choices count as the float time."""

    base_ns: int
    reference_ns: int
    batch: int
    env: dict[str, Any]
    times: dict[str, dict[str, int]]
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    unmeasured: dict[str, str] = field(default_factory=dict)
    #: per weight, the runtime entries onnxruntime folds back to dense float (given the float time)
    folded: dict[str, list[str]] = field(default_factory=dict)
    cached: int = 0  # entries read from the cache file
    measured: int = 0  # entries timed by this call
    seconds: float = 0.0

    def delta(self, name: str, choice: Choice) -> int:
        """``t(choice) - t(float)`` of weight ``name``; 0 when it was not measured or is within
        :data:`NOISE_FLOOR` of the float time."""
        row = self.times.get(name)
        if not row or FLOAT not in row:
            return 0
        entry = entry_of(choice)
        d = row[entry] - row[FLOAT] if entry in row else 0
        return d if abs(d) >= NOISE_FLOOR * row[FLOAT] else 0

    def predict(self, plan: Plan) -> int:
        """Predicted latency of ``plan`` (ns): the model's p50 plus every weight's delta."""
        return self.base_ns + sum(self.delta(n, c) for n, c in plan.choices.items())

    def fingerprint(self) -> str:
        """Changes whenever a number the search uses changes (part of the sensitivity/study keys)."""
        what = [self.base_ns, self.reference_ns, self.batch, sorted((n, sorted(r.items())) for n, r in self.times.items())]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_ms": self.base_ns / 1e6, "reference_ms": self.reference_ns / 1e6, "batch": self.batch,
            "env": self.env, "cached_entries": self.cached, "measured_entries": self.measured,
            "seconds": round(self.seconds, 3),
            "weights_ms": {n: {e: t / 1e6 for e, t in sorted(r.items())} for n, r in sorted(self.times.items())},
            "unmeasured": dict(self.unmeasured), "folded_to_float": dict(self.folded),
        }  # fmt: skip


# ---------------------------------------------------------------------- micro-models


def _main_consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto] | str:
    """The main-graph nodes reading ``name`` (with the bias Adds onnxruntime fuses into them), or
    why the weight cannot be cut out alone."""
    nodes = [n for n in model.graph.node if name in n.input]
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
        from onnxcompress.calibration.capture import node_inputs

        if any(name in node_inputs(n) and name not in n.input for n in model.graph.node):
            return "read inside a subgraph (If/Loop/Scan body)"
    if not nodes:
        return "no main-graph consumer (a Constant node's output or a subgraph weight)"
    return nodes + _fused_bias_adds(model, nodes)


def _fused_bias_adds(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The bias ``Add`` after a weight's ``MatMul`` (the MatMul's only reader, its other input an
    initializer): onnxruntime fuses it into the op that runs the weight (``MatMulNBits`` takes a
    bias input; a float MatMul + Add runs as one kernel), so the micro-model must hold it too, or
    it times a MatMul the full model never runs alone."""
    inits = {t.name for t in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    out = []
    for n in nodes:
        if n.op_type != "MatMul" or n.output[0] in graph_outputs:
            continue
        readers = [m for m in model.graph.node if n.output[0] in m.input]
        if len(readers) == 1 and readers[0].op_type == "Add" and len(readers[0].input) == 2:
            other = next(i for i in readers[0].input if i != n.output[0])
            if other in inits and readers[0] not in out:
                out.append(readers[0])
    return out


def _attr_signature(node: onnx.NodeProto) -> list[Any]:
    return sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute)


def _micro_model(
    model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], weight: str, values: Mapping[str, np.ndarray]
) -> tuple[onnx.ModelProto, Feed]:
    """``nodes`` alone: initializers they read stay initializers (a Constant node's tensor, e.g.
    ``weight`` itself, becomes one of the same name), every other input becomes a graph input fed
    with its captured value (``values``); outputs are typed from their captured values."""
    from onnxcompress.inventory import tensor_array

    inits = {t.name: t for t in model.graph.initializer}
    g = onnx.GraphProto(name="latency_probe")
    feed: Feed = {}
    seen: set[str] = set()
    produced = {o for n in nodes for o in n.output}
    for n in nodes:
        for i in n.input:
            if not i or i in seen or i in produced:
                continue
            seen.add(i)
            if i in inits:
                g.initializer.append(inits[i])
            elif i == weight or i not in values:
                g.initializer.append(onnx.numpy_helper.from_array(tensor_array(model, i), i))
            else:
                arr = np.asarray(values[i])
                feed[i] = arr
                g.input.append(onnx.helper.make_tensor_value_info(
                    i, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))  # fmt: skip
    g.node.extend(nodes)
    for n in nodes:
        for o in n.output:
            if o and not any(o in m.input for m in nodes):
                arr = np.asarray(values[o])
                g.output.append(onnx.helper.make_tensor_value_info(
                    o, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))  # fmt: skip
    m = onnx.helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    m.functions.extend(model.functions)
    return m, feed


def _capture(model: onnx.ModelProto, names: Sequence[str], feed: Feed, threads: int | None) -> dict[str, np.ndarray]:
    """The values of ``names`` when ``model`` runs on ``feed`` (one run of a probe copy)."""
    from onnxcompress.calibration.capture import probe_model
    from onnxcompress.sessions import make_session

    graph_inputs = {i.name for i in model.graph.input}
    wanted = [n for n in dict.fromkeys(names) if n not in graph_inputs]
    out = {n: feed[n] for n in names if n in graph_inputs}
    if wanted:
        probe = probe_model(model, wanted)
        session = make_session(probe.SerializeToString(), threads=threads)
        names_in = {i.name for i in session.get_inputs()}
        values = session.run(wanted, {k: v for k, v in feed.items() if k in names_in})
        out.update(zip(wanted, (np.asarray(v) for v in values), strict=True))
    return out


def _entry_key(micro: onnx.ModelProto, weight: np.ndarray, feed: Feed, override: Any, weight_cfg: Any,
               env: Mapping[str, Any], position: Sequence[tuple[int, int]]) -> tuple[str, str]:  # fmt: skip
    """(cache key, readable description) of one timing: what decides how long the op runs (ops,
    their attributes and wiring, every shape and dtype, the choice, the machine), never values."""
    nodes = list(micro.graph.node)
    ops = [(n.domain, n.op_type, _attr_signature(n), len(n.input)) for n in nodes]
    shapes = sorted((list(v.shape), str(v.dtype)) for v in feed.values())
    inits = sorted((list(t.dims), t.data_type) for t in micro.graph.initializer)
    sig = [ops, list(position), list(weight.shape), str(weight.dtype), shapes, inits, override, weight_cfg, dict(env)]
    key = hashlib.sha256(json.dumps(sig, default=str, sort_keys=True).encode()).hexdigest()[:24]
    what = "+".join(n.op_type for n in nodes) + f" {list(weight.shape)} on " + ", ".join(str(list(s)) for s, _ in shapes)
    return key, what


def _read_cache(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") == FORMAT and isinstance(data.get("entries"), dict):
            return dict(data["entries"])
    except (ValueError, OSError):
        pass  # an unreadable cache is measured again
    return {}


def measure_table(
    cands: Candidates,
    choices: Sequence[Choice],
    *,
    batch: int = 1,
    cache: str | os.PathLike[str] | None = None,
    timing: Timing | None = None,
    timer: Timer | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> LatencyTable:
    """Time every weight of ``cands`` (a :class:`~onnxcompress.search.candidates.Candidates`) under
    every distinct entry of ``choices``, and the whole uncompressed model, on the first ``batch``
    validation samples. ``timer``: what measures (default :func:`time_sessions`; tests pass a fixed
    one). Cached entries in ``cache`` are reused, new ones added to it."""
    from onnxcompress.compressor import compress_model
    from onnxcompress.inventory import tensor_array
    from onnxcompress.resident import resident_bytes
    from onnxcompress.sessions import make_session

    timer = timer or time_sessions
    timing = timing or Timing()
    if batch < 1:
        raise ConfigError(f"--latency-batch must be >= 1, got {batch}")
    if batch > cands.samples:
        raise ConfigError(
            f"--latency-batch {batch} is more than the {cands.samples} validation samples: give a smaller batch"
        )
    t_start = time.perf_counter()
    env = environment(cands.threads)
    path = Path(cache) if cache is not None else None
    stored = _read_cache(path)
    fresh: dict[str, Any] = {}
    feed: Feed = {k: np.ascontiguousarray(v[:batch]) for k, v in cands.data.items()}
    model: onnx.ModelProto = cands.model
    entries = sorted({entry_of(c) for c in choices}, key=lambda e: (e != FLOAT, e))
    runtime_bits = {e: int(e[2:]) for e in entries if e != FLOAT}

    def lookup(key: str, n: int) -> list[int] | None:
        if all(f"{key}/{i}" in stored for i in range(n)):
            return [int(stored[f"{key}/{i}"]["ns"]) for i in range(n)]
        return None

    # the whole model (and the reference, when the model is a pruned copy), side by side
    models = [cands.model_bytes]
    if cands.reference_model is not None:
        models.append(cands.reference_model.SerializeToString())
    base_key = hashlib.sha256(json.dumps(
        [[hashlib.sha256(b).hexdigest() for b in models], sorted((k, list(v.shape), str(v.dtype)) for k, v in feed.items()), env],
    ).encode()).hexdigest()[:24]  # fmt: skip
    cached_n = measured_n = 0
    base = lookup(base_key, len(models))
    pairs: list[tuple[Any, Feed]] = []
    if base is None:  # sessions made (and the batch checked) now, timed after the weights: warm by then
        try:
            pairs = [(make_session(b, threads=cands.threads), feed) for b in models]
            for s, f in pairs:
                s.run(None, f)
        except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own types for a bad feed
            raise DataError(
                f"the model does not run on a batch of {batch} validation samples ({' '.join(str(exc).split())[:200]}); "
                "give --latency-batch the batch size the model takes"
            ) from None
    else:
        cached_n += len(models)

    consumers: dict[str, list[onnx.NodeProto]] = {}
    unmeasured: dict[str, str] = {}
    for layer in cands.layers:
        found = _main_consumers(model, layer.name)
        if isinstance(found, str):
            unmeasured[layer.name] = found
        else:
            consumers[layer.name] = found
    needed = [i for nodes in consumers.values() for n in nodes for i in [*n.input, *n.output] if i]
    inits = {t.name for t in model.graph.initializer}
    values = _capture(model, [i for i in needed if i not in inits and i not in consumers], feed, cands.threads)

    times: dict[str, dict[str, int]] = {}
    keys: dict[str, dict[str, str]] = {}
    weight_cfg = {k: v for k, v in cands.base.to_dict()["weight"].items() if k in ("block_size", "accuracy_level", "activations")}
    done: dict[str, int] = {}  # entries timed in this call, by key (identical ops share one timing)
    folded_keys: set[str] = set()  # runtime entries that fold back to float (never timed)
    folded: dict[str, list[str]] = {}
    for idx, (name, nodes) in enumerate(consumers.items()):
        if progress is not None:
            progress(idx, len(consumers), name)
        w = tensor_array(model, name)
        micro, micro_feed = _micro_model(model, nodes, name, values)
        label = _entry_key(micro, w, micro_feed, None, None, env, [])[1]
        position = [(k, list(n.input).index(name)) for k, n in enumerate(nodes) if name in n.input]
        row_keys: dict[str, str] = {}
        todo: list[tuple[str, str]] = []
        for e in entries:
            override = None if e == FLOAT else {"format": "runtime", "bits": runtime_bits[e]}
            key, _ = _entry_key(micro, w, micro_feed, override, weight_cfg if override else None, env, position)
            row_keys[e] = key
            if key in done or f"{key}/0" in stored:
                continue
            todo.append((e, key))
        sessions: list[tuple[Any, Feed]] = []
        timed: list[tuple[str, str]] = []
        dense = resident_bytes(micro)
        for e, key in todo:
            m = micro
            if e != FLOAT:
                cfg = Plan({name: Choice.runtime(runtime_bits[e])}).to_config(
                    cands.base, [n for n in consumers if n in {t.name for t in micro.graph.initializer}])
                m = onnx.ModelProto()
                m.CopyFrom(micro)  # compress_model rewrites its argument
                try:
                    m = compress_model(m, cfg, keep_decoded=False).model
                except (ConfigError, EncodingError, NoCompressibleWeightsError) as exc:
                    unmeasured[name] = f"{e}: {' '.join(str(exc).split())[:160]}"
                    continue
                if resident_bytes(m) >= dense:  # folded back to dense float at load: the float kernel
                    folded_keys.add(key)
                    fresh[f"{key}/0"] = {"folded": True, "what": f"{label} {e}"}
                    continue
            sessions.append((make_session(m.SerializeToString(), threads=cands.threads), micro_feed))
            timed.append((e, key))
        if sessions:
            for (e, key), t in zip(timed, timer(sessions, timing), strict=True):
                done[key] = int(t)
                fresh[f"{key}/0"] = {"ns": int(t), "what": f"{label} {e}"}
                measured_n += 1
        row: dict[str, int] = {}
        for e, key in row_keys.items():
            if key in folded_keys or stored.get(f"{key}/0", {}).get("folded"):
                if FLOAT in row:
                    row[e] = row[FLOAT]
                    folded.setdefault(name, []).append(e)
            elif key in done:
                row[e] = done[key]
                if (e, key) not in timed:
                    cached_n += 1
            elif f"{key}/0" in stored:
                row[e] = int(stored[f"{key}/0"]["ns"])
                cached_n += 1
        times[name] = row
        keys[name] = row_keys
    if base is None:
        base = timer(pairs, timing)
        for i, t in enumerate(base):
            fresh[f"{base_key}/{i}"] = {"ns": int(t), "what": f"whole model {i}"}
        measured_n += len(models)
    if progress is not None:
        progress(len(consumers), len(consumers), "done")
    if path is not None and fresh:
        from onnxcompress.model_io import write_bytes

        merged = {**stored, **fresh}
        write_bytes(path, (json.dumps({"format": FORMAT, "entries": merged}, indent=1, sort_keys=True) + "\n").encode())
    return LatencyTable(
        base_ns=int(base[0]), reference_ns=int(base[-1]), batch=batch, env=env, times=times, keys=keys,
        unmeasured=unmeasured, folded=folded, cached=cached_n, measured=measured_n, seconds=time.perf_counter() - t_start,
    )  # fmt: skip


def side_by_side(
    models: Sequence[bytes], feed: Feed, *, threads: int | None, timing: Timing | None = None, timer: Timer | None = None
) -> list[int]:
    """Measured p50 (ns) of each serialized model on ``feed``, rounds alternating in one process."""
    from onnxcompress.sessions import make_session

    pairs = [(make_session(b, threads=threads), feed) for b in models]
    return (timer or time_sessions)(pairs, timing or Timing())
