"""Human-readable tables of the inventory and of a compression report (plain text, no deps)."""

from __future__ import annotations

from onnxcompress.compressor import CompressionReport
from onnxcompress.formatting import human_bytes, table
from onnxcompress.inventory import Inventory


def _shorten(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def format_report(report: CompressionReport, *, max_rows: int = 60) -> str:
    rows = []
    ws = report.weights
    shown = ws if len(ws) <= max_rows else sorted(ws, key=lambda w: -w.bytes_before)[:max_rows]
    for w in shown:
        rows.append(
            [
                _shorten(w.name),
                "/".join(w.op_types),
                "x".join(map(str, w.shape)),
                f"{w.params:,}",
                f"{w.sparsity:.1%}",
                w.bits if w.bits is not None else "raw",
                w.encoding,
                human_bytes(w.bytes_before),
                human_bytes(w.bytes_after),
                f"{w.bytes_before / max(w.bytes_after, 1):.1f}x",
                f"{w.rel_error:.4f}",
            ]
        )
    out = [
        table(
            [
                "weight",
                "op",
                "shape",
                "params",
                "sparsity",
                "bits",
                "encoding",
                "before",
                "after",
                "ratio",
                "rel L2 err",
            ],
            rows,
            "lllrrrlrrrr",
        )
    ]
    if len(ws) > len(shown):
        out.append(f"... {len(ws) - len(shown)} smaller weights not shown (see --report JSON)")
    out.append("")
    out.append(
        f"weights: {len(ws)} compressed ({report.params:,} params) in {report.groups} decode group(s), "
        f"{len(report.skipped)} left alone; {human_bytes(report.weight_bytes_before)} -> "
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


def format_inventory(inv: Inventory, *, show_all: bool = True) -> str:
    rows = []
    for w in inv.weights:
        if not show_all and not w.compressible:
            continue
        rows.append(
            [
                _shorten(w.name),
                w.source + (f" in {w.graph}" if w.graph else ""),
                "/".join(w.op_types) or "-",
                w.role if w.compressible else "-",
                w.axis if w.compressible else "-",
                "x".join(map(str, w.shape)) or "scalar",
                w.dtype,
                f"{w.size:,}",
                "compress" if w.compressible else f"skip: {w.skip_reason}",
            ]
        )
    comp = inv.compressible()
    lines = [
        table(
            ["tensor", "source", "op", "role", "axis", "shape", "dtype", "elements", "decision"],
            rows,
            "llllrllrl",
        ),
        "",
        f"{len(comp)} compressible tensors ({sum(w.size for w in comp):,} elements, "
        f"{human_bytes(sum(w.nbytes for w in comp))}), {len(inv.weights) - len(comp)} left alone",
    ]
    if inv.quantized_model:
        lines.append("note: the model already contains quantized operators; their weights are left alone")
    return "\n".join(lines)
