"""The ``structured:`` section of a plan: how many channels each dependency group loses.

Same hierarchy as the weight plan (:mod:`onnxcompress.config`): a global ``ratio`` (fraction of a
group's channels removed), overridden per source op type (``op_types: {Gemm: 0}``) and per name
(``names: {"stage1.*": 0.1}``: a glob over the source node's name or its weight's name; ``null``
or ``0`` leaves a group alone). A group takes the *smallest* ratio of its sources, so protecting
any branch of a residual sum protects the sum. ``target_flops`` (fraction of the original FLOPs to
reach, e.g. 0.5) replaces the global ratio by the one that reaches it; op-type and name overrides
stay as given. ``allocation``: ``uniform`` (every group that follows the global ratio loses that
fraction) or ``global`` (those groups together lose that fraction of their channels, taken where
the criterion says they cost least: :mod:`onnxcompress.structured.allocation`).

Attention-head groups (a class is one head: its ``head_dim`` columns of the Q, K and V
projections and rows of the output projection) follow ``heads`` (fraction of each attention
layer's heads removed; default 0: heads stay) and the ``names`` entries that match one of their
sources, never ``ratio``, ``op_types``, ``target_flops`` or ``allocation``: heads and MLP
neurons are asked for separately. ``heads_allocation: global`` spreads the heads ratio over the
layers instead: that fraction of all heads goes, the cheapest heads anywhere first (the criterion's
normalised marginal cost per FLOP, as ``allocation: global`` does for channels).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnxcompress.errors import ConfigError
from onnxcompress.structured.allocation import ALLOCATIONS
from onnxcompress.structured.criteria import CRITERIA
from onnxcompress.structured.latency import LATENCY_MODES
from onnxcompress.structured.refit import REFIT_MODES, REFIT_PRIORS

CRITERION_CHOICES = ("auto", *CRITERIA)


def _check_ratio(where: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(
            f"{where}: a channel ratio is a fraction in [0, 1) (0.3 removes 30%), got {value!r}"
        )


@dataclass(frozen=True)
class StructuredConfig:
    """Structured (channel) pruning settings.

    ``criterion``: ``auto`` (``activation`` with calibration data, else ``l1``), ``l1``, ``l2``,
    ``bn`` or ``activation``. ``refit``: ``lstsq`` (least squares on calibration activations),
    ``bias`` (bias shift only) or ``none``; without calibration data nothing is refit.
    ``round_to``: kept channel counts are rounded up to a multiple of it (vector-friendly widths).
    ``latency``: measure the latency change (:mod:`onnxcompress.structured.latency`): ``none``,
    ``model`` (pruned against original) or ``groups`` (also each group pruned alone).
    ``allocation``: ``uniform`` or ``global`` (see the module docstring). ``refit_prior``:
    ``zero`` (plain ridge) or ``sliced`` (the ridge pulls toward the sliced original weights);
    ``refit_residual``: a layer feeding a skip connection also cancels the error carried there
    (both: :func:`onnxcompress.structured.refit.refit`). ``heads``: fraction of the heads of
    every attention group removed (see the module docstring).
    """

    ratio: float = 0.0
    op_types: Mapping[str, float | None] = field(default_factory=dict)
    names: Mapping[str, float | None] = field(default_factory=dict)
    target_flops: float | None = None
    criterion: str = "auto"
    refit: str = "lstsq"
    round_to: int = 1
    min_channels: int = 1
    samples: int = 256
    ridge: float = 1e-3
    latency: str = "none"
    allocation: str = "uniform"
    refit_prior: str = "zero"
    refit_residual: bool = False
    heads: float = 0.0
    heads_allocation: str = "uniform"

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio)
        if self.heads is None or isinstance(self.heads, bool) or not isinstance(self.heads, (int, float)) or not 0.0 <= float(self.heads) < 1.0:  # fmt: skip
            raise ConfigError(
                f"heads: the fraction of each attention layer's heads removed is in [0, 1) (0.25 removes 3 of 12), got {self.heads!r}"
            )
        for k, v in self.op_types.items():
            _check_ratio(f"op_types.{k}", v)
        for k, v in self.names.items():
            _check_ratio(f"names.{k}", v)
        if self.target_flops is not None and (
            isinstance(self.target_flops, bool)
            or not isinstance(self.target_flops, (int, float))
            or not 0.0 < float(self.target_flops) <= 1.0
        ):
            raise ConfigError(
                f"target_flops is the fraction of FLOPs to keep, in (0, 1]; got {self.target_flops!r}"
            )
        if self.criterion not in CRITERION_CHOICES:
            raise ConfigError(
                f"criterion must be one of {', '.join(CRITERION_CHOICES)}; got {self.criterion!r}"
            )
        if self.refit not in REFIT_MODES:
            raise ConfigError(f"refit must be one of {', '.join(REFIT_MODES)}; got {self.refit!r}")
        for name, lo in (("round_to", 1), ("min_channels", 1), ("samples", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.heads_allocation not in ALLOCATIONS:
            raise ConfigError(
                f"heads_allocation must be one of {', '.join(ALLOCATIONS)}; got {self.heads_allocation!r}"
            )
        if self.latency not in LATENCY_MODES:
            raise ConfigError(f"latency must be one of {', '.join(LATENCY_MODES)}; got {self.latency!r}")
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(
                f"allocation must be one of {', '.join(ALLOCATIONS)}; got {self.allocation!r}"
            )
        if self.refit_prior not in REFIT_PRIORS:
            raise ConfigError(f"refit_prior must be one of {', '.join(REFIT_PRIORS)}; got {self.refit_prior!r}")
        if not isinstance(self.refit_residual, bool):
            raise ConfigError(f"refit_residual must be true or false, got {self.refit_residual!r}")
        if not isinstance(self.ridge, (int, float)) or self.ridge < 0:
            raise ConfigError(f"ridge must be a non-negative number, got {self.ridge!r}")
        object.__setattr__(self, "op_types", dict(self.op_types))
        object.__setattr__(self, "names", dict(self.names))

    @property
    def active(self) -> bool:
        return (
            self.ratio > 0
            or self.heads > 0
            or self.target_flops is not None
            or any(v for v in self.op_types.values())
            or any(v for v in self.names.values())
        )

    def resolve(self, names: tuple[str, ...], op_type: str, global_ratio: float | None = None) -> float:
        """Ratio for one source (its node and weight names, its op type)."""
        for pat, v in self.names.items():
            if any(n == pat or fnmatch.fnmatchcase(n, pat) for n in names):
                return float(v or 0.0)
        if op_type in self.op_types:
            return float(self.op_types[op_type] or 0.0)
        return self.ratio if global_ratio is None else global_ratio

    def overridden(self, names: tuple[str, ...], op_type: str) -> bool:
        """Whether a name or op-type entry, not the global ratio, sets this source's ratio."""
        return op_type in self.op_types or any(
            n == pat or fnmatch.fnmatchcase(n, pat) for pat in self.names for n in names
        )


FIELDS = {f.name for f in dataclasses.fields(StructuredConfig)}


def structured_from_dict(
    data: Mapping[str, Any] | float | None, base: StructuredConfig | None = None
) -> StructuredConfig:
    """From a plan's ``structured:`` value: a mapping of the fields above, or a bare ratio."""
    base = base or StructuredConfig()
    if data is None:
        return base
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return dataclasses.replace(base, ratio=float(data))
    if not isinstance(data, Mapping):
        raise ConfigError(f"structured: expected a ratio or a mapping of settings, got {data!r}")
    unknown = set(data) - FIELDS
    if unknown:
        raise ConfigError(
            f"structured: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(FIELDS))}"
        )
    return dataclasses.replace(base, **dict(data))
