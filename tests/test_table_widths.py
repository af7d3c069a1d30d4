"""Terminal tables fit 100 columns on the shipped models, and their columns are explained."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxcompress.cli import main

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = ("lenet_300_100", "lenet5", "resnet_digits", "vad_rnn", "mobilenet_se")
WIDTH = 100


def _wide(text: str) -> list[str]:
    # prose lines (notes, warnings) may wrap in the terminal; tables and totals may not
    return [line for line in text.splitlines() if len(line) > WIDTH and not line.startswith("note:")]


@pytest.mark.parametrize("model", SHIPPED)
def test_compress_and_container_tables_fit(tmp_path, capsys, model) -> None:
    out = tmp_path / "o.onnxc"
    assert main(["compress", str(MODELS / f"{model}.onnx"), "-o", str(out), "--preset", "small"]) == 0
    text = capsys.readouterr().out
    assert "stream" in text and "rel err" in text  # both tables were printed
    assert _wide(text) == []
    assert "rel err: ||W - W'|| / ||W||" in text


def test_verify_table_with_labels_fits(tmp_path, capsys) -> None:
    cand = tmp_path / "c.onnx"
    assert main(["compress", str(MODELS / "resnet_digits.onnx"), "-o", str(cand), "-q"]) == 0
    capsys.readouterr()
    argv = [
        "verify",
        str(MODELS / "resnet_digits.onnx"),
        str(cand),
        "--data",
        str(MODELS / "digits_test.npz"),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "cand top-1" in text and "cos mean" in text
    assert _wide(text) == []


def test_calibration_table_fits_and_explains_its_columns(tmp_path, capsys) -> None:
    argv = ["compress", str(MODELS / "lenet5.onnx"), "-o", str(tmp_path / "c.onnx"), "--preset", "small",
            "--calibration-data", str(MODELS / "digits_test_aug.npz"), "--calibration-samples", "32"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "plain / calib: the layer's output error" in text
    assert _wide(text) == []


def test_generated_weight_names_show_their_layer(tmp_path, capsys) -> None:
    """An exporter's ``onnx::MatMul_N`` name is shown with its consumer node in the compress table."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "onnx::MatMul_1160"
    )
    node = helper.make_node("MatMul", ["x", "onnx::MatMul_1160"], ["y"], name="/encoder/layer.0/query/MatMul")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [w],
    )  # fmt: skip
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    assert main(["compress", str(src), "-o", str(tmp_path / "o.onnx")]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("onnx::")]
    assert row.startswith("onnx::MatMul_1160 (/enc") and "MatMul)  MatMul" in row


def test_verify_without_a_gate_says_nothing_was_checked(tmp_path, capsys) -> None:
    """A 10%-accurate candidate passes a gateless verify (exit 0): the output must say so."""
    cand = tmp_path / "c.onnx"
    assert (
        main(["compress", str(MODELS / "lenet5.onnx"), "-o", str(cand), "-q", "--preset", "deep-compression"])
        == 0
    )
    capsys.readouterr()
    argv = ["verify", str(MODELS / "lenet5.onnx"), str(cand), "--data", str(MODELS / "digits_test.npz")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "no gate set: nothing was checked" in captured.out.splitlines()[-1]
    assert "onnxcompress: warning: no gate set: nothing was checked" in captured.err
    assert main([*argv, "-q"]) == 0
    assert capsys.readouterr().out.startswith("verify: no gate set: nothing was checked")


def test_quiet_compress_prints_the_totals(tmp_path, capsys) -> None:
    out = tmp_path / "o.onnx"
    assert main(["compress", str(MODELS / "lenet5.onnx"), "-o", str(out), "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == [
        "weights",
        "weight bytes",
        "file",
        "time",
        "wrote " + str(out),
    ]
