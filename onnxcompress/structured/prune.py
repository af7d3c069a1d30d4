"""The structured pruning pass: remove channel classes from the graph and leave an ordinary model.

Given an :class:`~onnxcompress.structured.graph.Analysis` and the set of channel classes to remove,
every constant laid out along a channel axis is sliced (source weights and biases, consumer
weights' input axes, BatchNorm parameters, per-channel constants of elementwise ops, the blocks of
a flattened Gemm input), and every number that counts channels is rewritten (depthwise ``group``,
``Split`` sizes, ``Slice`` bounds, ``Reshape`` / ``Resize`` shape entries). Shape constants get
fresh initializers, so a constant shared with an untouched op keeps its value. Stale
``value_info`` shapes are dropped. The result needs no custom op: it runs anywhere.

Pure graph code: onnx and numpy, no onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcompress.calibration.capture import get_tensor, set_tensor
from onnxcompress.inventory import fresh_name
from onnxcompress.structured.graph import Analysis


@dataclass
class Pruned:
    """The smaller model and, per sliced layer (node index), which original channels it keeps."""

    model: onnx.ModelProto
    kept_inputs: dict[int, np.ndarray] = field(default_factory=dict)  # consumer -> kept input positions
    kept_outputs: dict[int, np.ndarray] = field(default_factory=dict)  # source -> kept output channels
    removed: dict[int, np.ndarray] = field(default_factory=dict)  # consumer -> removed input positions


def keep_mask(analysis: Analysis, ids: np.ndarray, removed: set[int]) -> np.ndarray:
    """True for each position whose channel class survives."""
    return np.array([c not in removed for c in analysis.classes_of(ids)], dtype=bool)


def apply(model: onnx.ModelProto, analysis: Analysis, removed: Iterable[int]) -> Pruned:
    """A copy of ``model`` without the channel classes in ``removed`` (classes of refused groups
    must not be in it: :func:`onnxcompress.structured.api.choose` never puts them there)."""
    removed = set(removed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    result = Pruned(out)
    if not removed:
        return result
    graph = out.graph
    done: set[tuple[str, int]] = set()
    for s in analysis.slicings:
        if (s.tensor, s.axis) in done:
            continue
        done.add((s.tensor, s.axis))
        mask = keep_mask(analysis, s.ids, removed)
        if mask.all():
            continue
        arr = get_tensor(out, s.tensor)
        set_tensor(out, s.tensor, np.ascontiguousarray(np.compress(mask, arr, axis=s.axis)))
    for c in analysis.consumers:
        mask = keep_mask(analysis, c.ids, removed)
        result.kept_inputs[c.node] = np.flatnonzero(mask)
        result.removed[c.node] = np.flatnonzero(~mask)
    for src in analysis.sources:
        result.kept_outputs[src.node] = np.flatnonzero(keep_mask(analysis, src.ids, removed))
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {i.name for i in graph.input}
    created: set[str] = set()
    for e in analysis.edits:
        node = graph.node[e.node]
        if e.kind == "group":
            kept = int(keep_mask(analysis, e.ids, removed).sum())
            for a in node.attribute:
                if a.name == "group":
                    a.i = kept
        elif e.kind == "shape":
            kept = int(keep_mask(analysis, e.ids, removed).sum())
            shape_value = get_tensor(out, node.input[e.input_index]).copy()
            shape_value.reshape(-1)[e.position] = kept * e.inner
            if node.input[e.input_index] in created:  # a shape Concat shared by Q, K and V: rewritten once
                set_tensor(out, node.input[e.input_index], shape_value)
                continue
            name = fresh_name(f"{node.input[e.input_index]}_pruned", taken)
            created.add(name)
            graph.initializer.append(numpy_helper.from_array(shape_value, name))
            node.input[e.input_index] = name
        elif e.kind == "split":
            sizes = np.array([int(keep_mask(analysis, p, removed).sum()) for p in e.pieces], dtype=np.int64)
            _set_split(out, node, sizes, taken)
        elif e.kind == "slice":
            mask = keep_mask(analysis, e.ids, removed)
            start, end = e.bounds
            bounds = (int(mask[:start].sum()), int(mask[:end].sum()))
            for idx, bound in zip((1, 2), bounds, strict=True):
                arr = get_tensor(out, node.input[idx]).astype(np.int64).copy()
                arr.reshape(-1)[e.position] = bound
                name = fresh_name(f"{node.input[idx]}_pruned", taken)
                graph.initializer.append(numpy_helper.from_array(arr, name))
                node.input[idx] = name
    del graph.value_info[:]
    return result


def _set_split(model: onnx.ModelProto, node: onnx.NodeProto, sizes: np.ndarray, taken: set[str]) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    keep = [a for a in node.attribute if a.name not in ("split", "num_outputs")]
    del node.attribute[:]
    node.attribute.extend(keep)
    if opset >= 13:
        name = fresh_name(f"{node.name or 'split'}_sizes", taken)
        model.graph.initializer.append(numpy_helper.from_array(sizes, name))
        while len(node.input) < 2:
            node.input.append("")
        node.input[1] = name
    else:
        node.attribute.append(onnx.helper.make_attribute("split", [int(v) for v in sizes]))
