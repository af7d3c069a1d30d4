"""The compress and inspect commands: outputs, reports, and bad input handled as one clear error
line with a non-zero exit, no output file and the input untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_factory import zoo_inputs, zoo_model

from onnxcompress.cli import main
from onnxcompress.sessions import make_session


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    p = tmp_path / "zoo.onnx"
    onnx.save(zoo_model(17), p)
    return p


def _run_failing(capsys, argv: list[str], out: Path, *inputs: Path) -> str:
    before = {p: _digest(p) for p in inputs if p.exists()}
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("onnxcompress: error:") and "\n" not in err and "Traceback" not in err, err
    assert not out.exists()
    assert not list(out.parent.glob(".onnxcompress-*")), "temporary files left behind"
    for p, d in before.items():
        assert _digest(p) == d, f"{p} was modified"
    return err


def test_compress_writes_model_and_report(model_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    assert (
        main(["compress", str(model_path), "-o", str(out), "--bits", "6", "--report", str(report), "--quiet"])
        == 0
    )
    text = capsys.readouterr().out
    assert "ratio" in text and out.exists()
    data = json.loads(report.read_text())
    assert data["file_bytes_after"] == out.stat().st_size
    assert {w["name"] for w in data["weights"]} >= {"conv.w", "fc1.w", "fc2.w", "emb"}
    assert any(s["reason"].startswith("bias") for s in data["skipped"])
    x = zoo_inputs()
    ref = make_session(str(model_path)).run(None, x)[0]
    got = make_session(str(out)).run(None, x)[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.1


def test_yaml_plan_with_overrides_and_skip(model_path, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "weight: {bits: 4, sparsity: 0.5}\nop_types:\n  Conv: {bits: 8, sparsity: 0.0}\nnames:\n  'head.*': null\n"
    )
    out = tmp_path / "out.onnx"
    report = tmp_path / "r.json"
    assert (
        main(["compress", str(model_path), "-o", str(out), "--config", str(plan), "--report", str(report)])
        == 0
    )
    rows = {w["name"]: w for w in json.loads(report.read_text())["weights"]}
    assert rows["conv.w"]["bits"] == 8 and rows["conv.w"]["sparsity"] < 0.1
    assert rows["fc1.w"]["bits"] == 4 and rows["fc1.w"]["sparsity"] >= 0.5
    assert not any(n.startswith("head.") for n in rows)


def test_refuses_to_overwrite_and_never_touches_input(model_path, tmp_path, capsys):
    err = _run_failing(
        capsys, ["compress", str(model_path), "-o", str(model_path)], tmp_path / "none.onnx", model_path
    )
    assert "input" in err
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"keep me")
    assert main(["compress", str(model_path), "-o", str(existing)]) != 0
    assert existing.read_bytes() == b"keep me"
    assert "--overwrite" in capsys.readouterr().err
    assert main(["compress", str(model_path), "-o", str(existing), "--overwrite", "--quiet"]) == 0


def test_stale_external_data_file_is_replaced_not_appended(model_path, tmp_path):
    out = tmp_path / "o.onnx"
    (tmp_path / "o.onnx.data").write_bytes(b"stale" * 1000)
    assert main(["compress", str(model_path), "-o", str(out), "--quiet"]) == 0
    assert not (tmp_path / "o.onnx.data").exists()
    make_session(str(out))


def test_not_onnx(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a model\n" * 10)
    err = _run_failing(
        capsys, ["compress", str(bad), "-o", str(tmp_path / "o.onnx")], tmp_path / "o.onnx", bad
    )
    assert "not an ONNX model" in err


def test_truncated(model_path, tmp_path, capsys):
    cut = tmp_path / "cut.onnx"
    data = model_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _run_failing(capsys, ["compress", str(cut), "-o", str(tmp_path / "o.onnx")], tmp_path / "o.onnx", cut)


def test_missing_file(tmp_path, capsys):
    _run_failing(capsys, ["compress", str(tmp_path / "nope.onnx")], tmp_path / "nope.cmp.onnx")


LENET = Path(__file__).resolve().parent.parent / "models" / "lenet_300_100.onnx"


def _external(tmp_path: Path) -> Path:
    # (not the zoo model: onnxruntime 1.32 cannot load external data for a model whose If gets
    # constant-folded, whatever produced it)
    d = tmp_path / "ext"
    d.mkdir()
    p = d / "m.onnx"
    onnx.save(onnx.load(LENET), p, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    return p


def test_external_data_round_trip(tmp_path, capsys):
    p = _external(tmp_path)
    out = tmp_path / "ext" / "c.onnx"
    assert main(["compress", str(p), "-o", str(out), "--quiet"]) == 0
    x = {"input": np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)}
    ref = make_session(str(p)).run(None, x)[0]
    got = make_session(str(out)).run(None, x)[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05


def test_output_keeps_the_inputs_layout_unless_told(tmp_path, capsys):
    """An input with external data gives an output with external data (what onnxruntime maps
    instead of copying), a one-file input one file; --external-data / --no-external-data decide
    otherwise, and the closing line names the data file."""
    p = _external(tmp_path)
    x = {"input": np.load(DIGITS)["input"][:4]}
    out = tmp_path / "ext" / "c.onnx"
    assert main(["compress", str(p), "-o", str(out)]) == 0
    assert (tmp_path / "ext" / "c.onnx.data").exists()
    assert f"wrote {out} and {out}.data (external data)" in capsys.readouterr().out
    want = make_session(str(out)).run(None, x)[0]
    assert main(["compress", str(p), "-o", str(out), "--overwrite", "--no-external-data", "-q"]) == 0
    assert not (tmp_path / "ext" / "c.onnx.data").exists()
    assert np.array_equal(make_session(str(out)).run(None, x)[0], want)
    one = tmp_path / "one.onnx"
    assert main(["compress", str(LENET), "-o", str(one), "-q"]) == 0
    assert not (tmp_path / "one.onnx.data").exists()
    assert capsys.readouterr().out.strip().endswith(f"wrote {one}")
    container = tmp_path / "ext" / "c.onnxc"
    assert main(["compress", str(p), "-o", str(container), "-q"]) == 0
    assert sorted(f.name for f in container.parent.iterdir()) == ["c.onnx", "c.onnxc", "m.onnx", "m.onnx.data"]


def test_missing_external_data(tmp_path, capsys):
    p = _external(tmp_path)
    (p.parent / "m.onnx.data").unlink()
    err = _run_failing(capsys, ["compress", str(p), "-o", str(tmp_path / "o.onnx")], tmp_path / "o.onnx", p)
    assert "missing" in err


def test_external_data_outside_folder(tmp_path, capsys):
    p = _external(tmp_path)
    model = onnx.load(p, load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../m.onnx.data"
    (tmp_path / "m.onnx.data").write_bytes((p.parent / "m.onnx.data").read_bytes())
    evil = p.parent / "evil.onnx"
    onnx.save(model, evil)
    err = _run_failing(
        capsys, ["compress", str(evil), "-o", str(tmp_path / "o.onnx")], tmp_path / "o.onnx", evil
    )
    assert "outside" in err


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--bits", "9"], "bits"),
        (["--sparsity", "1.5"], "sparsity"),
        (["--nm", "4:2"], "n must be"),
        (["--nm", "x"], "--nm"),
        (["--group-size", "0"], "group_size"),
    ],
)
def test_bad_config_values(model_path, tmp_path, capsys, flags, needle):
    out = tmp_path / "o.onnx"
    err = _run_failing(capsys, ["compress", str(model_path), "-o", str(out), *flags], out, model_path)
    assert needle in err


@pytest.mark.parametrize(
    "text,needle",
    [
        ("weight: {bitz: 4}", "unknown setting"),
        ("weight: {bits: 4", "not valid YAML"),
        ("colour: red", "unknown top-level"),
        ("op_types: {Conv: {method: magic}}", "method"),
    ],
)
def test_bad_config_file(model_path, tmp_path, capsys, text, needle):
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    out = tmp_path / "o.onnx"
    err = _run_failing(
        capsys, ["compress", str(model_path), "-o", str(out), "--config", str(plan)], out, model_path
    )
    assert needle in err


def test_no_compressible_weight(model_path, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    err = _run_failing(
        capsys, ["compress", str(model_path), "-o", str(out), "--min-elements", "100000000"], out, model_path
    )
    assert "no compressible weight" in err


def test_inspect_lists_roles_and_reasons(model_path, capsys):
    assert main(["inspect", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert (
        "conv.w" in out
        and "skip: bias" in out
        and "skip: normalization" in out
        and "If" not in out.split()[0]
    )
    assert "head.then.w" in out


def test_calibration_from_the_command_line(tmp_path, capsys):
    data = LENET.parent / "digits_test_aug.npz"
    plan = tmp_path / "plan.yaml"
    plan.write_text("weight: {bits: 4, sparsity: 0.8}\ncalibration: {samples: 64}\n")
    out, report = tmp_path / "c.onnx", tmp_path / "r.json"
    argv = ["compress", str(LENET), "-o", str(out), "--config", str(plan), "--calibration-data", str(data)]
    assert main([*argv, "--report", str(report), "--quiet"]) == 0
    cal = json.loads(report.read_text())["calibration"]
    rows = cal["weights"] if isinstance(cal, dict) and "weights" in cal else cal
    assert rows, cal
    for row in rows:
        assert row["error_calibrated"] <= row["error_plain"] + 1e-9, row
    bad = tmp_path / "bad.yaml"
    bad.write_text("calibration: {samples: -3}\n")
    out2 = tmp_path / "c2.onnx"
    code = main(
        ["compress", str(LENET), "-o", str(out2), "--config", str(bad), "--calibration-data", str(data)]
    )
    assert code != 0 and not out2.exists()
    assert "samples" in capsys.readouterr().err


def test_large_model_path_writes_external_data_and_checks_the_file(tmp_path, monkeypatch):
    """Above the protobuf limit the output goes to external data and is checked from disk; the
    limit is lowered here so that a small model takes that path."""
    import onnxcompress.model_io as model_io
    import onnxcompress.passes.check as check

    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 10_000)
    monkeypatch.setattr(check, "PROTOBUF_LIMIT", 10_000)
    out = tmp_path / "big.onnx"
    assert main(["compress", str(LENET), "-o", str(out), "--bits", "8", "--quiet"]) == 0
    assert (tmp_path / "big.onnx.data").exists()
    x = {"input": np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)}
    ref = make_session(str(LENET)).run(None, x)[0]
    got = make_session(str(out)).run(None, x)[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02


def _embedding_model(rows: int = 200, cols: int = 64) -> onnx.ModelProto:
    """A short-row embedding table and a MatMul whose output channels are long (2048 inputs)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((rows, cols)).astype(np.float32), "emb")
    proj = numpy_helper.from_array(rng.standard_normal((2048, 16)).astype(np.float32), "proj")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("MatMul", ["x", "proj"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2048]),
        ],
        [
            helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", cols]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16]),
        ],
        [table, proj],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_note_when_per_channel_codebooks_dominate_a_weight(tmp_path, capsys):
    """Per-row codebooks of a 64-wide embedding cost twice its 4-bit codes: the report says so."""
    src = tmp_path / "emb.onnx"
    onnx.save(_embedding_model(), src)
    rc = main(["compress", str(src), "-o", str(tmp_path / "o.onnx"), "--bits", "4", "--granularity", "channel",
               "--report", str(tmp_path / "r.json")])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert len(notes) == 1 and notes[0].startswith("emb:") and "granularity: tensor" in notes[0]
    assert f"note: {notes[0]}" in out
    rc = main(
        [
            "compress",
            str(src),
            "-o",
            str(tmp_path / "t.onnx"),
            "--bits",
            "4",
            "--report",
            str(tmp_path / "t.json"),
        ]
    )
    assert rc == 0 and json.loads((tmp_path / "t.json").read_text())["notes"] == []


@pytest.mark.parametrize("name", ["safe", "deep-compression", "balanced"])
def test_metadata_stamp_holds_only_overrides_and_rebuilds_the_plan(name):
    import onnxcompress as oc
    from onnxcompress.compressor import compress_model
    from onnxcompress.config import from_dict

    cfg = oc.preset(name)
    out = compress_model(zoo_model(), cfg).model
    (stamp,) = [json.loads(p.value) for p in out.metadata_props if p.key == "onnxcompress"]
    assert stamp["version"] == oc.__version__
    # defaults are left out: only what the preset sets beyond WeightConfig's defaults is stamped
    # (balanced sets fp16 codebooks, so it names codebook_dtype; the others do not)
    weight = stamp["config"].get("weight", {})
    assert ("codebook_dtype" in weight) == (cfg.weight.codebook_dtype != "float32")
    assert from_dict(stamp["config"]) == cfg


def test_compress_parses_the_model_once(model_path, tmp_path, monkeypatch):
    """The plan check and the compression read the same opened model: one parse of the file."""
    import onnxcompress.model_io as model_io

    opened: list[str] = []
    real = model_io.open_model

    def counting(path, *a, **kw):
        opened.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(model_io, "open_model", counting)
    out = tmp_path / "once.onnx"
    assert main(["compress", str(model_path), "-o", str(out), "--quiet"]) == 0
    assert opened == [str(model_path)]


# ------------------------------------------------------------------ --external-data

DIGITS = LENET.parent / "digits_test.npz"


@pytest.mark.parametrize("fmt", ["runtime", "codebook"])
def test_external_data_output_runs_like_the_one_file_output(tmp_path, fmt):
    """``--external-data`` puts the initializers in OUTPUT.data; onnxruntime, ``verify``,
    ``--verify-data`` and ``bench`` open it and it computes exactly what the one-file output does."""
    one, ext = tmp_path / "one.onnx", tmp_path / "ext.onnx"
    flags = ["--format", fmt, "--accuracy-level", "1"] if fmt == "runtime" else []
    assert main(["compress", str(LENET), "-o", str(one), *flags, "-q"]) == 0
    assert main(["compress", str(LENET), "-o", str(ext), *flags, "-q", "--external-data",
                 "--verify-data", str(DIGITS), "--max-accuracy-drop", "1"]) == 0  # fmt: skip
    data = tmp_path / "ext.onnx.data"
    assert data.stat().st_size > 0.9 * one.stat().st_size and ext.stat().st_size < 0.05 * one.stat().st_size
    assert not (tmp_path / "one.onnx.data").exists()
    model = onnx.load(ext, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    x = {"input": np.load(DIGITS)["input"][:16]}
    assert np.array_equal(make_session(str(ext)).run(None, x)[0], make_session(str(one)).run(None, x)[0])
    assert main(["verify", str(LENET), str(ext), "--data", str(DIGITS), "--max-accuracy-drop", "1", "-q"]) == 0
    assert main(["bench", str(ext), "--runs", "1", "--warmup", "0", "--rounds", "1", "-q"]) == 0
    # the container inlines the data: unpack gives the one-file model back
    assert main(["pack", str(ext), "-o", str(tmp_path / "e.onnxc"), "-q"]) == 0
    assert main(["unpack", str(tmp_path / "e.onnxc"), "-o", str(tmp_path / "u.onnx"), "-q"]) == 0
    assert np.array_equal(make_session(str(tmp_path / "u.onnx")).run(None, x)[0], make_session(str(one)).run(None, x)[0])


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_external_data_file_has_the_model_files_permissions(tmp_path, umask):
    """onnx creates the data file 0600 whatever the umask; it gets the model file's bits, so a model
    others may read is loadable by them."""
    import os

    old = os.umask(umask)
    try:
        assert main(["compress", str(LENET), "-o", str(tmp_path / "m.onnx"), "--external-data", "-q"]) == 0
    finally:
        os.umask(old)
    mode = (tmp_path / "m.onnx").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask
    assert (tmp_path / "m.onnx.data").stat().st_mode & 0o777 == mode


def test_external_data_refused_for_a_container_output(tmp_path, capsys):
    out = tmp_path / "m.onnxc"
    err = _run_failing(capsys, ["compress", str(LENET), "-o", str(out), "--external-data"], out, LENET)
    assert ".onnxc container holds the whole model" in err and "--external-data" in err
    assert list(tmp_path.iterdir()) == []
    from onnxcompress.compressor import compress_file
    from onnxcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="no external data"):
        compress_file(LENET, out, external_data=True)
    assert list(tmp_path.iterdir()) == []


def test_rewriting_without_external_data_leaves_no_stale_data_file(tmp_path):
    """The same output written again as one file (--overwrite, no --external-data): the old .data
    goes, and the model does not depend on it; and back again."""
    out = tmp_path / "m.onnx"
    x = {"input": np.load(DIGITS)["input"][:4]}
    assert main(["compress", str(LENET), "-o", str(out), "--external-data", "-q"]) == 0
    want = make_session(str(out)).run(None, x)[0]
    assert main(["compress", str(LENET), "-o", str(out), "--overwrite", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert np.array_equal(make_session(str(out)).run(None, x)[0], want)
    assert main(["compress", str(LENET), "-o", str(out), "--overwrite", "--external-data", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert np.array_equal(make_session(str(out)).run(None, x)[0], want)


def test_compress_file_external_data_python_api(tmp_path):
    import onnxcompress as oc

    res = oc.compress(LENET, tmp_path / "m.onnx", oc.preset("safe"), external_data=True)
    assert (tmp_path / "m.onnx.data").exists()
    assert res.report.file_bytes_after == (tmp_path / "m.onnx").stat().st_size + (tmp_path / "m.onnx.data").stat().st_size
