"""Structured pruning as a dimension of ``search`` (issue 14 with issue 12): channel ratios are
tried, each pruned model is checked alone against the original and searched per weight, sizes are
against the original file, and the plan's ``structured:`` section makes ``compress`` reproduce the
searched bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("optuna")

import onnxcompress as oc  # noqa: E402
from onnxcompress.cli import main  # noqa: E402
from onnxcompress.errors import ConfigError  # noqa: E402
from onnxcompress.search import StructuredSearch  # noqa: E402
from onnxcompress.search.candidates import Candidates  # noqa: E402
from onnxcompress.search.metrics import Metric  # noqa: E402
from onnxcompress.search.space import Plan, base_config  # noqa: E402
from onnxcompress.structured import prune_model  # noqa: E402
from onnxcompress.structured.config import StructuredConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "lenet_300_100.onnx"
VAL = ROOT / "models" / "digits_val.npz"
CALIB = ROOT / "models" / "digits_calib.npz"
FAST_CLI = ["--sparsities", "0,0.7", "--bits", "3,5", "--sensitivity-samples", "128", "--uniform-evaluations", "2"]


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def test_search_picks_a_structurally_pruned_model_and_compress_reproduces_it(tmp_path) -> None:
    out = tmp_path / "s.onnxc"
    rc = main([
        "search", str(MODEL), "-o", str(out), "--data", str(VAL), "--max-accuracy-drop", "1", "--trials", "6",
        "--storage", "memory", "--quiet", *FAST_CLI, "--calibration-data", str(CALIB),
        "--structured-ratios", "0,0.5",
    ])  # fmt: skip
    assert rc == 0
    report = json.loads((tmp_path / "s.search.json").read_text())
    st = report["structured"]
    assert [r["ratio"] for r in st["ratios"]] == [0.0, 0.5]
    assert all(r["passed"] for r in st["ratios"])
    # half the hidden units gone: the smallest passing file is the pruned one, sized against the original
    assert st["chosen_ratio"] == 0.5
    assert st["config"] == {"ratio": 0.5, "criterion": "obs", "allocation": "global"}
    assert report["original_bytes"] == MODEL.stat().st_size
    assert report["best"]["size"] == out.stat().st_size
    by_ratio = {r["ratio"]: r for r in st["ratios"]}
    assert by_ratio[0.5]["best_bytes"] == out.stat().st_size < by_ratio[0.0]["best_bytes"]
    assert by_ratio[0.5]["params_after"] < by_ratio[0.5]["params_before"]
    plan = (tmp_path / "s.plan.yaml").read_text()
    assert "structured:" in plan and "ratio: 0.5" in plan and "allocation: global" in plan
    # the plan reproduces the searched bytes: compress prunes the same channels on the same
    # calibration samples, then applies the per-weight settings
    again = tmp_path / "again.onnxc"
    argv = ["compress", str(MODEL), "-o", str(again), "--config", str(tmp_path / "s.plan.yaml"), "--quiet"]
    assert main([*argv, "--calibration-data", str(CALIB)]) == 0
    assert again.read_bytes() == out.read_bytes()
    decoded = tmp_path / "d.onnx"
    assert main(["decode", str(out), "-o", str(decoded)]) == 0
    shapes, before = _shapes(onnx.load(str(decoded))), _shapes(onnx.load(str(MODEL)))
    assert shapes["fc1.weight"][0] < before["fc1.weight"][0]  # fewer hidden units in the file
    # the gates were measured against the original model, and they hold for the written file
    res = oc.verify(str(MODEL), str(decoded), str(VAL), gates=oc.Gates(max_accuracy_drop=1.0), progress=False)
    assert res.passed
    assert "structured ratio 0.5" in (tmp_path / "s.search.md").read_text()


def test_a_ratio_that_fails_alone_is_skipped_without_a_search() -> None:
    res = oc.search(
        str(MODEL), str(VAL), gates=oc.Gates(max_accuracy_drop=0.5), metric="accuracy", trials=3,
        storage=None, sparsities=(0.0, 0.7), bits=(4,), sensitivity_samples=64, uniform_evaluations=0,
        calibration_data=str(CALIB), structured=StructuredSearch((0.0, 0.97)),
    )  # fmt: skip
    assert res.structured is not None
    rows = {r["ratio"]: r for r in res.structured["ratios"]}
    assert rows[0.97]["skipped"] and rows[0.97]["alone"]["passed"] is False
    assert "trials" not in rows[0.97]  # no search ran for it
    assert res.structured["chosen_ratio"] == 0.0 and res.pruned_model is None
    assert res.passed and "structured:" not in (res.plan_yaml or "")


def test_when_every_ratio_fails_alone_the_last_is_searched_for_a_closest_plan() -> None:
    res = oc.search(
        str(MODEL), str(VAL), gates=oc.Gates(max_accuracy_drop=0.5), metric="accuracy", trials=3,
        storage=None, sparsities=(0.7,), bits=(4,), sensitivity_samples=64, uniform_evaluations=0,
        calibration_data=str(CALIB), structured=StructuredSearch((0.95, 0.97)),
    )  # fmt: skip
    assert res.structured is not None
    first, last = res.structured["ratios"]
    assert first["skipped"] and "trials" not in first
    assert last["alone"]["passed"] is False and last["trials"] == 3 and not last["passed"]
    assert not res.passed and res.closest is not None and res.structured["chosen_ratio"] == 0.97
    assert "no tried plan passed" in res.summary()


def test_candidates_measure_a_pruned_model_against_the_original() -> None:
    original = onnx.load(str(MODEL))
    pruned, _ = prune_model(original, StructuredConfig(ratio=0.8), None)  # l1, no refit: real damage
    kw = {"base": base_config(), "metric": Metric("agreement"), "gates": oc.Gates(min_agreement=0.999),
          "container": True}  # fmt: skip
    plain = Candidates(pruned, str(VAL), **kw)
    against = Candidates(pruned, str(VAL), **kw, reference=str(MODEL))
    assert against.original_size == MODEL.stat().st_size > plain.original_size
    assert plain.base_evaluation.passed and plain.reference_metric == 1.0  # itself is its reference
    assert not against.base_evaluation.passed and against.base_evaluation.metric < 0.999
    assert not against.measure(against.build(Plan())).evaluation.passed
    # stage 1's proxy still measures a weight's own damage: none for the uncompressed model
    assert against.output_error(against.own_outputs) == 0.0
    assert not np.allclose(against.reference_outputs[0], against.own_outputs[0])
    assert against.fingerprint() != plain.fingerprint()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ratios": ()}, "at least one ratio"),
        ({"ratios": (0.5, 1.0)}, "[0, 1)"),
        ({"ratios": ("0.5",)}, "[0, 1)"),
        ({"ratios": 0.5}, "list of fractions"),
        ({"ratios": (0.5,), "config": StructuredConfig(target_flops=0.5)}, "target_flops"),
    ],
)
def test_structured_search_settings_are_checked(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        StructuredSearch(**kwargs)


def test_plan_section_names_what_differs_from_the_defaults() -> None:
    spec = StructuredSearch((0.6, 0.0, 0.6), StructuredConfig(allocation="global", criterion="obs", latency="model"))
    assert spec.ratios == (0.0, 0.6) and spec.config.latency == "none" and spec.active
    assert spec.plan_section(0.6) == {"ratio": 0.6, "criterion": "obs", "allocation": "global"}
    assert not StructuredSearch((0.0,)).active


def test_cli_rejects_a_bad_ratio_in_one_line(tmp_path, capsys) -> None:
    rc = main([
        "search", str(MODEL), "-o", str(tmp_path / "o.onnx"), "--data", str(VAL), "--max-accuracy-drop", "1",
        "--structured-ratios", "0,1.5", "--quiet",
    ])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[0, 1)" in err[0]
