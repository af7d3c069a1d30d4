"""What structured pruning did, per dependency group, as data and as a text table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from onnxcompress.structured.refit import RefitRow


@dataclass(frozen=True)
class GroupRow:
    """One dependency group: its channels, parameters and FLOPs before and after."""

    group: int
    name: str
    sources: tuple[str, ...]
    consumers: tuple[str, ...]
    ratio: float
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    refused: str | None = None


@dataclass
class StructuredReport:
    groups: list[GroupRow]
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    criterion: str
    refit: list[RefitRow] = field(default_factory=list)
    global_ratio: float = 0.0
    seconds: float = 0.0

    @property
    def flop_reduction(self) -> float:
        return self.flops_before / max(self.flops_after, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops_before": self.flops_before, "flops_after": self.flops_after,
            "flop_reduction": self.flop_reduction, "params_before": self.params_before,
            "params_after": self.params_after, "criterion": self.criterion, "global_ratio": self.global_ratio,
            "seconds": self.seconds, "groups": [asdict(g) for g in self.groups],
            "refit": [asdict(r) for r in self.refit],
        }  # fmt: skip


def format_groups(rows: list[dict[str, Any]]) -> str:
    """``inspect --groups``: one line per group (from :meth:`Analysis.summary`)."""
    lines = [f"{'group':>5}  {'channels':>8}  {'sources':<44}  status"]
    for r in rows:
        status = "prunable" if r["refused"] is None else f"left alone: {r['refused']}"
        if r["refused"] is None and r["fixed"]:
            status += f" ({r['fixed']} channels fixed)"
        src = ", ".join(r["sources"])
        lines.append(f"{r['group']:>5}  {r['channels']:>8}  {src[:44]:<44}  {status}")
        if r["consumers"]:
            lines.append(f"{'':>17}  read by: {', '.join(r['consumers'])[:100]}")
    return "\n".join(lines)


def format_report(report: StructuredReport) -> str:
    lines = [f"{'group':<36} {'ratio':>5} {'channels':>11} {'params':>17} {'MFLOPs':>15}  note"]
    for g in report.groups:
        note = g.refused or ""
        lines.append(
            f"{g.name[:36]:<36} {g.ratio:>5.2f} {g.channels_before:>5}->{g.channels_after:<5} "
            f"{g.params_before:>8}->{g.params_after:<8} {g.flops_before / 1e6:>7.2f}->{g.flops_after / 1e6:<7.2f}  {note[:60]}"
        )
    lines.append(
        f"total: {report.params_before:,} -> {report.params_after:,} parameters, "
        f"{report.flops_before / 1e6:.2f} -> {report.flops_after / 1e6:.2f} MFLOPs "
        f"({report.flop_reduction:.2f}x fewer), criterion {report.criterion}"
    )
    if report.refit:
        worst = max(report.refit, key=lambda r: r.error_after)
        lines.append(
            f"refit ({report.refit[0].mode}) {len(report.refit)} layers; worst relative output error "
            f"{worst.error_before:.3f} -> {worst.error_after:.3f} ({worst.layer})"
        )
    return "\n".join(lines)
