"""``inspect`` as a dry run: the plan flags of compress, the resolved setting per weight, warnings
for plan entries that match nothing, exporter names shown with their layer; nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.cli import main

MODELS = Path(__file__).resolve().parent.parent / "models"
LENET5 = MODELS / "lenet5.onnx"


def _rows(out: str) -> dict[str, str]:
    """tensor name -> the rest of its table row."""
    rows = {}
    for line in out.splitlines()[2:]:
        if not line.strip():
            break
        name, _, rest = line.partition(" ")
        rows[name] = rest.strip()
    return rows


def test_inspect_shows_the_resolved_setting_per_weight(tmp_path: Path, capsys) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["inspect", str(LENET5)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["conv1.weight"].endswith("kmeans 8b/tensor")  # the default preset, safe
    assert rows["conv1.bias"].endswith("skip: bias")

    plan = tmp_path / "plan.yaml"
    plan.write_text("names:\n  fc1.weight: {bits: 3}\n  conv2.weight: null\n")
    argv = ["inspect", str(LENET5), "--preset", "small", "--config", str(plan), "--exclude", "conv1.*"]
    assert main([*argv, "--granularity", "channel", "--json", str(tmp_path / "i.json")]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["fc1.weight"].endswith("kmeans global 75% 3b/channel")
    assert rows["fc2.weight"].endswith("kmeans global 75% 5b/channel")
    assert rows["conv2.weight"].endswith("skip: excluded by the plan")
    assert rows["conv1.weight"].endswith("skip: excluded by the plan")
    tensors = {t["name"]: t for t in json.loads((tmp_path / "i.json").read_text())["tensors"]}
    assert tensors["fc1.weight"]["setting"] == "kmeans global 75% 3b/channel"
    assert tensors["fc1.weight"]["layers"]
    # a dry run: only the JSON asked for was written
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "plan.yaml", "i.json"])


def test_inspect_min_elements_and_compressible_filter(capsys) -> None:
    assert main(["inspect", str(LENET5), "--min-elements", "1000", "--compressible"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert "conv1.weight" not in rows and "conv1.bias" not in rows  # 500 elements < 1000
    assert rows["conv2.weight"].endswith("kmeans 8b/tensor")


def test_inspect_warns_about_plan_entries_that_match_nothing(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"op_types": {"Cnov": {"bits": 4}}, "names": {"fc9.*": {"bits": 4}}}))
    assert main(["inspect", str(LENET5), "--config", str(plan), "--exclude", "*.pos_embed", "-q"]) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("onnxcompress: warning:")]
    assert len(warnings) == 3, err
    assert "'Cnov'" in err and "did you mean 'Conv'" in err and "'fc9.*'" in err and "*.pos_embed" in err
    # the preset's own entries are not the user's doing: no warning for balanced's Gather on a CNN
    assert main(["inspect", str(LENET5), "--preset", "balanced", "-q"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_inspect_shows_global_pruning_overrides_honoured(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("weight: {bits: 5, sparsity: 0.8, pruning: global}\nop_types:\n  Conv: {sparsity: 0.5}\n")
    assert main(["inspect", str(LENET5), "--config", str(plan)]) == 0
    captured = capsys.readouterr()
    assert "pruning: global" not in captured.err  # nothing ignored: no warning
    rows = [line for line in captured.out.splitlines() if line.startswith(("conv", "fc")) and "weight" in line]
    assert rows and all(("magnitude 50%" if line.startswith("conv") else "global 80%") in line for line in rows)


def test_exporter_names_are_shown_with_their_layer(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "onnx::MatMul_1160")
    node = helper.make_node(
        "MatMul", ["x", "onnx::MatMul_1160"], ["y"], name="/encoder/layer.0/attention/MatMul"
    )
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], initializer=[w],
    )  # fmt: skip
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "onnx::MatMul_1160 (/encoder/layer.0/attention/MatMul)" in out
    assert max(len(line) for line in out.splitlines()) <= 100


@pytest.mark.parametrize("model", ["mobilenet_se.onnx", "vad_rnn.onnx"])
def test_inspect_table_fits_100_columns(model: str, capsys) -> None:
    assert main(["inspect", str(MODELS / model), "--preset", "small"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines() if not line.startswith("dry run")) <= 100


def test_inspect_bad_plan_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(LENET5), "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxcompress: error:") and "\n" not in err and "missing.yaml" in err
    assert main(["inspect", str(LENET5), "--bits", "12"]) == 2
    assert "bits" in capsys.readouterr().err


def test_inspect_takes_compress_runtime_flags(capsys) -> None:
    """inspect and compress share one declaration of the plan flags: the runtime-format flags
    (``--format``, ``--block-size``, ``--accuracy-level``) were missing from inspect's dry run."""
    argv = ["inspect", str(LENET5), "--format", "runtime", "--bits", "8", "--block-size", "64"]
    assert main([*argv, "--accuracy-level", "1", "--compressible"]) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "runtime 8b/block64/acc1" in out
    assert main([*argv, "--accuracy-level", "fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "accuracy_level" in err[0]


def test_compress_and_inspect_declare_the_same_plan_flags() -> None:
    import argparse

    from onnxcompress.commands import compress, inspect

    def flags(add) -> set[str]:
        p = argparse.ArgumentParser()
        add(p)
        return {s for a in p._actions for s in a.option_strings}

    missing = flags(compress.add_arguments) - flags(inspect.add_arguments)
    # what only compress has: the output, its writing, calibration, structured pruning, verification
    assert all(not f.startswith(("--format", "--block-size", "--activations", "--accuracy-level", "--bits"))
               for f in missing), missing  # fmt: skip
