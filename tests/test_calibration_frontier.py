"""Sequential capture from cached frontier activations: same statistics as rerunning the prefix,
linear in depth, spilled to disk beyond its RAM budget, and a fallback when the cut does not hold."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcompress.sessions
from onnxcompress.calibration import CalibrationConfig, calibrate, frontier, pipeline
from onnxcompress.calibration.capture import capture, find_targets, get_tensor, set_tensor, stages
from onnxcompress.calibration.frontier import FrontierCapture
from onnxcompress.config import from_dict
from onnxcompress.inventory import build_inventory

MODELS = Path(__file__).resolve().parent.parent / "models"
CFG = {"weight": {"bits": 4, "sparsity": 0.5}, "min_elements": 100}


def digits(n: int = 96):
    z = np.load(MODELS / "digits_test.npz")
    x, y = z["input"][:n], z["labels"][:n]
    # labels ride along in the batches: they are no model input and must not be fed
    return lambda: ({"input": x[i : i + 32], "labels": y[i : i + 32]} for i in range(0, len(x), 32))


def assert_same_stats(new, old):
    assert new.keys() == old.keys()
    for name, a in new.items():
        b = old[name]
        assert a.kind == b.kind and a.samples == b.samples > 0
        assert len(a.blocks) == len(b.blocks) and len(a.means) == len(b.means)
        for (sa, ha), (sb, hb) in zip(a.blocks + a.means, b.blocks + b.means, strict=True):
            assert sa == sb
            np.testing.assert_allclose(ha, hb, rtol=1e-5, atol=1e-9 * max(1.0, float(np.abs(hb).max())))


@pytest.mark.parametrize("name", ["lenet5", "resnet_digits"])
def test_frontier_stats_equal_prefix_stats(name):
    model = onnx.load(MODELS / f"{name}.onnx")
    inv = build_inventory(model, min_elements=100)
    targets, _ = find_targets(model, [w for w in inv.weights if w.compressible])
    groups = stages(model, targets)
    assert len(groups) >= 4
    batches = digits()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    first = {}
    with FrontierCapture(work, groups, batches) as fc:
        if name == "resnet_digits":  # the residual stream and the branch cross the same cut
            assert max(len(f) for f in fc.frontiers) > 1
        for s, stage in enumerate(groups):
            new = fc.capture(s)
            assert_same_stats(new, capture(work, stage, batches))
            first.update(new)
            # stand-in for compression: later stages must see these values, not the originals
            for t in stage:
                set_tensor(work, t.info.name, np.round(get_tensor(work, t.info.name) * 4) / 4)
                if t.bias is not None:
                    set_tensor(work, t.bias, get_tensor(work, t.bias) + 0.05)
    orig = capture(model, groups[-1], batches)  # the last stage did see the rounded weights
    name = groups[-1][0].info.name
    assert not np.allclose(first[name].blocks[0][1], orig[name].blocks[0][1], rtol=1e-3)


def calibrate_both(monkeypatch, load, data):
    """``calibrate`` with the frontier capture and with the prefix capture (same config, fresh models)."""
    out = {}
    for mode in (True, False):
        monkeypatch.setattr(pipeline, "_FRONTIER_CAPTURE", mode)
        ccfg = CalibrationConfig(bias_correction=True, batch_size=32)
        out[mode] = calibrate(load(), data, from_dict(CFG), calibration=ccfg, samples=96)
    return out[True], out[False]


def assert_same_result(a, b):
    assert [w.name for w in a.weights] == [w.name for w in b.weights]
    for wa, wb in zip(a.weights, b.weights, strict=True):
        assert (wa.stage, wa.rows_seen, wa.method) == (wb.stage, wb.rows_seen, wb.method)
        np.testing.assert_allclose(wa.error_calibrated, wb.error_calibrated, rtol=1e-5)
        np.testing.assert_allclose(wa.error_plain, wb.error_plain, rtol=1e-5)
    for name, (_, dec) in a.encoded.items():
        np.testing.assert_allclose(dec, b.encoded[name][1], rtol=1e-5, atol=1e-7)
    assert a.bias_updates.keys() == b.bias_updates.keys()
    for name, v in a.bias_updates.items():
        np.testing.assert_allclose(v, b.bias_updates[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["lenet5", "resnet_digits"])
def test_calibrate_frontier_equals_prefix(monkeypatch, name):
    z = np.load(MODELS / "digits_test.npz")
    data = {"input": z["input"][:96]}
    new, old = calibrate_both(monkeypatch, lambda: onnx.load(MODELS / f"{name}.onnx"), data)
    assert new.capture_mode == "frontier" and old.capture_mode == "prefix"
    assert new.stages == old.stages >= 4
    assert_same_result(new, old)


def mlp(layers: int, width: int = 16, seq: bool = False) -> onnx.ModelProto:
    """x -> (MatMul + Add + Relu) x layers; ``seq`` routes the first activation through a sequence
    that a later layer reads again (a frontier that is not a plain tensor)."""
    rng = np.random.default_rng(layers)
    inits, nodes, cur = [numpy_helper.from_array(np.array(0, np.int64), "zero")], [], "x"
    for i in range(layers):
        inits.append(
            numpy_helper.from_array(rng.normal(size=(width, width)).astype(np.float32) * 0.3, f"w{i}")
        )
        inits.append(numpy_helper.from_array(rng.normal(size=width).astype(np.float32) * 0.1, f"b{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]))
        nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
        cur = f"r{i}"
        if seq and i == 0:
            nodes.append(helper.make_node("SequenceConstruct", [cur], ["seq"]))
            nodes.append(helper.make_node("SequenceAt", ["seq", "zero"], ["s0"]))
            cur = "s0"
        if seq and i == layers - 2:
            nodes.append(helper.make_node("SequenceAt", ["seq", "zero"], ["s1"]))
            nodes.append(helper.make_node("Add", [cur, "s1"], ["skip"]))
            cur = "skip"
    g = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", width])], inits,
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mlp_data(width: int = 16):
    return {"x": np.random.default_rng(3).normal(size=(96, width)).astype(np.float32)}


def test_nodes_executed_grow_linearly(monkeypatch):
    """Nodes of the capture sessions (nodes executed per batch, summed over stages)."""
    real = onnxcompress.sessions.make_session
    built: list[int] = []

    def counting(model, **kw):
        if kw.get("optimization_level") == "basic":  # capture sessions, not the input-spec probe
            built.append(len(model.graph.node))
        return real(model, **kw)

    monkeypatch.setattr(onnxcompress.sessions, "make_session", counting)
    totals = {}
    for mode in (True, False):
        monkeypatch.setattr(pipeline, "_FRONTIER_CAPTURE", mode)
        for n in (4, 16):
            built.clear()
            res = calibrate(mlp(n), mlp_data(), from_dict(CFG), samples=64, baseline=False)
            assert res.stages == n
            totals[mode, n] = sum(built)
    # one forward pass is 3n nodes: the frontier capture runs each node at most twice
    for n in (4, 16):
        assert totals[True, n] <= 2 * 3 * n
    assert totals[True, 16] <= 6 * totals[True, 4]
    # the prefix capture reruns the prefix per stage: 3n(n-1)/2
    assert totals[False, 16] >= 15 * totals[False, 4]
    assert totals[False, 16] == 3 * 16 * 15 // 2


def test_spill_gives_same_result_and_cleans_up(monkeypatch):
    made: list[str] = []
    real = tempfile.mkdtemp

    def mkdtemp(*a, **kw):
        made.append(real(*a, **kw))
        return made[-1]

    monkeypatch.setattr(frontier.tempfile, "mkdtemp", mkdtemp)
    z = np.load(MODELS / "digits_test.npz")
    data = {"input": z["input"][:96]}
    ram = calibrate(onnx.load(MODELS / "resnet_digits.onnx"), data, from_dict(CFG), samples=96)
    assert not made
    monkeypatch.setattr(frontier, "FRONTIER_RAM_BYTES", 0)
    disk = calibrate(onnx.load(MODELS / "resnet_digits.onnx"), data, from_dict(CFG), samples=96)
    assert len(made) == 1 and not os.path.exists(made[0])
    assert disk.capture_mode == "frontier"
    assert_same_result(disk, ram)

    # an error half-way through still removes the spilled files
    calls = []
    real_weight = pipeline.calibrate_weight

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 4:
            assert os.listdir(made[-1])  # frontier batches are on disk
            raise RuntimeError("boom")
        return real_weight(*a, **kw)

    monkeypatch.setattr(pipeline, "calibrate_weight", failing)
    with pytest.raises(RuntimeError, match="boom"):
        calibrate(onnx.load(MODELS / "resnet_digits.onnx"), data, from_dict(CFG), samples=96)
    assert len(made) == 2 and not os.path.exists(made[1])


def test_sequence_in_frontier_falls_back_to_prefix(monkeypatch):
    new, old = calibrate_both(monkeypatch, lambda: mlp(4, seq=True), mlp_data())
    assert new.stages == 4
    assert new.capture_mode.startswith("prefix (frontier capture unsupported") and "'seq'" in new.capture_mode
    assert_same_result(new, old)
    # when only the run finds out, the rest of the stages fall back
    monkeypatch.setattr(FrontierCapture, "_check_types", lambda self, names: None)
    new, old = calibrate_both(monkeypatch, lambda: mlp(4, seq=True), mlp_data())
    assert new.capture_mode.startswith("frontier, prefix from stage 2") and "'seq'" in new.capture_mode
    assert_same_result(new, old)


def test_non_sequential_uses_one_prefix_capture():
    res = calibrate(mlp(4), mlp_data(), from_dict(CFG), samples=64, sequential=False, baseline=False)
    assert res.stages == 1 and res.capture_mode == "prefix"


def test_embedding_and_late_int_input_pass_through_frontier(monkeypatch):
    """ids -> Gather(E) -> MatMul -> Relu -> MatMul -> Mul(mask) -> MatMul: the int64 ids are an
    embedding's "activation", and the mask (a model input) crosses every cut until it is used."""
    rng = np.random.default_rng(0)
    w = {
        "emb": rng.normal(size=(50, 16)),
        "w0": rng.normal(size=(16, 16)) * 0.3,
        "w1": rng.normal(size=(16, 16)) * 0.3,
        "w2": rng.normal(size=(16, 16)) * 0.3,
    }
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),
        helper.make_node("MatMul", ["e", "w0"], ["m0"]),
        helper.make_node("Relu", ["m0"], ["r0"]),
        helper.make_node("MatMul", ["r0", "w1"], ["m1"]),
        helper.make_node("Unsqueeze", ["mask", "axes"], ["mk"]),
        helper.make_node("Cast", ["mk"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["m1", "mf"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
    g = helper.make_graph(
        nodes, "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 16])], inits,
    )  # fmt: skip

    def load():
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    data = {"ids": rng.integers(0, 50, size=(96, 6)), "mask": (rng.random((96, 6)) > 0.3).astype(np.int64)}
    new, old = calibrate_both(monkeypatch, load, data)
    assert new.capture_mode == "frontier" and new.stages == 4
    assert [w.kind for w in new.weights] == ["embedding", "linear", "linear", "linear"]
    assert_same_result(new, old)
    model = load()
    targets, _ = find_targets(
        model, [w for w in build_inventory(model, min_elements=100).weights if w.compressible]
    )
    fc = FrontierCapture(model, stages(model, targets), lambda: iter(()))
    assert fc.frontiers == [["ids", "mask"], ["mask", "e"], ["mask", "r0"]]
