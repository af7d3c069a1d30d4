"""SmoothQuant (calibration.smooth / compress --smooth): the scales, the graph rewrite, and what it
buys int8-activation weights on a model whose input has outlier channels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.algorithms.smoothing import int8_matmul_error, smooth_weight, smoothing_scales
from onnxcompress.calibration import CalibrationConfig, calibrate
from onnxcompress.cli import main
from onnxcompress.commands.render import format_calibration
from onnxcompress.compressor import compress_model
from onnxcompress.config import from_dict
from onnxcompress.errors import ConfigError
from onnxcompress.passes.smooth_inputs import SmoothInputsPass, smoothing_groups
from onnxcompress.sessions import make_session

K = 64


def _model(seed: int = 0) -> onnx.ModelProto:
    """x [N, 64] -> (MatMul a [64, 128] -> Relu -> MatMul c [128, 32]) + MatMul b [64, 32] + x[:, :32]:
    a and b share their input, which the residual reads too."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((K, 128)) / 8).astype(np.float32), "a"),
        numpy_helper.from_array((rng.standard_normal((K, 32)) / 8).astype(np.float32), "b"),
        numpy_helper.from_array((rng.standard_normal((128, 32)) / 11).astype(np.float32), "c"),
        numpy_helper.from_array(np.array([32], np.int64), "r0"),
        numpy_helper.from_array(np.array([64], np.int64), "r1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "a"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "c"], ["y1"]),
        helper.make_node("MatMul", ["x", "b"], ["y2"]),
        helper.make_node("Slice", ["x", "r0", "r1", "ax"], ["skip"]),
        helper.make_node("Add", ["y1", "y2"], ["y12"]),
        helper.make_node("Add", ["y12", "skip"], ["y"]),
    ]
    g = helper.make_graph(
        nodes, "outliers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], inits,
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _data(n: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs with three outlier channels, 40x the others (what LayerNorm outputs of transformers show)."""
    x = np.random.default_rng(seed).standard_normal((n, K)).astype(np.float32)
    x[:, [3, 17, 40]] *= 40
    return {"x": x}


def test_scales_follow_the_formula_and_stay_in_range():
    a = np.array([4.0, 1.0, 0.0, 9.0])
    w = np.array([1.0, 4.0, 2.0, 0.0])
    s = smoothing_scales(a, w, 0.5)
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0, 1.0])  # 0 on either side keeps 1
    assert smoothing_scales(np.array([1e12]), np.array([1e-12]), 0.9)[0] == pytest.approx(1e4)
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="alpha"):
            smoothing_scales(a, w, bad)


def test_smoothing_is_exact_and_lowers_int8_error_on_outlier_inputs():
    x = _data(256, 1)["x"]
    w = np.random.default_rng(2).standard_normal((K, 16)).astype(np.float32)
    s = smoothing_scales(np.abs(x).max(0), np.abs(w).max(1), 0.5)
    np.testing.assert_allclose((x / s) @ smooth_weight(w, s), x @ w, rtol=1e-4, atol=1e-3)
    assert int8_matmul_error(x, [w], s) < 0.5 * int8_matmul_error(x, [w])
    flat = np.random.default_rng(3).standard_normal((256, K)).astype(np.float32)  # no outliers
    s_flat = smoothing_scales(np.abs(flat).max(0), np.abs(w).max(1), 0.5)
    assert int8_matmul_error(flat, [w], s_flat) > 0.5 * int8_matmul_error(flat, [w])


def test_pass_rewires_only_the_chosen_matmuls_and_keeps_the_function():
    model = _model()
    groups = smoothing_groups(model, ["a", "b", "c"])
    assert {(g.input, g.weights) for g in groups} == {("x", ("a", "b")), ("r", ("c",))}
    x = _data(8, 4)
    want = make_session(model).run(None, x)[0]
    s = np.linspace(0.5, 4.0, K).astype(np.float32)
    SmoothInputsPass([groups[0]], [s])(model)
    onnx.checker.check_model(model, full_check=True)
    readers = {n.op_type + ":" + (n.input[1] if len(n.input) > 1 else ""): n.input[0] for n in model.graph.node}
    assert readers["MatMul:a"] == readers["MatMul:b"] == "x/smoothed"
    assert readers["Slice:r0"] == "x"  # the residual keeps the original activation
    np.testing.assert_allclose(make_session(model).run(None, x)[0], want, rtol=1e-5, atol=1e-4)


def _error(model: onnx.ModelProto, compressed: onnx.ModelProto) -> float:
    x = _data(200, 9)  # held out: not the calibration rows
    ref = make_session(model).run(None, x)[0]
    got = make_session(compressed).run(None, x)[0]
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def test_calibrated_smoothing_lowers_the_error_of_int8_activations():
    plan = from_dict({"weight": {"format": "runtime", "bits": 8, "activations": "int8"}, "min_elements": 256})
    errors = {}
    for alpha in (0.0, 0.5):
        model = _model()
        res = calibrate(model, _data(256, 5), plan, calibration=CalibrationConfig(smooth=alpha), baseline=False)
        errors[alpha] = _error(_model(), compress_model(model, plan, weight_hook=res.hook).model)
        if alpha:
            smoothed = {x["input"]: x["weights"] for x in res.to_dict()["smoothed"]}
            assert smoothed["x"] == ["a", "b"] and set(smoothed) <= {"x", "r"}
            n = sum(map(len, smoothed.values()))
            assert f"{len(smoothed)} activation(s) of {n} weight(s)" in format_calibration(res)
        else:
            assert res.smoothed == []
    assert errors[0.5] < 0.6 * errors[0.0], errors


def test_smoothing_needs_int8_activations_and_a_valid_alpha(tmp_path, capsys):
    plan = from_dict({"weight": {"format": "runtime", "bits": 8}, "min_elements": 256})
    model = _model()
    res = calibrate(model, _data(64, 5), plan, calibration=CalibrationConfig(smooth=0.5), baseline=False)
    assert res.smoothed == [] and "nothing to smooth" in format_calibration(res)
    with pytest.raises(ConfigError, match="smooth"):
        CalibrationConfig(smooth=1.5)
    src, data = tmp_path / "m.onnx", tmp_path / "cal.npz"
    onnx.save(_model(), src)
    np.savez(data, **_data(64, 5))
    out = tmp_path / "o.onnx"
    rc = main(["compress", str(src), "-o", str(out), "--format", "runtime", "--activations", "int8",
               "--calibration-data", str(data), "--smooth", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "calibration.smooth must be a number in [0, 1]" in err and not out.exists()
    assert len(err.strip().splitlines()) == 1
