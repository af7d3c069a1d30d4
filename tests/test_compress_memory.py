"""Compression memory: the peak of compress_file / compress_model in bytes per weight, and the
paths that keep it low (weights read one at a time, from the external data when there is some;
decoded arrays only on request) write exactly what the plain path writes.

Peaks are tracemalloc's: numpy buffers and Python bytes, not the protobuf arena. So they count
what the pipeline itself holds (weight copies, decoded arrays, positions, streams, temporaries),
not the ModelProto, whose weights a model with external data never loads at all.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.compressor import compress_file, compress_model
from onnxcompress.config import from_dict


def mlp(layers: int, width: int, *, bias: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x[1, width] -> MatMul (+ Add bias) x layers, fp32 weights like the speed benchmark's."""
    rng = np.random.default_rng(seed)
    inits, nodes, cur = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]))
        cur = f"m{i}"
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), f"b{i}"))
            nodes.append(helper.make_node("Add", [cur, f"b{i}"], [f"a{i}"]))
            cur = f"a{i}"
    g = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [1, width])], inits,
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return path


def peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_does_not_hold_a_copy_of_every_weight(tmp_path):
    """16 x [512, 512] (4.2M weights), sparsity 0.9 + 5 bits. Holding a float32 copy and the
    decoded array of every weight and int64 kept positions to the end cost 15.5 bytes per weight;
    weights read one at a time and released, about 2."""
    layers, width = 16, 512
    src = save_external(mlp(layers, width), tmp_path / "m.onnx")
    cfg = from_dict({"weight": {"bits": 5, "sparsity": 0.9}})
    peak = peak_bytes(lambda: compress_file(src, tmp_path / "o.onnx", cfg))
    assert peak / (layers * width * width) < 4.0


def test_working_set_of_the_largest_weight(tmp_path):
    """4 x [1024, 1024] at 8 bits: all-distinct fp32 values make k-means' working set (sort keys,
    distinct values, prefix sums) the peak. Full-size int64 keys and segment ids and their
    temporaries cost 106 bytes per element of the largest weight; chunked, about 44."""
    width = 1024
    src = save_external(mlp(4, width), tmp_path / "m.onnx")
    cfg = from_dict({"weight": {"bits": 8}})
    peak = peak_bytes(lambda: compress_file(src, tmp_path / "o.onnx", cfg))
    assert peak / (width * width) < 60


def test_decoded_arrays_only_on_request(tmp_path):
    cfg = from_dict({"weight": {"bits": 4, "sparsity": 0.5}})
    kept = compress_model(mlp(3, 128), cfg)
    assert set(kept.decoded) == {"w0", "w1", "w2"}
    lean = compress_model(mlp(3, 128), cfg, keep_decoded=False)
    assert lean.decoded == {}
    assert lean.model.SerializeToString() == kept.model.SerializeToString()
    src = save_external(mlp(3, 128), tmp_path / "m.onnx")
    assert compress_file(src, tmp_path / "a.onnx", cfg).decoded == {}
    full = compress_file(src, tmp_path / "b.onnx", cfg, keep_decoded=True)
    for name, dec in kept.decoded.items():
        np.testing.assert_array_equal(full.decoded[name], dec)


@pytest.mark.parametrize(
    "weight",
    [
        {"bits": 8},
        {"bits": 5, "sparsity": 0.9},
        {"bits": 4, "sparsity": 0.7, "pruning": "global"},
        {"method": "prune", "sparsity": 0.8},
    ],
)
def test_external_data_read_per_weight_writes_the_same_file(tmp_path, weight):
    """Without a hook factory compress_file reads each weight from the data file and loads the
    data of the tensors left alone (biases, an excluded weight) only at the end; with one it loads
    everything first. Same output bytes, same report."""
    src = save_external(mlp(3, 300, bias=True), tmp_path / "m.onnx")  # biases: 1200 B, external
    cfg = from_dict({"weight": weight, "exclude": ["w1"], "min_elements": 1000})
    # one file each (by default the outputs would keep the input's external data, under two names)
    lazy = compress_file(src, tmp_path / "lazy.onnx", cfg, external_data=False)
    eager = compress_file(src, tmp_path / "eager.onnx", cfg, hook_factory=lambda model: None, external_data=False)
    assert (tmp_path / "lazy.onnx").read_bytes() == (tmp_path / "eager.onnx").read_bytes()
    assert not (tmp_path / "lazy.onnx.data").exists()
    a, b = lazy.report.to_dict(), eager.report.to_dict()
    for d in (a, b):
        d.pop("seconds")
        d.pop("output")
    assert a == b
    assert {w.name for w in lazy.report.weights} == {"w0", "w2"}
    out = onnx.load(str(tmp_path / "lazy.onnx"))
    names = {t.name for t in out.graph.initializer}
    assert {"w1", "b0", "b1", "b2"} <= names and not {"w0", "w2"} & names
