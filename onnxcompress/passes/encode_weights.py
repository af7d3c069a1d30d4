"""Replace weight tensors by decode subgraphs.

For each :class:`~onnxcompress.encoding.Group`: its streams become initializers, one decode node
(domain ``ai.onnxcompress``) produces the concatenated weights, a ``Split`` cuts them apart, and a
``Reshape`` (plus a ``Transpose`` when the channel axis is not 0) writes each weight under its
original name. Everything is placed at the top of the main graph, so consumers in subgraphs see
the weight through outer scope exactly as before. The original initializer or ``Constant`` node
is removed wherever it lived.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcompress.encoding import Group, WeightSlot
from onnxcompress.errors import EncodingError
from onnxcompress.inventory import graph_names, iter_graphs
from onnxcompress.ops import DOMAIN
from onnxcompress.ops.functions import functions_for
from onnxcompress.passes.base import Pass, PassResult
from onnxcompress.passes.versions import default_opset

PREFIX = "onnxcompress"  # the decode streams: onnxcompress/g<group>/<input>
SHORT = "oc"  # internal values: oc<group>, oc<group>.<run>, shape constants oc/s<i>


def remove_tensors(model: onnx.ModelProto, names: set[str]) -> set[str]:
    """Drop the initializers / Constant nodes defining ``names`` in any graph; returns those found."""
    found: set[str] = set()
    for _, g in iter_graphs(model.graph):
        keep = [t for t in g.initializer if t.name not in names]
        found.update(t.name for t in g.initializer if t.name in names)
        if len(keep) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep)
        nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output and n.output[0] in names)]
        found.update(
            n.output[0] for n in g.node if n.op_type == "Constant" and n.output and n.output[0] in names
        )
        if len(nodes) != len(g.node):
            del g.node[:]
            g.node.extend(nodes)
    return found


def stream_widths(groups: Sequence[Group]) -> dict[str, dict[str, int]]:
    """Per operator, the stream-width attributes (``bits``, ``gap_bits``) that all its groups set
    to one value: its function body can then read them as fixed widths (8-bit codes as bytes)."""
    seen: dict[str, dict[str, set[int]]] = {}
    for g in groups:
        for inp in g.spec.streams:
            if isinstance(inp.bits, str):
                seen.setdefault(g.op_type, {}).setdefault(inp.bits, set()).add(int(g.attrs[inp.bits]))
    return {op: {a: v.pop() for a, v in attrs.items() if len(v) == 1} for op, attrs in seen.items()}


def single_segment_ops(groups: Sequence[Group]) -> set[str]:
    """Codebook operators every one of whose groups has one segment (``segments`` = [0, size]):
    their function body then skips the per-position segment lookup
    (:func:`onnxcompress.encoding.solo_ops` says why that matters)."""
    single: dict[str, bool] = {}
    for g in groups:
        if "segments" in g.spec.input_names:
            single[g.op_type] = single.get(g.op_type, True) and g.inputs["segments"].size == 2
    return {op for op, ok in single.items() if ok}


class EncodeWeightsPass(Pass):
    name = "encode-weights"

    @staticmethod
    def _split(x: str, outputs: list[str], sizes: list[int], opset: int, const, sizes_name: str) -> onnx.NodeProto:
        if opset >= 13:
            return helper.make_node("Split", [x, const(np.array(sizes, dtype=np.int64), sizes_name)], outputs, axis=0)
        return helper.make_node("Split", [x], outputs, axis=0, split=sizes)

    def __init__(self, groups: Sequence[Group], *, consume: bool = False) -> None:
        """``consume``: take each stream out of its group's ``inputs`` as it becomes an
        initializer, so that it is held once, not twice (for a caller done with the groups)."""
        self.groups = list(groups)
        self.consume = consume

    def call(self, model: onnx.ModelProto) -> PassResult:
        opset = default_opset(model)
        widths, single = stream_widths(self.groups), single_segment_ops(self.groups)  # before consume
        taken = graph_names(model)
        wanted = {w.name for g in self.groups for w in g.weights}
        found = remove_tensors(model, wanted)
        if found != wanted:
            raise EncodingError(f"weights not found in the model: {sorted(wanted - found)[:5]}")

        def fresh(base: str) -> str:
            name, i = base, 1
            while name in taken:
                name, i = f"{base}_{i}", i + 1
            taken.add(name)
            return name

        new_nodes: list[onnx.NodeProto] = []
        shape_consts: dict[tuple[int, ...], str] = {}
        graph = model.graph

        def const(arr: np.ndarray, base: str) -> str:
            # Added at once (after the kept initializers, in creation order), and written in place
            # the way numpy_helper.from_array writes it: a list of TensorProtos extended at the end
            # held every stream twice more, and append() copies a temporary TensorProto. (Streams
            # are uint8/int32/int64/float arrays: no sub-byte type that from_array packs first.)
            name = fresh(base)
            t = graph.initializer.add()
            t.dims.extend(arr.shape)
            t.name = name
            t.raw_data = numpy_helper.tobytes_little_endian(arr)
            t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
            return name

        for gi, group in enumerate(self.groups):
            base = f"{PREFIX}/g{gi}"
            get = group.inputs.pop if self.consume else group.inputs.__getitem__
            inputs = [const(get(k), f"{base}/{k}") for k in group.spec.input_names]
            to = helper.np_dtype_to_tensor_dtype(np.dtype(group.weights[0].dtype))
            attrs: dict[str, Any] = {**group.attrs, "to": to}
            # Internal names are short and the added nodes unnamed (names are optional in ONNX):
            # each weight costs a Reshape and a Split output, and on a model of dozens of small
            # weights long names were a visible part of the file.
            short = f"{SHORT}{gi}"
            decoded = fresh(short)
            new_nodes.append(helper.make_node(group.op_type, inputs, [decoded], domain=DOMAIN, **attrs))
            # runs of consecutive weights with the same trailing dims (build_groups sorts them so)
            runs: list[list[WeightSlot]] = []
            for w in group.weights:
                if runs and runs[-1][0].moved_shape[1:] == w.moved_shape[1:] and len(w.moved_shape) >= 1:
                    runs[-1].append(w)
                else:
                    runs.append([w])
            if len(runs) == 1:
                run_outputs = [decoded]
            else:
                run_outputs = [fresh(f"{short}.{i}") for i in range(len(runs))]
                sizes = [sum(w.size for w in run) for run in runs]
                new_nodes.append(self._split(decoded, run_outputs, sizes, opset, const, f"{short}/sizes"))
            for ri, (run, flat) in enumerate(zip(runs, run_outputs, strict=True)):
                targets = [w.name if w.axis == 0 else fresh(f"{short}.{ri}.{j}") for j, w in enumerate(run)]
                if len(run) == 1:
                    shaped = targets[0]
                    shape = tuple(int(d) for d in run[0].moved_shape)
                else:
                    shaped = fresh(f"{short}.{ri}s")
                    shape = (-1, *(int(d) for d in run[0].moved_shape[1:]))
                if shape not in shape_consts:
                    shape_consts[shape] = const(np.array(shape, dtype=np.int64), f"{SHORT}/s{len(shape_consts)}")
                new_nodes.append(helper.make_node("Reshape", [flat, shape_consts[shape]], [shaped]))
                if len(run) > 1:
                    sizes = [int(w.moved_shape[0]) for w in run]
                    new_nodes.append(self._split(shaped, targets, sizes, opset, const, f"{short}.{ri}/sizes"))
                for w, target in zip(run, targets, strict=True):
                    if w.axis != 0:
                        ndim = len(w.shape)
                        perm = list(range(1, w.axis + 1)) + [0] + list(range(w.axis + 1, ndim))
                        new_nodes.append(helper.make_node("Transpose", [target], [w.name], perm=perm))

        existing = list(graph.node)
        del graph.node[:]
        graph.node.extend(new_nodes + existing)
        used = sorted({g.op_type for g in self.groups})
        have = {(f.domain, f.name) for f in model.functions}
        for fn in functions_for(used, opset, widths, single):
            if (fn.domain, fn.name) not in have:
                model.functions.append(fn)
        return PassResult(
            model, bool(self.groups), {"groups": len(self.groups), "weights": len(wanted), "ops": used}
        )
