"""Run a model on calibration data and fold each compressible weight's input into its statistics.

For every target weight the consumer's activation input is added as an extra graph output of a
*copy* of the model; each batch's activations are folded into the weight's accumulator
(``H = X^T X`` and ``E[x]`` over the reduction features, or lookup counts for an embedding) and
dropped, so memory is bounded by one batch, never by the data set.

What ``X`` is per consumer:

* ``MatMul(x, W)`` / ``Gemm(x, W)``: rows of ``x`` over its last axis (``x^T`` when ``transA``);
* ``Conv(x, W)``: im2col patches with strides, pads (and ``auto_pad``), dilations, one ``H`` per
  group, columns ordered like ``W[o].reshape(-1)``;
* ``Gather(W, idx)``: how often each row is looked up;
* ``LSTM`` / ``GRU`` / ``RNN`` ``W``: the input sequence; ``R``: each direction's previous hidden
  state, read from ``Y`` (H block diagonal over the directions; see :func:`_rnn_target`).

Consumers inside ``If`` branches (the weight in the main graph or in the branch, nested Ifs too)
are captured through :func:`prepare`: a copy of the model whose outermost If outputs the branch's
activation (the other branch an empty tensor, so only batches that take the branch add rows).
Loop and Scan bodies are not captured (their weights keep the plain algorithms).

**Sequential mode** (GPTQ/SparseGPT): :func:`stages` cuts the targets, in topological order, into
stages whose activations do not depend on any weight of the same stage, so a stage can be
captured in one run of a model in which all earlier stages are already replaced by their decoded
values. QKV projections of a transformer block share a stage, a plain MLP needs one stage per layer.
:func:`capture` runs, per stage, the graph prefix from the model inputs (pruned to the nodes the
activations need), which costs about ``stages / 2`` forward passes over the calibration set;
:class:`onnxcompress.calibration.frontier.FrontierCapture` (what ``calibrate`` uses) caches the
activations at a cut between stages instead, about two passes in all. :func:`capture` stays as its
fallback and as the single-stage (non-sequential) capture.

Graph code: uses onnx, builds sessions only through :func:`onnxcompress.sessions.make_session`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcompress.algorithms.calibrated.hessian import (
    GroupedHessianAccumulator,
    HessianAccumulator,
    RowCountAccumulator,
    im2col,
    im2col_grouped,
)
from onnxcompress.errors import DataError
from onnxcompress.inventory import WeightInfo, fresh_name, graph_names

IM2COL_ELEMENTS = 1 << 24  # largest patch matrix built at once (128 MiB in float64)
# grouped (depthwise) patches: smaller pieces stay in cache (measured 1.5x faster at 2M than at 16M)
GROUPED_IM2COL_ELEMENTS = 1 << 21


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


@dataclass
class Target:
    """A weight that calibration handles, its consumer and how its statistics are gathered."""

    info: WeightInfo
    node: onnx.NodeProto
    node_index: int
    kind: str  # "linear", "conv" or "embedding"
    act: str  # the activation (or index) tensor feeding the weight's consumer
    rows: int
    cols: int
    transpose_act: bool = False
    conv: dict[str, Any] = field(default_factory=dict)
    bias: str | None = None  # a bias initializer used only by this layer, for bias correction
    # consumer inside If branches: (node index, branch attribute) per level from the main graph
    # down; node_index is then the outermost If's. prepare() exposes ``act`` as an If output.
    scope: tuple[tuple[int, str], ...] = ()
    # kind "rnn" (W or R of an LSTM/GRU/RNN): the cell's layout and the tensors besides ``act`` (its
    # input sequence X) that the statistics need (see :func:`_rnn_target`)
    rnn: dict[str, Any] = field(default_factory=dict)

    @property
    def groups(self) -> int:
        return int(self.conv.get("group", 1)) if self.kind == "conv" else 1

    @property
    def extra(self) -> tuple[str, ...]:
        """Tensors besides ``act`` that a batch's statistics need (RNN: Y, initial_h, sequence_lens)."""
        if self.kind != "rnn":
            return ()
        keys = ("y", "h0", "seq") if self.rnn["which"] == "R" else ("seq",)
        return tuple(self.rnn[k] for k in keys if self.rnn.get(k))

    @property
    def names(self) -> tuple[str, ...]:
        """Every tensor a capture run must produce for this target."""
        return (self.act, *self.extra)


@dataclass
class LayerStats:
    """What calibration learned about one weight's inputs."""

    kind: str
    blocks: list[tuple[slice, np.ndarray]] = field(default_factory=list)  # (rows, H) per group
    means: list[tuple[slice, np.ndarray]] = field(default_factory=list)  # (rows, E[x]) per group
    counts: np.ndarray | None = None  # embedding lookups per row
    samples: int = 0  # rows of X seen (or lookups)


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the outer scope (conservatively: every input they name)."""
    names: set[str] = set()
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in subs:
            for n in g.node:
                names.update(i for i in n.input if i)
                names |= _subgraph_inputs(n)
    return names


def node_inputs(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node reads, including those its subgraphs (If/Loop/Scan bodies) read from
    the outer scope: the liveness and capture walks must keep those alive too."""
    return {i for i in node.input if i} | _subgraph_inputs(node)


def find_targets(
    model: onnx.ModelProto, weights: Iterable[WeightInfo]
) -> tuple[list[Target], dict[str, str]]:
    """Targets for the weights calibration can handle, and for the others why not (they fall back
    to the plain algorithms)."""
    graph = model.graph
    inits = _initializers(graph)
    consumers: dict[str, list[tuple[int, onnx.NodeProto]]] = {}
    for i, node in enumerate(graph.node):
        for name in node_inputs(node):
            consumers.setdefault(name, []).append((i, node))
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for info in weights:
        uses = consumers.get(info.name, [])
        if info.graph != "" or any(u.graph != "" for u in info.uses):
            found = _scoped_target(model, info)
            if isinstance(found, str):
                skipped[info.name] = found
            else:
                targets.append(found)
            continue
        if len(uses) != 1 or len(info.uses) != 1:
            skipped[info.name] = "used more than once"
            continue
        idx, node = uses[0]
        use = info.uses[0]
        t = _target_for(info, node, idx, use.input_index)
        if t is None:
            skipped[info.name] = (
                f"no calibrated method for {node.op_type} input {use.input_index} of rank {len(info.shape)}"
            )
            continue
        if t.kind == "linear" and node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in inits:
            b = inits[node.input[2]]
            if int(np.prod(b.dims)) == t.rows and len(consumers.get(b.name, [])) == 1:
                t.bias = b.name
        if t.kind == "conv" and len(node.input) > 2 and node.input[2] in inits:
            if len(consumers.get(node.input[2], [])) == 1:
                t.bias = node.input[2]
        if t.kind == "linear" and node.op_type == "MatMul":
            t.bias = _matmul_bias(graph, node, t.rows, inits, consumers)
        targets.append(t)
    targets.sort(key=lambda t: t.node_index)
    return targets, skipped


def _target_for(info: WeightInfo, node: onnx.NodeProto, idx: int, input_index: int) -> Target | None:
    """The target of ``info`` read by ``node`` as its input ``input_index``; None when unsupported."""
    attrs = _attrs(node)
    shape = info.shape
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul" and input_index == 1 and len(shape) == 2:
        return Target(info, node, idx, "linear", node.input[0], rows=shape[1], cols=shape[0])
    if node.op_type == "Gemm" and input_index == 1 and len(shape) == 2:
        tb = bool(attrs.get("transB", 0))
        rows, cols = (shape[0], shape[1]) if tb else (shape[1], shape[0])
        return Target(info, node, idx, "linear", node.input[0], rows=rows, cols=cols,
                      transpose_act=bool(attrs.get("transA", 0)))  # fmt: skip
    if node.op_type == "Conv" and input_index == 1 and len(shape) >= 3:
        t = Target(info, node, idx, "conv", node.input[0], rows=shape[0], cols=int(np.prod(shape[1:])),
                   conv=attrs)  # fmt: skip
        t.conv.setdefault("kernel_shape", list(shape[2:]))
        return t
    if node.op_type == "Gather" and input_index == 0 and len(shape) == 2 and int(attrs.get("axis", 0)) == 0:
        return Target(info, node, idx, "embedding", node.input[1], rows=shape[0], cols=shape[1])
    if node.op_type in _RNN_GATES and input_index in (1, 2) and len(shape) == 3:
        return _rnn_target(info, node, idx, input_index, attrs)
    return None


_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _rnn_target(info: WeightInfo, node: onnx.NodeProto, idx: int, input_index: int, attrs: dict) -> Target:
    """W (``input_index`` 1, ``[D, G*H, I]``) or R (2, ``[D, G*H, H]``) of an LSTM/GRU/RNN.

    Viewed like the plain path does (output axis 1): ``W2 [G*H, D*I]``, column ``d*I + i``. Each
    direction's rows only see their own direction's input, so ``H`` is block diagonal over the
    directions: ``X^T X`` (the layer input, the same for both) for W, ``H_prev^T H_prev`` (the
    previous hidden state of that direction: ``Y`` shifted by one step, ``initial_h`` first) for R.
    A GRU without ``linear_before_reset`` feeds its hidden gate ``r_t * h_{t-1}`` instead: R's
    rows of that gate get their own block.
    """
    d, rows, cols = info.shape
    inputs = list(node.input) + [""] * (8 - len(node.input))
    outputs = list(node.output) + [""]
    direction = str(attrs.get("direction", "forward"))
    rnn = {
        "op": node.op_type, "which": "W" if input_index == 1 else "R", "dirs": d, "hidden": rows // _RNN_GATES[node.op_type],
        "direction": direction, "layout": int(attrs.get("layout", 0)), "lbr": int(attrs.get("linear_before_reset", 0)),
        "activations": list(attrs.get("activations", [])), "y": outputs[0] or None, "h0": inputs[5] or None,
        "seq": inputs[4] or None, "weights": (inputs[1], inputs[2], inputs[3] or None),
    }  # fmt: skip
    return Target(info, node, idx, "rnn", node.input[0], rows=rows, cols=d * cols, rnn=rnn)


Chain = tuple[tuple[int, str, str], ...]  # (node index, attribute name, op type) per level


def _walk(graph: onnx.GraphProto, chain: Chain = ()) -> Iterator[tuple[Chain, onnx.GraphProto]]:
    """Every subgraph below ``graph`` (not ``graph`` itself) with the chain of nodes leading to it."""
    for i, node in enumerate(graph.node):
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for g in subs:
                here = (*chain, (i, a.name, node.op_type))
                yield here, g
                yield from _walk(g, here)


def _scoped_target(model: onnx.ModelProto, info: WeightInfo) -> Target | str:
    """The target of a weight whose consumer sits in an If branch (the weight itself in the main
    graph, feeding the If, or inside the branch), or why it cannot be calibrated."""
    if len(info.uses) != 1:
        return "used more than once"
    found = [
        (chain, i, node)
        for chain, g in _walk(model.graph)
        for i, node in enumerate(g.node)
        if info.name in node.input
    ]
    if len(found) != 1:
        return "used more than once"
    chain, i, node = found[0]
    loops = [op for _, _, op in chain if op != "If"]
    if loops:
        return f"consumed inside a {loops[0]} body (only If branches are captured)"
    t = _target_for(info, node, chain[0][0], list(node.input).index(info.name))
    if t is None:
        return f"no calibrated method for {node.op_type} input {info.uses[0].input_index} of rank {len(info.shape)}"
    if t.kind in ("embedding", "rnn"):
        return f"{node.op_type} inside an If branch (plain algorithm used)"
    t.scope = tuple((idx, attr) for idx, attr, _ in chain)
    return t


def prepare(model: onnx.ModelProto, targets: Sequence[Target]) -> tuple[onnx.ModelProto, list[Target]]:
    """The model to capture from and the targets as they read it: ``model`` itself when no target sits
    in an If branch; otherwise a copy in which each such target's activation is an output of the
    outermost If (the branch outputs it, the other branch an empty tensor, so batches that take the
    other branch add no rows), and its weight is a main-graph initializer (so sequential runs can
    replace it like any other)."""
    targets = [_with_rnn_weights(model, t) for t in targets]
    unnamed = [t for t in targets if t.kind == "rnn" and t.rnn["which"] == "R" and not t.rnn["y"]]
    if not any(t.scope for t in targets) and not unnamed:
        return model, list(targets)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    taken = graph_names(m)
    out: list[Target] = []
    named: dict[int, str] = {}
    for t in targets:
        if t.kind == "rnn" and t.rnn["which"] == "R" and not t.rnn["y"]:  # Y unused: give it a name
            node = m.graph.node[t.node_index]
            if t.node_index not in named:
                named[t.node_index] = fresh_name(f"{node.name or node.op_type}__calib_Y", taken)
                if not node.output:
                    node.output.append("")
                node.output[0] = named[t.node_index]
            t = dataclasses.replace(t, rnn={**t.rnn, "y": named[t.node_index]})
        if not t.scope:
            out.append(t)
            continue
        elem = _FLOAT_ELEM[t.info.dtype]
        graphs = [m.graph]
        for idx, attr in t.scope:
            graphs.append(_branch(graphs[-1].node[idx], attr))
        name = t.act
        for level in reversed(range(len(t.scope))):
            idx, attr = t.scope[level]
            if_node = graphs[level].node[idx]
            inner = graphs[level + 1]
            other = _branch(if_node, "else_branch" if attr == "then_branch" else "then_branch")
            # through an Identity: the value may come from an outer scope, not from this branch
            ident = fresh_name(f"{name}__calib", taken)
            inner.node.append(onnx.helper.make_node("Identity", [name], [ident]))
            inner.output.append(onnx.helper.make_tensor_value_info(ident, elem, None))
            empty = fresh_name(f"{name}__calib_empty", taken)
            value = onnx.helper.make_tensor(empty, elem, [0], [])
            other.node.append(onnx.helper.make_node("Constant", [], [empty], value=value))
            other.output.append(onnx.helper.make_tensor_value_info(empty, elem, None))
            name = fresh_name(f"{t.act}__calib_exposed", taken)
            if_node.output.append(name)
        m.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, None))
        out.append(dataclasses.replace(t, act=name))
    _hoist(m, {t.info.name for t in targets if t.scope})
    return m, out


_FLOAT_ELEM = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}


def _with_rnn_weights(model: onnx.ModelProto, t: Target) -> Target:
    """A GRU's R target without ``linear_before_reset`` gets W, R and B (to recompute the reset gate)."""
    if t.kind != "rnn" or t.rnn["op"] != "GRU" or t.rnn["which"] != "R" or t.rnn["lbr"]:
        return t
    acts = t.rnn["activations"]
    if acts and any(a.lower() != "sigmoid" for a in acts[0::2]):
        return t  # a custom gate activation: R's hidden-gate rows use h_{t-1} (an approximation)
    w_name, r_name, b_name = t.rnn["weights"]
    try:
        vals: list[np.ndarray | None] = [get_tensor(model, w_name), get_tensor(model, r_name)]
        vals.append(get_tensor(model, b_name) if b_name else None)
    except KeyError:  # computed weights: same approximation
        return t
    return dataclasses.replace(t, rnn={**t.rnn, "gru": tuple(None if v is None else v.astype(np.float64) for v in vals)})


def _branch(node: onnx.NodeProto, attr: str) -> onnx.GraphProto:
    for a in node.attribute:
        if a.name == attr:
            return a.g
    raise KeyError(f"{node.op_type} node {node.name!r} has no {attr}")


def _hoist(model: onnx.ModelProto, names: set[str]) -> None:
    """Move the weights ``names`` defined inside subgraphs (initializers or Constants) to main-graph
    initializers (names are unique across scopes, so every reader still finds them)."""
    for _, g in _walk(model.graph):
        keep_inits = []
        for t in g.initializer:
            if t.name in names:
                model.graph.initializer.append(t)
            else:
                keep_inits.append(t)
        if len(keep_inits) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep_inits)
        keep_nodes = []
        for n in g.node:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if n.op_type == "Constant" and n.output and n.output[0] in names and value is not None:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value)
                tensor.name = n.output[0]
                model.graph.initializer.append(tensor)
            else:
                keep_nodes.append(n)
        if len(keep_nodes) != len(g.node):
            del g.node[:]
            g.node.extend(keep_nodes)


def _matmul_bias(graph, node, rows, inits, consumers) -> str | None:
    """The bias of ``Add(MatMul(x, W), b)``, when ``b`` is an initializer of ``rows`` values used once."""
    out = node.output[0]
    adds = consumers.get(out, [])
    if len(adds) != 1 or adds[0][1].op_type != "Add":
        return None
    other = [i for i in adds[0][1].input if i != out]
    if len(other) != 1 or other[0] not in inits:
        return None
    b = inits[other[0]]
    if int(np.prod(b.dims)) != rows or (b.dims and b.dims[-1] != rows) or len(consumers.get(b.name, [])) != 1:
        return None
    return b.name


def stages(model: onnx.ModelProto, targets: Sequence[Target]) -> list[list[Target]]:
    """Consecutive targets whose activations do not depend on each other's weights."""
    weight_names = {t.info.name for t in targets}
    upstream: dict[str, frozenset[str]] = {}
    for node in model.graph.node:
        deps: set[str] = set()
        for i in node_inputs(node):
            deps |= upstream.get(i, frozenset())
            if i in weight_names:
                deps.add(i)
        fd = frozenset(deps)
        for o in node.output:
            upstream[o] = fd
    out: list[list[Target]] = []
    current: list[Target] = []
    names: set[str] = set()
    for t in targets:
        if current and any(upstream.get(n, frozenset()) & names for n in t.names):
            out.append(current)
            current, names = [], set()
        current.append(t)
        names.add(t.info.name)
    if current:
        out.append(current)
    return out


def _copy_fields(dst: Any, src: Any, skip: set[str]) -> None:
    """Copy the set fields of protobuf message ``src`` into ``dst``, except those named in ``skip``."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(dst, fd.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


#: Initializers up to this many elements are kept for type inference (shape constants may matter);
#: larger ones become typed graph inputs, so inference never copies the weights.
_INFER_KEEP_ELEMENTS = 1024


def infer_value_types(
    model: onnx.ModelProto, *, data_prop: bool = False, outputs: bool = False
) -> dict[str, onnx.ValueInfoProto]:
    """Value infos (graph inputs included) from shape inference of ``model``; best effort: ``{}``
    when inference fails. ``data_prop``: also propagate constant shape values through
    Shape/Gather/Concat chains (what exported transformers compute their Reshape targets with).
    ``outputs``: include the graph outputs as inference completed them.

    Inference runs on a copy in which every large initializer is a graph input of the same type and
    shape: ``onnx.shape_inference`` would otherwise serialize the whole model and parse it back
    (three copies of the weights at once). Element types never depend on tensor values, so what the
    callers read (the element type, and whether a value is a tensor at all) is the same.
    """
    g = model.graph
    light = onnx.ModelProto()
    _copy_fields(light, model, {"graph"})
    _copy_fields(light.graph, g, {"initializer"})
    listed = {i.name for i in g.input}
    for t in g.initializer:
        if int(np.prod(t.dims, dtype=np.int64)) <= _INFER_KEEP_ELEMENTS:
            light.graph.initializer.append(t)
        elif t.name not in listed:
            light.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=data_prop)
    except Exception:  # inference is best effort
        return {}
    extra = list(inferred.graph.output) if outputs else []
    return {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input) + extra}


def probe_model(
    model: onnx.ModelProto, outputs: Sequence[str], index_outputs: Iterable[str] = ()
) -> onnx.ModelProto:
    """A copy of ``model`` whose only outputs are ``outputs``, without the nodes they do not need
    (and without the initializers those nodes do not read: they are never copied)."""
    g0 = model.graph
    types: dict[str, onnx.ValueInfoProto] = {
        v.name: v for v in list(g0.value_info) + list(g0.output) + list(g0.input)
    }
    needed = set(outputs)
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(g0.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= node_inputs(node)
    keep.reverse()
    m = onnx.ModelProto()
    _copy_fields(m, model, {"graph"})
    g = m.graph
    _copy_fields(g, g0, {"node", "initializer", "output", "value_info"})
    g.node.extend(keep)
    g.initializer.extend(t for t in g0.initializer if t.name in needed)
    for name in outputs:
        if name in types and types[name].type.HasField("tensor_type"):
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(types[name])
            g.output.append(vi)
        else:
            g.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None))
    _fill_output_types(m, model, set(index_outputs))
    return m


def _fill_output_types(model: onnx.ModelProto, source: onnx.ModelProto, index_outputs: set[str]) -> None:
    """Give untyped probe outputs an element type from shape inference of the full model (int64
    for embedding indices, float for activations when inference cannot tell)."""
    if all(o.type.tensor_type.elem_type for o in model.graph.output):
        return
    types = {v.name: v.type.tensor_type.elem_type for v in infer_value_types(source).values()}
    for o in model.graph.output:
        if not o.type.tensor_type.elem_type:
            default = onnx.TensorProto.INT64 if o.name in index_outputs else onnx.TensorProto.FLOAT
            o.type.tensor_type.elem_type = types.get(o.name) or default


def new_stats(t: Target) -> list:
    if t.kind == "embedding":
        return [RowCountAccumulator(t.rows)]
    if t.kind == "rnn":  # one accumulator per direction (and per direction for a GRU's hidden gate)
        d = t.rnn["dirs"]
        per = t.cols // d
        return [HessianAccumulator(per) for _ in range(2 * d if "gru" in t.rnn else d)]
    if t.groups > 1:  # grouped / depthwise convolution: all groups in one batched accumulator
        return [GroupedHessianAccumulator(t.groups, t.cols)]
    return [HessianAccumulator(t.cols)]


def accumulate(t: Target, accs: list, act: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> None:
    """Fold one batch of ``t``'s activation (and the ``extra`` tensors it needs) into its
    accumulators (an empty activation, from an If branch this batch did not take, adds nothing)."""
    if act.size == 0:
        return
    if t.kind == "rnn":
        _accumulate_rnn(t, accs, act, extra or {})
        return
    if t.kind == "embedding":
        accs[0].add(act)
        return
    if t.kind == "linear":
        x = act.T if t.transpose_act else act
        if x.shape[-1] != t.cols:
            raise DataError(f"activation of {t.info.name} has {x.shape[-1]} features, expected {t.cols}")
        accs[0].add(x.reshape(-1, t.cols))
        return
    c = t.conv
    kernel = list(c["kernel_shape"])
    per_sample = int(np.prod(act.shape[1:])) * int(np.prod(kernel))
    budget = GROUPED_IM2COL_ELEMENTS if t.groups > 1 else IM2COL_ELEMENTS
    step = max(1, budget // max(per_sample, 1))
    opts: dict[str, Any] = {"strides": c.get("strides"), "pads": c.get("pads"), "dilations": c.get("dilations"),
            "groups": t.groups, "auto_pad": str(c.get("auto_pad") or "NOTSET")}  # fmt: skip
    for s in range(0, act.shape[0], step):
        if t.groups > 1:
            accs[0].add(im2col_grouped(act[s : s + step], kernel, **opts))
            continue
        (x,) = im2col(act[s : s + step], kernel, **opts)
        accs[0].add(x)


def finish(t: Target, accs: list) -> LayerStats:
    if t.kind == "embedding":
        return LayerStats("embedding", counts=accs[0].counts, samples=int(accs[0].counts.sum()))
    if t.kind == "rnn":
        return _finish_rnn(t, accs)
    per = t.rows // t.groups
    if t.groups > 1:
        hs, ms = accs[0].hessians(), accs[0].means()
        sls = [slice(g * per, (g + 1) * per) for g in range(t.groups)]
        return LayerStats(t.kind, blocks=list(zip(sls, hs, strict=True)), means=list(zip(sls, ms, strict=True)),
                          samples=accs[0].count)  # fmt: skip
    full = slice(0, per)
    return LayerStats(t.kind, blocks=[(full, accs[0].hessian())], means=[(full, accs[0].mean())], samples=accs[0].count)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _accumulate_rnn(t: Target, accs: list, x: np.ndarray, extra: dict[str, np.ndarray]) -> None:
    """Rows of X (W) or of each direction's previous hidden state (R) for one batch.

    ``x`` is ``[T, B, I]`` (``[B, T, I]`` with layout 1), ``Y`` ``[T, D, B, H]`` (``[B, T, D, H]``),
    ``initial_h`` ``[D, B, H]`` (``[B, D, H]``). Steps past a sequence's length are left out. The
    forward direction's ``h_{t-1}`` is ``Y[t-1]`` (``initial_h`` at ``t = 0``); the reverse one runs
    from ``len - 1`` down, so its ``h_{t-1}`` is ``Y[t+1]`` (``initial_h`` at ``t = len - 1``).
    """
    r = t.rnn
    layout = r["layout"]
    x = np.asarray(x)
    if layout:
        x = x.transpose(1, 0, 2)
    steps, batch = x.shape[:2]
    lens = np.full(batch, steps, dtype=np.int64)
    if r.get("seq") and r["seq"] in extra:
        lens = np.minimum(np.asarray(extra[r["seq"]]).reshape(-1).astype(np.int64), steps)
    mask = np.arange(steps)[:, None] < lens[None, :]  # [T, B]
    if r["which"] == "W":
        accs[0].add(x[mask])
        return
    y = np.asarray(extra[r["y"]])
    y = y.transpose(1, 2, 0, 3) if layout else y  # [T, D, B, H]
    hs = r["hidden"]
    h0 = extra.get(r["h0"]) if r.get("h0") else None
    if h0 is not None:
        h0 = np.asarray(h0)
        h0 = h0.transpose(1, 0, 2) if layout else h0  # [D, B, H]
    for d in range(r["dirs"]):
        yd = y[:, d].astype(np.float64)
        init = np.zeros((batch, hs)) if h0 is None else h0[d].astype(np.float64)
        hp = np.empty_like(yd)
        reverse = r["direction"] == "reverse" or d == 1
        if reverse:
            hp[:-1] = yd[1:]
            hp[-1] = 0.0
            first = np.arange(steps)[:, None] == (lens - 1)[None, :]  # where each sequence starts
            hp = np.where(first[:, :, None], init[None], hp)
        else:
            hp[1:] = yd[:-1]
            hp[0] = init
        accs[d].add(hp[mask])
        if "gru" in r:  # the hidden gate reads r_t * h_{t-1}: r_t = sigmoid(x W_r^T + h R_r^T + b)
            w, rr, b = r["gru"]
            sl = slice(hs, 2 * hs)
            pre = x[mask].astype(np.float64) @ w[d, sl].T + hp[mask] @ rr[d, sl].T
            if b is not None:
                pre += b[d, sl] + b[d, 3 * hs + hs : 3 * hs + 2 * hs]
            accs[r["dirs"] + d].add(_sigmoid(pre) * hp[mask])


def _block_diag(blocks: list[np.ndarray]) -> np.ndarray:
    n = sum(b.shape[0] for b in blocks)
    out = np.zeros((n, n))
    at = 0
    for b in blocks:
        k = b.shape[0]
        out[at : at + k, at : at + k] = b
        at += k
    return out


def _finish_rnn(t: Target, accs: list) -> LayerStats:
    d = t.rnn["dirs"]
    if t.rnn["which"] == "W":  # every direction reads the same X
        h, mean = accs[0].hessian(), accs[0].mean()
        full = slice(0, t.rows)
        return LayerStats("rnn", blocks=[(full, _block_diag([h] * d))], means=[(full, np.tile(mean, d))],
                          samples=accs[0].count)  # fmt: skip
    main = accs[:d]
    if "gru" not in t.rnn:
        full = slice(0, t.rows)
        blocks = [(full, _block_diag([a.hessian() for a in main]))]
        means = [(full, np.concatenate([a.mean() for a in main]))]
    else:
        hs = t.rnn["hidden"]
        gated = accs[d:]
        zr, hg = slice(0, 2 * hs), slice(2 * hs, 3 * hs)
        blocks = [(zr, _block_diag([a.hessian() for a in main])), (hg, _block_diag([a.hessian() for a in gated]))]
        means = [(zr, np.concatenate([a.mean() for a in main])), (hg, np.concatenate([a.mean() for a in gated]))]
    return LayerStats("rnn", blocks=blocks, means=means, samples=main[0].count)


def capture(
    model: onnx.ModelProto,
    targets: Sequence[Target],
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    *,
    threads: int | None = None,
) -> dict[str, LayerStats]:
    """Statistics of ``targets`` from one pass of ``model`` over ``batches()`` (dicts of inputs)."""
    from onnxcompress.sessions import make_session

    acts = list(dict.fromkeys(n for t in targets for n in t.names))
    probe = probe_model(model, acts, {t.act for t in targets if t.kind == "embedding"})
    # no spinning: between runs the cores belong to numpy's Hessian updates, not idle ORT workers
    session = make_session(
        probe, threads=threads, optimization_level="basic", config={"session.intra_op.allow_spinning": "0"}
    )
    feeds_names = {i.name for i in session.get_inputs()}
    accs = {t.info.name: new_stats(t) for t in targets}
    seen = 0
    for batch in batches():
        outs = run_session(session, acts, {k: v for k, v in batch.items() if k in feeds_names})
        by_name = dict(zip(acts, outs, strict=True))
        for t in targets:
            accumulate(t, accs[t.info.name], np.asarray(by_name[t.act]), {n: by_name[n] for n in t.extra})
        seen += 1
    if not seen:
        raise DataError("the calibration data yielded no batches; pass a file with at least one sample")
    return {t.info.name: finish(t, accs[t.info.name]) for t in targets}


def run_session(session: Any, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[Any]:
    """``session.run``, with a failure on the calibration data as one :class:`DataError` line."""
    try:
        return session.run(list(outputs), feeds)
    except Exception as exc:  # onnxruntime raises its own types, with multi-line messages
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shapes = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in feeds.items())
        raise DataError(
            f"the model failed to run on the calibration data ({shapes}): {msg}; check the arrays' shapes "
            "(samples stacked on each input's batch axis, a scalar input as a 0-d array)"
        ) from None


def set_tensor(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace a main-graph initializer or Constant's value (keeps its dtype)."""
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=tensor_np_dtype(t)), name))
            return
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=tensor_np_dtype(a.t)), name))
                    return
    raise KeyError(name)


def tensor_np_dtype(t: onnx.TensorProto) -> np.dtype:
    """The numpy dtype of an initializer, so rewritten values keep the file's element type."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))


def get_tensor(model: onnx.ModelProto, name: str) -> np.ndarray:
    """A main-graph initializer or Constant's value; else one defined inside a subgraph."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    from onnxcompress.inventory import tensor_array

    return tensor_array(model, name)
