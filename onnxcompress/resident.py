"""What a model's tensors cost in memory once a stock onnxruntime session has loaded it (an estimate).

The file size and the RAM a session holds diverge for this package's formats: a folded codebook
weight (decoded by a model-local ``ai.onnxcompress`` function) or a runtime ``fold`` chain
(``Cast -> Sub -> Mul``) is small on disk but constant-folded at session creation into the dense
float tensor it decodes to, while ``com.microsoft.MatMulNBits`` / ``GatherBlockQuantized`` and the
int8 ``MatMulInteger`` / ``ConvInteger`` paths keep their quantized codes. The search's ``ram``
objective minimises :func:`resident_bytes`, which follows that graph-side rule instead of opening a
session (no onnxruntime import: it runs on every candidate, in milliseconds).

It is an estimate of what stays resident after constant folding, not the peak during load (the
folded tensors and their sources coexist for a moment) and not onnxruntime's own allocations
(arena, kernel pre-packing, activations): ``onnxcompress bench`` measures the real peak RSS.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import TensorProto, helper, numpy_helper

#: operators whose constant inputs onnxruntime keeps as stored (never folded into float tensors)
KEPT_QUANTIZED = frozenset({
    ("com.microsoft", "MatMulNBits"), ("com.microsoft", "GatherBlockQuantized"),
    ("com.microsoft", "DynamicQuantizeMatMul"), ("com.microsoft", "MatMulIntegerToFloat"),
    ("", "MatMulInteger"), ("", "ConvInteger"), ("ai.onnx", "MatMulInteger"), ("ai.onnx", "ConvInteger"),
})  # fmt: skip
_SUB_BYTE: dict[int, int] = {int(TensorProto.INT4): 4, int(TensorProto.UINT4): 4}
_SHAPE_INFERENCE_INLINE = 1024  # initializers up to this many values stay in the shape-inference copy


def tensor_bytes(data_type: int, numel: int) -> int:
    """Bytes of ``numel`` values of ONNX ``data_type`` held densely (4-bit types packed two per byte)."""
    if data_type in _SUB_BYTE:
        return (numel * _SUB_BYTE[data_type] + 7) // 8
    if data_type == TensorProto.STRING:
        return 0  # not a weight; strings have no fixed width
    return numel * helper.tensor_dtype_to_np_dtype(data_type).itemsize


def _numel(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _stored(t: TensorProto) -> int:
    return tensor_bytes(t.data_type, _numel(t.dims))


Shape = tuple[int, ...]  # -1: a dimension not known statically


def _inferred_types(model: onnx.ModelProto) -> dict[str, tuple[int, Shape | None]]:
    """Element type and static shape (None: rank unknown; -1: dimension unknown) of every
    main-graph value that shape inference can type, run on a copy whose large initializers are declared inputs (their
    data is not needed to type the graph, and copying it would cost as much as the model)."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = model.graph
    light.graph.node.extend(g.node)
    light.graph.input.extend(g.input)
    light.graph.output.extend(g.output)
    inputs = {i.name for i in g.input}
    for t in g.initializer:
        if _numel(t.dims) <= _SHAPE_INFERENCE_INLINE:
            light.graph.initializer.append(t)
        elif t.name not in inputs:
            light.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # shape inference is best effort here; unknown shapes fall back (see below)
        inferred = light
    out: dict[str, tuple[int, Shape | None]] = {}
    ig = inferred.graph
    for v in [*ig.value_info, *ig.output, *ig.input]:
        tt = v.type.tensor_type
        if not tt.elem_type:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        out[v.name] = (tt.elem_type, dims if tt.HasField("shape") else None)
    for t in g.initializer:
        out[t.name] = (t.data_type, tuple(int(d) for d in t.dims))
    return out


def _known(shape: Shape | None) -> bool:
    return shape is not None and all(d >= 0 for d in shape)


def _refine(model: onnx.ModelProto, folded: list[onnx.NodeProto], types: dict[str, tuple[int, Shape | None]]) -> None:
    """Complete the shapes static inference leaves open along the folded chains, in graph order:
    a decode function's output length depends on its data, so this package's ``Reshape(-1, ...)``
    then ``Split(sizes)`` of a decode group is typed from the split sizes and the trailing dims."""
    small = {t.name: t for t in model.graph.initializer if _numel(t.dims) <= _SHAPE_INFERENCE_INLINE}

    def values(name: str) -> list[int] | None:
        t = small.get(name)
        return None if t is None else [int(v) for v in numpy_helper.to_array(t).ravel()]

    for node in folded:
        elem, shape = types.get(node.input[0], (0, None)) if node.input else (0, None)
        if node.op_type == "Split" and shape is not None:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % max(1, len(shape))
            sizes = values(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            sizes = sizes or next((list(a.ints) for a in node.attribute if a.name == "split"), None)
            if sizes and len(sizes) == len(node.output):
                for o, n in zip(node.output, sizes, strict=True):
                    if not _known(types.get(o, (0, None))[1]):
                        types[o] = (types.get(o, (elem, None))[0] or elem, (*shape[:axis], n, *shape[axis + 1 :]))
        elif node.op_type == "Reshape" and not _known(types.get(node.output[0], (0, None))[1]):
            target = values(node.input[1])
            if target is None:
                continue
            dims = [shape[i] if d == 0 and shape is not None and i < len(shape) else d for i, d in enumerate(target)]
            if dims.count(-1) == 1 and _known(shape):
                rest = _numel(d for d in dims if d != -1)
                dims[dims.index(-1)] = _numel(shape) // rest if rest and shape is not None else 0
            types[node.output[0]] = (types.get(node.output[0], (elem, None))[0] or elem, tuple(dims))


def resident_bytes(model: onnx.ModelProto) -> int:
    """Estimated bytes a stock onnxruntime session holds for ``model``'s constant tensors after
    load: what is left once every node whose inputs are all constant has been folded.

    Counted: an initializer (or ``Constant``) consumed by a node that runs at inference time (an
    activation flows into it: ``Gemm``'s weight, ``MatMulNBits``'s packed codes and scales, the int8
    ``MatMulInteger`` weight) at its stored bytes; a tensor that a folded chain rebuilds (the output
    of a decode function of domain ``ai.onnxcompress``, its ``Split`` / ``Reshape``, a runtime
    ``fold`` ``Cast -> Sub -> Mul``) at the dense bytes of that tensor, since constant folding
    leaves that in memory in place of its sources; subgraph initializers at their stored bytes.
    Nodes in :data:`KEPT_QUANTIZED` are never folded (onnxruntime executes them on the codes).
    A rebuilt tensor whose shape static inference cannot tell counts the bytes of its constant
    sources instead (an underestimate, never seen on this package's outputs).

    This is an estimate of what stays resident after constant folding, not the load peak and not
    the runtime's own arena or pre-packed copies; ``onnxcompress bench`` measures the real RSS.
    """
    g = model.graph
    stored: dict[str, int] = {t.name: _stored(t) for t in g.initializer}
    constant: set[str] = set(stored)
    sources: dict[str, int] = {}  # a folded value: bytes of the constant sources behind it (fallback)
    folded: list[onnx.NodeProto] = []
    used_live: set[str] = set()  # constant values read by a node that runs at inference time
    subgraph_bytes = 0
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    stored[node.output[0]] = _stored(a.t)
                    constant.add(node.output[0])
            continue
        subgraphs = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        subgraphs += [s for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for s in a.graphs]
        inputs = [i for i in node.input if i]
        foldable = (
            not subgraphs
            and (node.domain, node.op_type) not in KEPT_QUANTIZED
            and all(i in constant for i in inputs)
            and node.op_type not in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike")
        )
        if foldable:
            behind = sum(sources.get(i, stored.get(i, 0)) for i in set(inputs))
            folded.append(node)
            for o in node.output:
                if o:
                    constant.add(o)
                    sources[o] = behind
            continue
        used_live.update(i for i in inputs if i in constant)
        for sg in subgraphs:
            subgraph_bytes += _subgraph_bytes(sg, constant, used_live)
    used_live.update(o.name for o in g.output if o.name in constant)
    total = subgraph_bytes
    types: dict[str, tuple[int, Shape | None]] | None = None
    for name in used_live:
        if name in stored:
            total += stored[name]
            continue
        if types is None:
            types = _inferred_types(model)
            _refine(model, folded, types)
        elem, shape = types.get(name, (0, None))
        total += tensor_bytes(elem, _numel(shape)) if elem and shape is not None and _known(shape) else sources.get(name, 0)
    return total


def _subgraph_bytes(graph: onnx.GraphProto, outer_constant: set[str], used_live: set[str]) -> int:
    """A subgraph's own initializers and Constants (not folded here), and the outer constants it
    reads (marked as read at inference time)."""
    total = sum(_stored(t) for t in graph.initializer)
    for node in graph.node:
        used_live.update(i for i in node.input if i in outer_constant)
        for a in node.attribute:
            if node.op_type == "Constant" and a.type == onnx.AttributeProto.TENSOR:
                total += _stored(a.t)
            elif a.type == onnx.AttributeProto.GRAPH:
                total += _subgraph_bytes(a.g, outer_constant, used_live)
            elif a.type == onnx.AttributeProto.GRAPHS:
                total += sum(_subgraph_bytes(s, outer_constant, used_live) for s in a.graphs)
    return total
