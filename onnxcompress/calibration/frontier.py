"""Sequential capture in time and memory linear in depth: cache the activations at a cut between stages.

:func:`~onnxcompress.calibration.capture.capture` runs, for every stage, the whole graph prefix from
the model inputs to the stage's activations, so a sequential calibration costs about ``stages / 2``
forward passes (quadratic in depth). :class:`FrontierCapture` does what GPTQ does with the inputs of
a transformer block: it keeps, per calibration batch, the tensors that cross a cut of the (topologically
sorted) node list, and runs every later stage from there.

Cuts. For stage ``s`` let ``p_s`` be 1 + the largest index of a node producing one of its
activations (0 when all are graph inputs); the cut after stage ``s`` is ``c_s = max(c_{s-1}, p_s)``.
Targets are sorted by the index of their consumer and stages are contiguous in that order, so every
target of a later stage is consumed (and its bias added) at an index ``>= c_s``: the nodes before
``c_s`` read only weights of stages ``<= s``, which are final once stage ``s`` is compressed. The
frontier ``F_s`` holds the non-constant tensors made before ``c_s`` (graph inputs included) that a
later stage still needs: activations of later stages, and inputs (also names that subgraphs read
from the outer scope) of nodes at ``>= c_s`` that later activations depend on.

Runs. Run ``s`` (after stages ``< s`` are written into the model) starts from ``F_{s-2}`` (the
model inputs for ``s < 2``), computes the activations of stage ``s`` and ``F_{s-1}`` in one session
built from the nodes at ``>= c_{s-2}`` they need, folds the activations into the statistics and
keeps ``F_{s-1}`` for run ``s + 1``. Every node runs about twice over the whole calibration, and
tensors already in the input frontier are passed through without running anything.

Constants. Tensors computed from initializers alone (``Constant`` nodes, ``Shape`` of nothing
dynamic...) are never cached: their nodes are rerun from the current weights in every run that
needs them, so a weight stored as a ``Constant`` is always seen with its current value.

Weights. The compressed weights of earlier stages reach the runs either written into ``model``
(:func:`~.capture.set_tensor`) or through :meth:`FrontierCapture.update`, which keeps them beside an
untouched ``model``: no second copy of the model is needed, and a value is dropped as soon as no
later run can read it (its readers all sit before the next run's start), so only the last few
stages' weights are held.

Memory. A frontier is one dict per batch. Entries stay in RAM while all kept frontiers together
stay under :data:`FRONTIER_RAM_BYTES`; beyond that they are written to a temporary folder (``.npy``
files, read back memory-mapped), removed when the capture closes, also on error.

When the frontier holds something that is not a plain tensor (a sequence, an optional), or the cut
does not hold (a subgraph needs a tensor that was not kept), :class:`FrontierUnsupported` is raised
and the caller falls back to the prefix capture.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcompress.calibration.capture import (
    LayerStats,
    Target,
    accumulate,
    finish,
    infer_value_types,
    new_stats,
    node_inputs,
    tensor_np_dtype,
)
from onnxcompress.errors import DataError

#: RAM for all cached frontier batches together (bytes); beyond it batches are spilled to disk.
FRONTIER_RAM_BYTES: int = 512 << 20

#: Ops that draw random numbers: never treated as constant (rerunning them would change values).
_RANDOM_OPS = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


class FrontierUnsupported(Exception):
    """The frontier capture cannot handle this model (the prefix capture still can)."""


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _non_tensor(vi: onnx.ValueInfoProto) -> bool:
    """True when the value info declares a sequence, optional, map or sparse tensor."""
    return vi.type.WhichOneof("value") not in (None, "tensor_type")


class FrontierCapture:
    """Stage-by-stage statistics of ``groups`` (from :func:`~.capture.stages`) for sequential mode.

    Call :meth:`capture` with ``s = 0, 1, 2, ...`` in order, each time after the decoded weights
    (and corrected biases) of the stages before ``s`` were written into ``model`` or given to
    :meth:`update`; :meth:`close` (or ``with``) removes spilled files. ``nodes_run`` counts the
    nodes of the sessions built (nodes executed per batch, summed over runs).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        groups: Sequence[Sequence[Target]],
        batches: Callable[[], Iterable[dict[str, np.ndarray]]],
        *,
        threads: int | None = None,
    ) -> None:
        self.model = model
        self.groups = [list(g) for g in groups]
        self.batches = batches
        self.threads = threads
        self.nodes_run = 0
        self.spilled_bytes = 0
        self._next = 0
        self._entries: list[tuple[str, dict[str, Any], int]] = []  # the kept frontier, per batch
        self._ram = 0
        self._dir: str | None = None
        self._files = 0
        self._inferred: dict[str, onnx.ValueInfoProto] | None = None
        self._values: dict[str, np.ndarray] = {}  # new values of initializers / Constants (update)
        self._dropped: set[str] = set()  # update()d values no later run reads, already released
        self._analyse()

    # ------------------------------------------------------------------------------------ analysis

    def _analyse(self) -> None:
        g = self.model.graph
        nodes = list(g.node)
        n = len(nodes)
        inits = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
        self.graph_inputs = [i.name for i in g.input if i.name not in inits]
        static = set(inits)
        self.static = [False] * n
        producer: dict[str, int] = {}
        self.node_inputs = [node_inputs(nd) for nd in nodes]
        for i, nd in enumerate(nodes):
            if nd.op_type not in _RANDOM_OPS and all(x in static for x in self.node_inputs[i]):
                self.static[i] = True
                static.update(o for o in nd.output if o)
            for o in nd.output:
                if o:
                    producer[o] = i
        self.static_names = static
        # the last node reading each name (static readers can join any run: they count as n)
        self.last_reader: dict[str, int] = {}
        for i in range(n):
            at = n if self.static[i] else i
            for x in self.node_inputs[i]:
                if self.last_reader.get(x, -1) < at:
                    self.last_reader[x] = at

        def dynamic_index(name: str) -> int:
            """Index of the node making a non-constant tensor; -1 for graph inputs and constants."""
            i = producer.get(name)
            return -1 if i is None or self.static[i] else i

        # cuts c_s = max(c_{s-1}, p_s)
        self.cuts: list[int] = []
        cut = 0
        for stage in self.groups:
            p = 1 + max((dynamic_index(n) for t in stage for n in t.names), default=-1)
            cut = max(cut, p)
            self.cuts.append(cut)

        # the last stage whose activations need each node, and each name's consumers
        act_stage: dict[str, int] = {}
        for s, stage in enumerate(self.groups):
            for t in stage:
                for name in t.names:
                    act_stage[name] = max(act_stage.get(name, -1), s)
        need = dict(act_stage)
        node_need = [-1] * n
        for i in reversed(range(n)):
            v = max((need.get(o, -1) for o in nodes[i].output if o), default=-1)
            node_need[i] = v
            if v >= 0:
                for x in self.node_inputs[i]:
                    if need.get(x, -1) < v:
                        need[x] = v
        consumers: dict[str, list[int]] = {}
        for i in range(n):
            if node_need[i] >= 0:
                for x in self.node_inputs[i]:
                    consumers.setdefault(x, []).append(i)

        # F_k: made before c_k (or a graph input), not constant, needed by a stage > k
        candidates = [x for x in self.graph_inputs if x not in static]
        candidates += [o for i, nd in enumerate(nodes) if not self.static[i] for o in nd.output if o]
        candidates = [x for x in dict.fromkeys(candidates) if need.get(x, -1) >= 0]
        self.frontiers: list[list[str]] = []
        for k in range(len(self.groups) - 1):
            c = self.cuts[k]
            f = []
            for x in candidates:
                if dynamic_index(x) >= c:
                    continue
                if act_stage.get(x, -1) > k or any(j >= c and node_need[j] > k for j in consumers.get(x, ())):
                    f.append(x)
            self.frontiers.append(f)
        self._check_types({x for f in self.frontiers for x in f})

    def _types(self) -> dict[str, onnx.ValueInfoProto]:
        g = self.model.graph
        return {v.name: v for v in list(g.value_info) + list(g.output) + list(g.input)}

    def _inferred_types(self) -> dict[str, onnx.ValueInfoProto]:
        """Value infos from shape inference of the whole model (once; best effort; without copying
        the weights, see :func:`~.capture.infer_value_types`)."""
        if self._inferred is None:
            self._inferred = infer_value_types(self.model)
        return self._inferred

    # ------------------------------------------------------------------------------------ weights

    def _start(self, s: int) -> int:
        """Index of the first node run ``s`` may run (constant nodes aside)."""
        return self.cuts[s - 2] if s >= 2 else 0

    def update(self, name: str, value: np.ndarray) -> None:
        """Use ``value`` for the initializer (or ``Constant``) ``name`` in every later run, instead of
        the one in ``model`` (which stays untouched). Kept only while a later run can read it."""
        if self._next >= len(self.groups):  # no run left
            return
        self._values[name] = value
        self._dropped.discard(name)

    def _drop_unread(self, s: int) -> None:
        """Release the updated values that no run from ``s`` on can read."""
        start = self._start(s)
        for name in [x for x in self._values if self.last_reader.get(x, -1) < start]:
            del self._values[name]
            self._dropped.add(name)

    def _tensor(self, name: str, proto: onnx.TensorProto) -> onnx.TensorProto:
        """``proto`` (an initializer or a Constant's value), or its updated value."""
        if name in self._dropped:  # cannot happen (see _drop_unread); never run on a stale weight
            raise FrontierUnsupported(f"{name!r} is read after its updated value was released")
        value = self._values.get(name)
        if value is None:
            return proto
        return numpy_helper.from_array(np.asarray(value, dtype=tensor_np_dtype(proto)), name)

    def _check_types(self, names: set[str]) -> None:
        types = self._types()
        for x in sorted(names):
            vi = types.get(x)
            if vi is None or vi.type.WhichOneof("value") is None:
                vi = self._inferred_types().get(x)
            if vi is not None and _non_tensor(vi):
                raise FrontierUnsupported(f"frontier tensor {x!r} is a {vi.type.WhichOneof('value')}")

    # ------------------------------------------------------------------------------------ sub-models

    def sub_model(
        self,
        inputs: dict[str, np.dtype],
        outputs: Sequence[str],
        start: int,
        index_outputs: Iterable[str] = (),
    ) -> onnx.ModelProto:
        """A model from ``inputs`` (graph inputs typed by the arrays' dtypes, shapes unknown) to
        ``outputs``, made of the nodes at ``>= start`` they need and the constant nodes they need."""
        g = self.model.graph
        nodes = g.node
        needed = set(outputs)
        keep: list[int] = []
        for i in reversed(range(len(nodes))):
            made = [o for o in nodes[i].output if o in needed and o not in inputs]
            if not made:
                continue
            if i < start and not self.static[i]:
                raise FrontierUnsupported(
                    f"{made[0]!r} is needed after the cut at node {start} but was not kept"
                )
            keep.append(i)
            needed |= self.node_inputs[i]
        keep.reverse()
        kept_nodes = [nodes[i] for i in keep]
        if self._values or self._dropped:
            kept_nodes = [self._constant(nd) for nd in kept_nodes]
        originals = {v.name: v for v in g.input}
        in_vis = []
        for name, dtype in inputs.items():
            if name not in needed:
                continue
            if name in originals:
                in_vis.append(originals[name])
                continue
            try:
                elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            except Exception as exc:
                raise FrontierUnsupported(f"frontier tensor {name!r} has dtype {dtype}") from exc
            in_vis.append(onnx.helper.make_tensor_value_info(name, elem, None))
        inits = [self._tensor(t.name, t) for t in g.initializer if t.name in needed]
        # initializers listed as graph inputs too (required before IR version 4) stay listed
        in_vis += [originals[t.name] for t in inits if t.name in originals and t.name not in inputs]
        types = self._types()
        index_outputs = set(index_outputs)
        out_vis = []
        for name in outputs:  # probe_model's typing: declared, else inferred, else int64/float
            vi = types.get(name)
            if vi is not None and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                out_vis.append(vi)
                continue
            got = self._inferred_types().get(name)
            if got is not None and _non_tensor(got):
                raise FrontierUnsupported(f"{name!r} is a {got.type.WhichOneof('value')}")
            out_elem = int(got.type.tensor_type.elem_type) if got is not None else 0
            default = onnx.TensorProto.INT64 if name in index_outputs else onnx.TensorProto.FLOAT
            out_vis.append(onnx.helper.make_tensor_value_info(name, out_elem or default, None))
        graph = onnx.helper.make_graph(
            kept_nodes,
            g.name or "frontier",
            in_vis,
            out_vis,
            initializer=inits,
            sparse_initializer=[t for t in g.sparse_initializer if t.values.name in needed],
        )
        m = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import))
        if self.model.ir_version:
            m.ir_version = self.model.ir_version
        m.functions.extend(self.model.functions)
        return m

    def _constant(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """``node``, or a copy with its updated value when it is a ``Constant`` that was updated."""
        name = node.output[0] if node.op_type == "Constant" and node.output else None
        if name is None or (name not in self._values and name not in self._dropped):
            return node
        out = onnx.NodeProto()
        out.CopyFrom(node)
        for a in out.attribute:
            if a.name == "value":
                a.t.CopyFrom(self._tensor(name, a.t))
        return out

    # ------------------------------------------------------------------------------------ runs

    def capture(self, s: int) -> dict[str, LayerStats]:
        """Statistics of stage ``s``; also keeps the frontier the next stage starts from."""
        from onnxcompress.sessions import make_session

        if s != self._next:
            raise ValueError(f"stages must be captured in order: expected {self._next}, got {s}")
        self._drop_unread(s)
        stage = self.groups[s]
        acts = list(dict.fromkeys(n for t in stage for n in t.names))
        start = self._start(s)
        in_names = self.frontiers[s - 2] if s >= 2 else self.graph_inputs
        in_set = set(in_names)
        keep = self.frontiers[s - 1] if 1 <= s <= len(self.groups) - 2 else []
        keep_set = set(keep)
        wanted = list(dict.fromkeys(acts + keep))
        to_run = [x for x in wanted if x not in in_set]
        index_outputs = {t.act for t in stage if t.kind == "embedding"}
        session = None
        feed_names: set[str] = set()
        accs = {t.info.name: new_stats(t) for t in stage}
        new_entries: list[tuple[str, dict[str, Any], int]] = []
        seen = 0
        try:
            for batch in self._source(s):
                if to_run and session is None:
                    dtypes = {x: np.asarray(batch[x]).dtype for x in in_names if x in batch}
                    model = self.sub_model(dtypes, to_run, start, index_outputs)
                    try:
                        # no spinning: between runs the cores belong to numpy's Hessian updates
                        session = make_session(
                            model, threads=self.threads, optimization_level="basic",
                            config={"session.intra_op.allow_spinning": "0"},
                        )  # fmt: skip
                    except Exception as exc:
                        raise FrontierUnsupported(f"stage {s} sub-model: {exc}") from exc
                    self.nodes_run += len(model.graph.node)
                    feed_names = {i.name for i in session.get_inputs()}
                    del model
                values: dict[str, Any] = {}
                if session is not None:
                    try:
                        outs = session.run(to_run, {k: v for k, v in batch.items() if k in feed_names})
                    except Exception as exc:
                        raise FrontierUnsupported(f"stage {s} sub-model run: {exc}") from exc
                    values.update(zip(to_run, outs, strict=True))
                for x in wanted:
                    if x in in_set:
                        if x not in batch:
                            raise FrontierUnsupported(f"{x!r} is missing from the calibration batch")
                        # a data source may reuse its buffers: keep copies of model inputs
                        values[x] = np.array(batch[x]) if s < 2 and x in keep_set else batch[x]
                    if not isinstance(values[x], np.ndarray):
                        raise FrontierUnsupported(f"{x!r} is a {type(values[x]).__name__}, not a tensor")
                for t in stage:
                    extra = {n: np.asarray(values[n]) for n in t.extra}
                    accumulate(t, accs[t.info.name], np.asarray(values[t.act]), extra)
                if keep:
                    new_entries.append(self._keep({x: values[x] for x in keep}))
                seen += 1
                del batch, values
        except BaseException:
            self._release(new_entries)
            raise
        if not seen:
            raise DataError("the calibration data yielded no batches; pass a file with at least one sample")
        self._release(self._entries)
        self._entries = new_entries
        self._next = s + 1
        if self._next >= len(self.groups):
            self.close()
        return {t.info.name: finish(t, accs[t.info.name]) for t in stage}

    def _source(self, s: int) -> Iterator[dict[str, Any]]:
        if s < 2:
            yield from self.batches()
            return
        for kind, entry, _ in self._entries:
            if kind == "ram":
                yield entry
            else:
                yield {x: np.load(path, mmap_mode="r") for x, path in entry.items()}

    # ------------------------------------------------------------------------------------ storage

    def _keep(self, values: dict[str, np.ndarray]) -> tuple[str, dict[str, Any], int]:
        size = sum(v.nbytes for v in values.values())
        spillable = all(v.dtype.kind in "biufc" for v in values.values())
        if self._ram + size <= FRONTIER_RAM_BYTES or not spillable:
            self._ram += size
            return "ram", {x: np.array(v) if isinstance(v, np.memmap) else v for x, v in values.items()}, size
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="onnxcompress-frontier-")
        paths = {}
        for x, v in values.items():
            path = os.path.join(self._dir, f"{self._files}.npy")
            self._files += 1
            np.save(path, v, allow_pickle=False)
            paths[x] = path
        self.spilled_bytes += size
        return "disk", paths, size

    def _release(self, entries: list[tuple[str, dict[str, Any], int]]) -> None:
        for kind, entry, size in entries:
            if kind == "ram":
                self._ram -= size
                continue
            for path in entry.values():
                try:
                    os.remove(path)
                except OSError:  # a mapping still open (Windows): close() removes the folder
                    pass
        entries.clear()

    def close(self) -> None:
        """Drop the kept frontier and the updated weights, and remove the spill folder."""
        self._release(self._entries)
        self._values.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> FrontierCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
