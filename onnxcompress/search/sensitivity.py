"""Stage 1: how fragile each weight is, alone, under every (sparsity, bits, granularity) choice.

For each weight and each choice, the model is compressed with only that weight changed and run on
the first ``samples`` validation samples. Recorded per point: the exact change in file size, the
model's output error (relative squared error of the outputs: the additive proxy stage 2 allocates
with), the metric (e.g. top-1 agreement) and the weight's own relative error (the cheapest proxy,
no model run). The table is cached as ``sensitivity.json`` keyed by a fingerprint of the model, the
data, the size kind and the grid, so reruns and other objectives reuse it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxcompress.errors import ConfigError, EncodingError
from onnxcompress.search.candidates import Candidates, Layer
from onnxcompress.search.space import Choice, Plan

FORMAT = 1


@dataclass(frozen=True)
class Point:
    """One (weight, choice) measurement."""

    choice: Choice
    delta_bytes: int  # change of the searched cost against the uncompressed model: bytes, or ns for latency
    error: float  # relative squared output error with only this weight compressed
    metric: float
    weight_error: float  # ||W - W_hat|| / ||W|| (0 when kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "choice": self.choice.to_dict(),
            "delta_bytes": self.delta_bytes,
            "error": _num(self.error),
            "metric": _num(self.metric),
            "weight_error": _num(self.weight_error),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        return cls(
            Choice.from_dict(d["choice"]), int(d["delta_bytes"]), _unnum(d["error"]), _unnum(d["metric"]), _unnum(d["weight_error"])
        )


def _num(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _unnum(v: float | str) -> float:
    return float(v)


@dataclass
class SensitivityTable:
    fingerprint: str
    metric: str
    samples: int
    base_size: int  # file size with every weight left alone (the container of it for .onnxc)
    reference_metric: float
    layers: list[Layer]
    points: dict[str, list[Point]]
    seconds: float = 0.0
    evaluations: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def choices(self, layer: str) -> list[Choice]:
        return [p.choice for p in self.points[layer]]

    def point(self, layer: str, choice: Choice) -> Point | None:
        for p in self.points[layer]:
            if p.choice == choice:
                return p
        return None

    def estimate(self, plan: Plan) -> tuple[int, float]:
        """Additive estimate of (file size, output error) of a whole plan."""
        size, err = self.base_size, 0.0
        for name, choice in plan.choices.items():
            p = self.point(name, choice)
            if p is not None:
                size += p.delta_bytes
                err += p.error
        return size, err

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "metric": self.metric,
            "samples": self.samples,
            "base_size": self.base_size,
            "reference_metric": self.reference_metric,
            "seconds": round(self.seconds, 3),
            "evaluations": self.evaluations,
            "layers": [asdict(layer) for layer in self.layers],
            "points": {n: [p.to_dict() for p in pts] for n, pts in self.points.items()},
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityTable:
        layers = [
            Layer(x["name"], tuple(x["shape"]), x["params"], tuple(x["op_types"]), x["fp32_bytes"])
            for x in d["layers"]
        ]
        points = {n: [Point.from_dict(p) for p in pts] for n, pts in d["points"].items()}
        return cls(
            d["fingerprint"], d["metric"], d["samples"], d["base_size"], d["reference_metric"], layers, points,
            d.get("seconds", 0.0), d.get("evaluations", 0), {k: d[k] for k in ("objective", "skipped") if k in d},
        )  # fmt: skip

    # ------------------------------------------------------------------ rendering

    def markdown(self) -> str:
        """Per weight and bits: the metric at each sparsity (Deep Compression Fig. 5 as a table)."""
        lines = [
            f"Sensitivity: {self.metric} on {self.samples} validation samples with only one weight compressed "
            f"(reference {self.reference_metric:.4f}); bytes = "
            + {"ram": "resident-bytes (RAM estimate) change.", "latency": "predicted latency change (ms)."}.get(
                str(self.extra.get("objective")), "file size change."
            ),
            "",
        ]
        for layer in self.layers:
            runtime = [p for p in self.points[layer.name] if p.choice.format == "runtime"]
            pts = [p for p in self.points[layer.name] if not p.choice.kept and p.choice.format == "codebook"]
            sparsities = sorted({p.choice.sparsity for p in pts})
            lines.append(
                f"### `{layer.name}` {list(layer.shape)}, {layer.params:,} weights, {layer.fp32_bytes:,} B"
            )
            lines.append("")
            lines.append("| bits | " + " | ".join(f"p={s:g}" for s in sparsities) + " |")
            lines.append("| --- |" + " ---: |" * len(sparsities))
            rows = sorted({(p.choice.granularity, p.choice.bits) for p in pts})
            for gran, bits in rows:
                cells = []
                for s in sparsities:
                    p = self.point(layer.name, Choice(s, bits, gran))
                    cells.append("" if p is None else f"{p.metric:.4f} ({self._delta(p)})")
                tag = "" if gran == "tensor" else f" {gran}"
                lines.append(f"| {bits}{tag} | " + " | ".join(cells) + " |")
            for p in sorted(runtime, key=lambda p: p.choice.bits):  # no sparsity: one cell
                lines.append(f"| {p.choice.bits} runtime | {p.metric:.4f} ({self._delta(p)}) |")
            lines.append("")
        return "\n".join(lines)

    def _delta(self, p: Point) -> str:
        if self.extra.get("objective") == "latency":  # delta_bytes holds nanoseconds
            return f"{p.delta_bytes / 1e6:+.4f} ms"
        return f"{p.delta_bytes:+,} B"

    def plot(self, path: str | os.PathLike[str]) -> bool:
        """Metric against sparsity (at the most bits measured) and against bits (at no pruning),
        one line per weight. Returns False when matplotlib is not installed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for layer in self.layers:
            rt = sorted((p.choice.bits, p.metric) for p in self.points[layer.name] if p.choice.format == "runtime")
            if rt:  # runtime-native choices: metric against bits only (they are never pruned)
                ax2.plot([x for x, _ in rt], [y for _, y in rt], marker="s", linestyle="--",
                         label=f"{layer.name} (runtime)")  # fmt: skip
            pts = [
                p for p in self.points[layer.name]
                if not p.choice.kept and p.choice.granularity == "tensor" and p.choice.format == "codebook"
            ]  # fmt: skip
            if not pts:
                continue
            top = max(p.choice.bits for p in pts)
            low_p = min(p.choice.sparsity for p in pts)
            a = sorted((p.choice.sparsity, p.metric) for p in pts if p.choice.bits == top)
            b = sorted((p.choice.bits, p.metric) for p in pts if p.choice.sparsity == low_p)
            ax1.plot([x for x, _ in a], [y for _, y in a], marker="o", label=layer.name)
            ax2.plot([x for x, _ in b], [y for _, y in b], marker="o", label=layer.name)
        ax1.set_xlabel("fraction pruned (magnitude)")
        ax1.set_ylabel(self.metric)
        ax1.set_title("metric vs sparsity (one weight at a time, most bits)")
        ax2.set_xlabel("bits (codebook; dashed: runtime-native)")
        ax2.set_title("metric vs bits (one weight at a time, least pruning)")
        for ax in (ax1, ax2):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
                break
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True


Progress = Callable[[int, int, str], None]


def measure(
    cands: Candidates,
    choices: Sequence[Choice],
    *,
    samples: int = 256,
    cache: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> SensitivityTable:
    """Stage 1 over every layer x choice, or the cached table when its fingerprint matches."""
    key = f"{cands.fingerprint()}-{samples}-" + ",".join(c.label() for c in sorted(set(choices)))
    if cache is not None and Path(cache).is_file():
        try:
            cached = SensitivityTable.from_dict(json.loads(Path(cache).read_text()))
            if cached.fingerprint == key:
                cached.extra["cached"] = True
                return cached
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable or older cache is rebuilt
    t0 = time.perf_counter()
    before = cands.evaluations
    base = cands.build(Plan())
    todo = [(layer, c) for layer in cands.layers for c in choices]
    points: dict[str, list[Point]] = {layer.name: [] for layer in cands.layers}
    skipped: list[str] = []
    n = min(samples, cands.samples)
    for i, (layer, choice) in enumerate(todo):
        if progress is not None:
            progress(i, len(todo), f"{layer.name} {choice.label()}")
        if choice.kept:
            points[layer.name].append(Point(choice, 0, 0.0, cands.base_evaluation.metric, 0.0))
            continue
        try:
            built = cands.build(Plan({layer.name: choice}))
        except (ConfigError, EncodingError) as e:
            if choice.format != "runtime":
                raise
            # a runtime layout this weight cannot take: the choice is left out of its table, so
            # no later stage picks it (bayes.Space.runtime_layers)
            skipped.append(f"{layer.name} {choice.label()}: {e}")
            continue
        m = cands.measure(built, samples=n)
        werr = 0.0
        if built.report is not None and built.report.weights:
            werr = float(built.report.weights[0].rel_error)
        elif built.report is None:
            werr = 0.0
        points[layer.name].append(
            Point(choice, built.size - base.size, cands.output_error(m.outputs), m.evaluation.metric, werr)
        )
    if progress is not None:
        progress(len(todo), len(todo), "done")
    table = SensitivityTable(
        key, cands.metric.name, n, base.size, cands.reference_metric, list(cands.layers), points,
        time.perf_counter() - t0, cands.evaluations - before,
    )  # fmt: skip
    if skipped:
        table.extra["skipped"] = skipped
    if cands.objective != "size":  # delta_bytes and base_size count resident bytes
        table.extra["objective"] = cands.objective
    if cache is not None:
        from onnxcompress.model_io import write_bytes

        write_bytes(cache, (json.dumps(table.to_dict(), indent=1) + "\n").encode())
    return table
