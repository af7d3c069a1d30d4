"""Accuracy that would fail silently: aggressive plans warn when no verification data is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxcompress import preset
from onnxcompress.cli import main
from onnxcompress.compressor import compress_model
from onnxcompress.model_io import open_model

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = ("lenet_300_100", "lenet5", "resnet_digits", "vad_rnn", "mobilenet_se")


@pytest.mark.parametrize("name", ["small", "clipq", "deep-compression"])
def test_aggressive_presets_warn_on_resnet_without_verify_data(tmp_path, capsys, name) -> None:
    out = tmp_path / "o.onnx"
    assert main(["compress", str(MODELS / "resnet_digits.onnx"), "-o", str(out), "--preset", name, "-q"]) == 0
    err = capsys.readouterr().err
    assert "onnxcompress: warning:" in err and "accuracy may drop" in err
    assert "--verify-data" in err
    assert ("retrains" in err) == (name == "deep-compression")


@pytest.mark.parametrize("name", ["safe", "balanced"])
@pytest.mark.parametrize("model", SHIPPED)
def test_mild_presets_do_not_warn(model, name) -> None:
    report = compress_model(open_model(MODELS / f"{model}.onnx"), preset(name), keep_decoded=False).report
    assert report.warnings == []
    assert report.to_dict()["warnings"] == []


def test_verify_data_replaces_the_prediction(tmp_path, capsys) -> None:
    """With --verify-data the damage is measured, so the prediction is not printed."""
    out = tmp_path / "o.onnx"
    argv = ["compress", str(MODELS / "lenet5.onnx"), "-o", str(out), "--preset", "clipq", "-q",
            "--verify-data", str(MODELS / "digits_test.npz")]  # fmt: skip
    main(argv)
    assert "accuracy may drop" not in capsys.readouterr().err
