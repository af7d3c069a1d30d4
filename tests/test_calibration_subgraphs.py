"""Weights inside If branches (issue 16): a main-graph weight feeding an If, a Constant and an
initializer inside (nested) branches are all calibrated, each on the batches that take its branch."""

from __future__ import annotations

import numpy as np
import pytest
from model_factory import branch_model, zoo_inputs, zoo_model

from onnxcompress.calibration import calibrate
from onnxcompress.calibration.capture import capture, find_targets, prepare, probe_model
from onnxcompress.calibration.pipeline import open_calibration_data
from onnxcompress.compressor import compress_model
from onnxcompress.config import from_dict
from onnxcompress.inventory import build_inventory
from onnxcompress.sessions import make_session

CFG = {"weight": {"bits": 4}, "min_elements": 100}
RATES = (16000, 8000, 2000)
WEIGHTS = {"W0", "Wt", "Wt2", "We", "We2", "Wout"}


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(3)
    for i, sr in enumerate(RATES):
        x = rng.standard_normal((16, 32)).astype(np.float32)
        np.savez(tmp_path / f"{i}.npz", x=x, sr=np.array(sr, np.int64))
    return tmp_path


def _file(folder, i):
    with np.load(folder / f"{i}.npz") as z:
        return {k: z[k] for k in z.files}


def test_branch_activations_are_captured_per_branch(folder):
    model = branch_model()
    inv = build_inventory(model, min_elements=100)
    targets, skipped = find_targets(model, inv.compressible())
    assert {t.info.name for t in targets} == WEIGHTS, skipped
    cmodel, targets = prepare(model, targets)
    assert cmodel is not model and len(model.graph.node[3].output) == 1  # the input model is untouched
    batches, n = open_calibration_data(model, folder, samples=48, batch_size=16)
    stats = capture(cmodel, targets, batches)
    # references: h (input of Wt, We, We2) from the main graph, r_t (input of Wt2) recomputed in numpy
    hs = [
        make_session(probe_model(model, ["h"])).run(None, _file(folder, i))[0].astype(np.float64)
        for i in range(3)
    ]
    wt = [t for t in model.graph.initializer if t.name == "Wt"][0]
    from onnx import numpy_helper

    r_t = np.maximum(hs[0] @ numpy_helper.to_array(wt).astype(np.float64), 0)
    expect = {"Wt": hs[0], "Wt2": r_t, "We": hs[1], "We2": hs[2]}
    for name, x in expect.items():
        assert stats[name].samples == 16, name
        np.testing.assert_allclose(stats[name].blocks[0][1], x.T @ x / len(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sequential", [True, False])
def test_branch_weights_are_calibrated_and_beat_plain(folder, sequential):
    model = branch_model()
    cfg = from_dict(CFG)
    res = calibrate(model, folder, cfg, samples=48, sequential=sequential)
    assert {w.name for w in res.weights} == WEIGHTS, res.skipped
    for w in res.weights:
        assert w.method.endswith("gptq + refit") and w.error_calibrated < w.error_plain, w
    out = compress_model(model, cfg, weight_hook=res.hook)
    for name, (_, dec) in res.encoded.items():
        np.testing.assert_array_equal(out.decoded[name], dec)
    plain = compress_model(branch_model(), cfg)
    s_ref, s_cal, s_plain = (make_session(m) for m in (branch_model(), out.model, plain.model))
    for i in range(3):
        data = _file(folder, i)
        ref = s_ref.run(None, data)[0]
        err_cal = np.linalg.norm(s_cal.run(None, data)[0] - ref)
        err_plain = np.linalg.norm(s_plain.run(None, data)[0] - ref)
        assert err_cal < err_plain, (RATES[i], err_cal, err_plain)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_branch_not_taken_falls_back_to_plain(dtype):
    """zoo_model's If has a constant True condition: the else-branch weight never sees data."""
    model = zoo_model(17, dtype=dtype)
    cfg = from_dict({"weight": {"bits": 4}, "min_elements": 100})
    res = calibrate(model, zoo_inputs(24, dtype=dtype), cfg, samples=24)
    assert res.capture_mode == "frontier"
    names = {w.name for w in res.weights}
    assert "head.then.w" in names and "head.else.w" not in names
    assert "no calibration data" in res.skipped["head.else.w"]


def test_cli_calibrates_branch_weights_without_traceback(folder, tmp_path, capsys):
    import json

    import onnx

    from onnxcompress.cli import main

    src, out, report = tmp_path / "m.onnx", tmp_path / "m.c.onnx", tmp_path / "r.json"
    onnx.save(branch_model(), src)
    argv = ["compress", str(src), "-o", str(out), "--bits", "4", "--min-elements", "100", "--quiet",
            "--calibration-data", str(folder), "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    weights = json.loads(report.read_text())["calibration"]["weights"]
    assert {w["name"] for w in weights} == WEIGHTS
