"""Calibration data for every input layout (issue 16): a scalar input given as a 0-d array (a
constant, fed to every batch), a recurrent ``state`` whose batch is axis 1 (read from the graph),
folders of files with different batch sizes, and a model whose batch dims are all fixed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_factory import state_inputs, state_model
from onnx import TensorProto, helper

from onnxcompress.calibration import calibrate
from onnxcompress.calibration.capture import probe_model
from onnxcompress.config import from_dict
from onnxcompress.evaluation.data import (
    DirectorySource,
    TensorSpec,
    assign_batch_axes,
    model_input_specs,
    spread_samples,
)
from onnxcompress.sessions import make_session

CFG = {"weight": {"bits": 4}, "min_elements": 100}


def _reference_hessians(model, data) -> dict[str, np.ndarray]:
    """H of each MatMul weight's input, from one full-batch run (no batching involved)."""
    s = make_session(probe_model(model, ["x", "state", "h3"]))
    x, st, h3 = (a.astype(np.float64) for a in s.run(None, data))
    flat = {"W1": x, "Ws": st.reshape(-1, 16), "W3": h3}
    return {k: v.T @ v / len(v) for k, v in flat.items()}


def _check(res, model, data) -> None:
    assert {w.name for w in res.weights} == {"W1", "Ws", "W3"}, res.skipped
    for w in res.weights:
        assert w.method.endswith("gptq + refit") and w.error_calibrated < w.error_plain, w


def test_assign_batch_axes_reads_the_shared_symbol():
    specs = assign_batch_axes([
        TensorSpec("x", np.dtype(np.float32), ("batch", 512)),
        TensorSpec("sr", np.dtype(np.int64), ()),
        TensorSpec("state", np.dtype(np.float32), (2, "batch", 128)),
    ])  # fmt: skip
    assert [s.batch_axis for s in specs] == [0, 0, 1]
    assert [s.batch_axis for s in model_input_specs(state_model())] == [0, 0, 1]
    fixed = assign_batch_axes([
        TensorSpec("x", np.dtype(np.float32), (1, 512)), TensorSpec("state", np.dtype(np.float32), (2, 1, 128)),
    ])  # fmt: skip
    assert [s.batch_axis for s in fixed] == [0, 1] and {s.batch_fixed for s in fixed} == {1}
    tokens = assign_batch_axes([
        TensorSpec("ids", np.dtype(np.int64), ("batch", "seq")), TensorSpec("mask", np.dtype(np.int64), ("batch", "seq")),
    ])  # fmt: skip
    assert [s.batch_axis for s in tokens] == [0, 0]
    mixed = assign_batch_axes([
        TensorSpec("state", np.dtype(np.float32), (2, "batch", 128)),  # listed first: still axis 1
        TensorSpec("ids", np.dtype(np.int64), ("batch", "seq")),
        TensorSpec("pos", np.dtype(np.int64), ("seq",)),  # shares "seq", not the batch: axis 0
    ])  # fmt: skip
    assert [s.batch_axis for s in mixed] == [1, 0, 0]


def test_spread_slices_each_input_on_its_batch_axis():
    specs = model_input_specs(state_model())
    data = state_inputs(100)
    out = spread_samples(data, specs, 10)
    idx = np.linspace(0, 99, 10).round().astype(np.int64)
    np.testing.assert_array_equal(out["x"], data["x"][idx])
    np.testing.assert_array_equal(out["state"], data["state"][:, idx])
    assert out["sr"] is data["sr"]


@pytest.mark.parametrize("sequential", [True, False])
def test_scalar_input_and_state_batched_on_axis_1(sequential):
    model = state_model()
    data = state_inputs(40)
    res = calibrate(model, data, from_dict(CFG), samples=40, sequential=sequential)
    assert res.samples == 40
    _check(res, model, data)
    if not sequential:  # statistics of the original model: compare with one full-batch run
        from onnxcompress.calibration.capture import capture, find_targets
        from onnxcompress.calibration.pipeline import open_calibration_data
        from onnxcompress.inventory import build_inventory

        targets, _ = find_targets(model, build_inventory(model, min_elements=100).compressible())
        batches, _ = open_calibration_data(model, data, samples=40, batch_size=16)
        assert [b["state"].shape for b in batches()] == [(2, 16, 16), (2, 16, 16), (2, 8, 16)]
        stats = capture(model, targets, batches)
        for name, h in _reference_hessians(model, data).items():
            np.testing.assert_allclose(stats[name].blocks[0][1], h, rtol=1e-5, atol=1e-7)


def test_folder_of_files_with_different_batch_sizes(tmp_path):
    model = state_model()
    data = state_inputs(20)
    folder = tmp_path / "calib"
    folder.mkdir()
    start = 0
    for i, n in enumerate([3, 5, 12]):
        part = {
            "x": data["x"][start : start + n],
            "sr": data["sr"],
            "state": data["state"][:, start : start + n],
        }
        np.savez(folder / f"{i}.npz", **part)
        start += n
    src = DirectorySource(folder, model_input_specs(model))
    assert len(src) == 20
    joined = [b.inputs["state"] for b in src.batches(8)]
    assert [j.shape[1] for j in joined] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate(joined, axis=1), data["state"])
    res = calibrate(model, folder, from_dict(CFG), samples=20)
    _check(res, model, data)


def test_fixed_batch_dims_that_disagree_on_axis_0():
    model = state_model(batch=1)
    data = state_inputs(10)
    res = calibrate(model, data, from_dict(CFG), samples=10)
    assert res.samples == 10
    _check(res, model, data)


def test_cli_compress_with_scalar_and_state(tmp_path, capsys):
    import onnx

    from onnxcompress.cli import main

    src, out, report, npz = (tmp_path / n for n in ("m.onnx", "m.c.onnx", "r.json", "calib.npz"))
    onnx.save(state_model(), src)
    np.savez(npz, **state_inputs(24))
    argv = ["compress", str(src), "-o", str(out), "--bits", "4", "--min-elements", "100", "--quiet",
            "--calibration-data", str(npz), "--report", str(report)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    cal = json.loads(report.read_text())["calibration"]
    assert {w["name"] for w in cal["weights"]} == {"W1", "Ws", "W3"}
    # a per-sample array for a scalar input is a clear error, not a traceback
    bad = state_inputs(24)
    bad["sr"] = np.full(24, 16000, np.int64)
    np.savez(npz, **bad)
    assert main([*argv[:3], str(tmp_path / "o2.onnx"), *argv[4:]]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxcompress: error:") and "Traceback" not in err and "sr" in err, err


def test_scalar_only_spec_rank_unknown_is_still_batched_on_axis_0():
    """ORT reports unknown-rank inputs as [] too: only a 0-d *array* is a constant."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    from onnxcompress.evaluation.data import open_data

    src = open_data({"a": np.ones((5, 3), np.float32)}, model_input_specs(model))
    assert [b.inputs["a"].shape for b in src.batches(2)] == [(2, 3), (2, 3), (1, 3)]
    src = open_data({"a": np.array(2.0, np.float32)}, model_input_specs(model))
    assert len(src) == 1 and [b.inputs["a"].shape for b in src.batches(2)] == [()]


def test_fixed_batch_with_a_partial_last_batch_runs_padded():
    """A model fixed to batch 4 cannot run a batch of 2: the last batch is padded (it used to be cut
    to its valid rows, which onnxruntime refused with a traceback)."""
    model = state_model(batch=4)
    res = calibrate(model, state_inputs(10), from_dict(CFG), samples=10)
    assert {w.name for w in res.weights} == {"W1", "Ws", "W3"}
    assert {w.name: w.rows_seen for w in res.weights}["W1"] == 12  # 3 batches of 4, the last padded
