"""plan_check: plan entries that match nothing (or change nothing) and pruning: global under
per-op-type / per-name sparsity overrides are reported, not silent."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from onnxcompress.config import from_dict, preset
from onnxcompress.inventory import Inventory, build_inventory
from onnxcompress.plan_check import (
    NO_EFFECT,
    UNMATCHED,
    check_plan,
    global_pruning_conflicts,
    unmatched_patterns,
)

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def lenet5() -> Inventory:
    return build_inventory(onnx.load(str(MODELS / "lenet5.onnx"), load_external_data=False))


@pytest.fixture(scope="module")
def mobilenet() -> Inventory:
    return build_inventory(onnx.load(str(MODELS / "mobilenet_se.onnx")))


def test_every_preset_is_clean_on_the_shipped_models(lenet5: Inventory, mobilenet: Inventory) -> None:
    for name in ("safe", "balanced", "small", "clipq", "deep-compression"):
        for inv in (lenet5, mobilenet):
            assert check_plan(preset(name), inv, base=preset(name)) == [], name
    # without the base, balanced's Gather override matches no operator of a CNN: it is reported
    issues = check_plan(preset("balanced"), mobilenet)
    assert [(i.kind, i.section, i.key) for i in issues] == [(UNMATCHED, "op_types", "Gather")]
    # a user entry on top of a preset is reported, the preset's own are not
    cfg = from_dict({"op_types": {"Cnov": {"bits": 4}}}, preset("balanced"))
    assert [i.key for i in check_plan(cfg, mobilenet, base=preset("balanced"))] == ["Cnov"]


def test_typo_in_op_type_is_reported_with_a_suggestion(lenet5: Inventory) -> None:
    cfg = from_dict({"op_types": {"Cnov": {"bits": 4}, "Conv": {"bits": 6}}})
    (issue,) = unmatched_patterns(cfg, lenet5)
    assert (issue.kind, issue.section, issue.key) == (UNMATCHED, "op_types", "Cnov")
    assert "'Conv'" in issue.message and "did you mean" in issue.message


def test_names_and_exclude_that_match_nothing(lenet5: Inventory) -> None:
    names = [w.name for w in lenet5.weights]
    cfg = from_dict(
        {"names": {"fc1.weigth": {"bits": 4}, "conv*": {"bits": 6}}, "exclude": ["*.pos_embed", "fc2.*"]}
    )
    issues = unmatched_patterns(cfg, lenet5)
    assert {(i.section, i.key) for i in issues} == {("names", "fc1.weigth"), ("exclude", "*.pos_embed")}
    assert all(i.kind == UNMATCHED for i in issues)
    if any(n.startswith("fc1.") for n in names):
        assert "did you mean" in next(i for i in issues if i.key == "fc1.weigth").message


def test_override_of_tensors_left_alone_changes_nothing(mobilenet: Inventory) -> None:
    cfg = from_dict({"names": {"*.bn.*": {"bits": 4}}, "op_types": {"BatchNormalization": {"bits": 4}}})
    issues = unmatched_patterns(cfg, mobilenet)
    assert {(i.kind, i.section) for i in issues} == {(NO_EFFECT, "names"), (NO_EFFECT, "op_types")}
    bn = next(i for i in issues if i.section == "names")
    assert "normalization parameter" in bn.message and len(bn.weights) > 50


def test_global_pruning_honours_sparsity_overrides(lenet5: Inventory) -> None:
    # the README's plan.yaml: a global threshold, with Conv asking for less pruning. The Conv
    # weights leave the global pool and are pruned by magnitude at their own 0.5: no conflict left
    cfg = from_dict(
        {
            "weight": {"bits": 5, "sparsity": 0.8, "pruning": "global"},
            "op_types": {"Conv": {"bits": 8, "sparsity": 0.5}},
        }
    )
    assert global_pruning_conflicts(cfg, lenet5) == []
    for w in lenet5.compressible():
        got = cfg.resolve(w.name, w.op_types)
        assert got is not None
        want = ("magnitude", 0.5) if "Conv" in w.op_types else ("global", 0.8)
        assert (got.pruning, got.sparsity) == want
    # a per-name override too
    convs = sorted(w.name for w in lenet5.compressible() if "Conv" in w.op_types)
    cfg2 = from_dict({"preset": "small", "names": {convs[0]: {"sparsity": 0.3}}})
    assert global_pruning_conflicts(cfg2, lenet5) == []
    got = cfg2.resolve(convs[0], ("Conv",))
    assert got is not None and (got.pruning, got.sparsity) == ("magnitude", 0.3)


def test_no_conflict_when_overrides_leave_global_pruning(lenet5: Inventory) -> None:
    assert global_pruning_conflicts(preset("small"), lenet5) == []
    # an override that turns global pruning off for its weights is honoured as it stands
    cfg = from_dict({"preset": "small", "op_types": {"Conv": {"pruning": "magnitude", "sparsity": 0.5}}})
    assert global_pruning_conflicts(cfg, lenet5) == []
    cfg = from_dict({"preset": "small", "op_types": {"Conv": {"sparsity": 0.0}}})  # not pruned at all
    assert global_pruning_conflicts(cfg, lenet5) == []


def test_compress_warns_on_a_plan_entry_that_matches_nothing(tmp_path, capsys) -> None:
    from onnxcompress.cli import main

    plan = tmp_path / "plan.yaml"
    plan.write_text("op_types:\n  Cnov: {bits: 4}\n")
    out = tmp_path / "o.onnx"
    rc = main(["compress", str(Path(__file__).resolve().parents[1] / "models" / "lenet5.onnx"), "-o", str(out), "--config", str(plan), "-q"])
    err = capsys.readouterr().err
    assert rc == 0 and out.exists()
    assert "onnxcompress: warning:" in err and "Cnov" in err


def test_compress_prunes_overridden_weights_at_their_own_sparsity() -> None:
    """The README's plan on LeNet-5: each Conv weight ends at its own 50%, the fc weights share
    the global threshold (80% of their pooled weights pruned, unevenly across them)."""
    from onnxcompress.compressor import compress_model

    model = onnx.load(str(Path(__file__).resolve().parents[1] / "models" / "lenet5.onnx"))
    cfg = from_dict(
        {
            "weight": {"bits": 5, "sparsity": 0.8, "pruning": "global"},
            "op_types": {"Conv": {"bits": 8, "sparsity": 0.5}},
        }
    )
    report = compress_model(model, cfg, keep_decoded=False).report
    convs = [w for w in report.weights if "Conv" in w.op_types]
    fcs = [w for w in report.weights if "Conv" not in w.op_types]
    assert convs and fcs
    assert all(abs(w.sparsity - 0.5) < 0.01 and "magnitude" in w.setting for w in convs)
    pooled = sum(w.sparsity * w.params for w in fcs) / sum(w.params for w in fcs)
    assert abs(pooled - 0.8) < 0.01 and all("global" in w.setting for w in fcs)
