"""Reports: terminal table, JSON (valid even with inf/NaN), Markdown, JUnit XML that parses."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from onnxcompress.evaluation.metrics import compare_outputs
from onnxcompress.evaluation.reports import render_text, to_json, to_junit_xml, to_markdown, write_reports
from onnxcompress.evaluation.verify import Gates, VerifyResult, check_gates


def _result(gates: Gates, *, nan: bool = False) -> VerifyResult:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 5))
    cand = ref + 0.5 * rng.standard_normal((40, 5))
    if nan:
        cand[0, 0] = np.nan
    labels = ref.argmax(1)
    logits = compare_outputs(ref, cand, labels, name="logits")
    same = compare_outputs(ref[:, :1], ref[:, :1], name="score")  # identical: SNR inf
    outputs = (logits, same)
    return VerifyResult(
        reference="ref.onnx",
        candidate="cand.onnx",
        data="data.npz",
        samples=40,
        batch_size=32,
        labels_key="labels",
        reference_providers=("CPUExecutionProvider",),
        candidate_providers=("CPUExecutionProvider",),
        outputs=outputs,
        gates=check_gates(outputs, gates, has_labels=True),
        gate_config=gates,
        elapsed_s=0.5,
    )


FAILING = Gates(max_accuracy_drop=0.5, min_cosine=0.5)


def test_text_report():
    text = render_text(_result(FAILING))
    assert "logits" in text and "top-1 drop pts" in text and "FAIL" in text
    assert text.strip().splitlines()[-1].startswith("verify: FAIL: --max-accuracy-drop")


def test_json_report_is_strict_json():
    data = json.loads(to_json(_result(FAILING, nan=True)))
    assert data["passed"] is False
    by_name = {o["name"]: o for o in data["outputs"]}
    assert by_name["score"]["snr_db"] == "inf" and by_name["logits"]["rel_l2_error"] == "nan"
    assert {g["gate"] for g in data["gates"]} == {"max_accuracy_drop", "min_cosine"}
    nan_gate = [g for g in data["gates"] if g["output"] == "logits" and g["gate"] == "min_cosine"][0]
    assert nan_gate["passed"] is False and nan_gate["margin"] == "nan"


def test_markdown_report():
    md = to_markdown(_result(FAILING))
    assert md.startswith("**onnxcompress verify: :x: FAIL**")
    assert "| `--max-accuracy-drop` | `logits` |" in md and "**FAIL**" in md
    assert ":white_check_mark: PASS" in to_markdown(_result(Gates(min_cosine=-1.0)))


@pytest.mark.parametrize("gates, failures", [(FAILING, 1), (Gates(min_cosine=-1.0), 0), (Gates(), 0)])
def test_junit_xml_parses(gates, failures):
    result = _result(gates)
    root = ET.fromstring(to_junit_xml(result).encode("utf-8"))
    assert root.tag == "testsuite"
    assert int(root.get("failures")) == failures == len(root.findall("testcase/failure"))
    cases = root.findall("testcase")
    assert int(root.get("tests")) == len(cases) == max(1, len(result.gates))
    for case in root.findall("testcase[failure]"):
        assert "off by" in case.find("failure").get("message")


def test_write_reports(tmp_path):
    paths = write_reports(
        _result(FAILING),
        json_path=tmp_path / "out" / "r.json",
        markdown_path=tmp_path / "r.md",
        junit_path=tmp_path / "r.xml",
    )
    assert [p.name for p in paths] == ["r.json", "r.md", "r.xml"] and all(p.exists() for p in paths)


def test_gate_outcome_describe_nan():
    (g,) = [g for g in _result(Gates(min_cosine=0.9), nan=True).gates if g.output == "logits"]
    assert not g.passed and math.isnan(g.value) and "NaN" in g.describe()
