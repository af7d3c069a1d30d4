"""Render a :class:`~onnxcompress.evaluation.verify.VerifyResult` for people and for CI.

* :func:`render_text` - the terminal table (plain text, so it reads the same in a CI log);
* :func:`to_json` - everything, machine-readable (inf/NaN written as strings to stay valid JSON);
* :func:`to_markdown` - a compact PR comment: verdict first, then the gates, then the metrics;
* :func:`to_junit_xml` - one test case per gate check, so CI test tabs show which gate failed;
* :func:`write_reports` - write whichever of those the user asked for, creating parent folders.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from onnxcompress.evaluation.metrics import OutputMetrics
from onnxcompress.evaluation.verify import VerifyResult
from onnxcompress.formatting import table


def _f(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100.0 * v:.2f}%"


def _pts(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def metric_rows(result: VerifyResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-output metric table, shared by text and Markdown."""
    labelled = any(o.top1_drop_pts is not None for o in result.outputs)
    header = ["output", "cos mean", "cos min", "rel L2", "max abs", "SNR dB", "top-1 agree", "top-5 agree"]
    if labelled:
        header += ["ref top-1", "cand top-1", "top-1 drop pts", "ref top-5", "cand top-5", "top-5 drop pts"]
    rows = []
    for o in result.outputs:
        row = [
            o.name,
            _f(o.mean_cosine, 6),
            _f(o.min_cosine, 6),
            _f(o.rel_l2_error, 5),
            _f(o.max_abs_error, 5),
            _f(o.snr_db, 2),
            _pct(o.top1_agreement),
            _pct(o.top5_agreement),
        ]
        if labelled:
            row += [
                _pct(o.ref_top1_accuracy),
                _pct(o.cand_top1_accuracy),
                _pts(o.top1_drop_pts),
                _pct(o.ref_top5_accuracy),
                _pct(o.cand_top5_accuracy),
                _pts(o.top5_drop_pts),
            ]
        rows.append(row)
    return header, rows


#: columns of the first text table (output name and agreement metrics); the accuracy columns go
#: into a second table under it, so that a labelled run fits 100 columns (one table was 156 wide)
_FIRST_TABLE_COLUMNS = 8


def _split_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The metric table as one table, or two stacked ones (output-agreement metrics, then accuracy)
    when there are accuracy columns, each keyed by the output name."""
    if len(header) <= _FIRST_TABLE_COLUMNS:
        return [table(header, rows)]
    first = table(header[:_FIRST_TABLE_COLUMNS], [r[:_FIRST_TABLE_COLUMNS] for r in rows])
    second = table(header[:1] + header[_FIRST_TABLE_COLUMNS:], [r[:1] + r[_FIRST_TABLE_COLUMNS:] for r in rows])
    return [first, "", second]


def render_text(result: VerifyResult) -> str:
    """The terminal report: context, metric table, gate lines, verdict."""
    prov = ", ".join(result.reference_providers)
    if result.candidate_providers != result.reference_providers:
        prov = f"reference {prov}; candidate {', '.join(result.candidate_providers)}"
    lines = [
        f"reference: {result.reference}",
        f"candidate: {result.candidate}",
        f"data:      {result.data}, {result.samples} samples, batch {result.batch_size}"
        + (f", labels {result.labels_key!r}" if result.labels_key else ""),
        f"providers: {prov}",
        "",
        *_split_table(*metric_rows(result)),
    ]
    if result.skipped_outputs:
        lines.append(f"(not compared, non-tensor outputs: {', '.join(result.skipped_outputs)})")
    if result.gates:
        lines.append("")
        lines += [("  ok    " if g.passed else "  FAIL  ") + g.describe() for g in result.gates]
    lines += ["", result.summary()]
    return "\n".join(lines)


def to_json(result: VerifyResult) -> str:
    return json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(result: VerifyResult) -> str:
    """Markdown for a pull-request comment."""
    if not result.gates:
        verdict = "**onnxcompress verify: no gate set: nothing was checked**"
    elif result.passed:
        verdict = f"**onnxcompress verify: :white_check_mark: PASS** ({len(result.gates)} gate checks)"
    else:
        verdict = f"**onnxcompress verify: :x: FAIL** ({len(result.failures)} of {len(result.gates)} gate checks failed)"
    out = [
        verdict,
        "",
        f"- reference: `{result.reference}`",
        f"- candidate: `{result.candidate}`",
        f"- data: `{result.data}`, {result.samples} samples"
        + (f", labels `{result.labels_key}`" if result.labels_key else ""),
        f"- providers: {', '.join(result.candidate_providers)}",
        "",
    ]
    if result.gates:
        out += ["| gate | output | value | limit | margin | result |", "|---|---|---:|---:|---:|---|"]
        for g in result.gates:
            op = "<=" if g.gate.startswith("max") else ">="
            out.append(
                f"| `{g.cli_name}` | `{_md_escape(g.output)}` | {_f(g.value)} | {op} {g.threshold:g} | "
                f"{_f(g.margin)} | {'pass' if g.passed else '**FAIL**'} |"
            )
        out.append("")
    header, rows = metric_rows(result)
    out.append("| " + " | ".join(header) + " |")
    out.append("|---|" + "---:|" * (len(header) - 1))
    for r in rows:
        out.append("| " + " | ".join([f"`{_md_escape(r[0])}`", *r[1:]]) + " |")
    return "\n".join(out) + "\n"


def _metrics_text(o: OutputMetrics) -> str:
    return json.dumps(o.to_dict(), allow_nan=False)


def to_junit_xml(result: VerifyResult, suite_name: str = "onnxcompress.verify") -> str:
    """JUnit XML: one ``testcase`` per gate check (or one ``metrics`` case when no gates are set)."""
    failures = len(result.failures)
    cases = max(1, len(result.gates))
    suite = ET.Element(
        "testsuite",
        name=suite_name,
        tests=str(cases),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{result.elapsed_s:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("reference", result.reference),
        ("candidate", result.candidate),
        ("data", result.data),
        ("samples", str(result.samples)),
        ("providers", ",".join(result.candidate_providers)),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    by_name = {o.name: o for o in result.outputs}
    if not result.gates:
        case = ET.SubElement(suite, "testcase", classname=suite_name, name="metrics", time="0")
        ET.SubElement(case, "system-out").text = "\n".join(_metrics_text(o) for o in result.outputs)
    for g in result.gates:
        case = ET.SubElement(
            suite, "testcase", classname=f"{suite_name}.{g.output}", name=g.cli_name, time="0"
        )
        if not g.passed:
            failure = ET.SubElement(case, "failure", message=g.describe(), type="GateFailed")
            failure.text = g.describe()
        ET.SubElement(case, "system-out").text = _metrics_text(by_name[g.output])
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def write_reports(
    result: VerifyResult,
    *,
    json_path: str | os.PathLike[str] | None = None,
    markdown_path: str | os.PathLike[str] | None = None,
    junit_path: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Write the requested reports (:func:`onnxcompress.model_io.write_report`: parent folders
    created, replaced atomically); returns the paths written."""
    from onnxcompress.model_io import write_report

    written = []
    for path, render in ((json_path, to_json), (markdown_path, to_markdown), (junit_path, to_junit_xml)):
        if path is None:
            continue
        written.append(write_report(path, render(result)))
    return written
