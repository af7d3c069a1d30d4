"""Terminal renderings of what the library returns: the compression report, the
calibration table and the benchmark table (the inventory and plan view: ``commands/plan_view.py``). Plain text drawn with the one
table formatter (:func:`onnxcompress.formatting.table`), so it reads the same in a CI log.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcompress.formatting import human_bytes, table
from onnxcompress.report import CompressionReport

if TYPE_CHECKING:
    from onnxcompress.calibration.pipeline import CalibrationResult
    from onnxcompress.evaluation.bench import BenchReport
    from onnxcompress.structured.report import StructuredReport

__all__ = [
    "format_bench", "format_calibration", "format_report", "format_structured_groups",
    "format_structured_report",
]  # fmt: skip


#: widest line of the compression and calibration tables
WIDTH = 100


def _shorten(name: str, width: int = 48) -> str:
    """``name`` cut in the middle to ``width`` characters: the start (the model's block) and the
    end (the layer and the tensor kind) say more than the middle."""
    if len(name) <= width:
        return name
    base, sep, layer = name.partition(" (")
    if sep and layer.endswith(")") and width - len(base) - 3 >= 12:
        # a generated name with its layer (WeightInfo.display_name): keep the name, cut the layer
        return f"{base} ({_shorten(layer[:-1], width - len(base) - 3)})"
    head = (width - 3) // 2
    return name[:head] + "..." + name[len(name) - (width - 3 - head) :]


def _fit_first_column(headers: list[str], rows: list[list[str]], align: str) -> str:
    """The table with its first column cut (in the middle) to what :data:`WIDTH` leaves it."""
    rest = sum(max([len(h)] + [len(r[i]) for r in rows]) + 2 for i, h in enumerate(headers) if i)
    room = max(WIDTH - rest, 20)
    return table(headers, [[_shorten(r[0], room), *r[1:]] for r in rows], align)


def format_report(report: CompressionReport, *, max_rows: int = 60) -> str:
    rows = []
    ws = report.weights
    shown = ws if len(ws) <= max_rows else sorted(ws, key=lambda w: -w.bytes_before)[:max_rows]
    for w in shown:
        rows.append(
            [
                w.display_name or w.name,
                "/".join(w.op_types),
                "x".join(map(str, w.shape)),
                f"{w.sparsity:.1%}",
                f"{w.bits}b {w.encoding}" if w.bits is not None else f"raw {w.encoding}",
                human_bytes(w.bytes_before),
                human_bytes(w.bytes_after),
                f"{w.bytes_before / max(w.bytes_after, 1):.1f}x",
                f"{w.rel_error:.4f}",
            ]
        )
    headers = ["weight", "op", "shape", "zeros", "coding", "before", "after", "ratio", "rel err"]
    out = [_fit_first_column(headers, rows, "lllrlrrrr")]
    if len(ws) > len(shown):
        out.append(f"... {len(ws) - len(shown)} smaller weights not shown (see --report JSON)")
    out.append(
        "zeros: share pruned to 0; coding: codebook bits + position encoding; rel err: ||W - W'|| / ||W||"
    )
    if any(w.rel_error > 1 for w in ws):
        out.append(
            "rel err above 1: a calibrated weight is refit to reproduce its layer's outputs on the "
            "calibration data, not its own values (its output error is in the calibration table)"
        )
    out.append("")
    out.append(
        f"weights: {len(ws)} compressed ({report.params:,} params) in {report.groups} decode "
        f"group(s), {len(report.skipped)} left alone"
    )
    out.append(
        f"weight bytes: {human_bytes(report.weight_bytes_before)} -> "
        f"{human_bytes(report.weight_bytes_after)} ({report.bits_per_weight:.2f} bits/weight)"
    )
    if report.file_bytes_before is not None and report.file_bytes_after is not None:
        out.append(
            f"file: {human_bytes(report.file_bytes_before)} -> {human_bytes(report.file_bytes_after)}  "
            f"ratio {report.ratio:.2f}x  ({report.file_bytes_before:,} -> {report.file_bytes_after:,} bytes)"
        )
    out.append(f"time: {report.seconds:.2f} s")
    out += [f"note: {n}" for n in report.notes]
    return "\n".join(out)


def format_calibration(result: CalibrationResult) -> str:
    """A per-weight text table: each layer's output error with the plain method and calibrated."""
    rows = []
    for w in result.weights:
        plain = "-" if w.error_plain is None else f"{w.error_plain:.4f}"
        rows.append([w.name, w.method, plain, f"{w.error_calibrated:.4f}"])
    lines = [_fit_first_column(["weight", "method", "plain", "calib"], rows, "llrr")]
    lines.append(
        "plain / calib: the layer's output error ||Y - Y'|| / ||Y|| on the calibration data,\n"
        "without and with calibration (lower is better; -: not measured)"
    )
    if result.config.smooth > 0:
        n = sum(len(x.weights) for x in result.smoothed)
        lines.append(
            f"smoothing (alpha {result.config.smooth:g}): {len(result.smoothed)} activation(s) of {n} weight(s) "
            "scaled per channel" if result.smoothed else
            f"smoothing (alpha {result.config.smooth:g}): nothing to smooth (it applies to MatMul weights with "
            "--format runtime --activations int8)"
        )  # fmt: skip
    return "\n".join(lines)


def _mflops(v: float) -> str:
    return f"{v / 1e6:,.2f}"


def format_bench(report: BenchReport) -> str:
    """Metrics as rows, models as columns; every model after the first shows its ratio to the first."""
    from onnxcompress.evaluation.bench import paired_p50_ratios, ratio

    base = report.models[0]
    rows_spec: list[tuple[str, Any, Any]] = [
        ("size on disk", lambda m: m.size_bytes, human_bytes),
        ("session create (s)", lambda m: m.create_s, lambda v: f"{v:.3f}"),
        ("first run (ms)", lambda m: m.first_run_s * 1e3, lambda v: f"{v:.3f}"),
        ("p50 latency (ms)", lambda m: m.p50_ms, lambda v: f"{v:.4f}"),
        ("CPU time p50 (ms)", lambda m: m.cpu_p50_ms, lambda v: f"{v:.4f}"),
        ("MFLOPs per run", lambda m: m.flops, _mflops),
        ("p50 min..max (ms)", None, None),
        ("p50 IQR (ms)", lambda m: m.p50_spread["iqr"], lambda v: f"{v:.4f}"),
        ("p50 ratio paired by round", None, None),
        ("p90 latency (ms)", lambda m: m.p90_ms, lambda v: f"{v:.4f}"),
        ("p99 latency (ms)", lambda m: m.p99_ms, lambda v: f"{v:.4f}"),
        ("throughput (samples/s)", lambda m: m.throughput, lambda v: f"{v:,.1f}"),
        ("peak RSS", lambda m: m.peak_rss_bytes, human_bytes),
        ("model RSS (peak - before load)", lambda m: m.model_rss_bytes, human_bytes),
    ]
    header = ["", *[Path(m.model).name for m in report.models]]
    rows = []
    for label, get, fmt in rows_spec:
        row = [label]
        for m in report.models:
            if label == "p50 ratio paired by round":
                pr = paired_p50_ratios(m, base)
                row.append("-" if m is base else f"x{np.median(pr):.3f} (x{min(pr):.3f}..x{max(pr):.3f})")
                continue
            if get is None:
                s = m.p50_spread
                row.append(f"{s['min']:.4f}..{s['max']:.4f}")
                continue
            v = get(m)
            if v is None and label in (
                "MFLOPs per run",
                "CPU time p50 (ms)",
                "peak RSS",
                "model RSS (peak - before load)",
            ):
                row.append("-")
                continue
            cell = fmt(v)
            if label == "MFLOPs per run" and m.flops_unknown:
                cell += f" ({m.flops_unknown} ops uncounted)"
            if m is not base and label != "p50 IQR (ms)":
                r = ratio(v, get(base))
                if r is not None:
                    cell += f" (x{r:.3f})"
            row.append(cell)
        rows.append(row)
    provs = {", ".join(m.providers) for m in report.models}
    cfg = report.config
    foot = (
        f"providers: {' | '.join(sorted(provs))}; batch {report.models[0].batch_size}; {cfg.get('runs')} runs after "
        f"{cfg.get('warmup')} warm-up, median of {cfg.get('rounds')} rounds, each in a fresh process; "
        f"threads {cfg.get('threads') or 'default'}; opt level {cfg.get('optimization_level')}; "
        f"decode by {cfg.get('decode', 'onnxruntime')}"
    )
    return table(header, rows) + "\n" + foot


def format_structured_groups(rows: list[dict[str, Any]]) -> str:
    """``inspect --groups``: the structured-pruning dependency groups, one line per group (from :meth:`Analysis.summary`)."""
    lines = [f"{'group':>5}  {'channels':>8}  {'sources':<44}  status"]
    for r in rows:
        status = "prunable" if r["refused"] is None else f"left alone: {r['refused']}"
        if r["refused"] is None and r["fixed"]:
            status += f" ({r['fixed']} channels fixed)"
        src = ", ".join(r["sources"])
        count = f"{r['channels']} heads" if r.get("kind") == "heads" else str(r["channels"])
        lines.append(f"{r['group']:>5}  {count:>8}  {src[:44]:<44}  {status}")
        if r.get("kind") == "heads":
            lines.append(f"{'':>17}  attention heads of {r['unit']} channels each (Q/K/V columns, output-projection rows)")
        if r["consumers"]:
            lines.append(f"{'':>17}  read by: {', '.join(r['consumers'])[:100]}")
    return "\n".join(lines)


def format_structured_report(report: StructuredReport) -> str:
    """``compress --structured``: channels, parameters and FLOPs per group, before and after."""
    lines = [f"{'group':<36} {'ratio':>5} {'channels':>11} {'params':>17} {'MFLOPs':>15}  note"]
    for g in report.groups:
        note = g.refused or ""
        if g.latency_before_ms is not None and g.latency_after_ms:
            note = f"alone: {g.latency_before_ms:.3f}->{g.latency_after_ms:.3f} ms (x{g.latency_before_ms / g.latency_after_ms:.2f})"
        lines.append(
            f"{g.name[:36]:<36} {g.ratio:>5.2f} {g.channels_before:>5}->{g.channels_after:<5} "
            f"{g.params_before:>8}->{g.params_after:<8} {g.flops_before / 1e6:>7.2f}->{g.flops_after / 1e6:<7.2f}  {note[:60]}"
        )
    lines.append(
        f"total: {report.params_before:,} -> {report.params_after:,} parameters, "
        f"{report.flops_before / 1e6:.2f} -> {report.flops_after / 1e6:.2f} MFLOPs "
        f"({report.flop_reduction:.2f}x fewer), criterion {report.criterion}"
    )
    if report.speedup is not None:
        lines.append(
            f"latency (in process, 1 thread, p50): {report.latency_before_ms:.3f} -> {report.latency_after_ms:.3f} ms "
            f"(x{report.speedup:.2f} faster; onnxcompress bench for fresh-process numbers)"
        )
    if report.refit:
        worst = max(report.refit, key=lambda r: r.error_after)
        lines.append(
            f"refit ({report.refit[0].mode}) {len(report.refit)} layers; worst relative output error "
            f"{worst.error_before:.3f} -> {worst.error_after:.3f} ({worst.layer})"
        )
    return "\n".join(lines)
