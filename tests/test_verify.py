"""verify(): gates, data sources, errors, the CLI exit codes and assert_models_close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.errors import ConfigError, DataError, InvalidModelError
from onnxcompress.evaluation.data import (
    DirectorySource,
    SyntheticSource,
    TensorSpec,
    parse_int_range,
    parse_shape_overrides,
)
from onnxcompress.evaluation.verify import Gates, verify
from onnxcompress.testing import assert_models_close

RNG = np.random.default_rng(0)
W = RNG.standard_normal((20, 10)).astype(np.float32)
W_NOISY = W + 0.05 * RNG.standard_normal(W.shape).astype(np.float32)
W_BAD = RNG.standard_normal(W.shape).astype(np.float32)


def classifier(w: np.ndarray, batch: int | str = "N", in_name: str = "input") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", [in_name, "W"], ["logits"])],
        "clf",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, w.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, w.shape[1]])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def token_model() -> onnx.ModelProto:
    """ids [N, seq] int64 and mask [N, seq] -> emb lookup summed over seq: [N, 4]."""
    emb = numpy_helper.from_array(np.arange(400, dtype=np.float32).reshape(100, 4), "emb")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "ids"], ["g"]),
            helper.make_node("ReduceSum", ["g", "axes"], ["s"], keepdims=0),
            helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["mf", "axes"], ["count"], keepdims=1),
            helper.make_node("Mul", ["s", "count"], ["out"]),
        ],
        "tok",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", "seq"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
        [emb, numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("verify")
    out = {}
    for name, w in (("ref", W), ("noisy", W_NOISY), ("bad", W_BAD)):
        out[name] = d / f"{name}.onnx"
        onnx.save(classifier(w), out[name])
    x = RNG.standard_normal((300, 20)).astype(np.float32)
    labels = (x @ W).argmax(1)
    out["npz"] = d / "data.npz"
    np.savez(out["npz"], input=x, labels=labels)
    out["npz_y"] = d / "data_y.npz"
    np.savez(out["npz_y"], pixels=x, y=labels)
    out["dir"] = d / "dir"
    out["dir"].mkdir()
    np.savez(out["dir"] / "a.npz", input=x[:100], labels=labels[:100])
    np.savez(out["dir"] / "b.npz", input=x[100:250], labels=labels[100:250])
    for i in range(250, 300):  # single samples (rank one less than the input's)
        np.savez(out["dir"] / f"c{i:03d}.npz", input=x[i], labels=labels[i])
    out["npydir"] = d / "npydir"
    out["npydir"].mkdir()
    np.save(out["npydir"] / "a.npy", x[:7])
    np.save(out["npydir"] / "b.npy", x[7])
    out["x"] = x  # type: ignore[assignment]
    out["labels"] = labels  # type: ignore[assignment]
    return out


# ----------------------------------------------------------------------------- gates


def test_identical_models_pass_every_gate(files):
    gates = Gates(max_accuracy_drop=0.0, min_agreement=1.0, min_cosine=0.9999, max_rel_error=1e-6)
    r = verify(files["ref"], files["ref"], files["npz"], gates=gates, progress=False)
    assert r.passed and len(r.gates) == 4 and r.samples == 300
    assert all(g.margin >= 0 for g in r.gates)
    m = r.output("logits")
    assert m.ref_top1_accuracy == 1.0 and m.top1_drop_pts == 0.0 and m.rel_l2_error == 0.0


@pytest.mark.parametrize(
    "gate, passing, failing",
    [
        ("max_accuracy_drop", 50.0, 0.5),
        ("min_agreement", 0.05, 0.99),
        ("min_cosine", 0.5, 0.999),
        ("max_rel_error", 1.0, 0.01),
    ],
)
def test_each_gate_passes_and_fails(files, gate, passing, failing):
    ok = verify(files["ref"], files["noisy"], files["npz"], gates=Gates(**{gate: passing}), progress=False)
    assert ok.passed, ok.summary()
    bad = verify(files["ref"], files["bad"], files["npz"], gates=Gates(**{gate: failing}), progress=False)
    assert not bad.passed
    (fail,) = bad.failures
    assert fail.gate == gate and fail.margin < 0
    assert "--" + gate.replace("_", "-") in bad.summary() and "off by" in bad.summary()


def test_margin_values(files):
    r = verify(
        files["ref"], files["noisy"], files["npz"], gates=Gates(max_accuracy_drop=10.0), progress=False
    )
    m = r.output("logits")
    (g,) = r.gates
    assert g.value == pytest.approx(m.top1_drop_pts) and g.margin == pytest.approx(10.0 - m.top1_drop_pts)


def test_gate_without_applicable_output_is_usage_error(files):
    with pytest.raises(DataError, match="needs labels"):
        verify(files["ref"], files["noisy"], gates=Gates(max_accuracy_drop=1), progress=False)
    scalar = classifier(np.ones((20, 1), np.float32))  # [N, 1]: not class-like
    with pytest.raises(DataError, match="min_agreement cannot be checked"):
        verify(scalar, scalar, gates=Gates(min_agreement=0.5), progress=False)


# ----------------------------------------------------------------------------- data sources


def test_npz_with_other_keys_and_named_labels(files):
    r = verify(files["ref"], files["noisy"], files["npz_y"], labels_key="y", progress=False)
    assert r.labels_key == "y" and r.output("logits").ref_top1_accuracy == 1.0
    with pytest.raises(DataError, match="no labels array 'nope'"):
        verify(files["ref"], files["noisy"], files["npz_y"], labels_key="nope", progress=False)
    with pytest.raises(DataError, match="no array for model input"):  # 2 candidate arrays for 1 input
        verify(files["ref"], files["noisy"], files["npz_y"], progress=False)


def test_directory_source_matches_npz(files):
    a = verify(files["ref"], files["noisy"], files["npz"], batch_size=64, progress=False)
    b = verify(files["ref"], files["noisy"], files["dir"], batch_size=64, progress=False)
    assert b.samples == 300 and b.labels_key == "labels"
    for f in ("mean_cosine", "min_cosine", "rel_l2_error", "top1_drop_pts", "top1_agreement"):
        assert getattr(b.output("logits"), f) == pytest.approx(getattr(a.output("logits"), f)), f
    c = verify(files["ref"], files["noisy"], files["npydir"], batch_size=3, progress=False)
    assert c.samples == 8


def test_directory_streams_batches(files):
    spec = TensorSpec("input", np.dtype(np.float32), ("N", 20))
    src = DirectorySource(files["dir"], [spec])
    sizes = [b.valid for b in src.batches(64)]
    assert len(src) == 300 and sizes == [64, 64, 64, 64, 44]
    joined = np.concatenate([b.inputs["input"] for b in src.batches(64)])
    np.testing.assert_array_equal(joined, files["x"])


def test_in_memory_arrays_and_samples_cap(files):
    data = {"input": files["x"], "labels": files["labels"]}
    r = verify(files["ref"], files["noisy"], data, samples=50, batch_size=16, progress=False)
    assert r.samples == 50 and r.batch_size == 16


def test_synthetic_inputs(files):
    r = verify(files["ref"], files["noisy"], progress=False)
    assert r.samples == 64 and r.labels_key is None and r.data.startswith("synthetic")
    tok = token_model()
    with pytest.raises(DataError, match="--shape ids="):
        verify(tok, tok, progress=False)
    r = verify(tok, tok, shapes={"ids": (4, 8)}, int_range={"": (0, 100)}, samples=10, progress=False)
    assert r.batch_size == 4 and r.samples == 10 and r.output("out").rel_l2_error == 0.0
    with pytest.raises(InvalidModelError, match="failed to run"):  # ids 0..30521 overflow a 100-row table
        verify(tok, tok, shapes={"seq": (8,)}, int_range=(0, 30522), progress=False)


def test_synthetic_int_range_and_shapes():
    specs = [
        TensorSpec("ids", np.dtype(np.int64), ("N", "seq")),
        TensorSpec("mask", np.dtype(np.int64), ("N", "seq")),
    ]
    src = SyntheticSource(
        specs, samples=5, shapes={"ids": (2, 16)}, int_range={"ids": (5, 7), "mask": (1, 2)}
    )
    ((chunk, _),) = list(src.chunks())
    assert chunk["ids"].shape == (5, 16) and chunk["mask"].shape == (5, 16)  # mask follows the shared 'seq'
    assert chunk["ids"].min() >= 5 and chunk["ids"].max() <= 6 and (chunk["mask"] == 1).all()
    assert src.batch_size_for(None, 32) == 2
    assert parse_shape_overrides(["input=1x3x224x224"]) == {"input": (1, 3, 224, 224)}
    assert parse_int_range("0:30522") == {"": (0, 30522)}
    assert parse_int_range(["ids=0:5"]) == {"ids": (0, 5)}
    for bad in (["input=1xa"], ["input"], ["x=0x3"]):
        with pytest.raises(DataError, match="bad --shape"):
            parse_shape_overrides(bad)
    with pytest.raises(DataError, match="bad --int-range"):
        parse_int_range("5:1")


def test_fixed_batch_dim_pads_last_batch(files, tmp_path):
    fixed_ref = classifier(W, batch=4)
    fixed_cand = classifier(W_NOISY, batch=4)
    r = verify(
        fixed_ref, fixed_cand, {"input": files["x"][:10], "labels": files["labels"][:10]}, progress=False
    )
    assert r.batch_size == 4 and r.samples == 10
    with pytest.raises(DataError, match="fixed to 4"):
        verify(fixed_ref, fixed_cand, files["npz"], batch_size=8, progress=False)


def test_data_mismatch_errors(files, tmp_path):
    cases = {
        "wrong_name.npz": (
            {"a": np.ones((3, 20), np.float32), "b": np.ones((3, 20), np.float32)},
            "no array",
        ),
        "wrong_shape.npz": ({"input": np.ones((3, 21), np.float32)}, "axis 1 must be 20"),
        "wrong_rank.npz": ({"input": np.ones((3, 20, 1), np.float32)}, "rank 2"),
        "wrong_dtype.npz": ({"input": np.ones((3, 20), np.uint8)}, "expects float32"),
        "wrong_count.npz": ({"input": np.ones((3, 20), np.float32), "labels": np.zeros(4, int)}, "disagree"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError, match=message):
            verify(files["ref"], files["noisy"], tmp_path / name, progress=False)
    with pytest.raises(DataError, match="no such file"):
        verify(files["ref"], files["noisy"], tmp_path / "missing.npz", progress=False)
    float64 = tmp_path / "f64.npz"
    np.savez(float64, input=files["x"].astype(np.float64))  # floats convert within kind
    assert verify(files["ref"], files["ref"], float64, progress=False).samples == 300


def test_model_mismatch_errors(files):
    other = classifier(W, in_name="pixels")
    with pytest.raises(InvalidModelError, match="candidate has no input 'input'"):
        verify(files["ref"], other, progress=False)
    wider = classifier(np.ones((20, 11), np.float32))
    with pytest.raises(InvalidModelError, match="differs"):
        verify(files["ref"], wider, progress=False)


def test_class_outputs_override(files):
    with pytest.raises(DataError, match="unknown output"):
        verify(files["ref"], files["noisy"], class_outputs=["nope"], progress=False)


# ----------------------------------------------------------------------------- testing helper


def test_assert_models_close(files):
    res = assert_models_close(files["ref"], files["noisy"], files["npz"], max_accuracy_drop=50)
    assert res.passed
    with pytest.raises(AssertionError, match="--min-cosine FAILED"):
        assert_models_close(files["ref"], files["bad"], files["npz"])


# ----------------------------------------------------------------------------- CLI


def _cli(*argv: str) -> int:
    from onnxcompress.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code or 0)


def test_cli_exit_codes(files, tmp_path, capsys):
    ref, noisy, bad, npz = files["ref"], files["noisy"], files["bad"], files["npz"]
    assert _cli("verify", ref, noisy, "--data", npz, "--max-accuracy-drop", "50", "--quiet") == 0
    assert "PASS" in capsys.readouterr().out
    report = tmp_path / "r.json"
    assert _cli("verify", ref, bad, "--data", npz, "--max-accuracy-drop", "0.5", "--json", report) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "--max-accuracy-drop" in out and "off by" in out
    assert report.exists()
    # usage / input errors: one line on stderr, exit 2
    for argv in (
        ("verify", ref, tmp_path / "missing.onnx"),
        ("verify", ref, noisy, "--max-accuracy-drop", "1"),  # synthetic data has no labels
        ("verify", ref, noisy, "--data", tmp_path / "nothing.npz"),
        ("verify", ref, noisy, "--shape", "input=1xq"),
        ("verify", ref, noisy, "--providers", "warp"),
        ("verify", ref, noisy, "--min-cosine", "2"),
        ("verify", ref, noisy, "--batch-size", "0"),
    ):
        assert _cli(*argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err and "Traceback" not in err


def test_lenet5_if_present(tmp_path):
    root = Path(__file__).resolve().parents[1] / "models"
    model, data = root / "lenet5.onnx", root / "digits_test.npz"
    if not (model.exists() and data.exists()):
        pytest.skip("models/lenet5.onnx or models/digits_test.npz not present")
    r = verify(model, model, data, gates=Gates(max_accuracy_drop=0.0, min_cosine=0.9999), progress=False)
    assert r.passed and r.labels_key == "labels" and r.samples > 0
    (out,) = [o for o in r.outputs if o.class_like]
    assert out.ref_top1_accuracy > 0.9


@pytest.mark.parametrize("path", ["lenet5.onnx", "resnet_digits.onnx"])
def test_model_input_specs_match_the_session(path):
    from onnxcompress.evaluation.data import input_specs, model_input_specs
    from onnxcompress.sessions import make_session

    model = onnx.load(str(Path(__file__).resolve().parents[1] / "models" / path))
    assert model_input_specs(model) == input_specs(make_session(model))


def test_model_input_specs_symbolic_integer_and_initializer_inputs():
    from onnxcompress.evaluation.data import input_specs, model_input_specs
    from onnxcompress.sessions import make_session

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["W", "ids"], ["e"]), helper.make_node("Add", ["e", "bias"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT16, [1, 3]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3]),  # an initializer, not fed
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    graph.node[1].input[1] = "bias16"
    graph.node.append(helper.make_node("Cast", ["bias"], ["bias16"], to=TensorProto.FLOAT))
    graph.node.insert(0, graph.node.pop())
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    specs = model_input_specs(model)
    assert [(s.name, s.dtype, s.shape, s.type_name) for s in specs] == [
        ("ids", np.dtype(np.int64), ("batch", "seq"), "tensor(int64)"),
        ("bias", np.dtype(np.float16), (1, 3), "tensor(float16)"),
    ]
    assert specs == input_specs(make_session(model))


def test_host_decode_gives_the_same_verdict_and_metrics(tmp_path):
    """verify --decode host (numpy-rebuilt weights) reports exactly what the stock session gives,
    for a path and for an in-memory ModelProto, which it leaves untouched."""
    from onnxcompress.compressor import compress_model
    from onnxcompress.config import preset

    root = Path(__file__).resolve().parents[1] / "models"
    original = onnx.load(str(root / "lenet5.onnx"))
    compressed = compress_model(onnx.load(str(root / "lenet5.onnx")), preset("small")).model
    path = tmp_path / "c.onnx"
    onnx.save(compressed, path)
    before = compressed.SerializeToString()
    data = root / "digits_test.npz"
    gates = Gates(max_accuracy_drop=1.0)
    stock = verify(original, path, data, gates=gates, progress=False)
    for candidate in (path, compressed):
        host = verify(original, candidate, data, gates=gates, progress=False, decode="host")
        assert host.passed == stock.passed
        assert host.to_dict()["outputs"] == stock.to_dict()["outputs"]
    assert compressed.SerializeToString() == before
    with pytest.raises(ConfigError, match="decode mode"):
        verify(original, path, data, progress=False, decode="cpu")
