"""Decode the compressed weights in numpy before onnxruntime sees the model ("host decode").

Why: a stock ``InferenceSession`` rebuilds the weights by constant-folding the decode functions,
and onnxruntime keeps every folded intermediate until folding ends: about 44-51 bytes per weight
at the peak for an 8-bit model (4.6 GB for a 102M-parameter MLP whose fp32 file is 410 MB) and
many seconds of op-by-op evaluation. The numpy references of the decode operators
(``OpSpec.reference`` in :data:`onnxcompress.ops.OPS`) are the specification, bit-identical to
what onnxruntime folds (tested), so :func:`onnxcompress.load` runs them instead, folds the
``Reshape``/``Split``/``Transpose``/``Identity`` nodes that cut a decode group into weights, and
hands the finished weights to onnxruntime as external initializers
(``SessionOptions.add_external_initializers``: no protobuf copy). The model file is untouched; a
plain ``InferenceSession`` still decodes it itself.

This module edits graphs only (no onnxruntime import): it returns the edited model and the arrays;
:func:`onnxcompress.sessions.make_session` turns them into a session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcompress.inventory import iter_graphs
from onnxcompress.ops import DOMAIN, OPS

#: ``location`` of the placeholder initializers whose data :func:`make_session` supplies in memory
PLACEHOLDER_LOCATION = "onnxcompress-host-decoded"


@dataclass
class HostDecoded:
    """A model whose decode nodes were run in numpy, and the weights they produced."""

    model: onnx.ModelProto  # decode nodes removed; decoded weights are placeholder initializers
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # placeholder name -> weight
    decoded_nodes: int = 0  # ai.onnxcompress nodes run in numpy
    folded_nodes: int = 0  # Reshape/Split/Transpose/Identity nodes folded after them


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _reshape(node: onnx.NodeProto, x: np.ndarray, shape: np.ndarray) -> list[np.ndarray]:
    dims = [int(d) for d in shape]
    if not _attrs(node).get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return [x.reshape(dims)]


def _split(node: onnx.NodeProto, x: np.ndarray, sizes: np.ndarray | None = None) -> list[np.ndarray]:
    attrs = _attrs(node)
    axis = int(attrs.get("axis", 0))
    n = len(node.output)
    if sizes is None and "split" in attrs:
        sizes = np.asarray(attrs["split"])
    if sizes is None:  # equal parts (the last one smaller when opset 18's num_outputs does not divide)
        step = -(-x.shape[axis] // n)
        sizes = np.array([min(step, x.shape[axis] - i * step) for i in range(n)])
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _transpose(node: onnx.NodeProto, x: np.ndarray) -> list[np.ndarray]:
    perm = _attrs(node).get("perm")
    return [np.transpose(x, perm if perm else None)]


FOLDABLE: dict[str, Callable[..., list[np.ndarray]]] = {
    "Reshape": _reshape,
    "Split": _split,
    "Transpose": _transpose,
    "Identity": lambda node, x: [x],
}


def has_decode_nodes(model: onnx.ModelProto) -> bool:
    """Whether the main graph holds ``ai.onnxcompress`` decode nodes (the encoder puts them there)."""
    return any(n.domain == DOMAIN for n in model.graph.node)


def decode_on_host(model: onnx.ModelProto) -> HostDecoded:
    """Run the main graph's decode nodes (and the cuts after them) in numpy, in place.

    ``model`` must hold its external data in memory (``onnxcompress.load_model`` does that). Nodes
    whose inputs are not all constant, and nodes of other kinds, stay for onnxruntime; so does any
    decode node in a subgraph. The model-local decode functions are dropped when no decode node
    is left.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    cache: dict[str, np.ndarray] = {}  # initializers read so far
    known: dict[str, np.ndarray] = {}  # outputs computed here

    def const(name: str) -> np.ndarray | None:
        if name in known:
            return known[name]
        if name in inits:
            if name not in cache:
                cache[name] = numpy_helper.to_array(inits[name])
            return cache[name]
        return None

    kept: list[onnx.NodeProto] = []
    result = HostDecoded(model)
    for node in graph.node:
        args = [const(i) if i else None for i in node.input]
        present = [a for i, a in zip(node.input, args, strict=True) if i]
        if node.domain == DOMAIN and node.op_type in OPS and all(a is not None for a in present):
            known[node.output[0]] = OPS[node.op_type].reference(*args, **_attrs(node))
            result.decoded_nodes += 1
            continue
        if (
            node.domain in ("", "ai.onnx")
            and node.op_type in FOLDABLE
            and node.input
            and node.input[0] in known
            and all(a is not None for a in present)
        ):
            outs = FOLDABLE[node.op_type](node, *args)
            known.update(zip(node.output, outs, strict=True))
            result.folded_nodes += 1
            continue
        kept.append(node)
    if not result.decoded_nodes:
        return result
    del graph.node[:]
    graph.node.extend(kept)
    needed: set[str] = {o.name for o in graph.output}  # read by a remaining node, subgraphs included
    for _, g in iter_graphs(graph):
        for n in g.node:
            needed.update(i for i in n.input if i)
    graph_inputs = {i.name for i in graph.input}
    survivors = [t for t in graph.initializer if t.name in needed or t.name in graph_inputs]
    del graph.initializer[:]
    graph.initializer.extend(survivors)
    for name, arr in known.items():
        if name not in needed:
            continue
        arr = np.ascontiguousarray(arr)  # a Transpose or Split leaves views; onnxruntime reads raw memory
        result.arrays[name] = arr
        graph.initializer.append(_placeholder(name, arr))
    if not any(n.domain == DOMAIN for _, g in iter_graphs(graph) for n in g.node):
        keep_fns = [f for f in model.functions if f.domain != DOMAIN]
        del model.functions[:]
        model.functions.extend(keep_fns)
    return result


def _placeholder(name: str, arr: np.ndarray) -> onnx.TensorProto:
    """An initializer with ``arr``'s type and shape whose data lives elsewhere: onnxruntime takes
    it from the session options (it only replaces initializers marked external)."""
    t = onnx.TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", PLACEHOLDER_LOCATION), ("offset", "0"), ("length", str(arr.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t
