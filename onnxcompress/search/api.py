"""``oc.search(...)``: the three stages end to end, returning data (the command writes files).

1. :mod:`~onnxcompress.search.sensitivity`: every weight alone under every grid choice (cached);
2. :mod:`~onnxcompress.search.allocate`: the Lagrangian path of plans, checked on the real model to
   find the smallest passing plan (or the best one at the size target) in a handful of runs;
3. :mod:`~onnxcompress.search.bayes`: Optuna trials warm-started from stage 2, in one process or
   ``workers`` processes sharing the study's storage.

The best plan is rebuilt at the end through the same ``compress_model`` call, so the bytes in
:attr:`SearchResult.model_bytes` are what ``compress --config plan.yaml`` writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcompress.errors import ConfigError
from onnxcompress.evaluation.verify import Gates
from onnxcompress.search import allocate as stage2
from onnxcompress.search import bayes
from onnxcompress.search import latency as lat
from onnxcompress.search import sensitivity as stage1
from onnxcompress.search.candidates import Candidates, Objective, cost_text
from onnxcompress.search.metrics import Metric
from onnxcompress.search.settings import ProgressFn, SearchSettings
from onnxcompress.search.space import (
    DEFAULT_BITS,
    DEFAULT_FORMATS,
    DEFAULT_GRANULARITIES,
    DEFAULT_RUNTIME_BITS,
    DEFAULT_SPARSITIES,
    Choice,
    Plan,
    base_config,
    config_to_yaml,
    grid,
)
from onnxcompress.search.structured import StructuredSearch


@dataclass
class SearchResult:
    """What a search found. ``best`` is None when no tried plan passed (see ``closest``)."""

    mode: str
    metric: str
    metric_direction: str
    reference_metric: float
    original_size: int
    container: bool
    best: bayes.TrialRecord | None
    closest: bayes.TrialRecord | None
    trials: list[bayes.TrialRecord]
    stage2: bayes.TrialRecord | None
    uniform: bayes.TrialRecord | None  # the best passing uniform seed (None: none passed or none run)
    sensitivity: stage1.SensitivityTable
    pareto: list[bayes.TrialRecord]
    model_bytes: bytes | None
    plan_yaml: str | None
    layers: list[dict[str, Any]]
    study: str
    storage: str | None
    gates: Gates
    max_bytes: int | None
    evaluations: int  # model runs of this call after stage 1 (stage 2 and 3; a quick check counts as one)
    sensitivity_evaluations: int = 0  # model runs behind the stage-1 table (0 new ones when cached)
    seconds: dict[str, float] = field(default_factory=dict)
    #: with ``structured=``: the chosen channel ratio, the pruning settings and one row per ratio
    structured: dict[str, Any] | None = None
    #: the structurally pruned model the plan's per-weight settings apply to (None: the input)
    pruned_model: Any = field(default=None, repr=False)
    #: what sizes count: ``size`` (file bytes), ``ram`` (resident bytes after load, estimated) or
    #: ``latency`` (predicted batch latency, integer ns; every figure shown is in ms);
    #: ``original_size``, trial sizes and ``ratio`` are in that unit
    objective: str = "size"
    #: the best plan's file size and RAM estimate (:func:`~onnxcompress.resident.resident_bytes`),
    #: whatever the objective, and the input's
    best_file_bytes: int | None = None
    best_resident_bytes: int | None = None
    original_file_bytes: int | None = None
    original_resident_bytes: int | None = None
    #: with objective ``latency``: the table behind the predictions and, for the chosen plan, its
    #: predicted latency beside its measured p50 and the input's (ms, side by side in one process)
    latency: dict[str, Any] | None = None
    #: the input keeps its weights in external data files: :meth:`save` writes the model so too by
    #: default, as ``compress`` does (onnxruntime maps external weights instead of copying them)
    input_external_data: bool = False

    def cost(self, value: float) -> str:
        """A trial size in the objective's unit (ms for latency, bytes otherwise)."""
        return cost_text(value, self.objective)

    @property
    def passed(self) -> bool:
        return self.best is not None

    @property
    def ratio(self) -> float | None:
        return self.original_size / self.best.size if self.best and self.best.size else None

    def summary(self) -> str:
        if self.best is None:
            c = self.closest
            what = (
                "no tried plan passed the gates"
                if self.mode != "target"
                else "no tried plan fits the size target and passes"
            )
            if c is None:
                return f"search: {what} (no plan was evaluated)"
            metric = f"{self.metric} {c.metric:.4f}, " if c.metric is not None else ""
            return (
                f"search: {what}; closest: trial {c.number}, {self.cost(c.size or 0)} "
                f"({self.original_size / (c.size or 1):.1f}x), {metric}{c.note}"
            )
        b = self.best
        chosen = self.structured.get("chosen_ratio") if self.structured else None
        what = f"best {b.size:,} B ({self.ratio:.1f}x smaller than {self.original_size:,} B), "
        if self.objective == "ram":
            what = (
                f"best RAM estimate {b.size:,} B ({self.ratio:.1f}x smaller than {self.original_size:,} B), "
                f"file {self.best_file_bytes or 0:,} B, "
            )
        if self.objective == "latency":
            measured = (self.latency or {}).get("measured") or {}
            what = (
                f"best predicted latency {self.cost(b.size or 0)} ({self.ratio:.2f}x faster than {self.cost(self.original_size)}), "
                + (f"measured p50 {measured['model_ms']:.4f} ms against fp32 {measured['fp32_ms']:.4f} ms, " if measured else "")
                + f"file {self.best_file_bytes or 0:,} B, RAM estimate {self.best_resident_bytes or 0:,} B, "
            )  # fmt: skip
        return (
            f"search: {what}"
            + (f"structured ratio {chosen:g} ({self.structured['config'].get('allocation', 'uniform')}), " if self.structured else "")
            + f"{self.metric} {b.metric:.4f} (reference {self.reference_metric:.4f}), trial {b.number} ({b.stage}), "
            f"{len(self.trials)} trials, {self.sensitivity_evaluations} + {self.evaluations} model evaluations (stage 1 + stages 2-3)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "passed": self.passed,
            "mode": self.mode,
            "metric": self.metric,
            "metric_direction": self.metric_direction,
            "reference_metric": self.reference_metric,
            "original_bytes": self.original_size,
            # what original_bytes, max_bytes and the trials' sizes count: bytes, or for latency
            # nanoseconds of predicted latency (the latency section has them in ms)
            "size_unit": "ns" if self.objective == "latency" else "B",
            "container": self.container,
            "gates": self.gates.to_dict(),
            "max_bytes": self.max_bytes,
            "best": self.best.to_dict() if self.best else None,
            "ratio": self.ratio,
            "closest": self.closest.to_dict() if self.closest else None,
            "stage2": self.stage2.to_dict() if self.stage2 else None,
            "uniform": self.uniform.to_dict() if self.uniform else None,
            "layers": self.layers,
            "pareto": [t.to_dict() for t in self.pareto],
            "trials": [t.to_dict() for t in self.trials],
            "study": self.study,
            "storage": self.storage,
            "evaluations": self.evaluations,
            "sensitivity_evaluations": self.sensitivity_evaluations,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "structured": self.structured,
            "objective": self.objective,
            "file_bytes": self.best_file_bytes,
            "resident_bytes": self.best_resident_bytes,
            "original_file_bytes": self.original_file_bytes,
            "original_resident_bytes": self.original_resident_bytes,
            "latency": self.latency,
        }

    def markdown(self) -> str:
        lines = ["# onnxcompress search", "", self.summary(), ""]
        if self.objective == "latency" and self.best is not None and self.latency is not None:
            lt = self.latency
            measured = lt.get("measured") or {}
            lines += [
                f"Objective: latency (predicted batch latency at batch {lt['batch']}, {lt['threads']} thread(s): the input's "
                f"measured p50 (of the pruned model, with structured ratios) plus each weight's measured change); trial "
                "figures below are predicted ms.",
                "",
                "| model | predicted p50 | measured p50 | file | RAM estimate |",
                "| --- | ---: | ---: | ---: | ---: |",
                f"| input (fp32) | {lt['reference_ms']:.4f} ms | {measured.get('fp32_ms', math.nan):.4f} ms | "
                f"{self.original_file_bytes or 0:,} B | {self.original_resident_bytes or 0:,} B |",
                f"| chosen plan | {lt['predicted_ms']:.4f} ms | {measured.get('model_ms', math.nan):.4f} ms | "
                f"{self.best_file_bytes or 0:,} B | {self.best_resident_bytes or 0:,} B |",
                "",
            ]
        elif self.best is not None and self.best_file_bytes is not None and self.best_resident_bytes is not None:
            lines += [
                f"Objective: {self.objective} ({'resident bytes after load, estimated' if self.objective == 'ram' else 'file bytes'}); "
                f"trial bytes below are in that unit. Chosen plan: file {self.best_file_bytes:,} B, "
                f"RAM estimate {self.best_resident_bytes:,} B (input: file {self.original_file_bytes or 0:,} B, "
                f"RAM estimate {self.original_resident_bytes or 0:,} B; `onnxcompress bench` measures the real RSS).",
                "",
            ]
        if self.structured:
            lines += [
                "## Structured pruning (channel ratio, searched)",
                "",
                "| ratio | params | alone: " + self.metric + " | alone passes | "
                + ("best (predicted ms)" if self.objective == "latency" else "best bytes")
                + " | ratio (vs original) | " + self.metric + " | trials | seconds |",
                "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            for r in self.structured["ratios"]:
                alone = r.get("alone") or {}
                am = "" if alone.get("metric") is None else f"{alone['metric']:.4f}"
                size = "" if r.get("best_bytes") is None else (
                    f"{r['best_bytes'] / 1e6:.4f}" if self.objective == "latency" else f"{r['best_bytes']:,}"
                )  # fmt: skip
                rx = "" if r.get("best_ratio") is None else f"{r['best_ratio']:.2f}x"
                mv = "" if r.get("best_metric") is None else f"{r['best_metric']:.4f}"
                lines.append(
                    f"| {r['ratio']:g} | {r.get('params_after', 0):,} | {am} | {alone.get('passed', '')} | {size} | "
                    f"{rx} | {mv} | {r.get('trials', '')} | {r.get('seconds', '')} |"
                )
            lines.append("")
        if self.layers:
            timed = self.objective == "latency"
            lines += [
                "| weight | shape | params | choice | sparsity | bits | granularity | bytes (.onnx) | "
                + ("latency change | " if timed else "")
                + "alone: output error | alone: " + self.metric + " |",
                "| --- | --- | ---: | --- | ---: | ---: | --- | ---: | " + ("---: | " if timed else "") + "---: | ---: |",
            ]
            for r in self.layers:
                change = f"{r['latency_delta_ms']:+.4f} ms | " if timed else ""
                lines.append(
                    f"| `{r['name']}` | {r['shape']} | {r['params']:,} | {r['choice']} | {r['sparsity']} | {r['bits']} | "
                    f"{r['granularity']} | {r['bytes']} | {change}{r['alone_error']} | {r['alone_metric']} |"
                )
            lines.append("")
        if self.pareto:
            lines += [
                "## Pareto front (" + ("predicted latency" if self.objective == "latency" else "size") + " vs metric)",
                "",
                f"| trial | {self._unit_header()} | ratio | metric | passed |",
                "| ---: | ---: | ---: | ---: | --- |",
            ]
            for t in self.pareto:
                value = f"{_sz(t) / 1e6:.4f}" if self.objective == "latency" else f"{_sz(t):,}"
                lines.append(
                    f"| {t.number} | {value} | {self.original_size / max(1, _sz(t)):.1f}x | {_mv(t):.4f} | {t.passed} |"
                )
            lines.append("")
        lines += [
            "## Trials",
            "",
            f"| trial | stage | state | {self._unit_header()} | metric | passed | note |",
            "| ---: | --- | --- | ---: | ---: | --- | --- |",
        ]
        for t in self.trials:
            m = "" if t.metric is None else f"{t.metric:.4f}"
            size = "" if t.size is None else (f"{t.size / 1e6:.4f}" if self.objective == "latency" else f"{t.size:,}")
            lines.append(
                f"| {t.number} | {t.stage} | {t.state} | {size} | {m} | {t.passed} | {t.note[:120]} |"
            )
        return "\n".join(lines) + "\n"

    def _unit_header(self) -> str:
        return "predicted ms" if self.objective == "latency" else "bytes"

    def plot_front(self, path: str | os.PathLike[str]) -> bool:
        """Size against metric for every evaluated trial, the Pareto front and the chosen plan."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        ev = [t for t in self.trials if t.evaluated and t.size]
        unit = 1e6 if self.objective == "latency" else 1.0  # latency: ns -> ms on the axis

        def x(t: bayes.TrialRecord) -> float:
            return _sz(t) / unit

        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for stage, color in (("stage2", "tab:orange"), ("stage3", "tab:blue")):
            pts = [t for t in ev if t.stage == stage]
            ax.scatter(
                [x(t) for t in pts], [_mv(t) for t in pts], s=14, alpha=0.6, color=color, label=stage
            )
        front = sorted(self.pareto, key=lambda t: t.size or 0)
        if front:
            ax.step(
                [x(t) for t in front],
                [_mv(t) for t in front],
                where="post",
                color="k",
                lw=1,
                label="Pareto front",
            )
        if self.best is not None:
            ax.scatter(
                [x(self.best)],
                [_mv(self.best)],
                marker="*",
                s=160,
                color="tab:red",
                label="chosen",
                zorder=5,
            )
        ax.axhline(self.reference_metric, color="gray", ls=":", lw=1, label="uncompressed")
        ax.set_xscale("log")
        if self.objective == "ram":
            ax.set_xlabel("RAM estimate (bytes resident after load)")
        elif self.objective == "latency":
            batch = (self.latency or {}).get("batch", 1)
            ax.set_xlabel(f"predicted latency (ms, batch {batch})")
        else:
            ax.set_xlabel("file size (bytes" + (", .onnxc)" if self.container else ", .onnx)"))
        ax.set_ylabel(self.metric + " (validation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True

    def save(
        self, output: str | os.PathLike[str], *, overwrite: bool = False, external_data: bool | None = None
    ) -> list[Path]:
        """Write the best model, ``<out>.plan.yaml``, ``<out>.search.json`` / ``.md`` and
        ``<out>.front.png``. Nothing is written when the search found no passing plan.

        ``external_data``: as ``compress``'s: ``True`` writes the weights of an ``.onnx`` output to
        ``<out>.data``, ``False`` one file, ``None`` as the input is stored. The model is the same
        either way (the ``.onnx`` bytes differ only in where the tensors live)."""
        from onnxcompress.compressor import check_external_data_output
        from onnxcompress.errors import GateFailedError
        from onnxcompress.model_io import check_output
        from onnxcompress.model_io import write_bytes as write_atomic

        check_external_data_output(output, external_data)

        if self.best is None or self.model_bytes is None or self.plan_yaml is None:
            raise GateFailedError(self.summary() + "; nothing written")
        if self.objective == "latency" and not self.best.plan.compresses_anything:
            # the input won: a plan of nulls is not something `compress --config` can apply
            raise GateFailedError(
                f"search: no plan is predicted faster than the input ({self.cost(self.original_size)}): ship the input "
                "as it is, or widen the choices (--runtime-bits, another --latency-batch); nothing written"
            )
        out = Path(output)
        check_output(out, overwrite=overwrite)
        paths = side_files(out)
        write_atomic(paths["plan"], self.plan_yaml.encode())
        write_atomic(
            paths["json"], (json.dumps(self.to_dict(), indent=1, default=_json_default) + "\n").encode()
        )
        write_atomic(paths["markdown"], self.markdown().encode())
        written = [out, paths["plan"], paths["json"], paths["markdown"]]
        if self.plot_front(paths["png"]):
            written.append(paths["png"])
        if external_data is None:
            external_data = self.input_external_data and out.suffix != ".onnxc"
        if external_data:
            import onnx

            from onnxcompress import model_io

            written[:1] = model_io.save(onnx.load_from_string(self.model_bytes), out, external_data=True)
        else:
            write_atomic(out, self.model_bytes)
        return written


class CalibratedHooks:
    """Builds each candidate with ``compress``'s calibrated methods (OBS pruning, GPTQ onto the
    codebook, least-squares refit) on ``data``. A class, not a closure, so worker processes can
    receive it (each builds its own cache).

    Default (``sequential=False``, ``bias_correction=False``): one-shot. The statistics are captured
    once from the original model and each (weight, setting) is calibrated once and reused by every
    later candidate (:class:`~onnxcompress.calibration.cache.CalibrationCache`): cheap, but every
    layer is calibrated against fp32 inputs and biases stay as they are.

    ``sequential=True`` and/or ``bias_correction=True``: every candidate is calibrated by the same
    ``calibrate()`` call ``compress --calibration-data`` makes (each layer sees the outputs of the
    already-compressed layers before it; biases shifted by the mean output change). Nothing can be
    memoised across plans (a weight's statistics depend on the settings of the layers before it), so
    each candidate costs a full calibration, but what is measured is what ``compress`` writes; on
    LeNet-5 at 3 bits and 93% sparsity it is the difference between losing 4.7 and 0.6 validation
    points (docs/search.md). While :attr:`proxy` is set (stage 1, where one weight is compressed at a
    time) candidates use the one-shot cache instead: a cheaper proxy for the sensitivity table; the
    search clears the candidates' memo when it switches back.
    """

    def __init__(
        self, data: Any, *, samples: int | None = None, sequential: bool = False, bias_correction: bool = False
    ) -> None:
        self.data = data
        self.samples = samples
        self.sequential = bool(sequential)
        self.bias_correction = bool(bias_correction)
        self.proxy = False
        self.cache: Any = None
        self.calibrations = 0  # full calibrate() runs (the non-memoised modes)

    @property
    def memoised(self) -> bool:
        """True when candidates come from the one-shot per-(weight, setting) cache."""
        return not (self.sequential or self.bias_correction)

    def calibration_config(self) -> Any:
        """The options candidates are calibrated with (what the plan's ``calibration:`` says)."""
        from onnxcompress.calibration.config import CalibrationConfig

        ccfg = CalibrationConfig(sequential=self.sequential, bias_correction=self.bias_correction)
        return ccfg if self.samples is None else dataclasses.replace(ccfg, samples=int(self.samples))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": None, "calibrations": 0, "proxy": False}

    def __call__(self, model: Any, config: Any) -> Any:
        if not (self.memoised or self.proxy):
            from onnxcompress.calibration.pipeline import calibrate

            self.calibrations += 1
            # bias corrections are written into ``model``: the candidate's own copy
            return calibrate(
                model, self.data, config, calibration=self.calibration_config(), baseline=False
            ).hook
        from onnxcompress.calibration.cache import CalibrationCache

        if self.cache is None:  # candidates are copies of one model; biases are never edited
            ccfg = dataclasses.replace(self.calibration_config(), sequential=False, bias_correction=False)
            self.cache = CalibrationCache(
                model, self.data, calibration=ccfg, min_elements=config.min_elements, seed=config.seed,
            )  # fmt: skip
        return self.cache.hook


def side_files(output: str | os.PathLike[str]) -> dict[str, Path]:
    out = Path(output)
    stem = out.with_suffix("")
    return {
        "plan": Path(f"{stem}.plan.yaml"),
        "json": Path(f"{stem}.search.json"),
        "markdown": Path(f"{stem}.search.md"),
        "png": Path(f"{stem}.front.png"),
        "sensitivity": Path(f"{stem}.sensitivity.json"),
        "sensitivity_md": Path(f"{stem}.sensitivity.md"),
        "sensitivity_png": Path(f"{stem}.sensitivity.png"),
        "latency": Path(f"{stem}.latency.json"),  # objective latency: the timing cache
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return str(o)


def _sz(t: bayes.TrialRecord) -> int:
    return t.size if t.size is not None else 0


def _mv(t: bayes.TrialRecord) -> float:
    return t.metric if t.metric is not None else math.nan


def _pareto(trials: Sequence[bayes.TrialRecord], direction: str) -> list[bayes.TrialRecord]:
    pts = [
        t
        for t in trials
        if t.evaluated and t.size is not None and t.metric is not None and math.isfinite(t.metric)
    ]
    sign = 1.0 if direction == "max" else -1.0
    pts.sort(key=lambda t: (_sz(t), -sign * _mv(t)))
    front: list[bayes.TrialRecord] = []
    best = -math.inf
    for t in pts:
        if sign * _mv(t) > best:
            front.append(t)
            best = sign * _mv(t)
    return front


def _select(
    mode: str, trials: Sequence[bayes.TrialRecord], metric: Metric, max_bytes: int | None
) -> tuple[bayes.TrialRecord | None, bayes.TrialRecord | None]:
    """The best record for the objective, and (when none passed) the closest to passing."""
    ev = [t for t in trials if t.evaluated and t.size is not None]
    passing = [t for t in ev if t.passed]
    sign = 1.0 if metric.direction == "max" else -1.0
    if mode == "target" or (mode == "pareto" and max_bytes is not None):
        fits = [t for t in passing if max_bytes is None or _sz(t) <= max_bytes]
        best = max(fits, key=lambda t: (sign * _mv(t), -_sz(t), -t.number)) if fits else None
    else:
        best = min(passing, key=lambda t: (_sz(t), -sign * _mv(t), t.number)) if passing else None
    closest = None
    measured = ev or [t for t in trials if t.shortfall is not None and t.size is not None]  # quick-stopped
    if best is None and measured:
        closest = min(
            measured, key=lambda t: (t.shortfall if t.shortfall is not None else math.inf, t.size or 0)
        )
    return best, closest


def _stage2_points(
    cands: Candidates, table: stage1.SensitivityTable, mode: str, max_bytes: int | None, limit: int
) -> list[Plan]:
    """The stage-2 plans to check on the real model, in the order they are tried."""
    path = stage2.frontier(table)
    if mode == "target" and max_bytes is not None:
        # by exact size (no model run): the least-error plans whose real file fits the target
        fits = [a for a in path if a.est_bytes <= max_bytes * 1.15]
        fits.sort(key=lambda a: a.est_error)
        out = []
        for a in fits:
            if cands.build(a.plan).size <= max_bytes:
                out.append(a.plan)
            if len(out) >= max(1, limit // 3):
                break
        return out or [path[0].plan]
    return [a.plan for a in path]


def _search_one(
    model: str | os.PathLike[str] | Any,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    settings: SearchSettings,
    *,
    reference: str | os.PathLike[str] | Any = None,
    tag: str | None = None,
    structured_section: Mapping[str, Any] | None = None,
) -> SearchResult:
    """One search of ``model`` with ``settings`` (see :func:`search`); ``reference``: the gates'
    reference and the size ratio's denominator when ``model`` is a pruned copy; ``tag`` names its
    study and stage-1 cache apart from the other ratios'; ``structured_section`` goes into the plan."""
    t_start = time.perf_counter()
    output = settings.output
    gates = settings.resolved_gates
    descent_trials = settings.descent_trials if settings.descent_trials is not None else settings.trials // 2
    report = settings.report
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise ConfigError(f"{output}: folder {Path(output).parent} does not exist")
    container = settings.container
    if container is None:
        container = output is not None and str(output).lower().endswith(".onnxc")
    mode = settings.mode
    m = settings.loaded_metric()
    if mode == "gates" and not gates.any() and (m is None or m.limit is None):
        raise ConfigError(
            "nothing to satisfy: give a gate (--max-accuracy-drop, --min-agreement, --min-cosine, --max-rel-error, "
            "--metric-limit) or a size target (--target-ratio / --max-bytes)"
        )
    if not settings.sparsities or not settings.bits:
        raise ConfigError("the sensitivity grid needs at least one sparsity and one bit width")

    if (settings.calibration_sequential or settings.bias_correction) and settings.calibration_data is None:
        raise ConfigError("--sequential and --bias-correction calibrate candidates: give --calibration-data too")
    hook_factory = (
        CalibratedHooks(
            settings.calibration_data,
            sequential=settings.calibration_sequential,
            bias_correction=settings.bias_correction,
        )
        if settings.calibration_data is not None
        else None
    )

    base = base_config(min_elements=settings.min_elements, seed=0)
    cand_kwargs: dict[str, Any] = {
        "model": model, "data": data, "base": base, "metric": m or Metric("agreement"), "gates": gates,
        "container": container, "labels_key": settings.labels_key, "threads": settings.threads,
        "hook_factory": hook_factory, "reference": reference, "objective": settings.objective,
    }  # fmt: skip
    t0 = time.perf_counter()
    cands = Candidates(**cand_kwargs)
    if m is None:  # auto: accuracy when the data has labels
        m = Metric("accuracy" if cands.labels is not None else "agreement")
        cands = Candidates(**{**cand_kwargs, "metric": m})
    cand_kwargs["metric"] = m
    side = side_files(output) if output is not None else None
    choices = grid(settings.sparsities, settings.bits, settings.granularities, settings.formats, settings.runtime_bits)
    latency_table = None
    if settings.objective == "latency":  # before anything is built: every size is a predicted latency
        latency_table = lat.measure_table(
            cands, choices, batch=settings.latency_batch, cache=side["latency"] if side else None,
            progress=lambda i, n, what: report("latency", {"done": i, "total": n, "what": what}),
        )  # fmt: skip
        cands.attach_latency(latency_table)
        cand_kwargs["latency"] = latency_table  # worker processes build the same predictions
    limit_bytes = settings.max_bytes
    if settings.target_ratio is not None:
        limit_bytes = int(cands.original_size / settings.target_ratio)

    # ---------------------------------------------------------------- stage 1
    if side is not None and tag:  # one stage-1 table per structured ratio
        side["sensitivity"] = side["sensitivity"].with_name(
            side["sensitivity"].name.replace(".sensitivity.json", f".{tag}.sensitivity.json")
        )
    if hook_factory is not None:
        hook_factory.proxy = True  # stage 1 compresses one weight at a time: the one-shot memo
    table = stage1.measure(
        cands,
        choices,
        samples=settings.sensitivity_samples,
        cache=side["sensitivity"] if side else None,
        progress=lambda i, n, what: report("sensitivity", {"done": i, "total": n, "what": what}),
    )  # fmt: skip
    if hook_factory is not None:
        hook_factory.proxy = False
        if not hook_factory.memoised:
            cands.forget()  # stage-1 builds were proxies: from here every candidate is built exactly
    t1 = time.perf_counter()
    evals_after_stage1 = cands.evaluations

    # ---------------------------------------------------------------- the study
    storage = settings.storage
    if storage == "default":
        from onnxcompress.search.storage import default_storage

        storage = default_storage(output) if output is not None else None
    study_key = json.dumps(
        [mode, m.name, m.direction, m.limit, gates.to_dict(), limit_bytes, container, settings.sampler,
         list(settings.sparsities), list(settings.bits), list(settings.granularities), settings.seed, table.fingerprint]
        + ([list(settings.formats), list(settings.runtime_bits)] if "runtime" in settings.formats else []),
        default=str,
    )  # fmt: skip
    label = Path(str(model)).stem if isinstance(model, (str, os.PathLike)) else "model"
    if tag:
        ref_label = Path(str(reference)).stem if isinstance(reference, (str, os.PathLike)) else "model"
        label = f"{ref_label}-{tag}"
    study_name = (
        (f"{settings.study}-{tag}" if settings.study and tag else settings.study)
        or f"{label}-{mode}-" + hashlib.sha256(study_key.encode()).hexdigest()[:10]
    )
    runtime = "runtime" in settings.formats
    space = bayes.Space(
        tuple(layer.name for layer in cands.layers), granularities=tuple(settings.granularities),
        formats=tuple(settings.formats), runtime_bits=tuple(settings.runtime_bits) if runtime else (),
        runtime_layers=tuple(
            layer.name for layer in cands.layers if any(c.format == "runtime" for c in table.choices(layer.name))
        ),
    )  # fmt: skip
    goal = bayes.Goal(
        mode, m.direction, limit_bytes, objective=settings.objective,
        quick_samples=(
            settings.quick_samples if settings.quick_samples is not None
            else (cands.samples // 4 if cands.samples >= 400 else None)
        ),
        early_stop=settings.early_stop,
    )  # fmt: skip
    spec = bayes.StudySpec(
        storage, study_name, settings.sampler, settings.seed, settings.trials, settings.timeout,
        max(4, min(10, settings.trials // 4)), goal, space,
        {k: v for k, v in cand_kwargs.items()},
    )  # fmt: skip
    storage_obj = None
    if storage is not None:
        from onnxcompress.search.storage import open_storage

        storage_obj = open_storage(storage)
    st = bayes.open_study(spec, seed=settings.seed, storage_obj=storage_obj)

    def on_trial(rec: bayes.TrialRecord) -> None:
        report("trial", {"record": rec, "best": bayes.best_passing_size(st) if mode == "gates" else None})

    objective = bayes.Objective(cands, space, goal, on_trial=on_trial)

    # ---------------------------------------------------------------- stage 2 (in the study)
    stage2_best = None
    if bayes.finished(st) == 0:
        objective.stage = "stage2"
        plans = _stage2_points(cands, table, mode, limit_bytes, settings.stage2_evaluations)
        budget = min(settings.stage2_evaluations, settings.trials)
        if mode == "gates" and settings.objective == "latency":
            # the input itself, first: it passes, so from here a plan predicted no faster than the
            # input stops before it runs, and the result is never slower than the input
            st.enqueue_trial(space.params(Plan()), user_attrs={"stage": "stage2"})
            bayes.optimize(st, objective, _one(spec, bayes.finished(st) + 1))
        if mode == "gates":
            # bisection along the path (smallest first): the smallest plan that passes
            lo, hi, tried = 0, len(plans) - 1, 0
            while lo < hi and tried < budget:
                mid = (lo + hi) // 2
                st.enqueue_trial(space.params(plans[mid]), user_attrs={"stage": "stage2"})
                bayes.optimize(st, objective, _one(spec, bayes.finished(st) + 1))
                tried += 1
                last = objective.last  # this process's trial (another worker may have taken the queued one)
                bigger_than_passing = last is not None and "not below the best passing" in last.note
                if last is not None and (last.passed or bigger_than_passing):
                    hi = mid
                else:
                    lo = mid + 1
        else:
            picks = (
                plans[:budget]
                if mode == "target"
                else [plans[i] for i in np.linspace(0, len(plans) - 1, min(budget, len(plans))).astype(int)]
            )
            for plan in picks:
                st.enqueue_trial(space.params(plan), user_attrs={"stage": "stage2"})
                bayes.optimize(st, objective, _one(spec, bayes.finished(st) + 1))
        stage2_trials = bayes.records(st)
        stage2_best, _ = _select(mode, stage2_trials, m, limit_bytes)
        # uniform seeds are codebook plans: with objective latency they all run at the input's speed
        if (mode == "gates" and settings.uniform_evaluations > 0 and "codebook" in settings.formats
                and settings.objective != "latency"):  # fmt: skip
            objective.stage = "uniform"
            _uniform_seeds(
                st, objective, spec, cands, space, stage2_best, settings.bits, settings.granularities[0],
                budget=max(0, min(settings.uniform_evaluations, settings.trials - bayes.finished(st))),
            )  # fmt: skip
    else:
        done = [t for t in bayes.records(st) if t.stage == "stage2"]
        stage2_best, _ = _select(mode, done, m, limit_bytes)
    t2 = time.perf_counter()

    # ---------------------------------------------------------------- stage 3
    objective.stage = "stage3"
    if mode == "gates" and settings.workers == 1 and bayes.finished(st) < settings.trials:
        # warm start: a greedy descent from the best passing plan, one weight one step cheaper at a
        # time (steps from the stage-1 table), before TPE takes over; trials not smaller than the
        # best passing one stop before the model runs, so only real improvements cost a run
        _descend(
            st,
            objective,
            spec,
            table,
            space,
            m,
            budget=max(0, min(settings.trials - bayes.finished(st), descent_trials)),
        )
    if settings.workers == 1 or storage is None:
        if settings.workers > 1:
            raise ConfigError("--workers > 1 needs a shared --storage (e.g. journal:///tmp/study.log)")
        bayes.optimize(st, objective, spec)
    else:
        _run_workers(spec, settings.workers, m)
    t3 = time.perf_counter()

    trials_done = bayes.records(st)
    best, closest = _select(mode, trials_done, m, limit_bytes)
    uniform_best, _ = _select(mode, [t for t in trials_done if t.stage == "uniform"], m, limit_bytes)
    model_bytes = plan_yaml = None
    best_file = best_resident = None
    latency_info: dict[str, Any] | None = None
    layers: list[dict[str, Any]] = []
    if best is not None:
        built = cands.build(best.plan)
        model_bytes = built.file_bytes
        best_file, best_resident = built.file_size, cands.resident(built)
        what = f"{best.size:,} B"
        if settings.objective == "ram":
            what = f"RAM estimate {best_resident:,} B, file {best_file:,} B"
        if latency_table is not None:
            fp32_ns, model_ns = lat.side_by_side(
                [cands.reference_model.SerializeToString() if cands.reference_model is not None else cands.model_bytes,
                 built.onnx_bytes],
                {k: np.ascontiguousarray(v[: latency_table.batch]) for k, v in cands.data.items()}, threads=settings.threads,
            )  # fmt: skip
            latency_info = {
                **latency_table.to_dict(), "threads": settings.threads, "predicted_ms": (best.size or 0) / 1e6,
                "measured": {"fp32_ms": fp32_ns / 1e6, "model_ms": model_ns / 1e6},
            }  # fmt: skip
            what = (
                f"predicted latency {lat.ms(best.size or 0)} (input {lat.ms(cands.original_size)}, batch "
                f"{latency_table.batch}), measured p50 {lat.ms(model_ns)} (input {lat.ms(fp32_ns)}), "
                f"file {best_file:,} B, RAM estimate {best_resident:,} B"
            )
        header = [
            f"onnxcompress search: {what}, {m.name} {best.metric:.4f} on the validation data "
            f"(reference {cands.reference_metric:.4f})",
            "reproduce: onnxcompress compress MODEL -o OUT --config THIS_FILE"
            + (" --calibration-data DATA" if settings.calibration_data is not None else ""),
        ]
        calibration_section = None
        if hook_factory is not None:
            calibration_section = {k: v for k, v in hook_factory.calibration_config().to_dict().items()
                                   if k in ("sequential", "samples", "bias_correction")}  # fmt: skip
        if structured_section:
            header.insert(1, f"structured pruning first (channel ratio {structured_section['ratio']:g}); "
                          "the weight names below are those of the pruned model")  # fmt: skip
        plan_yaml = config_to_yaml(built.config, header, calibration=calibration_section, structured=structured_section)
        by_name = {w.name: w for w in (built.report.weights if built.report else [])}
        for layer in cands.layers:
            c = best.plan.choices.get(layer.name)
            p = table.point(layer.name, c) if c is not None else None
            w = by_name.get(layer.name)
            layers.append({
                "name": layer.name, "shape": list(layer.shape), "params": layer.params,
                "choice": c.label() if c else "fp32", "format": None if c is None or c.kept else c.format,
                "sparsity": None if c is None or c.kept else c.sparsity,
                "bits": None if c is None or c.kept else c.bits, "granularity": None if c is None or c.kept else c.granularity,
                "bytes": w.bytes_after if w else layer.fp32_bytes,
                "alone_error": None if p is None else f"{p.error:.3g}",
                "alone_metric": None if p is None else f"{p.metric:.4f}",
                **({"latency_delta_ms": latency_table.delta(layer.name, c or Choice.keep()) / 1e6}
                   if latency_table is not None else {}),
            })  # fmt: skip
    return SearchResult(
        mode=mode, metric=m.name, metric_direction=m.direction, reference_metric=cands.reference_metric,
        original_size=cands.original_size, container=container, best=best, closest=closest,
        trials=trials_done, stage2=stage2_best, uniform=uniform_best, sensitivity=table, pareto=_pareto(trials_done, m.direction),
        model_bytes=model_bytes, plan_yaml=plan_yaml, layers=layers, study=study_name, storage=storage,
        gates=gates, max_bytes=limit_bytes, evaluations=cands.evaluations - evals_after_stage1,
        sensitivity_evaluations=table.evaluations,
        seconds={"setup": t0 - t_start, "stage1": t1 - t0, "stage2": t2 - t1, "stage3": t3 - t2,
                 "total": time.perf_counter() - t_start, "stage1_cached": float(bool(table.extra.get("cached")))},
        objective=settings.objective, best_file_bytes=best_file, best_resident_bytes=best_resident,
        original_file_bytes=cands.original_file_size, original_resident_bytes=cands.original_resident,
        latency=latency_info if latency_info is not None or latency_table is None
        else {**latency_table.to_dict(), "threads": settings.threads, "predicted_ms": None, "measured": None},
        input_external_data=_stored_externally(model),
    )  # fmt: skip


def _stored_externally(model: Any) -> bool:
    """Whether ``model`` is a path to an ``.onnx`` whose weights live in external data files (the
    rule ``compress_file`` keeps the layout by)."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    from onnxcompress.model_io import size_on_disk

    return size_on_disk(model) > Path(model).stat().st_size


def search(
    model: str | os.PathLike[str] | Any,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    output: str | os.PathLike[str] | None = None,
    gates: Gates | None = None,
    metric: str | Metric = "auto",
    target_ratio: float | None = None,
    max_bytes: int | None = None,
    pareto: bool = False,
    trials: int = 40,
    timeout: float | None = None,
    seed: int = 0,
    storage: str | None = "default",
    study: str | None = None,
    workers: int = 1,
    container: bool | None = None,
    labels_key: str | None = None,
    sampler: str = "tpe",
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    bits: Sequence[int] = DEFAULT_BITS,
    granularities: Sequence[str] = DEFAULT_GRANULARITIES,
    formats: Sequence[str] = DEFAULT_FORMATS,
    runtime_bits: Sequence[int] = DEFAULT_RUNTIME_BITS,
    objective: Objective = "size",
    latency_batch: int = 1,
    sensitivity_samples: int = 256,
    quick_samples: int | None = None,
    calibration_data: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None,
    calibration_sequential: bool = False,
    bias_correction: bool = False,
    min_elements: int = 256,
    stage2_evaluations: int = 12,
    uniform_evaluations: int = 8,
    descent_trials: int | None = None,
    early_stop: bool = True,
    threads: int | None = 1,
    progress: ProgressFn | None = None,
    structured: StructuredSearch | None = None,
) -> SearchResult:
    """Find the smallest plan that passes ``gates`` (default), the best ``metric`` at a size
    target (``target_ratio`` or ``max_bytes``), or the size/metric front (``pareto``).

    ``model``: a path or ModelProto. ``data``: validation data (``.npz``, folder or dict of arrays;
    labels under ``labels_key``/``labels``). ``metric``: ``auto`` (accuracy with labels, else
    agreement), a built-in name, ``module:function``, or a :class:`Metric` (user callables:
    ``Metric("cer", "min", fn=..., limit=0.05)``). ``output``: where the model will be written: its
    suffix sets ``.onnxc`` sizing (``container`` overrides) and, with ``storage="default"``, the
    study is kept in ``<output>.search.db`` so a rerun resumes. ``storage``: None (in memory), a URL
    (:mod:`onnxcompress.search.storage`). ``workers``: local processes sharing the study (the metric
    must then be importable). Deterministic for a fixed ``seed`` with one worker and no ``timeout``.
    ``calibration_data``: candidates use ``compress``'s calibrated methods, one-shot and memoised
    per (weight, setting) by default; ``calibration_sequential`` / ``bias_correction`` calibrate
    every candidate of stages 2-3 the way ``compress --calibration-data`` does with those options
    (exact, a full calibration per candidate; see :class:`CalibratedHooks`).
    ``formats``: ``codebook`` (folded codebooks, the smallest file; decoded to dense float at load)
    and/or ``runtime`` (affine ``runtime_bits``-bit codes onnxruntime keeps quantized for
    MatMul/Gemm/Gather weights): every weight gets the choices of each listed format.
    ``objective``: what is minimised or limited (``target_ratio``, ``max_bytes``, the ratio): ``size``,
    the file bytes, or ``ram``, the bytes a session keeps after constant folding, estimated by
    :func:`~onnxcompress.resident.resident_bytes` (the result reports both for the chosen plan), or
    ``latency``, the batch latency of a stock onnxruntime session predicted from per-weight timings
    measured on this machine at the start (:mod:`~onnxcompress.search.latency`; needs ``runtime``
    among the formats, since codebook weights run as dense float; cached in ``<output>.latency.json``),
    on ``latency_batch`` validation samples; the result holds the chosen plan's prediction beside
    its measured p50 and the input's (:attr:`SearchResult.latency`). ``--target-ratio`` is then a
    predicted speed-up; ``max_bytes`` is refused.
    Uniform seeds are codebook plans: they run only with ``codebook`` among the formats.
    ``uniform_evaluations``: model runs (gates mode) spent on uniform seeds after stage 2: one bit
    width everywhere with global-magnitude sparsities (:func:`~onnxcompress.search.allocate.global_profile`),
    bisected on the sparsity, for the bit widths stage 2's plan uses most and one more; they join
    the study, so the search returns nothing worse than the best of them (0 turns them off).
    ``structured``: a :class:`~onnxcompress.search.structured.StructuredSearch`: channel ratios
    searched as one more dimension (each ratio's structurally pruned model, checked alone against
    the original, then searched per weight; the smallest passing result wins, sized against the
    original file; the plan's ``structured:`` section makes ``compress`` prune the same way;
    :attr:`SearchResult.structured` has one row per ratio). ``trials`` is per searched ratio.
    Raises ConfigError / DataError on bad input; a search that finds nothing returns a result with
    ``passed == False`` and ``closest`` set.
    """
    given = locals()  # search's arguments, before any other local: one SearchSettings from them
    settings = SearchSettings(**{f.name: given[f.name] for f in dataclasses.fields(SearchSettings)})
    if structured is not None and not isinstance(structured, StructuredSearch):
        raise ConfigError(f"structured: expected a StructuredSearch, got {type(structured).__name__}")
    if structured is None or not structured.active:
        return _search_one(model, data, settings)
    return _search_structured(model, data, structured, settings)


def _search_structured(
    model: str | os.PathLike[str] | Any,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    spec: StructuredSearch,
    settings: SearchSettings,
) -> SearchResult:
    """Every ratio of ``spec``: prune, check alone, search; the best result over the ratios."""
    import onnx

    from onnxcompress.model_io import open_model
    from onnxcompress.search import structured as st_mod

    t_start = time.perf_counter()
    original = model if isinstance(model, onnx.ModelProto) else open_model(model, load_external=True)
    inputs = st_mod.pruning_inputs(original, settings.calibration_data, spec.config.samples)
    gates = settings.resolved_gates
    mode = settings.mode
    m = settings.loaded_metric()
    report = settings.report
    rows: list[dict[str, Any]] = []
    results: list[tuple[float, SearchResult]] = []
    for i, ratio in enumerate(spec.ratios):
        t0 = time.perf_counter()
        pruned: Any = None
        row: dict[str, Any] = {"ratio": ratio}
        if ratio > 0 or spec.config.heads > 0:
            pruned, info = st_mod.prune(original, spec, ratio, inputs)
            row.update(info)
        report("structured", {"ratio": ratio, "index": i, "total": len(spec.ratios)})
        if pruned is None:
            from onnxcompress.structured.flops import count_params

            row["params_before"] = row["params_after"] = count_params(original)
        else:
            # the pruned model alone, against the original (one model run): in gates mode, failing
            # here means no plan can pass (when every ratio before it was skipped, the last one is
            # searched anyway: the result then says how close it came)
            check = Candidates(
                pruned, data, base=base_config(min_elements=settings.min_elements, seed=0),
                metric=m or Metric("agreement"), gates=gates, container=False, labels_key=settings.labels_key,
                threads=settings.threads, reference=model,
            )  # fmt: skip
            if m is None:
                check.metric = Metric("accuracy" if check.labels is not None else "agreement")
            alone = check.measure(check.build(Plan())).evaluation
            row["alone"] = {"metric": alone.metric, "passed": alone.passed, "note": alone.describe()}
            last_chance = not results and i == len(spec.ratios) - 1
            if spec.prefilter and mode == "gates" and not alone.passed and not last_chance:
                row["skipped"] = "fails the gates before any weight is quantized"
                row["seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(row)
                continue
        res = _search_one(
            pruned if pruned is not None else model, data, settings,
            reference=model if pruned is not None else None, tag=f"s{ratio:g}",
            structured_section=spec.plan_section(ratio) if pruned is not None else None,
        )  # fmt: skip
        res.pruned_model = pruned
        b = res.best
        row.update({
            "passed": res.passed, "best_bytes": b.size if b else None,
            "best_ratio": round(res.original_size / b.size, 3) if b and b.size else None,
            **({"best_ms": b.size / 1e6 if b and b.size else None} if settings.objective == "latency" else {}),
            "best_metric": b.metric if b else None, "reference_metric": res.reference_metric,
            "trials": len(res.trials), "evaluations": res.sensitivity_evaluations + res.evaluations,
            "plan": b.plan.describe() if b else None, "seconds": round(time.perf_counter() - t0, 1),
        })  # fmt: skip
        rows.append(row)
        results.append((ratio, res))
    sized = settings.max_bytes is not None or settings.target_ratio is not None
    chosen_ratio, chosen = _best_result(mode, results, sized)
    chosen.structured = {
        "chosen_ratio": chosen_ratio,
        "config": spec.plan_section(chosen_ratio),
        "ratios": rows,
    }
    chosen.input_external_data = _stored_externally(model)  # the searched copy is in memory
    chosen.sensitivity_evaluations = sum(r.sensitivity_evaluations for _, r in results)
    chosen.evaluations = sum(r.evaluations for _, r in results)
    chosen.seconds = {**chosen.seconds, "chosen_ratio_total": chosen.seconds.get("total", 0.0),
                      "total": time.perf_counter() - t_start}  # fmt: skip
    return chosen


def _best_result(mode: str, results: list[tuple[float, SearchResult]], sized: bool) -> tuple[float, SearchResult]:
    """The smallest passing result (the best metric at the size target in ``target`` mode); when
    none passed, the one whose closest plan is nearest to passing."""
    passing = [(r, res) for r, res in results if res.best is not None]
    if passing:
        if mode == "target" or (mode == "pareto" and sized):
            def key_t(item: tuple[float, SearchResult]) -> tuple[float, int, float]:
                res = item[1]
                sign = 1.0 if res.metric_direction == "max" else -1.0
                return (-sign * _mv(res.best), _sz(res.best), item[0]) if res.best else (math.inf, 0, 0.0)

            return min(passing, key=key_t)
        return min(passing, key=lambda item: (_sz(item[1].best) if item[1].best else 0, item[0]))

    def shortfall(item: tuple[float, SearchResult]) -> tuple[float, float]:
        c = item[1].closest
        return (c.shortfall if c is not None and c.shortfall is not None else math.inf, item[0])

    return min(results, key=shortfall)


def _cheaper(table: stage1.SensitivityTable, name: str, choice: Any) -> Any:
    """The least-error choice of the stage-1 table that saves bytes over ``choice`` for ``name``
    (None when nothing smaller was measured)."""
    here = table.point(name, choice)
    if here is None:  # off the stage-1 grid (a uniform seed): the next grid sparsity up, same bits
        up = [
            p.choice for p in table.points[name]
            if not p.choice.kept and p.choice.bits == choice.bits and p.choice.granularity == choice.granularity
            and p.choice.format == choice.format and p.choice.sparsity > choice.sparsity and math.isfinite(p.error)
        ]  # fmt: skip
        return min(up, key=lambda c: c.sparsity) if up else None
    smaller = [p for p in table.points[name] if p.delta_bytes < here.delta_bytes and math.isfinite(p.error)]
    if not smaller:
        return None
    return min(smaller, key=lambda p: (p.error, -p.delta_bytes)).choice


def _descend(
    st: Any, objective: bayes.Objective, spec: bayes.StudySpec, table: stage1.SensitivityTable,
    space: bayes.Space, metric: Metric, *, budget: int,
) -> None:  # fmt: skip
    """Greedy descent from the smallest passing plan: per round, every weight moved one step
    cheaper alone (the most accurate cheaper choice in the table); the smallest passing result
    becomes the next centre. A weight whose step failed is not moved again from that centre."""
    tried: set[Any] = {t.plan.key() for t in bayes.records(st)}
    used = 0
    while used < budget:
        best, _ = _select("gates", bayes.records(st), metric, None)
        if best is None:
            return
        moves = []
        for name in space.layers:
            c = best.plan.choices.get(name)
            nxt = _cheaper(table, name, c) if c is not None else None
            if nxt is not None:
                plan = best.plan.with_choice(name, nxt)
                if plan.key() not in tried:
                    moves.append(plan)
        if not moves:
            return
        improved = False
        for plan in moves:
            if used >= budget:
                return
            tried.add(plan.key())
            st.enqueue_trial(space.params(plan), user_attrs={"stage": "stage3"})
            bayes.optimize(st, objective, _one(spec, bayes.finished(st) + 1))
            used += 1
            last = objective.last
            improved = improved or bool(last is not None and last.passed)
        if not improved:
            return


def _uniform_seeds(
    st: Any, objective: bayes.Objective, spec: bayes.StudySpec, cands: Candidates, space: bayes.Space,
    centre: bayes.TrialRecord | None, bits: Sequence[int], granularity: str, *, budget: int,
) -> None:  # fmt: skip
    """Uniform settings checked on the real model: for the bit width stage 2's plan uses most
    (else the middle of the grid) and one more, bisect the global sparsity (0-0.97, steps of 0.01)
    for the sparsest profile that passes, ``budget`` model runs in all. A plan not smaller than the
    best passing one stops before the model runs and counts as passing for the bisection."""
    from onnxcompress.inventory import tensor_array

    used = [c.bits for c in (centre.plan.choices.values() if centre else ()) if not c.kept]
    first = max(set(used), key=lambda b: (used.count(b), -b)) if used else sorted(bits)[len(bits) // 2]
    widths = [first] + ([first + 1] if first + 1 <= 8 else [])
    weights = {layer.name: tensor_array(cands.model, layer.name) for layer in cands.layers}
    levels = [round(0.01 * i, 2) for i in range(98)]
    per_width = [budget // len(widths) + (1 if i < budget % len(widths) else 0) for i in range(len(widths))]
    for b, n in zip(widths, per_width, strict=True):
        lo, hi, tried = 0, len(levels) - 1, 0  # the answer lies in [lo, hi]; hi: assumed to fail
        while lo < hi and tried < n and bayes.finished(st) < spec.trials:
            mid = (lo + hi + 1) // 2
            plan = stage2.global_profile(weights, levels[mid], b, granularity, space.max_sparsity)
            st.enqueue_trial(space.params(plan), user_attrs={"stage": "uniform"})
            bayes.optimize(st, objective, _one(spec, bayes.finished(st) + 1))
            last = objective.last
            bigger_than_passing = last is not None and "not below the best passing" in last.note
            tried += 0 if bigger_than_passing else 1  # only model runs count
            if last is not None and (last.passed or bigger_than_passing):
                lo = mid
            else:
                hi = mid - 1


def _one(spec: bayes.StudySpec, total: int) -> bayes.StudySpec:
    """The same study spec, capped at ``total`` finished trials (one more trial)."""
    import dataclasses

    return dataclasses.replace(spec, trials=total, timeout=None)


def _run_workers(spec: bayes.StudySpec, workers: int, metric: Metric) -> None:
    """Start ``workers`` local processes on the study and wait for them (spawned: no inherited
    onnxruntime threads). Each worker seeds its sampler with seed + its index."""
    import multiprocessing as mp

    if metric.fn is not None and metric.spec is None:
        import pickle

        try:
            pickle.dumps(metric.fn)
        except Exception:
            raise ConfigError(
                "--workers > 1 needs a metric that worker processes can import (a module-level function), "
                "not a lambda or closure"
            ) from None
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=bayes.worker_main, args=(spec, i + 1)) for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise ConfigError(f"{len(bad)} search worker(s) failed (exit codes {bad}); see their messages above")
