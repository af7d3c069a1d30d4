"""The options of one :func:`~onnxcompress.search.search` call, in one typed, frozen object.

:func:`~onnxcompress.search.search` keeps its keyword parameters (the public API) and builds one
:class:`SearchSettings` from them; the internals take that object instead of repeating every
keyword (the structured search runs one per-weight search per channel ratio with the same one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcompress.errors import ConfigError
from onnxcompress.evaluation.verify import Gates
from onnxcompress.search.candidates import OBJECTIVES, Objective
from onnxcompress.search.metrics import Metric, load_metric
from onnxcompress.search.space import (
    DEFAULT_BITS,
    DEFAULT_FORMATS,
    DEFAULT_GRANULARITIES,
    DEFAULT_RUNTIME_BITS,
    DEFAULT_SPARSITIES,
    FORMATS,
    RUNTIME_BITS,
)

if TYPE_CHECKING:
    from onnxcompress.search.bayes import Mode

ProgressFn = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class SearchSettings:
    """One place for a search's options (what :func:`~onnxcompress.search.search` documents, less
    ``model``, ``data`` and ``structured``), so they are listed once rather than in every function
    that passes them on: ``search`` builds one from its keywords, and the structured search hands
    the same object to every ratio's search (a variant is ``dataclasses.replace(settings, ...)``).
    The field names and defaults are those of ``search``'s keywords (a test checks they agree).

    Construction checks the options that need nothing but their values (the same ConfigError
    messages the command shows); the checks that read the output folder, load the metric or depend
    on it run when the search starts.
    """

    output: str | os.PathLike[str] | None = None
    gates: Gates | None = None
    metric: str | Metric = "auto"
    target_ratio: float | None = None
    max_bytes: int | None = None
    pareto: bool = False
    trials: int = 40
    timeout: float | None = None
    seed: int = 0
    storage: str | None = "default"
    study: str | None = None
    workers: int = 1
    container: bool | None = None
    labels_key: str | None = None
    sampler: str = "tpe"
    sparsities: Sequence[float] = DEFAULT_SPARSITIES
    bits: Sequence[int] = DEFAULT_BITS
    granularities: Sequence[str] = DEFAULT_GRANULARITIES
    formats: Sequence[str] = DEFAULT_FORMATS
    runtime_bits: Sequence[int] = DEFAULT_RUNTIME_BITS
    objective: Objective = "size"
    latency_batch: int = 1
    sensitivity_samples: int = 256
    quick_samples: int | None = None
    calibration_data: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None
    calibration_sequential: bool = False
    bias_correction: bool = False
    min_elements: int = 256
    stage2_evaluations: int = 12
    uniform_evaluations: int = 8
    descent_trials: int | None = None
    early_stop: bool = True
    threads: int | None = 1
    progress: ProgressFn | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.uniform_evaluations < 0:
            raise ConfigError(f"--uniform-evaluations must be >= 0, got {self.uniform_evaluations}")
        if self.target_ratio is not None and self.max_bytes is not None:
            raise ConfigError("give --target-ratio or --max-bytes, not both")
        if self.target_ratio is not None and not self.target_ratio > 1:
            raise ConfigError(f"--target-ratio must be > 1 (e.g. 40 for 40x smaller), got {self.target_ratio}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError(f"--max-bytes must be positive, got {self.max_bytes}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                "--objective must be size (file bytes), ram (resident bytes after load) or latency (predicted "
                f"batch latency), got {self.objective!r}"
            )
        if isinstance(self.latency_batch, bool) or not isinstance(self.latency_batch, int) or self.latency_batch < 1:
            raise ConfigError(f"--latency-batch must be a positive integer (samples per timed run), got {self.latency_batch!r}")
        if self.objective == "latency":
            if "runtime" not in self.formats:
                raise ConfigError(
                    "--objective latency needs --formats runtime (or codebook,runtime): codebook weights are decoded to "
                    "dense float when the session loads, so every codebook plan runs as fast as the input"
                )
            if self.max_bytes is not None:
                raise ConfigError(
                    "--max-bytes limits bytes, not latency: with --objective latency give --target-ratio R "
                    "(a plan predicted R times faster than the input)"
                )
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ConfigError(
                f"--formats takes a comma-separated list of {' and '.join(FORMATS)}, got {','.join(map(str, self.formats))!r}"
            )
        bad_bits = [b for b in self.runtime_bits if b not in RUNTIME_BITS]
        if bad_bits or ("runtime" in self.formats and not self.runtime_bits):
            raise ConfigError(
                f"--runtime-bits takes bit widths among {','.join(map(str, RUNTIME_BITS))} (what onnxruntime runs "
                f"quantized), got {','.join(map(str, self.runtime_bits))!r}"
            )

    @property
    def mode(self) -> Mode:
        """``pareto`` (the size/metric front), ``target`` (a size target) or ``gates``."""
        return "pareto" if self.pareto else ("target" if (self.target_ratio or self.max_bytes) else "gates")

    @property
    def resolved_gates(self) -> Gates:
        """``gates``, or no gates when None."""
        return self.gates if self.gates is not None else Gates()

    def loaded_metric(self) -> Metric | None:
        """``metric`` as a :class:`Metric` (loaded when a name); None for ``auto`` (decided by the
        data's labels once they are read)."""
        if isinstance(self.metric, Metric):
            return self.metric
        return None if self.metric == "auto" else load_metric(self.metric)

    @property
    def report(self) -> ProgressFn:
        """``progress``, or a callback that ignores the report."""
        return self.progress or (lambda stage, info: None)
