"""The search space: one choice (pruning fraction, bits, granularity, or left fp32) per weight.

A choice is in the folded ``codebook`` format (the smallest file; decoded to dense float when
onnxruntime loads the model) or the ``runtime`` format (affine codes that onnxruntime keeps
quantized for MatMul/Gemm/Gather weights: the least RAM; see
:mod:`onnxcompress.passes.runtime_native`).

A :class:`Plan` maps weight names to :class:`Choice` and becomes an ordinary
:class:`~onnxcompress.config.CompressionConfig` with one ``names`` override per weight, so the
search drives exactly what ``compress --config plan.yaml`` does: :meth:`Plan.to_yaml` writes that
file, and compressing with it reproduces the searched model byte for byte.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from onnxcompress.config import GRANULARITIES, CompressionConfig, WeightConfig
from onnxcompress.errors import ConfigError

KEEP_BITS = 32  # a Choice with this many bits leaves the weight as it is (fp32)

DEFAULT_SPARSITIES: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97)
DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6)
DEFAULT_GRANULARITIES: tuple[str, ...] = ("tensor",)
FORMATS: tuple[str, ...] = ("codebook", "runtime")
RUNTIME_BITS: tuple[int, ...] = (2, 4, 8)  # what onnxruntime's MatMulNBits/GatherBlockQuantized implement
DEFAULT_FORMATS: tuple[str, ...] = ("codebook",)
DEFAULT_RUNTIME_BITS: tuple[int, ...] = (4, 8)


@dataclass(frozen=True, order=True)
class Choice:
    """How one weight is compressed: ``sparsity`` pruned by magnitude, ``bits`` codebook bits,
    ``granularity`` of the codebooks. ``Choice.keep()`` leaves the weight uncompressed.

    ``format="runtime"`` (:meth:`runtime`): ``bits``-bit affine codes onnxruntime keeps quantized,
    with the plan's default block size and accuracy level. Its sparsity is 0 (pruned zeros still
    take a code in that storage, so pruning would cost accuracy and save nothing) and its
    granularity ``tensor`` (unused: the blocks are the granularity)."""

    sparsity: float = 0.0
    bits: int = 8
    granularity: str = "tensor"
    format: str = "codebook"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.format == "runtime":
            if self.bits not in RUNTIME_BITS:
                raise ConfigError(
                    f"runtime-format bits must be one of {', '.join(map(str, RUNTIME_BITS))} (what onnxruntime "
                    f"executes quantized), got {self.bits}"
                )
            if self.sparsity != 0.0 or self.granularity != "tensor":
                raise ConfigError(
                    "a runtime-format choice has sparsity 0 and granularity tensor (use Choice.runtime(bits)), "
                    f"got sparsity {self.sparsity}, granularity {self.granularity!r}"
                )
        if self.bits != KEEP_BITS and not 1 <= self.bits <= 8:
            raise ConfigError(f"bits must be 1-8 (or {KEEP_BITS} to keep the weight), got {self.bits}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )

    @classmethod
    def keep(cls) -> Choice:
        return cls(0.0, KEEP_BITS, "tensor")

    @classmethod
    def runtime(cls, bits: int) -> Choice:
        """``bits``-bit runtime-native codes (2, 4 or 8)."""
        return cls(0.0, int(bits), "tensor", "runtime")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Choice:
        """The inverse of :meth:`to_dict`; a dict without ``format`` (written before formats
        existed, e.g. an older ``sensitivity.json``) is a codebook choice."""
        if d.get("kept"):
            return cls.keep()
        return cls(float(d["sparsity"]), int(d["bits"]), str(d["granularity"]), str(d.get("format", "codebook")))

    @property
    def kept(self) -> bool:
        return self.bits == KEEP_BITS

    def override(self) -> dict[str, Any] | None:
        """The ``names`` override for this choice (None = leave the weight alone)."""
        if self.kept:
            return None
        if self.format == "runtime":
            return {"format": "runtime", "bits": int(self.bits)}
        return {
            "sparsity": round(float(self.sparsity), 6),
            "bits": int(self.bits),
            "granularity": self.granularity,
        }

    def label(self) -> str:
        if self.kept:
            return "fp32"
        if self.format == "runtime":
            return f"rt b{self.bits}"
        g = "" if self.granularity == "tensor" else f"/{self.granularity}"
        return f"p{self.sparsity:.2f} b{self.bits}{g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "bits": self.bits,
            "granularity": self.granularity,
            "kept": self.kept,
            **({"format": self.format} if self.format != "codebook" else {}),
        }


def grid(
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    bits: Sequence[int] = DEFAULT_BITS,
    granularities: Sequence[str] = DEFAULT_GRANULARITIES,
    formats: Sequence[str] = DEFAULT_FORMATS,
    runtime_bits: Sequence[int] = DEFAULT_RUNTIME_BITS,
) -> list[Choice]:
    """Every (sparsity, bits, granularity) combination (with ``codebook`` in ``formats``), one
    runtime choice per ``runtime_bits`` (with ``runtime``), plus keeping the weight."""
    out = []
    if "codebook" in formats:
        out = [Choice(float(p), int(b), g) for g in granularities for b in bits for p in sparsities]
    if "runtime" in formats:
        out += [Choice.runtime(int(b)) for b in runtime_bits]
    return [*out, Choice.keep()]


@dataclass(frozen=True)
class Plan:
    """A choice per weight name (weights absent from ``choices`` are left as they are)."""

    choices: Mapping[str, Choice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", dict(self.choices))

    def key(self) -> tuple[tuple[str, Choice], ...]:
        return tuple(sorted(self.choices.items()))

    def with_choice(self, name: str, choice: Choice) -> Plan:
        return Plan({**self.choices, name: choice})

    @property
    def compresses_anything(self) -> bool:
        return any(not c.kept for c in self.choices.values())

    def to_config(self, base: CompressionConfig, layers: Iterable[str] = ()) -> CompressionConfig:
        """``base`` with one override per weight; ``layers`` absent from the plan are left alone
        (an explicit ``null``, since the global setting would otherwise compress them)."""
        names: dict[str, Any] = {n: None for n in layers}
        names.update({n: c.override() for n, c in self.choices.items()})
        return dataclasses.replace(base, names=dict(sorted(names.items())))

    def to_dict(self) -> dict[str, Any]:
        return {n: c.to_dict() for n, c in sorted(self.choices.items())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> Plan:
        return cls({n: Choice.from_dict(d) for n, d in data.items()})

    def describe(self) -> str:
        return ", ".join(f"{n}: {c.label()}" for n, c in sorted(self.choices.items()))


def base_config(
    weight: WeightConfig | None = None, *, min_elements: int = 256, seed: int = 0
) -> CompressionConfig:
    """The config every plan is built on: names not in the plan are skipped (weight = None is not
    expressible globally, so every compressible weight gets an explicit override)."""
    return CompressionConfig(weight=weight or WeightConfig(), min_elements=min_elements, seed=seed)


def config_to_yaml(
    config: CompressionConfig,
    header: Iterable[str] = (),
    *,
    calibration: Mapping[str, Any] | None = None,
    structured: Mapping[str, Any] | None = None,
) -> str:
    """The plan file ``compress --config`` reads: only what differs from the default preset
    (``compress``'s base, which the file is applied on), plus every per-weight override (``null`` =
    left alone), and the ``calibration:`` options a calibrated search used (``compress
    --calibration-data`` then calibrates the same way), and the ``structured:`` pruning a search
    chose (``compress`` prunes the channels first, then applies the weight settings)."""
    import yaml

    from onnxcompress.config import DEFAULT_PRESET, preset

    default = preset(DEFAULT_PRESET).to_dict()
    data = config.to_dict()
    out: dict[str, Any] = {}
    weight = {k: v for k, v in data["weight"].items() if v != default["weight"][k]}
    if weight:
        out["weight"] = weight
    if data["op_types"]:
        out["op_types"] = data["op_types"]
    out["names"] = data["names"]
    for key in ("exclude", "min_elements", "seed"):
        if data[key] != default[key]:
            out[key] = data[key]
    if calibration:
        out["calibration"] = dict(calibration)
    if structured:
        out["structured"] = dict(structured)
    text = "".join(f"# {line}\n" for line in header)
    return text + yaml.safe_dump(out, sort_keys=False, default_flow_style=None, width=200)
