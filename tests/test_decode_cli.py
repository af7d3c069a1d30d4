"""``onnxcompress decode``: a compressed model back to a plain ONNX model any runtime loads, whose
outputs equal the compressed model's bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from model_factory import zoo_inputs, zoo_model

import onnxcompress as oc
from onnxcompress.cli import main
from onnxcompress.ops import DOMAIN

MODELS = Path(__file__).resolve().parent.parent / "models"


def _stock(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_plain(path: Path) -> None:
    model = onnx.load(str(path))
    assert not any(n.domain == DOMAIN for n in model.graph.node)
    assert not model.functions and all(i.domain != DOMAIN for i in model.opset_import)


def _run_both(compressed: Path, dense: Path, feeds: dict[str, np.ndarray]) -> None:
    want_host = oc.load(compressed).run(None, feeds)
    got = _stock(dense).run(None, feeds)
    for a, b in zip(want_host, got, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    if compressed.suffix == ".onnx":  # a stock session folding the decode functions itself
        for a, b in zip(_stock(compressed).run(None, feeds), got, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("preset", ["safe", "small"])
def test_decode_of_compressed_mobilenet_equals_the_compressed_model(tmp_path: Path, preset: str) -> None:
    src = MODELS / "mobilenet_se.onnx"
    cmp = tmp_path / "m.onnx"
    oc.compress(src, cmp, oc.preset(preset))
    dense = tmp_path / "m.dense.onnx"
    assert main(["decode", str(cmp), "-o", str(dense), "-q"]) == 0
    _assert_plain(dense)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    _run_both(cmp, dense, {"input": x})
    # the dense model is the original's graph with other weights: same initializer names and shapes
    orig = {t.name: tuple(t.dims) for t in onnx.load(str(src)).graph.initializer}
    assert {t.name: tuple(t.dims) for t in onnx.load(str(dense)).graph.initializer} == orig


def test_decode_of_a_container_with_weights_inside_if_branches(tmp_path: Path) -> None:
    packed = tmp_path / "v.onnxc"
    oc.compress(MODELS / "vad_rnn.onnx", packed, oc.preset("small"))
    cmp = tmp_path / "v.onnx"
    assert main(["unpack", str(packed), "-o", str(cmp), "-q"]) == 0
    dense = tmp_path / "v.dense.onnx"
    assert main(["decode", str(packed), "-o", str(dense), "-q"]) == 0  # straight from the container
    _assert_plain(dense)
    rng = np.random.default_rng(3)
    for sr in (16000, 8000):
        feeds = {
            "input": (rng.standard_normal((2, 512)) * 0.1).astype(np.float32),
            "state": (rng.standard_normal((2, 2, 64)) * 0.1).astype(np.float32),
            "sr": np.array(sr, dtype=np.int64),
        }
        _run_both(cmp, dense, feeds)
        _run_both(packed, dense, feeds)


def test_decode_with_external_data(tmp_path: Path) -> None:
    src = tmp_path / "zoo.onnx"
    onnx.save(zoo_model(), src)
    cmp = tmp_path / "zoo.cmp.onnx"
    oc.compress(src, cmp, oc.CompressionConfig(min_elements=64))
    assert main(["decode", str(cmp), "--external-data", "-q"]) == 0  # default output name
    dense = tmp_path / "zoo.dense.onnx"
    assert (tmp_path / "zoo.dense.onnx.data").stat().st_size > 0
    _assert_plain(dense)
    _run_both(cmp, dense, zoo_inputs())


def test_decode_of_a_plain_model_writes_it_unchanged(tmp_path: Path, capsys) -> None:
    src = MODELS / "lenet5.onnx"
    out = tmp_path / "l.onnx"
    assert main(["decode", str(src), "-o", str(out)]) == 0
    assert "no compressed weights" in capsys.readouterr().out
    assert onnx.load(str(out)) == onnx.load(str(src))


def test_decode_refuses_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    out = tmp_path / "o.onnx"
    assert main(["decode", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxcompress: error:") and "\n" not in err and "bad.onnx" in err
    assert not out.exists()
    out.write_bytes(b"x")
    assert main(["decode", str(MODELS / "lenet5.onnx"), "-o", str(out)]) == 2  # no --overwrite
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"x"
