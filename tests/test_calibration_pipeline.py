"""Calibration capture and pipeline on tiny models built in code, plus LeNet-300-100 end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.algorithms.calibrated.hessian import im2col
from onnxcompress.calibration import CalibrationConfig, calibrate
from onnxcompress.calibration.capture import capture, find_targets, probe_model, stages
from onnxcompress.config import from_dict
from onnxcompress.errors import ConfigError
from onnxcompress.inventory import build_inventory
from onnxcompress.sessions import make_session

MODELS = Path(__file__).resolve().parent.parent / "models"


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,8,8] -> Conv(stride 2, pad 1, group 2) -> Relu -> Flatten -> MatMul -> Add -> Relu -> Gemm(transB)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.normal(size=(8, 2, 3, 3)) * 0.3).astype(np.float32), "conv.w"),
        numpy_helper.from_array((rng.normal(size=8) * 0.1).astype(np.float32), "conv.b"),
        numpy_helper.from_array((rng.normal(size=(128, 32)) * 0.1).astype(np.float32), "fc1.w"),
        numpy_helper.from_array((rng.normal(size=32) * 0.1).astype(np.float32), "fc1.b"),
        numpy_helper.from_array((rng.normal(size=(10, 32)) * 0.2).astype(np.float32), "fc2.w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc2.b"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv.w", "conv.b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], group=2
        ),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "fc1.w"], ["m"]),
        helper.make_node("Add", ["m", "fc1.b"], ["a"]),
        helper.make_node("Relu", ["a"], ["h"]),
        helper.make_node("Gemm", ["h", "fc2.w", "fc2.b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def data(n: int = 40, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(n, 4, 8, 8)).astype(np.float32)}


def test_capture_hessians_match_numpy_from_activations():
    model = tiny_model()
    inv = build_inventory(model, min_elements=100)
    targets, skipped = find_targets(model, [w for w in inv.weights if w.compressible])
    assert [t.info.name for t in targets] == ["conv.w", "fc1.w", "fc2.w"], skipped
    assert [t.bias for t in targets] == ["conv.b", "fc1.b", "fc2.b"]
    x = data()["x"]
    stats = capture(model, targets, lambda: ({"x": x[i : i + 16]} for i in range(0, len(x), 16)))
    s = make_session(probe_model(model, ["x", "f", "h"]))
    xa, f, h = s.run(None, {"x": x})
    cols = im2col(xa.astype(np.float64), (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), groups=2)
    for g, (sl, hg) in enumerate(stats["conv.w"].blocks):
        assert sl == slice(4 * g, 4 * g + 4)
        np.testing.assert_allclose(hg, cols[g].T @ cols[g] / len(cols[g]), rtol=2e-5, atol=1e-6)
    f64, h64 = f.astype(np.float64), h.astype(np.float64)
    np.testing.assert_allclose(stats["fc1.w"].blocks[0][1], f64.T @ f64 / len(f64), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(stats["fc2.w"].blocks[0][1], h64.T @ h64 / len(h64), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(stats["fc1.w"].means[0][1], f64.mean(0), rtol=2e-5, atol=1e-6)


def test_stages_split_chain_and_group_parallel_layers():
    model = tiny_model()
    inv = build_inventory(model, min_elements=100)
    targets, _ = find_targets(model, [w for w in inv.weights if w.compressible])
    assert [len(s) for s in stages(model, targets)] == [1, 1, 1]


@pytest.mark.parametrize("sequential", [True, False])
def test_calibrate_and_compress_with_hook(sequential):
    from onnxcompress.compressor import compress_model

    cfg = from_dict({"weight": {"bits": 3, "sparsity": 0.5, "granularity": "channel"}, "min_elements": 100})
    model = tiny_model()
    ccfg = CalibrationConfig(bias_correction=True, batch_size=16)
    res = calibrate(model, data(), cfg, calibration=ccfg, sequential=sequential)
    assert res.stages == (3 if sequential else 1)
    assert {w.name for w in res.weights} == {"conv.w", "fc1.w", "fc2.w"}
    for w in res.weights:
        assert w.error_calibrated < w.error_plain
    assert set(res.bias_updates) == {"conv.b", "fc1.b", "fc2.b"}
    out = compress_model(model, cfg, weight_hook=res.hook)
    for name, (_, dec) in res.encoded.items():
        np.testing.assert_array_equal(out.decoded[name], dec)
    y = make_session(out.model).run(None, data(8, seed=5))[0]
    assert np.isfinite(y).all()
    d = res.to_dict()
    assert d["mean_error_calibrated"] < d["mean_error_plain"]


def test_hook_declines_other_settings():
    cfg = from_dict({"weight": {"bits": 4}, "min_elements": 100})
    model = tiny_model()
    res = calibrate(model, data(), cfg, samples=16, baseline=False)
    inv = {w.name: w for w in build_inventory(model, min_elements=100).weights}
    w = numpy_helper.to_array(model.graph.initializer[2])
    assert res.hook(w, inv["fc1.w"], cfg.resolve("fc1.w", ("MatMul",))) is not None
    assert res.hook(w, inv["fc1.w"], from_dict({"weight": {"bits": 5}}).weight) is None


def test_calibration_config_validation_and_overrides():
    c = CalibrationConfig.from_dict({"quant_method": "weighted-kmeans", "names": {"fc*": {"refit": False}}})
    assert c.resolve("fc1.w").refit is False and c.resolve("conv.w").refit is True
    with pytest.raises(ConfigError):
        CalibrationConfig.from_dict({"quant_method": "awq"})
    with pytest.raises(ConfigError):
        CalibrationConfig(samples=0)
    with pytest.raises(ConfigError):
        CalibrationConfig.from_dict({"names": {"x": {"samples": 3}}})


def test_cli_hook_none_without_data():
    import argparse

    from onnxcompress.commands._calibration_args import add_calibration_arguments, calibrate_from_args

    p = argparse.ArgumentParser()
    add_calibration_arguments(p)
    args = p.parse_args([])
    assert calibrate_from_args(tiny_model(), args, from_dict({})) is None
    args = p.parse_args(["--calibration-data", "x.npz", "--calibration-samples", "32", "--no-sequential"])
    from onnxcompress.commands._calibration_args import calibration_config_from_args

    c = calibration_config_from_args(args)
    assert c.samples == 32 and c.sequential is False


@pytest.mark.skipif(
    not (MODELS / "lenet_300_100.onnx").exists(), reason="models/lenet_300_100.onnx not built"
)
def test_lenet_300_100_end_to_end():
    """Calibrate on 256 samples of the first half of the augmented set, measure on the test set."""
    from onnxcompress.compressor import compress_model

    aug = np.load(MODELS / "digits_test_aug.npz")
    test = np.load(MODELS / "digits_test.npz")
    calib = {"input": aug["input"][: len(aug["input"]) // 2][::7][:256]}
    cfg = from_dict({"weight": {"bits": 4, "sparsity": 0.8}})

    def accuracy(m):
        y = make_session(m).run(None, {"input": test["input"]})[0]
        return float((y.argmax(1) == test["labels"]).mean())

    plain = compress_model(onnx.load(MODELS / "lenet_300_100.onnx"), cfg)
    model = onnx.load(MODELS / "lenet_300_100.onnx")
    res = calibrate(model, calib, cfg)
    cal = compress_model(model, cfg, weight_hook=res.hook)
    assert all(w.error_calibrated < w.error_plain for w in res.weights)
    assert accuracy(cal.model) > accuracy(plain.model)
    assert accuracy(cal.model) > 0.93
