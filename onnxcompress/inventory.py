"""Which tensors of a model are compressible weights, who consumes them, and in what role.

The role decides the output-channel axis (for per-channel codebooks and channel-major layout)
and the input axis (for N:M pruning). Tensors that must stay exact (biases, normalization
parameters, shape-like inputs, operands of already-quantized ops) are listed with the reason they
are left alone, so ``onnxcompress inspect`` can explain every decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

# names exporters generate: torch's "onnx::Op_N", bare numbers, "Op_N", "/path/Constant_N_output_0"
_GENERATED = re.compile(r"^(onnx::.*|\d+|[A-Za-z]+_\d+|.*Constant(_\d+)?_output_\d+)$")

FLOAT_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
}

# (op_type, input index) -> (role, output-channel axis as a function of ndim and node attrs)
QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits", "MatMulInteger",
    "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "QAttention", "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "GatherBlockQuantized", "QLinearAdd", "QLinearMul",
}  # fmt: skip
NORM_OPS = {
    "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
    "RMSNormalization", "LpNormalization",
}  # fmt: skip
# inputs that are shapes, sizes, scales, indices: never weights
SHAPE_INPUTS = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 2, 3},
    "Slice": {1, 2, 3, 4}, "ConstantOfShape": {0}, "TopK": {1}, "Range": {0, 1, 2}, "Squeeze": {1},
    "Unsqueeze": {1}, "Split": {1}, "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1},
    "ReduceProd": {1}, "Clip": {1, 2}, "OneHot": {1, 2}, "CumSum": {1}, "Gather": {1}, "GatherElements": {1},
    "ScatterElements": {1}, "ScatterND": {1}, "GatherND": {1}, "Trilu": {1}, "RoiAlign": {1, 2},
}  # fmt: skip
BIAS_INPUTS = {
    "Conv": {2},
    "ConvTranspose": {2},
    "Gemm": {2},
    "LSTM": {3, 5, 6, 7},
    "GRU": {3, 5},
    "RNN": {3, 5},
}


@dataclass(frozen=True)
class Use:
    """One consumer of a tensor."""

    op_type: str
    node: str
    input_index: int
    graph: str  # "" for the main graph, else the path of the subgraph


@dataclass
class WeightInfo:
    """A float tensor of the model and what the inventory decided about it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: str  # "initializer" or "constant"
    graph: str  # "" main graph, else subgraph path like "If_0/then_branch"
    uses: list[Use] = field(default_factory=list)
    role: str = "other"
    axis: int = 0  # output-channel axis
    input_axis: int = -1  # reduction axis (N:M pruning)
    skip_reason: str | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * (4 if self.dtype == "float32" else 2)

    @property
    def op_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(u.op_type for u in self.uses))

    @property
    def compressible(self) -> bool:
        return self.skip_reason is None

    @property
    def layers(self) -> tuple[str, ...]:
        """Names of the nodes that consume this tensor (its layers), in graph order, without blanks."""
        return tuple(dict.fromkeys(u.node for u in self.uses if u.node))

    @property
    def generated_name(self) -> bool:
        """Whether the name is an exporter's invention (``onnx::MatMul_1160``, ``1234``,
        ``Constant_12_output_0``) that says nothing about the layer: tables then add the consumer."""
        return bool(_GENERATED.match(self.name))

    def display_name(self) -> str:
        """The name, with its consumer node's name added when the name itself is generated, so a
        user can tell which layer ``onnx::MatMul_1160`` is."""
        layers = self.layers
        if not self.generated_name or not layers:
            return self.name
        more = f" +{len(layers) - 1}" if len(layers) > 1 else ""
        return f"{self.name} ({layers[0]}{more})"


@dataclass
class Inventory:
    weights: list[WeightInfo]
    quantized_model: bool  # the model already contains quantized operators

    def compressible(self) -> list[WeightInfo]:
        return [w for w in self.weights if w.compressible]

    def by_name(self) -> dict[str, WeightInfo]:
        return {w.name: w for w in self.weights}


def iter_graphs(graph: onnx.GraphProto, path: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graph and every subgraph (If/Loop/Scan bodies, recursively), with a readable path."""
    yield path, graph
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for i, sub in enumerate(subs):
                label = f"{node.name or node.op_type}/{attr.name}" + (f"[{i}]" if len(subs) > 1 else "")
                yield from iter_graphs(sub, f"{path}/{label}" if path else label)


def graph_names(model: onnx.ModelProto) -> set[str]:
    """Every name the model uses, in every graph: initializers, inputs, node outputs and node names
    (what a pass that adds tensors or nodes must not reuse)."""
    names: set[str] = set()
    for _, g in iter_graphs(model.graph):
        names.update(i.name for i in g.initializer)
        names.update(i.name for i in g.input)
        for n in g.node:
            names.update(n.output)
            names.add(n.name)
    return names


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... whichever is not in ``taken``; added to ``taken``."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _role(node: onnx.NodeProto, index: int, ndim: int) -> tuple[str, int, int] | str:
    """(role, output axis, input axis) for a use, or a skip reason."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx", "com.microsoft") and op not in QUANTIZED_OPS:
        return f"input of custom op {node.domain}::{op}"
    if op in QUANTIZED_OPS:
        return f"already quantized ({op})"
    if op in NORM_OPS and index > 0:
        return f"normalization parameter ({op})"
    if index in BIAS_INPUTS.get(op, ()):
        return f"bias ({op})"
    if index in SHAPE_INPUTS.get(op, ()):
        return f"shape-like input ({op} input {index})"
    last = max(ndim - 1, 0)
    if op == "Conv" and index == 1:
        return ("conv", 0, 1)
    if op == "ConvTranspose" and index == 1:
        return ("conv_transpose", 1, 0)
    if op == "Gemm" and index == 1:
        return ("gemm", 0, 1) if _attr(node, "transB", 0) else ("gemm", 1, 0)
    if op == "Gemm" and index == 0:
        return ("gemm_a", 1, 0) if _attr(node, "transA", 0) else ("gemm_a", 0, 1)
    if op in ("MatMul", "FusedMatMul") and index == 1:
        return ("matmul", last, max(ndim - 2, 0))
    if op in ("MatMul", "FusedMatMul") and index == 0:
        return ("matmul_a", max(ndim - 2, 0), last)
    if op == "Gather" and index == 0:
        return ("embedding", 0, last)
    if op in ("LSTM", "GRU", "RNN") and index in (1, 2):
        return ("rnn_w" if index == 1 else "rnn_r", 1, 2)
    return ("other", 0, last)


def _float_tensors(graph: onnx.GraphProto, path: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    for init in graph.initializer:
        yield init, "initializer"
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    t = onnx.TensorProto()
                    t.CopyFrom(a.t)
                    t.name = node.output[0]
                    yield t, "constant"


#: ``code_vectors``: the shortest 1-D tensor worth coding (its code bytes plus a scale, a segment
#: bound and a split size must undercut 4 bytes per element by a margin)
VECTOR_MIN_ELEMENTS = 16


def _codable_vector_use(node: onnx.NodeProto, index: int) -> bool:
    """A bias or a normalization parameter that ``code_vectors`` may code. Not a BatchNormalization
    variance: a coded variance could reach zero or below, and the normalization would divide by
    it."""
    op = node.op_type
    if op in NORM_OPS and index > 0:
        return not (op == "BatchNormalization" and index == 4)
    return index in BIAS_INPUTS.get(op, ())


def build_inventory(model: onnx.ModelProto, *, min_elements: int = 256, code_vectors: bool = False) -> Inventory:
    """Inventory of every float tensor in the model and its subgraphs.

    ``code_vectors``: 1-D tensors of at least :data:`VECTOR_MIN_ELEMENTS` elements (biases,
    normalization scales and shifts, other vectors) are compressible too, whatever
    ``min_elements``, with role ``vector`` (the plan gives them the shared codebook)."""
    weights: dict[str, WeightInfo] = {}
    uses: dict[str, list[tuple[onnx.NodeProto, int, str]]] = {}
    quantized = False
    graph_outputs: set[str] = set()
    graph_inputs: set[str] = set()
    for path, graph in iter_graphs(model.graph):
        if path == "":
            graph_outputs = {o.name for o in graph.output}
            graph_inputs = {i.name for i in graph.input}
        for tensor, source in _float_tensors(graph, path):
            if tensor.data_type not in FLOAT_TYPES or tensor.name in weights:
                continue
            weights[tensor.name] = WeightInfo(
                name=tensor.name,
                shape=tuple(int(d) for d in tensor.dims),
                dtype=FLOAT_TYPES[tensor.data_type],
                source=source,
                graph=path,
            )
        for node in graph.node:
            if node.op_type in QUANTIZED_OPS:
                quantized = True
            for i, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append((node, i, path))
            # names used implicitly by subgraphs count as uses by the subgraph's nodes (above)

    for w in weights.values():
        ndim = len(w.shape)
        reasons: list[str] = []
        roles: list[tuple[str, int, int]] = []
        vector = code_vectors and ndim == 1 and w.size >= VECTOR_MIN_ELEMENTS
        for node, i, path in uses.get(w.name, []):
            w.uses.append(Use(node.op_type, node.name, i, path))
            r = _role(node, i, ndim)
            if isinstance(r, str):
                reasons.append(r)
                vector = vector and _codable_vector_use(node, i)
            else:
                roles.append(r)
        if vector:
            reasons = []
        if reasons:
            w.skip_reason = reasons[0]
        elif w.name in graph_outputs:
            w.skip_reason = "graph output"
        elif w.name in graph_inputs and w.source == "initializer":
            w.skip_reason = "overridable graph input (an initializer that is also a model input)"
        elif not w.uses:
            w.skip_reason = "unused"
        elif vector:
            roles = [("vector", 0, 0)]
        elif ndim <= 1:
            w.skip_reason = "1-D tensor (bias or scale)"
        elif w.size < min_elements:
            w.skip_reason = f"small (< {min_elements} elements)"
        if roles:
            w.role, w.axis, w.input_axis = roles[0]
            if len({r[0] for r in roles}) > 1 and not vector:
                w.role = "shared:" + "+".join(dict.fromkeys(r[0] for r in roles))
        w.axis = w.axis % ndim if ndim else 0
        w.input_axis = w.input_axis % ndim if ndim else 0
    if quantized:
        for w in weights.values():
            if w.skip_reason is None and any(u.op_type in QUANTIZED_OPS for u in w.uses):
                w.skip_reason = "already quantized"
    return Inventory(weights=list(weights.values()), quantized_model=quantized)


def tensor_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The numpy value of a named initializer or Constant anywhere in the model."""
    for _, graph in iter_graphs(model.graph):
        for tensor, _source in _float_tensors(graph, ""):
            if tensor.name == name:
                return numpy_helper.to_array(tensor)
    raise KeyError(name)
