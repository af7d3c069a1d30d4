"""LSTM / GRU / RNN weights (issue 16): W is calibrated on the layer input sequence, R on each
direction's previous hidden state (Y shifted by one step, initial_h first; a GRU's hidden gate on
``r_t * h_{t-1}``), checked against a plain numpy unroll of the cells."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from model_factory import recurrent_inputs, recurrent_model
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.calibration import calibrate
from onnxcompress.calibration.capture import capture, find_targets, prepare, probe_model
from onnxcompress.calibration.pipeline import open_calibration_data
from onnxcompress.compressor import compress_model
from onnxcompress.config import from_dict
from onnxcompress.inventory import build_inventory
from onnxcompress.sessions import make_session

CFG = {"weight": {"bits": 4}, "min_elements": 100}
H = 16


def sig(x):
    return 1 / (1 + np.exp(-x))


def _w(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name)).astype(
        np.float64
    )


def lstm_ref(x, w, r, b, lens):
    """ONNX LSTM (gates i, o, f, c), both directions: Y [T, 2, B, H] and each direction's h_{t-1} rows."""
    steps, batch, _ = x.shape
    y = np.zeros((steps, 2, batch, H))
    prev = [[], []]
    for d in range(2):
        wb, rb = b[d, : 4 * H], b[d, 4 * H :]
        for n in range(batch):
            h, c = np.zeros(H), np.zeros(H)
            order = range(lens[n]) if d == 0 else range(lens[n] - 1, -1, -1)
            for t in order:
                prev[d].append(h)
                g = w[d] @ x[t, n] + r[d] @ h + wb + rb
                i, o, f, cc = sig(g[:H]), sig(g[H : 2 * H]), sig(g[2 * H : 3 * H]), np.tanh(g[3 * H :])
                c = f * c + i * cc
                h = o * np.tanh(c)
                y[t, d, n] = h
    return y, [np.array(p) for p in prev]


def gru_ref(x, w, r, b, h0):
    """ONNX GRU (gates z, r, h; linear_before_reset 0): each direction's h_{t-1} and r_t * h_{t-1} rows."""
    steps, batch, _ = x.shape
    prev, gated = [[], []], [[], []]
    for d in range(2):
        wb, rb = b[d, : 3 * H], b[d, 3 * H :]
        for n in range(batch):
            h = h0[d, n].astype(np.float64)
            for t in range(steps) if d == 0 else range(steps - 1, -1, -1):
                xw = w[d] @ x[t, n] + wb
                z = sig(xw[:H] + r[d, :H] @ h + rb[:H])
                rg = sig(xw[H : 2 * H] + r[d, H : 2 * H] @ h + rb[H : 2 * H])
                prev[d].append(h)
                gated[d].append(rg * h)
                hh = np.tanh(xw[2 * H :] + r[d, 2 * H :] @ (rg * h) + rb[2 * H :])
                h = (1 - z) * hh + z * h
    return [np.array(p) for p in prev], [np.array(g) for g in gated]


def _gram(rows):
    return rows.T @ rows / len(rows)


def _block_diag(a, b):
    out = np.zeros((a.shape[0] + b.shape[0],) * 2)
    out[: a.shape[0], : a.shape[0]] = a
    out[a.shape[0] :, a.shape[0] :] = b
    return out


def test_recurrent_statistics_match_a_numpy_unroll():
    model = recurrent_model()
    data = recurrent_inputs(24)
    targets, skipped = find_targets(model, build_inventory(model, min_elements=100).compressible())
    assert {t.info.name for t in targets} == {"lstm.W", "lstm.R", "gru.W", "gru.R", "Wout"}, skipped
    cmodel, targets = prepare(model, targets)
    assert cmodel is not model and model.graph.node[4].output[0] == ""  # Y named in a copy only
    batches, _ = open_calibration_data(model, data, samples=24, batch_size=8)
    stats = capture(cmodel, targets, batches)

    x = data["x"].transpose(1, 0, 2).astype(np.float64)
    y, lprev = lstm_ref(x, _w(model, "lstm.W"), _w(model, "lstm.R"), _w(model, "lstm.B"), data["lens"])
    g_in = make_session(probe_model(model, ["g_in"])).run(None, data)[0]
    np.testing.assert_allclose(  # the reference unroll is right: ORT's LSTM output
        y.transpose(0, 2, 1, 3).reshape(g_in.shape), g_in, atol=1e-5
    )
    mask = np.arange(x.shape[0])[:, None] < data["lens"][None, :]
    hx = _gram(x[mask])
    np.testing.assert_allclose(stats["lstm.W"].blocks[0][1], _block_diag(hx, hx), rtol=1e-5, atol=1e-8)
    ((sl, h),) = stats["lstm.R"].blocks
    assert sl == slice(0, 4 * H)
    np.testing.assert_allclose(h, _block_diag(_gram(lprev[0]), _gram(lprev[1])), rtol=1e-5, atol=1e-8)

    gprev, ggated = gru_ref(g_in.astype(np.float64), _w(model, "gru.W"), _w(model, "gru.R"), _w(model, "gru.B"),
                            data["h0"])  # fmt: skip
    (zr, h_zr), (hg, h_h) = stats["gru.R"].blocks
    assert (zr, hg) == (slice(0, 2 * H), slice(2 * H, 3 * H))
    np.testing.assert_allclose(h_zr, _block_diag(_gram(gprev[0]), _gram(gprev[1])), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(h_h, _block_diag(_gram(ggated[0]), _gram(ggated[1])), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("sequential", [True, False])
def test_lstm_and_gru_weights_are_calibrated_and_beat_plain(sequential):
    model = recurrent_model()
    cfg = from_dict(CFG)
    data = recurrent_inputs(48)
    res = calibrate(model, data, cfg, samples=48, sequential=sequential)
    assert {w.name for w in res.weights} == {"lstm.W", "lstm.R", "gru.W", "gru.R", "Wout"}, res.skipped
    for w in res.weights:
        assert w.method.endswith("gptq + refit") and w.error_calibrated < w.error_plain, w
    out = compress_model(model, cfg, weight_hook=res.hook)
    plain = compress_model(recurrent_model(), cfg)
    test = recurrent_inputs(64, seed=7)
    ref = make_session(recurrent_model()).run(None, test)[0]
    err_cal = np.linalg.norm(make_session(out.model).run(None, test)[0] - ref)
    err_plain = np.linalg.norm(make_session(plain.model).run(None, test)[0] - ref)
    assert err_cal < err_plain


def test_rnn_forward_with_pruning():
    """A plain RNN whose Y is the model output, 50% sparsity: OBS + GPTQ on W and R."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((1, 32, 12)) * 0.3).astype(np.float32), "rnn.W"),
        numpy_helper.from_array((rng.standard_normal((1, 32, 32)) * 0.2).astype(np.float32), "rnn.R"),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("RNN", ["xt", "rnn.W", "rnn.R"], ["y"], hidden_size=32),
    ]
    graph = helper.make_graph(
        nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, "batch", 32])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    x = rng.standard_normal((40, 5, 12)).astype(np.float32)
    cfg = from_dict({"weight": {"bits": 4, "sparsity": 0.5}, "min_elements": 100})
    res = calibrate(model, {"x": x}, cfg)
    assert {w.name: w.method for w in res.weights} == {
        "rnn.W": "obs + gptq + refit",
        "rnn.R": "obs + gptq + refit",
    }
    for w in res.weights:
        assert w.error_calibrated < w.error_plain, w
    # R's statistics: h_{t-1} = Y shifted by one step, zeros first
    y = make_session(model).run(None, {"x": x})[0][:, 0].astype(np.float64)  # [T, B, H]
    hp = np.concatenate([np.zeros((1, 40, 32)), y[:-1]]).reshape(-1, 32)
    targets, _ = find_targets(model, build_inventory(model, min_elements=100).compressible())
    cmodel, targets = prepare(model, targets)
    assert cmodel is model  # Y is already named: nothing to expose
    stats = capture(cmodel, targets, lambda: [{"x": x}])
    np.testing.assert_allclose(stats["rnn.R"].blocks[0][1], _gram(hp), rtol=1e-5, atol=1e-8)


def test_cli_calibrates_recurrent_weights_without_traceback(tmp_path, capsys):
    import json

    from onnxcompress.cli import main

    src, out, report, npz = (tmp_path / n for n in ("m.onnx", "m.c.onnx", "r.json", "calib.npz"))
    onnx.save(recurrent_model(), src)
    np.savez(npz, **recurrent_inputs(32))
    argv = ["compress", str(src), "-o", str(out), "--bits", "4", "--min-elements", "100", "--quiet",
            "--calibration-data", str(npz), "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    weights = json.loads(report.read_text())["calibration"]["weights"]
    assert {w["name"] for w in weights} == {"lstm.W", "lstm.R", "gru.W", "gru.R", "Wout"}
    assert all(w["error_calibrated"] < w["error_plain"] for w in weights)
