"""What structured pruning did, per dependency group, as data (rendered by ``commands/render.py``)."""

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
    latency_before_ms: float | None = None  # measured with only this group pruned (latency: groups)
    latency_after_ms: float | None = None
    kind: str = "channels"  # or "heads" (channels_* then count attention heads)


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
    latency_before_ms: float | None = None  # whole model, measured in process (latency: model/groups)
    latency_after_ms: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.latency_before_ms is None or not self.latency_after_ms:
            return None
        return self.latency_before_ms / self.latency_after_ms

    @property
    def flop_reduction(self) -> float:
        return self.flops_before / max(self.flops_after, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops_before": self.flops_before, "flops_after": self.flops_after,
            "flop_reduction": self.flop_reduction, "params_before": self.params_before,
            "params_after": self.params_after, "criterion": self.criterion, "global_ratio": self.global_ratio,
            "seconds": self.seconds, "latency_before_ms": self.latency_before_ms,
            "latency_after_ms": self.latency_after_ms, "speedup": self.speedup,
            "groups": [asdict(g) for g in self.groups],
            "refit": [asdict(r) for r in self.refit],
        }  # fmt: skip
