"""Issue 15: runtime-native choices in the search space and the ``ram`` objective (the bytes a
session keeps after constant folding, estimated by resident_bytes) next to ``size``."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

optuna = pytest.importorskip("optuna")

import onnxcompress as oc  # noqa: E402
from onnxcompress.cli import main  # noqa: E402
from onnxcompress.errors import ConfigError  # noqa: E402
from onnxcompress.resident import resident_bytes  # noqa: E402
from onnxcompress.search.bayes import Space  # noqa: E402
from onnxcompress.search.sensitivity import Point  # noqa: E402
from onnxcompress.search.settings import SearchSettings  # noqa: E402
from onnxcompress.search.space import Choice, Plan, grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "lenet_300_100.onnx"
VAL = ROOT / "models" / "digits_val.npz"
FAST = {"sparsities": (0.0, 0.7, 0.9), "bits": (3, 5), "sensitivity_samples": 128}
GATES = oc.Gates(max_accuracy_drop=1.0)


@pytest.fixture(scope="module")
def codebook_only() -> oc.search.SearchResult:
    """Today's search (codebook formats, file size) on the same budget, as the baseline."""
    return oc.search(str(MODEL), str(VAL), gates=GATES, trials=10, storage=None, **FAST)


def test_ram_objective_puts_the_big_weights_in_runtime_format_and_its_plan_reproduces(
    tmp_path, codebook_only
) -> None:
    out = tmp_path / "r.onnx"
    rc = main([
        "search", str(MODEL), "-o", str(out), "--data", str(VAL), "--max-accuracy-drop", "1", "--trials", "6",
        "--storage", "memory", "--quiet", "--sparsities", "0,0.7,0.9", "--bits", "3,5",
        "--sensitivity-samples", "128", "--formats", "codebook,runtime", "--runtime-bits", "4,8", "--objective", "ram",
    ])  # fmt: skip
    assert rc == 0
    report = json.loads((tmp_path / "r.search.json").read_text())
    assert report["passed"] and report["objective"] == "ram"
    written = onnx.load(str(out))
    fp32 = resident_bytes(onnx.load(str(MODEL)))
    # the searched bytes are the RAM estimate of the written model; the file size is reported too
    assert report["best"]["size"] == report["resident_bytes"] == resident_bytes(written)
    assert report["file_bytes"] == out.stat().st_size and report["original_resident_bytes"] == fp32
    assert report["resident_bytes"] < fp32
    assert report["resident_bytes"] < codebook_only.best_resident_bytes  # folded codebooks are dense in RAM
    assert codebook_only.best_resident_bytes == fp32
    chosen = {r["name"]: r for r in report["layers"]}
    assert chosen["fc1.weight"]["format"] == chosen["fc2.weight"]["format"] == "runtime"
    assert sum(n.op_type == "MatMulNBits" for n in written.graph.node) >= 2
    assert oc.verify(str(MODEL), str(out), str(VAL), gates=GATES, progress=False).passed
    # the plan (runtime choices included) turns into the very same bytes through `compress --config`
    plan_text = (tmp_path / "r.plan.yaml").read_text()
    assert "format: runtime" in plan_text and "RAM estimate" in plan_text
    again = tmp_path / "again.onnx"
    assert main(["compress", str(MODEL), "-o", str(again), "--config", str(tmp_path / "r.plan.yaml"), "--quiet"]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_size_objective_with_both_formats_is_no_larger_on_disk(codebook_only) -> None:
    both = oc.search(
        str(MODEL), str(VAL), gates=GATES, trials=10, storage=None, formats=("codebook", "runtime"), **FAST
    )
    assert both.passed and both.objective == "size"
    assert both.best.size == both.best_file_bytes <= codebook_only.best.size
    assert both.best_resident_bytes is not None and both.original_size == MODEL.stat().st_size
    # runtime choices were measured in stage 1 (file-size deltas) next to the codebook grid
    assert any(p.choice.format == "runtime" for p in both.sensitivity.points["fc1.weight"])


def test_runtime_choice_round_trips_and_old_dicts_read_as_codebook() -> None:
    rt = Choice.runtime(4)
    assert rt.label() == "rt b4" and rt.override() == {"format": "runtime", "bits": 4}
    assert Choice.from_dict(rt.to_dict()) == rt
    assert Choice.from_dict({"sparsity": 0.5, "bits": 3, "granularity": "tensor", "kept": False}) == Choice(0.5, 3)
    assert "format" not in Choice(0.5, 3).to_dict()  # codebook dicts (and caches) are as before
    plan = Plan({"a": rt, "b": Choice(0.7, 5), "c": Choice.keep()})
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    point = Point(rt, -100, 0.01, 0.97, 0.02)
    assert Point.from_dict(json.loads(json.dumps(point.to_dict()))) == point
    choices = grid((0.0, 0.5), (3,), formats=("codebook", "runtime"), runtime_bits=(4, 8))
    assert [c for c in choices if c.format == "runtime"] == [Choice.runtime(4), Choice.runtime(8)]
    assert all(c.format == "codebook" for c in grid((0.0, 0.5), (3,)))
    assert grid((0.0,), (3,), formats=("runtime",), runtime_bits=(2,)) == [Choice.runtime(2), Choice.keep()]


def test_the_trial_space_reproduces_runtime_plans() -> None:
    space = Space(("a", "b", "c"), formats=("codebook", "runtime"), runtime_bits=(4, 8), runtime_layers=("a", "b", "c"))
    plan = Plan({"a": Choice.runtime(8), "b": Choice(0.42, 3), "c": Choice.keep()})
    study = optuna.create_study()
    study.enqueue_trial(space.params(plan))
    seen: list[Plan] = []
    study.optimize(lambda t: (seen.append(space.suggest(t)), 0.0)[1], n_trials=1)
    assert seen == [plan]
    # a weight stage 1 could not build in runtime format never gets a runtime choice
    narrow = Space(("a",), formats=("codebook", "runtime"), runtime_bits=(4,), runtime_layers=())
    assert "a:f" not in narrow.params(Plan({"a": Choice(0.5, 3)}))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Choice(0.5, 4, "tensor", "runtime"), "sparsity 0"),
        (lambda: Choice.runtime(3), "runtime-format bits must be one of 2, 4, 8"),
        (lambda: Choice(0.0, 4, "tensor", "dense"), "format must be one of codebook, runtime"),
        (lambda: SearchSettings(objective="speed"), "--objective must be size"),  # type: ignore[arg-type]
        (lambda: SearchSettings(formats=("codebook", "int4")), "--formats takes"),
        (lambda: SearchSettings(formats=()), "--formats takes"),
        (lambda: SearchSettings(formats=("runtime",), runtime_bits=(3,)), "--runtime-bits takes bit widths among 2,4,8"),
        (lambda: SearchSettings(formats=("runtime",), runtime_bits=()), "--runtime-bits"),
    ],
)
def test_bad_formats_bits_and_objectives_are_refused(make, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--objective", "speed"], "--objective must be size"),
        (["--formats", "codebook,rt"], "--formats takes"),
        (["--formats", "runtime", "--runtime-bits", "4,6"], "--runtime-bits takes"),
    ],
)
def test_cli_refuses_bad_values_in_one_line(tmp_path, capsys, argv, message) -> None:
    rc = main([
        "search", str(MODEL), "-o", str(tmp_path / "o.onnx"), "--data", str(VAL), "--max-accuracy-drop", "1",
        "--quiet", *argv,
    ])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o.onnx").exists()


def test_calibrated_runtime_candidates_are_what_compress_writes(tmp_path) -> None:
    """One-shot calibrated candidates (the memo) give runtime choices GPTQ codes, exactly as
    ``compress --calibration-data`` does: the plan reproduces the searched bytes, which differ from
    the uncalibrated plain codes."""
    out = tmp_path / "c.onnx"
    calib = ROOT / "models" / "digits_calib.npz"
    rc = main([
        "search", str(MODEL), "-o", str(out), "--data", str(VAL), "--max-accuracy-drop", "1", "--trials", "4",
        "--storage", "memory", "--quiet", "--formats", "runtime", "--runtime-bits", "4", "--objective", "ram",
        "--sensitivity-samples", "64", "--calibration-data", str(calib),
    ])  # fmt: skip
    assert rc == 0
    plan = tmp_path / "c.plan.yaml"
    assert "format: runtime" in plan.read_text()
    again, plain = tmp_path / "again.onnx", tmp_path / "plain.onnx"
    argv = ["compress", str(MODEL), "--config", str(plan), "--quiet"]
    assert main([*argv, "-o", str(again), "--calibration-data", str(calib)]) == 0
    assert again.read_bytes() == out.read_bytes()
    assert main([*argv, "-o", str(plain)]) == 0
    assert plain.read_bytes() != out.read_bytes()  # the candidates really were calibrated


def test_search_output_keeps_the_inputs_external_data_like_compress(tmp_path, capsys) -> None:
    """An input stored with external data gives a searched model with external data (onnxruntime
    maps those weights: the point of a ram plan), byte for byte what `compress --config` writes;
    --no-external-data writes one file; an .onnxc output refuses --external-data before any work."""
    ext = tmp_path / "in.onnx"
    onnx.save(onnx.load(str(MODEL)), str(ext), save_as_external_data=True, location="in.onnx.data", size_threshold=0)
    args = ["--data", str(VAL), "--max-accuracy-drop", "1", "--trials", "3", "--storage", "memory", "--quiet",
            "--sparsities", "0", "--bits", "5", "--sensitivity-samples", "64", "--formats", "runtime",
            "--runtime-bits", "4,8", "--objective", "ram"]  # fmt: skip
    out = tmp_path / "r.onnx"
    assert main(["search", str(ext), "-o", str(out), *args]) == 0
    data = tmp_path / "r.onnx.data"
    assert data.exists() and data.stat().st_size > 10 * out.stat().st_size
    again = tmp_path / "again.onnx"
    assert main(["compress", str(ext), "-o", str(again), "--config", str(tmp_path / "r.plan.yaml"), "--quiet"]) == 0
    assert (tmp_path / "again.onnx.data").read_bytes() == data.read_bytes()
    assert _inline(again) == _inline(out)
    one = tmp_path / "one.onnx"
    assert main(["search", str(ext), "-o", str(one), "--no-external-data", *args]) == 0
    assert not (tmp_path / "one.onnx.data").exists()
    assert _inline(one) == _inline(out)
    capsys.readouterr()
    assert main(["search", str(ext), "-o", str(tmp_path / "c.onnxc"), "--external-data", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert "onnxc" in err and len(err.splitlines()) == 1 and not (tmp_path / "c.onnxc").exists()


def _inline(path: Path) -> bytes:
    """The model with every tensor inside it, serialized: equal for equal models whatever their layout."""
    m = onnx.load(str(path))
    for t in m.graph.initializer:
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return m.SerializeToString()
