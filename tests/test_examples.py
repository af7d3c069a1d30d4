"""Run every example under examples/ as its README says, then check what it wrote (as onnx-graphsurgeon does).

Each example runs in a scratch copy laid out like the repository (``examples/NN_topic/`` beside a
copy of ``models/``), from its own folder, block after block (rules in tests/doc_blocks.py). A
command that fails, a gate that fails (exit 1) or an output that is missing or does not load fails
the test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from doc_blocks import ROOT, blocks, make_workspace, run_block, yaml_target

EXAMPLES = ROOT / "examples"

# what each example must leave behind; .onnx files must also load in a stock onnxruntime session
OUTPUTS = {
    "01_compress": ["lenet5.safe.onnx", "lenet5.small.onnx", "small.json"],
    "02_verify_in_ci": ["lenet5.5bit.onnx", "lenet5.pruned.onnx", "verify.json", "verify.xml", "verify.md"],
    "03_load": ["lenet5.cmp.onnx", "lenet5.onnxc", "decoded-cache"],
    "04_plan_file": ["lenet5.plan.onnx", "report.json"],
}


def _example_dirs() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and p.name[:2].isdigit())


def test_every_example_is_listed() -> None:
    index = (EXAMPLES / "README.md").read_text()
    names = _example_dirs()
    assert names == sorted(OUTPUTS), "add the new example's outputs to OUTPUTS"
    assert [int(n[:2]) for n in names] == list(range(1, len(names) + 1)), "examples are numbered 01, 02, ..."
    for name in names:
        assert f"({name}/README.md)" in index, f"examples/README.md does not link {name}"


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_example_runs(name: str, tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path)
    here = workspace / "examples" / name
    shutil.copytree(EXAMPLES / name, here)
    readme = EXAMPLES / name / "README.md"
    runnable = [b for b in blocks(readme) if b.tag in ("bash", "python")]
    assert runnable, f"{readme} has no bash or python block to run"
    for block in blocks(readme):
        if block.tag == "yaml":  # a file the example ships must be shown exactly as it is
            shipped = EXAMPLES / name / yaml_target(block)
            if shipped.exists():
                assert block.text == shipped.read_text(), f"{block.where} differs from {shipped.name}"
        run_block(block, workspace, cwd=here)

    for rel in OUTPUTS[name]:
        out = here / rel
        assert out.exists(), f"{name} did not write {rel}"
        if out.is_dir():
            assert any(out.iterdir()), f"{name}: {rel} is empty"
        elif out.suffix == ".onnx":
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            assert [i.name for i in sess.get_inputs()] == ["input"]
        elif out.suffix == ".json":
            data = json.loads(out.read_text())
            if "passed" in data:
                assert data["passed"] is True, f"{name}: {rel} records a failed gate"
