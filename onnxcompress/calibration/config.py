"""Options of calibration-aware compression (the ``calibration:`` section of a plan).

They sit beside the per-weight :class:`~onnxcompress.config.WeightConfig`, not inside it: the
weight config says *what* a weight becomes (bits, sparsity, granularity) and stays valid without
data; this says *how* data is used to get there. Per-name overrides (exact name or glob, first
match in file order) change these options for some weights, e.g. ``names: {"*embed*":
{quant_method: weighted-kmeans}}``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from onnxcompress.errors import ConfigError

PRUNE_METHODS = ("magnitude", "obs")
QUANT_METHODS = ("kmeans", "weighted-kmeans", "gptq")
PER_WEIGHT = ("prune_method", "quant_method", "refit", "bias_correction", "damp", "block_size")


@dataclass(frozen=True)
class CalibrationConfig:
    """How calibration data is used.

    ``prune_method``: ``obs`` (SparseGPT: Hessian-aware mask and compensating updates) or
    ``magnitude`` (the plain mask). ``quant_method``: ``gptq`` (error-feedback rounding onto a
    k-means codebook), ``weighted-kmeans`` (centroids weighted by input energy ``diag(H)``), or
    ``kmeans`` (plain). ``refit`` re-solves the codebook values for the output error with the
    assignments fixed. ``bias_correction`` shifts existing biases by the mean output change.
    ``sequential`` lets each layer see the outputs of the already-compressed layers before it.
    ``damp`` is the Hessian dampening as a fraction of its mean diagonal. ``smooth`` (SmoothQuant's
    migration strength alpha in (0, 1]; 0 = off) first moves activation outliers into the weights of
    ``activations: int8`` MatMuls (:mod:`onnxcompress.calibration.smooth`).
    """

    samples: int = 256
    batch_size: int = 32
    sequential: bool = True
    prune_method: Literal["magnitude", "obs"] = "obs"
    quant_method: Literal["kmeans", "weighted-kmeans", "gptq"] = "gptq"
    refit: bool = True
    bias_correction: bool = False
    damp: float = 0.01
    block_size: int = 128
    smooth: float = 0.0
    names: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)
        object.__setattr__(self, "names", dict(self.names))
        for pat, ov in self.names.items():
            if not isinstance(ov, Mapping):
                raise ConfigError(f"calibration.names.{pat}: expected a mapping of options")
            unknown = set(ov) - set(PER_WEIGHT)
            if unknown:
                raise ConfigError(
                    f"calibration.names.{pat}: unknown option(s) {', '.join(sorted(unknown))}; "
                    f"per-weight options are {', '.join(PER_WEIGHT)}"
                )
            _validate(dataclasses.replace(self, names={}, **ov))

    def resolve(self, name: str) -> CalibrationConfig:
        """The options for one weight: the first matching override (exact name before globs)."""
        ov = self.names.get(name)
        if ov is None:
            ov = next((v for pat, v in self.names.items() if fnmatch.fnmatchcase(name, pat)), None)
        return self if ov is None else dataclasses.replace(self, names={}, **ov)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["names"] = {k: dict(v) for k, v in self.names.items()}
        return d

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, base: CalibrationConfig | None = None
    ) -> CalibrationConfig:
        """From the ``calibration:`` mapping of a YAML/JSON plan, on top of ``base``."""
        base = base or cls()
        if data is None:
            return base
        if not isinstance(data, Mapping):
            raise ConfigError("calibration: expected a mapping of options")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"calibration: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        names = {**base.names, **(data.get("names") or {})}
        return dataclasses.replace(base, **{**dict(data), "names": names})


def _validate(c: CalibrationConfig) -> None:
    def pos_int(name: str, v: object, lo: int = 1) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"calibration.{name} must be an integer >= {lo}, got {v!r}")

    pos_int("samples", c.samples)
    pos_int("batch_size", c.batch_size)
    pos_int("block_size", c.block_size)
    for name in ("sequential", "refit", "bias_correction"):
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(f"calibration.{name} must be true or false, got {getattr(c, name)!r}")
    if c.prune_method not in PRUNE_METHODS:
        raise ConfigError(
            f"calibration.prune_method must be one of {', '.join(PRUNE_METHODS)}, got {c.prune_method!r}"
        )
    if c.quant_method not in QUANT_METHODS:
        raise ConfigError(
            f"calibration.quant_method must be one of {', '.join(QUANT_METHODS)}, got {c.quant_method!r}"
        )
    if isinstance(c.smooth, bool) or not isinstance(c.smooth, (int, float)) or not 0 <= float(c.smooth) <= 1:
        raise ConfigError(
            f"calibration.smooth must be a number in [0, 1] (SmoothQuant's alpha; 0.5 is typical, 0 is off), "
            f"got {c.smooth!r}"
        )
    if isinstance(c.damp, bool) or not isinstance(c.damp, (int, float)) or not 0 < float(c.damp) <= 10:
        raise ConfigError(
            f"calibration.damp must be a number in (0, 10] (a fraction of mean diag(H)), got {c.damp!r}"
        )


def load_calibration_config(path: str, base: CalibrationConfig | None = None) -> CalibrationConfig:
    """The ``calibration:`` section of a YAML/JSON plan file (defaults when it has none)."""
    from onnxcompress.config import read_plan_file

    return CalibrationConfig.from_dict(read_plan_file(path).get("calibration"), base)
