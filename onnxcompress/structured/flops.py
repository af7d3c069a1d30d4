"""Count a model's floating-point operations from its graph (one sample, batch dimension = 1).

A multiply-add counts as two FLOPs: Conv ``2 * Cout * (Cin / group) * prod(kernel) * prod(out
spatial)``, ConvTranspose the same over its input positions, Gemm / MatMul ``2 * M * K * N`` per
batch matrix. Elementwise ops, activations and normalizations count one per output element,
pooling one per window element. Shapes come from ONNX shape inference (with data propagation, so
the Shape -> Gather -> Concat -> Reshape chains of exported transformers resolve) with every
symbolic input dimension set to 1 unless ``dims`` names it (``{"seq": 64}``: FLOPs of a
64-token sequence); a dimension still symbolic inside the graph counts as 1. Ops whose shapes
inference cannot find count zero and are listed.

Pure graph code: onnx and numpy, no onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcompress.calibration.capture import infer_value_types

CHEAP = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Add", "Sub", "Mul", "Div", "Clip", "HardSwish",
         "HardSigmoid", "Erf", "Sqrt", "Pow", "BatchNormalization", "InstanceNormalization",
         "LayerNormalization", "Softmax", "Elu", "PRelu", "Max", "Min", "Sum", "Exp"}  # fmt: skip


@dataclass
class FlopCount:
    """FLOPs per node (name or ``op_index``) and their total."""

    total: int = 0
    by_node: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # nodes whose shapes were not inferred

    def add(self, name: str, op: str, flops: int) -> None:
        self.by_node[name] = self.by_node.get(name, 0) + flops
        self.by_op[op] = self.by_op.get(op, 0) + flops
        self.total += flops


def _batch_one(
    model: onnx.ModelProto,
    dims: Mapping[str, int] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        given = (input_shapes or {}).get(vi.name)
        if given is not None and len(given) == len(vi.type.tensor_type.shape.dim):
            for d, v in zip(vi.type.tensor_type.shape.dim, given, strict=True):
                d.Clear()
                d.dim_value = int(v)
    for vi in m.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = int((dims or {}).get(d.dim_param, 1))
    del m.graph.value_info[:]
    return m


def count_flops(
    model: onnx.ModelProto,
    dims: Mapping[str, int] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> FlopCount:
    """FLOPs of one inference of ``model``'s main graph at batch size 1: symbolic input dimensions
    named in ``dims`` take those values; ``input_shapes`` (input name -> full shape, e.g. the
    batch a benchmark feeds) fixes whole inputs (then FLOPs are for that batch)."""
    m = _batch_one(model, dims, input_shapes)
    types = infer_value_types(m, data_prop=True, outputs=True)
    consts = {t.name: tuple(int(d) for d in t.dims) for t in m.graph.initializer}

    def shape(name: str) -> tuple[int, ...] | None:
        if name in consts:
            return consts[name]
        vi = types.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        value_dims = vi.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") or d.dim_param for d in value_dims):
            return None
        return tuple(int(d.dim_value) if d.HasField("dim_value") else 1 for d in value_dims)

    out = FlopCount()
    for k, node in enumerate(m.graph.node):
        label = node.name or f"{node.op_type}_{k}"
        op = node.op_type
        if op == "Constant":
            continue
        ins = [shape(i) if i else None for i in node.input]
        o = shape(node.output[0]) if node.output else None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        try:
            if op == "Conv":
                w = ins[1]
                assert w is not None and o is not None
                flops = 2 * int(np.prod(o, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
            elif op == "ConvTranspose":
                w, x = ins[1], ins[0]
                assert w is not None and x is not None
                flops = 2 * int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
            elif op in ("Gemm", "MatMul"):
                a, b = ins[0], ins[1]
                assert a is not None and b is not None and o is not None
                k_dim = a[0] if op == "Gemm" and attrs.get("transA", 0) else a[-1]
                flops = 2 * int(np.prod(o, dtype=np.int64)) * int(k_dim)
            elif op in ("MaxPool", "AveragePool", "LpPool"):
                assert o is not None
                flops = int(np.prod(o, dtype=np.int64)) * int(
                    np.prod(attrs.get("kernel_shape", [1]), dtype=np.int64)
                )
            elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum"):
                assert ins[0] is not None
                flops = int(np.prod(ins[0], dtype=np.int64))
            elif op in CHEAP:
                assert o is not None
                flops = int(np.prod(o, dtype=np.int64))
            else:
                continue
        except AssertionError:
            out.unknown.append(label)
            continue
        out.add(label, op, flops)
    return out


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the float initializers of the main graph."""
    return sum(
        int(np.prod(t.dims, dtype=np.int64))
        for t in model.graph.initializer
        if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f"
    )
