"""Structured pruning as one more dimension of ``search``: which channel ratio, then which
per-weight (sparsity, bits) on what is left.

For each ratio of :attr:`StructuredSearch.ratios` the model is pruned by
:func:`onnxcompress.structured.prune_model` (the same call, on the same calibration samples, that
``compress --config plan.yaml --calibration-data DATA`` makes when the plan has a ``structured:``
section), checked alone on the validation data against the *original* model's outputs, and, when
it passes the gates alone, searched per weight like any model (stages 1-3). Sizes are always
against the original file. The smallest passing result over all ratios wins (the best metric at
the size target in ``target`` mode); its plan records ``structured:`` so ``compress`` reproduces
it. A ratio whose pruned model already fails the gates before any weight is quantized cannot pass
afterwards, so it is skipped without a search (one model run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxcompress.errors import ConfigError
from onnxcompress.structured.api import pruning_inputs
from onnxcompress.structured.config import StructuredConfig

__all__ = ["StructuredSearch", "prune", "pruning_inputs"]


@dataclass(frozen=True)
class StructuredSearch:
    """The structured dimension of a search.

    ``ratios``: channel ratios to try (fractions in [0, 1); 0 = no structured pruning, the plain
    search). ``config``: every other setting of the pruning (``allocation``, ``criterion``, refit,
    ...; its ``ratio`` is replaced by each of ``ratios``). Default: ``global`` allocation with the
    ``obs`` criterion (on LeNet-300-100 at ratio 0.7 it keeps 0.4 validation points where
    ``uniform`` + ``activation`` loses 1.2; docs/search.md). ``prefilter``: skip a ratio whose
    pruned model fails the gates before quantization (True).
    """

    ratios: tuple[float, ...]
    config: StructuredConfig = field(
        default_factory=lambda: StructuredConfig(allocation="global", criterion="obs")
    )
    prefilter: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.ratios, (str, bytes)) or not isinstance(self.ratios, Sequence):
            raise ConfigError(f"structured ratios: expected a list of fractions, got {self.ratios!r}")
        if not self.ratios:
            raise ConfigError("structured ratios: give at least one ratio (0 = no structured pruning)")
        for r in self.ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
                raise ConfigError(f"structured ratios: each is a fraction in [0, 1) (0.5 removes half), got {r!r}")
        if not isinstance(self.config, StructuredConfig):
            raise ConfigError(f"structured config: expected a StructuredConfig, got {type(self.config).__name__}")
        if self.config.target_flops is not None:
            raise ConfigError("structured search: target_flops replaces the ratio; give ratios instead")
        object.__setattr__(self, "ratios", tuple(sorted({float(r) for r in self.ratios})))
        # the search measures nothing about speed: no latency runs inside it
        object.__setattr__(self, "config", dataclasses.replace(self.config, latency="none"))

    @property
    def active(self) -> bool:
        return any(r > 0 for r in self.ratios) or self.config.heads > 0

    def at(self, ratio: float) -> StructuredConfig:
        return dataclasses.replace(self.config, ratio=float(ratio))

    def plan_section(self, ratio: float) -> dict[str, Any]:
        """The plan's ``structured:`` section for ``ratio``: the ratio and every setting that
        differs from :class:`StructuredConfig`'s defaults (latency left out: it measures only)."""
        default = StructuredConfig()
        cfg = self.at(ratio)
        out: dict[str, Any] = {"ratio": float(ratio)}
        for f in dataclasses.fields(StructuredConfig):
            if f.name in ("ratio", "latency"):
                continue
            v = getattr(cfg, f.name)
            if v != getattr(default, f.name):
                out[f.name] = dict(v) if isinstance(v, Mapping) else v
        return out


def prune(
    model: onnx.ModelProto, spec: StructuredSearch, ratio: float, inputs: Mapping[str, Any] | None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The pruned model at ``ratio`` and what the report says about it."""
    from onnxcompress.structured.api import prune_model

    pruned, report = prune_model(model, spec.at(ratio), inputs)
    return pruned, {
        "params_before": report.params_before,
        "params_after": report.params_after,
        "flops_before": report.flops_before,
        "flops_after": report.flops_after,
        "channels": {g.name: [g.channels_before, g.channels_after] for g in report.groups if g.channels_before},
        "criterion": report.criterion,
        "prune_seconds": round(report.seconds, 3),
    }
