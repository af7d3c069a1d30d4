"""What a compression run returns: one :class:`WeightReport` per compressed weight, the
:class:`CompressionReport` of the run and the :class:`CompressionResult` that carries the model.

Data only: ``to_dict`` is the ``--report`` JSON schema; the terminal tables are drawn by
:mod:`onnxcompress.commands.render`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcompress import __version__

if TYPE_CHECKING:
    import onnx

    from onnxcompress.passes.base import PassResult

__all__ = ["DAMAGE_REL_ERROR", "CompressionReport", "CompressionResult", "WeightReport", "predicted_damage"]

#: a weight whose relative L2 error ``||W - W_hat|| / ||W||`` is above this is predicted to hurt
#: accuracy. Measured on the shipped models (benchmarks/small_models.py): ``safe`` <= 0.010 and
#: ``balanced`` <= 0.026 on every weight; ``clipq`` >= 0.23, ``small`` >= 0.49 and
#: ``deep-compression`` >= 0.79 at their worst weight (resnet_digits: 60% / 65% / 10% top-1
#: against 99.7% fp32). 0.1 sits between the two families with room on both sides.
DAMAGE_REL_ERROR = 0.1


@dataclass(frozen=True)
class WeightReport:
    """One compressed weight: what it became and what it cost."""

    name: str
    op_types: tuple[str, ...]
    role: str
    shape: tuple[int, ...]
    params: int
    setting: str
    sparsity: float  # fraction of exact zeros after compression
    bits: int | None
    encoding: str
    bytes_before: int
    bytes_after: int
    rel_error: float  # ||W - W_hat|| / ||W||
    #: the name as tables show it: an exporter's generated name (``onnx::MatMul_1160``) with its
    #: consumer node's name (:meth:`onnxcompress.inventory.WeightInfo.display_name`)
    display_name: str = ""


@dataclass
class CompressionReport:
    """The whole run. ``passes``: each graph pass's report (``PassResult.to_dict``) by pass name;
    ``extra``: sections other stages add (``calibration``, ``container``)."""

    weights: list[WeightReport]
    skipped: list[tuple[str, str]]
    groups: int
    seconds: float
    passes: dict[str, Any] = field(default_factory=dict)
    file_bytes_before: int | None = None
    file_bytes_after: int | None = None
    output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # advice on the plan (printed under the table)
    #: findings a user must not miss (predicted accuracy damage): commands print them on stderr
    warnings: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(w.params for w in self.weights)

    @property
    def weight_bytes_before(self) -> int:
        return sum(w.bytes_before for w in self.weights)

    @property
    def weight_bytes_after(self) -> int:
        return sum(w.bytes_after for w in self.weights)

    @property
    def ratio(self) -> float | None:
        if self.file_bytes_before and self.file_bytes_after:
            return self.file_bytes_before / self.file_bytes_after
        return None

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes_after / max(self.params, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnxcompress_version": __version__,
            "output": self.output,
            "file_bytes_before": self.file_bytes_before,
            "file_bytes_after": self.file_bytes_after,
            "ratio": self.ratio,
            "params_compressed": self.params,
            "weight_bytes_before": self.weight_bytes_before,
            "weight_bytes_after": self.weight_bytes_after,
            "bits_per_weight": self.bits_per_weight,
            "decode_groups": self.groups,
            "seconds": self.seconds,
            "weights": [asdict(w) for w in self.weights],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
            "passes": self.passes,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            **self.extra,
        }


@dataclass
class CompressionResult:
    """The compressed model, its report, and (with ``keep_decoded``) what each weight decodes to."""

    model: onnx.ModelProto
    report: CompressionReport
    decoded: dict[str, np.ndarray]  # what each weight decodes to (numpy reference), if keep_decoded
    container: Any = None  # ContainerStats when written as .onnxc (the entropy-coding staircase)
    passes: tuple[PassResult, ...] = ()  # the graph passes' typed results, in the order they ran


def predicted_damage(weights: list[WeightReport], threshold: float = DAMAGE_REL_ERROR) -> str | None:
    """A warning when some weights' relative error is above ``threshold`` (None otherwise).

    Why: without verification data nothing else tells a user that a plan wrecked the model (an
    aggressive preset exits 0 with a fine-looking size table). The weights' own error is the
    prediction available without data; it says how to measure the real damage."""
    bad = sorted((w for w in weights if w.rel_error > threshold), key=lambda w: -w.rel_error)
    if not bad:
        return None
    share = sum(w.params for w in bad) / max(sum(w.params for w in weights), 1)
    worst = bad[0]
    return (
        f"{len(bad)} of {len(weights)} weights ({share:.0%} of the parameters) changed by more than "
        f"{threshold:.0%} (relative L2 error; worst {worst.rel_error:.2f}, {worst.name}): accuracy may "
        "drop a lot. Check it with --verify-data DATA.npz --max-accuracy-drop 1 (or `onnxcompress verify`); "
        "to keep accuracy, let `onnxcompress search MODEL -o OUT --data VAL --max-accuracy-drop 1` choose "
        "each layer's setting on validation data, give --calibration-data, or try milder settings "
        "(--preset balanced, lower --sparsity, more --bits)"
    )
