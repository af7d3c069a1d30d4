"""Give exporter-generated initializers readable names derived from the torch module that owns them.

torch's TorchScript exporter names weights it had to create (BatchNorm folded into a Conv, Linear
weights pre-transposed for MatMul) ``onnx::Conv_93`` or ``onnx::MatMul_1234``. Compression reports and
per-layer settings refer to initializers by name, so they should read like the torch state_dict:
``stage1.conv1.weight``, ``encoder.layer.0.attention.self.query.weight_t``.
"""

from __future__ import annotations

from typing import Any

# Which name each (op, input index) gets; MatMul's B is the Linear weight transposed ([in, out]).
SLOTS: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "MatMul": {1: "weight_t"},
}


def module_path(node_name: str) -> str:
    """'/stage2/proj/proj.0/Conv' -> 'stage2.proj.0' (the torch module that produced the node)."""
    parts: list[str] = []
    for seg in node_name.strip("/").split("/")[:-1]:
        if parts and seg.startswith(parts[-1] + "."):  # Sequential children repeat their parent's name
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


def name_anonymous_initializers(graph: Any) -> dict[str, str]:
    """Rename ``onnx::*`` initializers of Conv/Gemm/MatMul nodes in place; return old -> new names.

    Names already taken (or used twice, e.g. a shared weight) are left as they are, so the result is
    always a valid graph.
    """
    initializers = {t.name for t in graph.initializer}
    renames: dict[str, str] = {}
    for node in graph.node:
        for index, slot in SLOTS.get(node.op_type, {}).items():
            if index >= len(node.input):
                continue
            old = node.input[index]
            if old.startswith("onnx::") and old in initializers and old not in renames:
                new = f"{module_path(node.name)}.{slot}"
                if new not in initializers and new not in renames.values():
                    renames[old] = new
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in graph.node:
        node.input[:] = [renames.get(v, v) for v in node.input]
    return renames
