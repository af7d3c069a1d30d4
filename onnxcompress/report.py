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

__all__ = ["CompressionReport", "CompressionResult", "WeightReport"]


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
