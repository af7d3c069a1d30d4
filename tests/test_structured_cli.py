"""``compress --structured``, plan files with ``structured:``, and ``inspect --groups``."""

from __future__ import annotations

import json

import numpy as np
import onnx
from structured_models import residual_cnn, residual_params

from onnxcompress.cli import main
from onnxcompress.sessions import make_session


def _model(tmp_path):
    path = tmp_path / "res.onnx"
    onnx.save(residual_cnn(residual_params(c1=16, c2=16, c3=32)), str(path))
    return path


def test_compress_structured_then_codebook(tmp_path, capsys):
    src = _model(tmp_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float32))
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    rc = main(["compress", str(src), "-o", str(out), "--structured", "0.5", "--calibration-data", str(calib),
               "--report", str(report)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "MFLOPs" in text and "refit (lstsq)" in text and "latency (in process" in text  # by default
    data = json.loads(report.read_text())
    assert data["structured"]["flops_after"] < data["structured"]["flops_before"] / 2
    assert data["structured"]["speedup"] > 0
    m = onnx.load(str(out))
    assert any(n.domain == "ai.onnxcompress" for n in m.graph.node)  # then quantized
    s = make_session(str(out))
    y = s.run(None, {"x": np.zeros((1, 3, 16, 16), np.float32)})[0]
    assert y.shape == (1, 4)


def test_plan_file_structured_section(tmp_path):
    src = _model(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"structured": {"ratio": 0.5, "names": {"a": 0}}}))
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert (
        main(
            ["compress", str(src), "-o", str(out), "--config", str(plan), "--report", str(report), "--quiet"]
        )
        == 0
    )
    groups = {g["name"]: g for g in json.loads(report.read_text())["structured"]["groups"]}
    assert groups["a"]["channels_after"] == 16 and groups["stem"]["channels_after"] == 8


def test_bad_ratio_is_one_line_and_no_output(tmp_path, capsys):
    src = _model(tmp_path)
    out = tmp_path / "out.onnx"
    assert main(["compress", str(src), "-o", str(out), "--structured", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fraction" in err[0]
    assert not out.exists()


def test_inspect_groups(tmp_path, capsys):
    src = _model(tmp_path)
    assert main(["inspect", str(src), "--groups"]) == 0
    text = capsys.readouterr().out
    assert "stem, b" in text and "left alone: the channel axis reaches graph output" in text
