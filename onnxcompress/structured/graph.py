"""Dependency groups: which channels of an ONNX graph must be removed together.

Every Conv / ConvTranspose / Gemm / MatMul with a constant weight is a *source*: it creates one
fresh channel *element* per output channel. The analysis walks the graph in topological order and
keeps, for every tensor that carries source channels, a *layout*: the axis (counted from the end,
so that numpy broadcasting lines it up) and, for each position on that axis, the element it
carries. Ops move layouts around:

* elementwise ops, activations, BatchNormalization, pooling, Pad, Resize, Transpose, Squeeze:
  the layout passes through (per-channel constants such as BN parameters or a bias are sliced);
* residual ``Add`` / ``Mul`` of two laid-out tensors: the elements at the same position are
  *united* (a union-find), so every branch loses the same channels;
* ``Concat`` on the channel axis concatenates layouts (offsets into the joint axis);
  ``Split`` / ``Slice`` take sub-ranges (their sizes and bounds are rewritten);
* depthwise Conv is per channel (its weight rows and ``group`` follow the input); a grouped Conv
  ties channel ``i`` of every group together ("lanes"), so each group keeps the same count;
* ``Flatten`` / ``Reshape`` into a Gemm: each channel owns a block of the flattened axis;
* the reducing input of a Conv / Gemm / MatMul *consumes* the layout (the weight's input axis is
  sliced);
* attention heads: a ``Reshape`` that splits the channel axis into (heads, head_dim) unites the
  ``head_dim`` channels of each head (a class is then one head) and lays out the head axis; a
  batched ``MatMul`` of two computed tensors laid out on the same batch axis (Q K^T, then P V)
  unites their heads, so Q, K and V lose the same heads and the Reshape back hands the output
  projection one block per head. Reshape targets built at run time (``Shape`` -> ``Gather`` ->
  ``Unsqueeze`` -> ``Concat`` with constants) are traced; a literal head count or width is an
  ``Edit`` (a shared ``Concat`` is rewritten once, when every Reshape reading it keeps the same
  heads). Where shape inference leaves an operand unsized (a mask built from the input's shape), a
  small weight-free part of the graph is evaluated in numpy at sample sizes, and symbolic
  dimensions that inference did not link are compared at those sizes.

A channel *class* is a set of united elements: removing it removes every channel it stands for.
A *group* is a connected set of sources. Anything the analysis cannot prove safe (an unknown op,
a Reshape it cannot follow, a shape computed at run time, a channel axis reaching a graph output,
a weight shared with an op it does not slice) *refuses* the whole group, with the reason; the
pruning pass leaves refused groups untouched.

Pure graph code: onnx and numpy, no onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcompress.calibration.capture import infer_value_types
from onnxcompress.inventory import iter_graphs

Dim = Any  # int (known), str (symbolic) or None (unknown); checked with isinstance where it matters

UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Elu", "Selu", "Celu", "Softplus", "Softsign",
    "HardSigmoid", "HardSwish", "Mish", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Identity", "Dropout",
    "Cast", "Clip", "Floor", "Ceil", "Round", "Reciprocal", "Sin", "Cos", "ThresholdedRelu", "Sign",
    "Swish", "QuickGelu", "FastGelu",
}  # fmt: skip
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal",
    "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BiasGelu",
}  # fmt: skip
POOLING = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
PER_CHANNEL_NORM = {"BatchNormalization", "InstanceNormalization"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum"}  # fmt: skip
SOURCE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Layout:
    """Which channel element each position of a tensor's channel axis carries."""

    axis: int  # negative: counted from the last axis
    ids: np.ndarray  # int64 element ids, one per position


@dataclass(frozen=True)
class Slicing:
    """One axis of a constant tensor laid out like a channel axis: pruning keeps its positions
    whose element survives."""

    tensor: str
    axis: int  # non-negative
    ids: np.ndarray
    node: int = -1  # the node that reads the tensor


@dataclass(frozen=True)
class Edit:
    """A number in the graph that counts channels: an attribute (``group``), the sizes of a
    Split, the bounds of a Slice, an entry of a Reshape/Resize shape constant.

    ``kind``: ``group`` (attribute = kept count of ``ids``), ``split`` (``pieces``: ids per output),
    ``slice`` (``position`` into starts/ends, ``ids`` the input's, ``bounds`` the original
    start/end), ``shape`` (input ``input_index`` entry ``position`` = kept count x ``inner``).
    """

    kind: str
    node: int
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pieces: tuple[np.ndarray, ...] = ()
    input_index: int = 0
    position: int = 0
    inner: int = 1
    bounds: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Source:
    """A layer whose output channels the pass may remove."""

    node: int
    name: str
    op_type: str
    weight: str
    axis: int  # the weight's output-channel axis
    ids: np.ndarray  # element per output channel


@dataclass(frozen=True)
class Consumer:
    """A layer that reduces over laid-out channels (its weight's input axis is sliced)."""

    node: int
    name: str
    op_type: str
    weight: str
    axis: int  # the weight's input axis
    ids: np.ndarray  # element per position of that axis


@dataclass
class Group:
    """Channels that must go together, and why a group is left alone when it is."""

    index: int
    sources: list[Source]
    consumers: list[Consumer]
    classes: list[int]  # channel classes (union-find roots), in the first source's channel order
    fixed: set[int]  # classes that must stay (channels of tensors the pass cannot slice)
    refused: str | None = None
    kind: str = "channels"  # or "heads": a class is one attention head (``unit`` channels per projection)
    unit: int = 1

    @property
    def name(self) -> str:
        return self.sources[0].name

    @property
    def channels(self) -> int:
        return len(self.classes)

    @property
    def prunable(self) -> bool:
        return self.refused is None and len(self.classes) - len(self.fixed) > 0


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Analysis:
    """The result of :func:`analyze`: groups plus everything the pruning pass rewrites."""

    groups: list[Group]
    slicings: list[Slicing]
    edits: list[Edit]
    sources: list[Source]
    consumers: list[Consumer]
    _chan: _UnionFind
    _grp: _UnionFind

    def classes_of(self, ids: np.ndarray) -> np.ndarray:
        """The channel class of each element."""
        return np.array([self._chan.find(int(e)) for e in ids], dtype=np.int64)

    def group_of(self, element: int) -> int:
        return self._grp.find(int(element))

    def summary(self) -> list[dict[str, object]]:
        return [
            {
                "group": g.index, "name": g.name, "sources": [s.name for s in g.sources],
                "consumers": [c.name for c in g.consumers], "channels": g.channels, "fixed": len(g.fixed),
                "refused": g.refused, "kind": g.kind, "unit": g.unit,
            }
            for g in self.groups
        ]  # fmt: skip


class _Walker:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {}
        for t in self.graph.initializer:
            self.consts[t.name] = numpy_helper.to_array(t)
        for n in self.graph.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        # data propagation sizes the Reshape targets exporters compute from Shape (attention heads);
        # inference is best effort, so fall back to plain inference where propagation fails
        self.types = infer_value_types(model, data_prop=True) or infer_value_types(model)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.chan = _UnionFind()
        self.grp = _UnionFind()
        self.layouts: dict[str, Layout] = {}
        self.slicings: list[Slicing] = []
        self.edits: list[Edit] = []
        self.sources: list[Source] = []
        self.consumers: list[Consumer] = []
        self.refusals: list[tuple[int, str]] = []  # (element, reason)
        self.fixed: list[int] = []
        self.head_dims: dict[int, int] = {}  # element of a head (split by a Reshape) -> channels per head
        self.producer: dict[str, int] = {o: k for k, n in enumerate(self.graph.node) for o in n.output if o}
        self._probed: dict[str, list[Dim] | None] = {}

    # -- helpers -----------------------------------------------------------------------------
    def shape(self, name: str) -> list[Dim] | None:
        if name in self.consts:
            return [int(d) for d in self.consts[name].shape]
        vi = self.types.get(name)
        if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            return None
        out: list[Dim] = []
        for d in vi.type.tensor_type.shape.dim:
            out.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
        return out

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return len(s) if s is not None else None

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            self.chan.union(x, y)
            self.grp.union(x, y)

    def new_elements(self, n: int) -> np.ndarray:
        ids = self.chan.new(n)
        self.grp.new(n)
        for e in ids[1:].tolist():
            self.grp.union(int(ids[0]), e)
        return ids

    def refuse(self, layout: Layout, reason: str) -> None:
        if len(layout.ids):
            self.refusals.append((int(layout.ids[0]), reason))

    def node_label(self, index: int, node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}_{index}"

    def attr(self, node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                v = onnx.helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def const_input(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        if len(node.input) > i and node.input[i] and node.input[i] in self.consts:
            return self.consts[node.input[i]]
        return None

    def ints_input_or_attr(self, node: onnx.NodeProto, i: int, attr: str) -> tuple[list[int] | None, bool]:
        """(values, known): an int list given as input ``i`` (a constant) or attribute ``attr``."""
        if len(node.input) > i and node.input[i]:
            c = self.const_input(node, i)
            return (None, False) if c is None else ([int(v) for v in c.reshape(-1)], True)
        v = self.attr(node, attr)
        return ([int(x) for x in v] if v is not None else None), True

    def sample_sizes(self) -> dict[str, int]:
        """Distinct odd sizes (3, 5, 7, ...) for the symbolic dimensions of the graph inputs."""
        if not hasattr(self, "_sizes"):
            self._sizes: dict[str, int] = {}
            for i in self.graph.input:
                for d in i.type.tensor_type.shape.dim:
                    if not d.HasField("dim_value"):
                        self._sizes.setdefault(d.dim_param or f"?{i.name}", 3 + 2 * len(self._sizes))
        return self._sizes

    def concrete_shape(self, name: str) -> list[int] | None:
        """``name``'s shape inferred with every symbolic input dimension at its sample size: shape
        inference loses the link between symbolic dimensions through broadcasts with tensors it
        cannot size (an attention mask), but with fixed sizes it keeps them."""
        if not hasattr(self, "_concrete"):
            sizes = self.sample_sizes()
            fixed = _without_weights(self.model)
            for i in fixed.graph.input:
                for d in i.type.tensor_type.shape.dim:
                    if not d.HasField("dim_value"):
                        d.dim_value = sizes.get(d.dim_param or f"?{i.name}", 1)
            self._concrete = infer_value_types(fixed, data_prop=True)
        vi = self._concrete.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        dims = vi.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            return None
        return [int(d.dim_value) for d in dims]

    def probe_shape(self, name: str) -> list[Dim] | None:
        """The shape of a computed tensor that shape inference leaves open (an attention mask built
        from the input's shape at run time), found by evaluating the small, weight-free part of the
        graph that computes it in numpy (``onnx.reference``) on dummy inputs whose symbolic
        dimensions take distinct odd sizes (3, 5, 7, ...). None when that part reads a laid-out
        tensor, a layer with a weight, more than 2^25 constant elements, a custom op or a subgraph,
        or does not evaluate."""
        if name in self._probed:
            return self._probed[name]
        self._probed[name] = None
        nodes: set[int] = set()
        inputs: set[str] = set()
        todo = [name]
        seen: set[str] = set()
        weight = 0
        while todo:
            t = todo.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t in self.layouts:
                return None
            k = self.producer.get(t)
            if k is None:
                if t in self.consts:
                    weight += int(self.consts[t].size)
                    if weight > 1 << 25:  # an embedding table is fine; a whole network is not
                        return None
                else:
                    inputs.add(t)
                continue
            n = self.graph.node[k]
            if n.domain not in ("", "ai.onnx") or _subgraph_inputs(n) or n.op_type in SOURCE_OPS or len(nodes) > 400:
                return None
            nodes.add(k)
            todo.extend(n.input)
        graph_inputs = {i.name: i for i in self.graph.input}
        if not inputs <= set(graph_inputs):
            return None
        feeds: dict[str, np.ndarray] = {}
        for i in sorted(inputs):
            tt = graph_inputs[i].type.tensor_type
            dims = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                else:
                    dims.append(self.sample_sizes().get(d.dim_param or f"?{i}", 1))
            feeds[i] = np.ones(dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        used = {x for k in nodes for x in self.graph.node[k].input}
        sub = onnx.helper.make_graph(
            [self.graph.node[k] for k in sorted(nodes)], "probe",
            [graph_inputs[i] for i in sorted(inputs)],
            [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
            [t for t in self.graph.initializer if t.name in used],
        )  # fmt: skip
        probe = onnx.helper.make_model(sub, opset_imports=list(self.model.opset_import))
        probe.ir_version = self.model.ir_version
        try:
            from onnx.reference import ReferenceEvaluator

            outs: Any = ReferenceEvaluator(probe).run(None, feeds)
            value = outs[0]
        except Exception:  # best effort: the caller refuses what it cannot prove
            return None
        self._probed[name] = [int(d) for d in np.shape(value)]
        return self._probed[name]

    # -- the walk ----------------------------------------------------------------------------
    def run(self) -> None:
        outputs = {o.name for o in self.graph.output}
        for index, node in enumerate(self.graph.node):
            self._index = index
            laid = [(i, self.layouts[n]) for i, n in enumerate(node.input) if n in self.layouts]
            implicit = [self.layouts[n] for n in _subgraph_inputs(node) if n in self.layouts]
            for lay in implicit:
                self.refuse(lay, f"used inside the subgraph of {self.node_label(index, node)}")
            if node.domain not in ("", "ai.onnx"):
                for _, lay in laid:
                    self.refuse(lay, f"reaches custom op {node.domain}::{node.op_type}")
                continue
            op = node.op_type
            handler = getattr(self, f"_op_{op}", None)
            if op in UNARY:
                handler = self._unary
            elif op in ELEMENTWISE:
                handler = self._elementwise
            elif op in POOLING:
                handler = self._pooling
            elif op in REDUCE:
                handler = self._reduce
            if not laid and op not in SOURCE_OPS:
                continue
            if handler is None:
                for _, lay in laid:
                    self.refuse(
                        lay,
                        f"reaches {op} ({self.node_label(index, node)}), which the analysis does not follow",
                    )
                continue
            handler(index, node, laid)
        for name in outputs:
            if name in self.layouts:
                self.refuse(self.layouts[name], f"the channel axis reaches graph output {name!r}")

    def _set(self, name: str, layout: Layout) -> None:
        if name:
            self.layouts[name] = layout

    def _unary(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = next((lay for i, lay in laid if i == 0), None)
        for i, other in laid:
            if i != 0:
                self.refuse(other, f"used as a parameter of {node.op_type}")
        if lay is not None:
            self._set(node.output[0], lay)
            for extra in node.output[1:]:
                if extra:  # Dropout's mask: same shape, same layout
                    self._set(extra, lay)

    def _elementwise(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        if not laid:
            return
        first = laid[0][1]
        for _, lay in laid[1:]:
            if lay.axis != first.axis or len(lay.ids) != len(first.ids):
                for _, x in laid:
                    self.refuse(x, f"{node.op_type} combines tensors whose channel axes do not line up")
                return
            self.union(first.ids, lay.ids)
        c = len(first.ids)
        laid_idx = {i for i, _ in laid}
        for i, name in enumerate(node.input):
            if not name or i in laid_idx:
                continue
            shape = self.shape(name)
            if shape is None or (0 <= len(shape) + first.axis and not isinstance(shape[len(shape) + first.axis], int)):
                shape = self.probe_shape(name) or shape
            if shape is None:
                self.refuse(first, f"{node.op_type} operand {name!r} has an unknown shape")
                return
            pos = len(shape) + first.axis
            if pos < 0 or shape[pos] == 1:
                continue
            if shape[pos] == c and name in self.consts:
                self.slicings.append(Slicing(name, pos, first.ids, index))
                continue
            self.refuse(
                first, f"{node.op_type} operand {name!r} spans the channel axis and is not a constant"
            )
            return
        self._set(node.output[0], first)

    def _channel_pos(self, node: onnx.NodeProto, lay: Layout) -> int | None:
        """The positive channel axis of input 0 when it is axis 1 (NC...), else None."""
        r = self.rank(node.input[0])
        if r is None or r + lay.axis != 1:
            return None
        return 1

    def _pooling(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = laid[0][1]
        if self._channel_pos(node, lay) is None:
            self.refuse(lay, f"{node.op_type} over the channel axis (or of unknown rank)")
            return
        if len(node.output) > 1 and node.output[1]:
            self.refuse(lay, "MaxPool indices depend on the channel count")
            return
        self._set(node.output[0], lay)

    def _per_channel_params(self, node: onnx.NodeProto, lay: Layout, inputs: Sequence[int]) -> bool:
        for i in inputs:
            if len(node.input) <= i or not node.input[i]:
                continue
            if node.input[i] not in self.consts:
                self.refuse(lay, f"{node.op_type} parameter {node.input[i]!r} is computed at run time")
                return False
            self.slicings.append(Slicing(node.input[i], 0, lay.ids, self._index))
        return True

    def _op_BatchNormalization(
        self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]
    ) -> None:
        lay = laid[0][1]
        if laid[0][0] != 0 or len(laid) > 1 or self._channel_pos(node, lay) is None:
            self.refuse(lay, f"{node.op_type} whose channel axis is not the laid-out axis")
            return
        if self._per_channel_params(node, lay, range(1, len(node.input))):
            self._set(node.output[0], lay)

    _op_InstanceNormalization = _op_BatchNormalization

    def _op_LayerNormalization(
        self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]
    ) -> None:
        lay = laid[0][1]
        r = self.rank(node.input[0])
        axis = int(self.attr(node, "axis", -1))
        if laid[0][0] != 0 or len(laid) > 1 or r is None or lay.axis >= (axis if axis < 0 else axis - r):
            self.refuse(lay, "LayerNormalization normalizes over the channel axis")
            return
        self._set(node.output[0], lay)

    def _softmax(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = laid[0][1]
        r = self.rank(node.input[0])
        axis = int(self.attr(node, "axis", -1 if self.opset >= 13 else 1))
        if (
            r is None
            or (axis if axis < 0 else axis - r) == lay.axis
            or (self.opset < 13 and lay.axis >= axis - r)
        ):
            self.refuse(lay, f"{node.op_type} over the channel axis")
            return
        self._set(node.output[0], lay)

    _op_Softmax = _softmax
    _op_LogSoftmax = _softmax

    def _op_Transpose(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = laid[0][1]
        r = self.rank(node.input[0])
        if r is None:
            self.refuse(lay, "Transpose of unknown rank")
            return
        perm = list(self.attr(node, "perm", list(range(r - 1, -1, -1))))
        self._set(node.output[0], Layout(perm.index(r + lay.axis) - r, lay.ids))

    def _op_Pad(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = next((lay for i, lay in laid if i == 0), None)
        if lay is None or len(laid) > 1:
            self.refuse(laid[0][1], "Pad with a laid-out pad value")
            return
        r = self.rank(node.input[0])
        pads, known = self.ints_input_or_attr(node, 1, "pads")
        if r is None or not known or pads is None:
            self.refuse(lay, "Pad amounts computed at run time")
            return
        axes, known_axes = (list(range(r)), True)
        if len(node.input) > 3 and node.input[3]:
            got, known_axes = self.ints_input_or_attr(node, 3, "")
            axes = [a % r for a in (got or [])]
        if not known_axes:
            self.refuse(lay, "Pad axes computed at run time")
            return
        pos = r + lay.axis
        if pos in axes:
            k = axes.index(pos)
            if pads[k] != 0 or pads[k + len(axes)] != 0:
                self.refuse(lay, "Pad on the channel axis")
                return
        self._set(node.output[0], lay)

    def _op_Resize(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = next((lay for i, lay in laid if i == 0), None)
        if lay is None or len(laid) > 1:
            self.refuse(laid[0][1], "Resize with laid-out parameters")
            return
        r = self.rank(node.input[0])
        if r is None:
            self.refuse(lay, "Resize of unknown rank")
            return
        pos = r + lay.axis
        sizes_i = 3 if node.op_type == "Resize" else -1
        scales_i = 2 if node.op_type == "Resize" else 1
        if node.op_type == "Resize" and self.opset < 11:
            scales_i, sizes_i = 1, -1
        if self.attr(node, "axes") is not None:
            self.refuse(lay, "Resize with axes")
            return
        if sizes_i > 0 and len(node.input) > sizes_i and node.input[sizes_i]:
            sizes = self.const_input(node, sizes_i)
            if sizes is None:
                self.refuse(lay, "Resize sizes computed at run time")
                return
            self.edits.append(Edit("shape", index, ids=lay.ids, input_index=sizes_i, position=pos))
        elif len(node.input) > scales_i and node.input[scales_i]:
            scales = self.const_input(node, scales_i)
            if scales is None or float(scales.reshape(-1)[pos]) != 1.0:
                self.refuse(lay, "Resize scales the channel axis or computes its scales at run time")
                return
        self._set(node.output[0], lay)

    _op_Upsample = _op_Resize

    def _op_Flatten(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = laid[0][1]
        shape = self.shape(node.input[0])
        if shape is None:
            self.refuse(lay, "Flatten of unknown shape")
            return
        r = len(shape)
        axis = int(self.attr(node, "axis", 1)) % max(r, 1)
        pos = r + lay.axis
        inner, outer = shape[pos + 1 :], shape[axis:pos]
        if pos < axis or not all(isinstance(d, int) for d in inner + outer):
            self.refuse(lay, "Flatten merges the channel axis with a dynamic or leading axis")
            return
        block = int(np.prod(inner, dtype=np.int64))
        ids = np.tile(np.repeat(lay.ids, block), int(np.prod(outer, dtype=np.int64)))
        self._set(node.output[0], Layout(-1, ids))

    def _op_Reshape(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = next((lay for i, lay in laid if i == 0), None)
        if lay is None or len(laid) > 1:
            self.refuse(laid[0][1], "Reshape whose shape is laid out")
            return
        entries = self._shape_entries(index, node)
        shape = self.shape(node.input[0])
        if entries is None:
            self.refuse(lay, "Reshape to a shape computed at run time")
            return
        if shape is None:
            self.refuse(lay, "Reshape of unknown input shape")
            return
        out = self._reshape_dims(shape, entries, bool(self.attr(node, "allowzero", 0)))
        pos = len(shape) + lay.axis
        c = len(lay.ids)
        j = _start_axis(shape, out, pos)
        if j is None:  # symbolic dimensions that inference did not line up: try sample sizes
            cs, co = self.concrete_shape(node.input[0]), self.concrete_shape(node.output[0])
            if cs is not None and co is not None and len(cs) == len(shape) and len(co) == len(entries):
                shape, out = cs, co
                j = _start_axis(shape, out, pos)
        post = shape[pos + 1 :]
        if out is None or j is None or not all(isinstance(d, int) for d in post):
            self.refuse(lay, "Reshape the analysis cannot follow (dynamic dimensions, or it moves the channel axis)")
            return
        if (
            j + 1 < len(out) and isinstance(out[j], int) and isinstance(out[j + 1], int)
            and 1 < out[j] < c and out[j] * out[j + 1] == c and _same_prefix(out[j + 2 :], post)
        ):  # fmt: skip
            self._split_heads(index, lay, entries[j], out[j], j - len(out), node.output[0])
            return
        if j >= len(out) or not isinstance(out[j], int) or out[j] % c:
            self.refuse(lay, "Reshape splits the channel axis")
            return
        inner = out[j] // c
        post_prod = [int(np.prod(post[:m], dtype=np.int64)) for m in range(len(post) + 1)]
        if inner not in post_prod:
            self.refuse(lay, "Reshape splits the channel axis")
            return
        value, origin = entries[j]
        if origin is None and value != -1:
            self.refuse(lay, "Reshape's channel count is computed at run time (from another tensor's shape)")
            return
        if value not in (-1, 0) or (value == 0 and j != pos):
            if value == 0 or origin is None:
                self.refuse(lay, "Reshape copies a channel dimension to another position")
                return
            if not self._editable(origin, lay):
                return
            self.edits.append(Edit("shape", origin[0], ids=lay.ids, input_index=origin[1], position=origin[2], inner=inner))  # fmt: skip
        ids = np.repeat(lay.ids, inner)
        self._set(node.output[0], Layout(j - len(out), ids))

    def _split_heads(self, index: int, lay: Layout, entry: tuple[Dim, tuple[int, int, int] | None], heads: int,
                     axis: int, output: str) -> None:  # fmt: skip
        """A Reshape that splits the channel axis into (heads, head_dim): the channels of one head
        go together (their elements are united), the head axis carries the layout from here on."""
        value, origin = entry
        if value == 0 or (value != -1 and origin is None):
            self.refuse(lay, "Reshape's head count is copied or computed at run time (cannot be rewritten)")
            return
        hd = len(lay.ids) // heads
        if value != -1:
            assert origin is not None
            if not self._editable(origin, lay):
                return
            head_ids = lay.ids[::hd]
            self.edits.append(Edit("shape", origin[0], ids=head_ids, input_index=origin[1], position=origin[2]))
        for h in range(heads):
            block = lay.ids[h * hd : (h + 1) * hd]
            self.union(np.full(hd, block[0]), block)
        for e in lay.ids.tolist():
            self.head_dims[int(e)] = hd
        self._set(output, Layout(axis, lay.ids[::hd]))

    def _editable(self, origin: tuple[int, int, int], lay: Layout) -> bool:
        """A shape constant inside a Concat can be rewritten only when that Concat feeds one node."""
        k = origin[0]
        node = self.graph.node[k]
        if node.op_type == "Concat":
            users = [n for n in self.graph.node if node.output[0] in n.input]
            if any(u.op_type != "Reshape" or list(u.input[1:2]) != [node.output[0]] for u in users):
                self.refuse(lay, "the Reshape's shape (a Concat) is shared with other nodes and would need rewriting")
                return False
        return True

    def _shape_entries(self, index: int, node: onnx.NodeProto) -> list[tuple[Dim, tuple[int, int, int] | None]] | None:
        """The Reshape target as (value, origin) entries: a literal constant has its origin (node,
        input, position: where it can be rewritten); an entry computed at run time (a dimension read
        with Shape -> Gather -> Unsqueeze -> Concat, as exporters build attention reshapes) has
        the dimension it reads (an int or a symbolic name) and no origin. None when not traceable."""
        target = self.const_input(node, 1)
        if target is not None:
            return [(int(v), (index, 1, p)) for p, v in enumerate(target.reshape(-1))]
        k = self.producer.get(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            return None
        concat = self.graph.node[k]
        if concat.op_type != "Concat":
            dims = self._runtime_dims(node.input[1])
            return None if dims is None else [(d, None) for d in dims]
        out: list[tuple[Dim, tuple[int, int, int] | None]] = []
        for i, name in enumerate(concat.input):
            c = self.const_input(concat, i)
            if c is not None:
                out.extend((int(v), (k, i, p)) for p, v in enumerate(c.reshape(-1)))
                continue
            dims = self._runtime_dims(name)
            if dims is None:
                return None
            out.extend((d, None) for d in dims)
        return out

    def _runtime_dims(self, name: str, depth: int = 0) -> list[Dim] | None:
        """The values of a small int tensor computed from tensor shapes (Shape, Gather, Slice,
        Unsqueeze, Squeeze, Cast, Concat), as dimensions; None when it is anything else."""
        if name in self.consts:
            vals = [int(v) for v in self.consts[name].reshape(-1)]
            return None if any(v <= 0 for v in vals) else list(vals)
        k = self.producer.get(name)
        if k is None or depth > 8:
            return None
        n = self.graph.node[k]
        op = n.op_type
        if op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
            return self._runtime_dims(n.input[0], depth + 1)
        if op == "Shape":
            dims = self.shape(n.input[0])
            if dims is None:
                return None
            start, end = self.attr(n, "start", 0), self.attr(n, "end", None)
            return list(dims[start:end])
        if op == "Concat":
            parts = [self._runtime_dims(x, depth + 1) for x in n.input]
            return None if any(p is None for p in parts) else [d for p in parts for d in p or []]
        if op == "Gather" and int(self.attr(n, "axis", 0)) == 0:
            data, idx = self._runtime_dims(n.input[0], depth + 1), self.const_input(n, 1)
            if data is None or idx is None:
                return None
            try:
                return [data[int(i)] for i in idx.reshape(-1)]
            except IndexError:
                return None
        return None

    @staticmethod
    def _reshape_dims(
        shape: list[Dim], target: list[tuple[Dim, tuple[int, int, int] | None]], allowzero: bool
    ) -> list[Dim] | None:
        out: list[Dim] = []
        for k, (v, origin) in enumerate(target):
            if origin is not None and v == 0 and not allowzero:
                if k >= len(shape):
                    return None
                out.append(shape[k])
            elif v is None:
                return None
            else:
                out.append(v)
        literal = [k for k, (v, origin) in enumerate(target) if origin is not None and v == -1]
        if literal:
            q = literal[0]
            sym_in = sorted(str(d) for d in shape if not isinstance(d, int))
            sym_out = sorted(str(d) for k, d in enumerate(out) if k != q and not isinstance(d, int))
            if sym_in != sym_out or any(d is None for d in shape):
                return None
            num = int(np.prod([d for d in shape if isinstance(d, int)], dtype=np.int64))
            den = int(
                np.prod([d for k, d in enumerate(out) if k != q and isinstance(d, int)], dtype=np.int64)
            )
            if den == 0 or num % den:
                return None
            out[q] = num // den
        return out

    def _op_Shape(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        self.refuse(laid[0][1], "Shape reads the channel count at run time (a shape computed at run time)")

    def _op_Split(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = next((lay for i, lay in laid if i == 0), None)
        if lay is None:
            self.refuse(laid[0][1], "Split sizes are laid out")
            return
        r = self.rank(node.input[0])
        if r is None:
            self.refuse(lay, "Split of unknown rank")
            return
        axis = int(self.attr(node, "axis", 0)) % r
        if axis != r + lay.axis:
            for o in node.output:
                self._set(o, lay)
            return
        sizes, known = self.ints_input_or_attr(node, 1, "split")
        if not known:
            self.refuse(lay, "Split sizes computed at run time")
            return
        c, n = len(lay.ids), len(node.output)
        if sizes is None:
            if c % n:
                self.refuse(lay, "uneven Split")
                return
            sizes = [c // n] * n
        if sum(sizes) != c:
            self.refuse(lay, "Split sizes do not add up")
            return
        bounds = np.cumsum([0, *sizes])
        pieces = tuple(lay.ids[bounds[k] : bounds[k + 1]] for k in range(n))
        self.edits.append(Edit("split", index, pieces=pieces))
        for o, p in zip(node.output, pieces, strict=True):
            self._set(o, Layout(lay.axis, p))

    def _op_Slice(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = next((lay for i, lay in laid if i == 0), None)
        if lay is None or len(laid) > 1:
            self.refuse(laid[0][1], "Slice bounds are laid out")
            return
        r = self.rank(node.input[0])
        if r is None or self.opset < 10:
            self.refuse(lay, "Slice of unknown rank (or opset < 10)")
            return
        vals = [
            self.const_input(node, i) if len(node.input) > i and node.input[i] else None for i in range(1, 5)
        ]
        if (
            vals[0] is None
            or vals[1] is None
            or any(len(node.input) > i + 1 and node.input[i + 1] and vals[i] is None for i in (2, 3))
        ):
            self.refuse(lay, "Slice bounds computed at run time")
            return
        starts, ends = [int(v) for v in vals[0].reshape(-1)], [int(v) for v in vals[1].reshape(-1)]
        axes = [int(v) % r for v in vals[2].reshape(-1)] if vals[2] is not None else list(range(len(starts)))
        steps = [int(v) for v in vals[3].reshape(-1)] if vals[3] is not None else [1] * len(starts)
        pos = r + lay.axis
        if pos not in axes:
            self._set(node.output[0], lay)
            return
        k = axes.index(pos)
        if steps[k] != 1:
            self.refuse(lay, "Slice with a step on the channel axis")
            return
        c = len(lay.ids)
        s, e = starts[k], ends[k]
        s = min(max(s + c if s < 0 else s, 0), c)
        e = min(max(e + c if e < 0 else e, 0), c)
        self.edits.append(Edit("slice", index, ids=lay.ids, position=k, bounds=(s, e)))
        self._set(node.output[0], Layout(lay.axis, lay.ids[s:e]))

    def _op_Concat(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        out_rank = self.rank(node.output[0]) or self.rank(node.input[laid[0][0]])
        if out_rank is None:
            self.refuse(laid[0][1], "Concat of unknown rank")
            return
        axis = int(self.attr(node, "axis", 0)) % out_rank
        first = laid[0][1]
        if any(lay.axis != first.axis for _, lay in laid):
            for _, lay in laid:
                self.refuse(lay, "Concat of tensors with different channel axes")
            return
        if axis != out_rank + first.axis:  # concatenation along another axis: channels line up
            for _, lay in laid[1:]:
                if len(lay.ids) != len(first.ids):
                    self.refuse(first, "Concat of tensors with different channel counts")
                    return
                self.union(first.ids, lay.ids)
            laid_idx = {i for i, _ in laid}
            if len(laid_idx) != len([n for n in node.input if n]):
                self.refuse(first, "Concat with a tensor that carries no layout on the channel axis")
                return
            self._set(node.output[0], first)
            return
        by_index = dict(laid)
        parts: list[np.ndarray] = []
        for i, name in enumerate(node.input):
            if i in by_index:
                parts.append(by_index[i].ids)
                continue
            shape = self.shape(name)
            if shape is None or not isinstance(shape[axis], int):
                self.refuse(first, f"Concat input {name!r} has an unknown channel count")
                return
            fresh = self.new_elements(int(shape[axis]))  # kept: the pass cannot slice it
            self.fixed.extend(fresh.tolist())
            if len(fresh):
                self.grp.union(int(fresh[0]), int(first.ids[0]))
            parts.append(fresh)
        self._set(node.output[0], Layout(first.axis, np.concatenate(parts)))

    def _axes(self, node: onnx.NodeProto, rank: int) -> list[int] | None:
        vals, known = self.ints_input_or_attr(node, 1, "axes")
        if not known:
            return None
        return [a % rank for a in vals] if vals is not None else []

    def _op_Squeeze(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = laid[0][1]
        shape = self.shape(node.input[0])
        axes = self._axes(node, len(shape)) if shape is not None else None
        if shape is None or axes is None:
            self.refuse(lay, "Squeeze with unknown axes")
            return
        if not axes:
            axes = [k for k, d in enumerate(shape) if d == 1]
        pos = len(shape) + lay.axis
        if pos in axes:
            self.refuse(lay, "Squeeze of the channel axis")
            return
        new = pos - sum(1 for a in axes if a < pos)
        self._set(node.output[0], Layout(new - (len(shape) - len(axes)), lay.ids))

    def _op_Unsqueeze(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = laid[0][1]
        r = self.rank(node.input[0])
        vals, known = self.ints_input_or_attr(node, 1, "axes")
        if r is None or not known or not vals:
            self.refuse(lay, "Unsqueeze with unknown axes")
            return
        out_rank = r + len(vals)
        pos = r + lay.axis
        for a in sorted(v % out_rank for v in vals):
            if a <= pos:
                pos += 1
        self._set(node.output[0], Layout(pos - out_rank, lay.ids))

    def _reduce(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        lay = next((lay for i, lay in laid if i == 0), None)
        r = self.rank(node.input[0])
        if lay is None or r is None:
            self.refuse(laid[0][1], f"{node.op_type} with laid-out axes or unknown rank")
            return
        uses_input = self.opset >= 18 or node.op_type == "ReduceSum" and self.opset >= 13
        vals, known = (
            self.ints_input_or_attr(node, 1, "axes")
            if uses_input
            else (
                [int(a) for a in self.attr(node, "axes", None) or []] or None,
                True,
            )
        )
        pos = r + lay.axis
        axes = [a % r for a in vals] if vals else list(range(r))
        if not known or pos in axes:
            self.refuse(lay, f"{node.op_type} over the channel axis")
            return
        if int(self.attr(node, "keepdims", 1)):
            self._set(node.output[0], lay)
        else:
            new = pos - sum(1 for a in axes if a < pos)
            self._set(node.output[0], Layout(new - (r - len(axes)), lay.ids))

    # -- sources and consumers ---------------------------------------------------------------
    def _source(self, index: int, node: onnx.NodeProto, weight: str, axis: int, n: int, lanes: int,
                out_axis: int, bias: str | None) -> None:  # fmt: skip
        ids = self.new_elements(n)
        if lanes > 1:
            per = n // lanes
            for j in range(1, lanes):
                self.union(ids[:per], ids[j * per : (j + 1) * per])
        self.slicings.append(Slicing(weight, axis, ids, index))
        if bias:
            b = self.consts.get(bias)
            if b is None:
                self.refuse(Layout(out_axis, ids), f"bias {bias!r} of {node.op_type} is computed at run time")
            elif b.ndim >= 1 and b.shape[-1] == n:
                self.slicings.append(Slicing(bias, b.ndim - 1, ids, index))
            elif b.size != 1:
                self.refuse(Layout(out_axis, ids), f"bias {bias!r} cannot be sliced")
        self.sources.append(Source(index, self.node_label(index, node), node.op_type, weight, axis, ids))
        self._set(node.output[0], Layout(out_axis, ids))

    def _consume(self, index: int, node: onnx.NodeProto, weight: str, axis: int, ids: np.ndarray) -> None:
        self.slicings.append(Slicing(weight, axis, ids, index))
        self.consumers.append(Consumer(index, self.node_label(index, node), node.op_type, weight, axis, ids))

    def _op_Conv(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        w = self.const_input(node, 1)
        lay = next((lay for i, lay in laid if i == 0), None)
        others = [x for i, x in laid if i != 0]
        for x in others:
            self.refuse(x, "used as a Conv weight or bias")
        if w is None:
            if lay is not None:
                self.refuse(lay, "Conv with a weight computed at run time")
            return
        g = int(self.attr(node, "group", 1))
        cout, cin_g = int(w.shape[0]), int(w.shape[1])
        cin = cin_g * g
        out_axis = 1 - w.ndim
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if lay is not None:
            if lay.axis != out_axis or len(lay.ids) != cin:
                self.refuse(lay, "Conv input whose channel axis is not axis 1")
                return
            if g == cin and cout == cin and g > 1:  # depthwise: channel-wise, follows its input
                self.slicings.append(Slicing(node.input[1], 0, lay.ids, index))
                if bias:
                    if bias not in self.consts:
                        self.refuse(lay, "depthwise Conv bias computed at run time")
                        return
                    self.slicings.append(Slicing(bias, 0, lay.ids, index))
                self.edits.append(Edit("group", index, ids=lay.ids))
                self._set(node.output[0], lay)
                return
            if g > 1 and (cin % g or cout % g):
                self.refuse(lay, "grouped Conv with uneven groups")
                return
            if g > 1:
                if g == cin:
                    self.refuse(lay, "depthwise Conv with a channel multiplier")
                    return
                for j in range(1, g):  # lanes: channel i of every group goes together
                    self.union(lay.ids[:cin_g], lay.ids[j * cin_g : (j + 1) * cin_g])
            self._consume(index, node, node.input[1], 1, lay.ids[:cin_g] if g > 1 else lay.ids)
        elif g == cin and g > 1:
            return  # depthwise on an unprunable input: its output cannot shrink either
        self._source(index, node, node.input[1], 0, cout, g, out_axis, bias)

    def _op_ConvTranspose(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        w = self.const_input(node, 1)
        lay = next((lay for i, lay in laid if i == 0), None)
        for x in (x for i, x in laid if i != 0):
            self.refuse(x, "used as a ConvTranspose weight or bias")
        g = int(self.attr(node, "group", 1))
        if w is None or g != 1:
            if lay is not None:
                self.refuse(lay, "ConvTranspose with groups or a weight computed at run time")
            return
        out_axis = 1 - w.ndim
        if lay is not None:
            if lay.axis != out_axis or len(lay.ids) != w.shape[0]:
                self.refuse(lay, "ConvTranspose input whose channel axis is not axis 1")
                return
            self._consume(index, node, node.input[1], 0, lay.ids)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        self._source(index, node, node.input[1], 1, int(w.shape[1]), 1, out_axis, bias)

    def _op_Gemm(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        w = self.const_input(node, 1)
        lay = next((lay for i, lay in laid if i == 0), None)
        for x in (x for i, x in laid if i != 0):
            self.refuse(x, "used as a Gemm weight or bias")
        trans_b = bool(self.attr(node, "transB", 0))
        if lay is not None:
            if w is None or self.attr(node, "transA", 0) or lay.axis != -1:
                self.refuse(lay, "Gemm with transA, a run-time weight, or channels on rows")
            else:
                self._consume(index, node, node.input[1], 1 if trans_b else 0, lay.ids)
        if w is None or w.ndim != 2:
            return
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        self._source(
            index, node, node.input[1], 0 if trans_b else 1, int(w.shape[0 if trans_b else 1]), 1, -1, bias
        )

    def _op_MatMul(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        w = self.const_input(node, 1)
        lay = next((lay for i, lay in laid if i == 0), None)
        if w is None and any(x.axis <= -3 for _, x in laid):
            self._attention_matmul(index, node, laid)
            return
        for x in (x for i, x in laid if i != 0):
            self.refuse(x, "used as the right operand of MatMul (attention or a run-time weight)")
        if lay is not None:
            if w is None or w.ndim != 2 or lay.axis != -1:
                self.refuse(lay, "MatMul with a run-time or batched weight, or channels on rows")
            else:
                self._consume(index, node, node.input[1], 0, lay.ids)
        if w is None or w.ndim != 2:
            return
        self._source(index, node, node.input[1], 1, int(w.shape[1]), 1, -1, None)

    def _attention_matmul(self, index: int, node: onnx.NodeProto, laid: list[tuple[int, Layout]]) -> None:
        """A batched MatMul of two computed tensors (attention: Q K^T, then P V) whose layouts sit
        on a batch axis (the head axis): head ``h`` of one operand meets head ``h`` of the other,
        so the two are united and the product carries the same heads."""
        if len(laid) != 2:
            self.refuse(laid[0][1], f"attention MatMul ({self.node_label(index, node)}) with heads on one "
                        "operand only (Q/K/V heads not tied)")  # fmt: skip
            return
        (_, a), (_, b) = laid
        if a.axis != b.axis or a.axis > -3 or len(a.ids) != len(b.ids):
            for _, x in laid:
                self.refuse(x, f"attention MatMul ({self.node_label(index, node)}) whose head axes do not line up")
            return
        self.union(a.ids, b.ids)
        self._set(node.output[0], a)

    # -- result --------------------------------------------------------------------------------
    def check_constants(self) -> None:
        """A sliced constant must be sliced the same way by every use, and used by nothing else."""
        users: dict[str, list[int]] = {}
        for k, n in enumerate(self.graph.node):
            for name in dict.fromkeys(n.input):
                if name:
                    users.setdefault(name, []).append(k)
            for name in _subgraph_inputs(n):
                users.setdefault(name, []).append(-1)
        # an initializer that is also a graph input can be overridden by the caller at its full width
        outputs = {o.name for o in self.graph.output} | {i.name for i in self.graph.input}
        # a shape constant that several Reshapes share (one Concat for Q, K and V) is rewritten once
        # per Reshape: they must all keep the same heads, and every user must be one of them
        at: dict[tuple[int, int, int], list[Edit]] = {}
        for e in self.edits:
            if e.kind == "shape" and self.graph.node[e.node].op_type == "Concat":
                at.setdefault((e.node, e.input_index, e.position), []).append(e)
        for (k, _, _), es in at.items():
            readers = len(users_of(self.graph, self.graph.node[k].output[0]))
            want = [self.chan.find(int(x)) for x in es[0].ids]
            if len(es) != readers or any([self.chan.find(int(x)) for x in e.ids] != want for e in es):
                for e in es:
                    self.refusals.append((int(e.ids[0]), "a shape Concat shared by Reshapes that do not keep the same heads"))
        by_tensor: dict[str, list[Slicing]] = {}
        for s in self.slicings:
            by_tensor.setdefault(s.tensor, []).append(s)
        for name, ss in by_tensor.items():
            same = True
            for s in ss:
                first = next(x for x in ss if x.axis == s.axis)
                same = (
                    same
                    and len(s.ids) == len(first.ids)
                    and all(
                        self.chan.find(int(a)) == self.chan.find(int(b))
                        for a, b in zip(s.ids, first.ids, strict=True)
                    )
                )
            if not same or set(users.get(name, [])) != {s.node for s in ss} or name in outputs:
                for s in ss:
                    self.refusals.append(
                        (int(s.ids[0]), f"constant {name!r} is shared with an op that is not sliced alike")
                    )

    def result(self) -> Analysis:
        self.check_constants()
        reasons: dict[int, str] = {}
        for e, why in self.refusals:
            reasons.setdefault(self.grp.find(e), why)
        fixed_classes = {self.chan.find(e) for e in self.fixed}
        groups: dict[int, Group] = {}
        for s in self.sources:
            root = self.grp.find(int(s.ids[0]))
            if root not in groups:
                groups[root] = Group(len(groups), [], [], [], set(), reasons.get(root))
            groups[root].sources.append(s)
        for c in self.consumers:
            for root in dict.fromkeys(self.grp.find(int(e)) for e in c.ids):
                if root in groups:
                    groups[root].consumers.append(c)
        seen: set[int] = set()
        for e in range(len(self.chan.parent)):
            root = self.grp.find(e)
            cls = self.chan.find(e)
            if root in groups and cls not in seen:
                seen.add(cls)
                groups[root].classes.append(cls)
                if cls in fixed_classes:
                    groups[root].fixed.add(cls)
        for g in groups.values():
            units = {self.head_dims[int(e)] for s in g.sources for e in s.ids[:1] if int(e) in self.head_dims}
            if units:
                g.kind, g.unit = "heads", max(units)
            if g.refused is None and not g.consumers:
                g.refused = "no consumer reads these channels (nothing to slice after the group)"
        return Analysis(
            groups=list(groups.values()), slicings=self.slicings, edits=self.edits, sources=self.sources,
            consumers=self.consumers, _chan=self.chan, _grp=self.grp,
        )  # fmt: skip


def _start_axis(shape: Sequence[Dim], out: Sequence[Dim] | None, pos: int) -> int | None:
    """The output axis of a Reshape where input axis ``pos`` starts (the dimensions before it have
    the same extent), or None."""
    if out is None or not all(isinstance(d, int) for d in shape[pos + 1 :]):
        return None
    for j in range(len(out) + 1):
        if _same_prefix(out[:j], shape[:pos]):
            return j
    return None


def _same_prefix(a: Sequence[Dim], b: Sequence[Dim]) -> bool:
    if len(a) == len(b) and all(x == y and x is not None for x, y in zip(a, b, strict=True)):
        return True
    ia = [d for d in a if isinstance(d, int)]
    ib = [d for d in b if isinstance(d, int)]
    if len(ia) == len(a) and len(ib) == len(b):
        return int(np.prod(ia, dtype=np.int64)) == int(np.prod(ib, dtype=np.int64))
    return False


def users_of(graph: onnx.GraphProto, name: str) -> list[int]:
    return [k for k, n in enumerate(graph.node) if name in n.input]


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are graph inputs of the same type and shape
    (for shape inference: no weight bytes are copied)."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = model.graph
    light.graph.name = g.name
    light.graph.node.extend(g.node)
    light.graph.input.extend(g.input)
    light.graph.output.extend(g.output)
    listed = {i.name for i in g.input}
    for t in g.initializer:
        if int(np.prod(t.dims, dtype=np.int64)) <= 4096:
            light.graph.initializer.append(t)
        elif t.name not in listed:
            light.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in subs:
            for _, sub in iter_graphs(g):
                for n in sub.node:
                    names.update(i for i in n.input if i)
    return names


def analyze(model: onnx.ModelProto) -> Analysis:
    """Dependency groups of ``model``'s main graph (subgraphs only ever refuse what they touch)."""
    walker = _Walker(model)
    walker.run()
    return walker.result()
