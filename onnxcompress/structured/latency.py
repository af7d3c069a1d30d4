"""Measured latency of a pruned model against its original, for the structured report.

FLOPs say what pruning removed; only a clock says what it bought (depthwise layers, small widths
and per-op overhead make the two differ). This is the quick, in-process measurement that
``compress --structured`` shows: both sessions (from :func:`onnxcompress.sessions.make_session`,
one intra-op thread) are built once and run alternately, ``rounds`` x ``runs`` timed runs each
after a warm-up, on one batch (the first calibration batch, else synthetic inputs from the
input spec); the result is the median over rounds of each round's p50. For publishable numbers
use ``onnxcompress bench`` (fresh processes, side by side). Per group (``latency: groups``), the
original is compared with a copy in which only that group lost its channels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

LATENCY_MODES = ("none", "model", "groups")


@dataclass(frozen=True)
class LatencyChange:
    """p50 latency before and after (ms), medians over alternating rounds."""

    before_ms: float
    after_ms: float
    runs: int
    rounds: int

    @property
    def speedup(self) -> float:
        return self.before_ms / max(self.after_ms, 1e-12)


def _feed(session: object, batch: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    from onnxcompress.evaluation.data import input_specs, open_data

    specs = input_specs(session)
    if batch is not None:
        names = {s.name for s in specs}
        feed = {k: np.asarray(v)[:1] for k, v in batch.items() if k in names}
        if len(feed) == len(names):
            return feed
    source = open_data(None, specs, seed=0)
    return dict(next(source.batches(1, limit=1)).inputs)


def measure_change(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    batch: Mapping[str, np.ndarray] | None = None,
    *,
    runs: int = 20,
    rounds: int = 3,
    warmup: int = 3,
) -> LatencyChange:
    """Latency of ``before`` and ``after`` on the same single-sample batch (see the module docstring)."""
    from onnxcompress.sessions import make_session

    sessions = [make_session(m, threads=1) for m in (before, after)]
    feed = _feed(sessions[0], batch)
    p50s: list[list[float]] = [[], []]
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for k in order:
            s = sessions[k]
            for _ in range(warmup):
                s.run(None, feed)
            t = np.empty(runs)
            for i in range(runs):
                t0 = time.perf_counter()
                s.run(None, feed)
                t[i] = time.perf_counter() - t0
            p50s[k].append(float(np.median(t)) * 1e3)
    return LatencyChange(float(np.median(p50s[0])), float(np.median(p50s[1])), runs, rounds)
