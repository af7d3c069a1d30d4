"""One rule for combining plan sources (preset, then --config, then flags), documented once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from onnxcompress.cli import main
from onnxcompress.commands.compress import PLAN_ORDER

ROOT = Path(__file__).resolve().parent.parent


def _words(text: str) -> str:
    return " ".join(re.sub(r"[`]", "", text).split())


def test_readme_and_help_state_the_same_rule(capsys) -> None:
    assert _words(PLAN_ORDER) in _words((ROOT / "README.md").read_text(encoding="utf-8"))
    for command in ("compress", "inspect"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert _words(PLAN_ORDER) in _words(capsys.readouterr().out)


def test_flags_override_the_plan_file_and_the_plan_refines_them(tmp_path, capsys) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("preset: small\nweight: {bits: 5, sparsity: 0.6}\nop_types:\n  Conv: {bits: 8}\n")
    model = ROOT / "models" / "lenet5.onnx"
    assert main(["inspect", str(model), "--config", str(plan), "--bits", "3", "--sparsity", "0.4"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if ".weight" in line}
    assert "global 40% 3b" in rows["fc1.weight"]  # the flags beat the plan's weight: section
    assert "global 40% 8b" in rows["conv1.weight"]  # the plan's op_types entry still refines them
