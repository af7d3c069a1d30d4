"""One-shot calibration, statistics captured once and calibrated encodings memoised per setting.

:func:`~onnxcompress.calibration.pipeline.calibrate` captures each weight's input statistics and
calibrates every weight for one plan. A search compresses hundreds of plans of one model: with
``sequential: false`` the statistics of every weight come from the *original* model, so they do not
depend on the plan, and a weight's calibrated encoding depends only on its own setting (bits,
sparsity, granularity, ...). :class:`CalibrationCache` captures the statistics once and calibrates
each (weight, setting) the first time a plan asks for it; every later plan reuses it. Its
:meth:`hook` gives ``compress_model`` exactly what ``calibrate(model, data, config,
calibration=CalibrationConfig(sequential=False))`` would (same statistics, same per-weight call),
so a plan found with it is reproduced byte for byte by ``compress --config plan.yaml
--calibration-data DATA`` when the plan says ``calibration: {sequential: false}``.

Not covered (the hook then raises, rather than silently differing from ``calibrate``): global and
other whole-model pruning rules (their threshold depends on every weight's setting) and bias
correction (it edits biases, so the model, not only the weight, would depend on the plan).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from onnxcompress import methods
from onnxcompress.algorithms.calibrated.hessian import InverseMemo
from onnxcompress.calibration.capture import LayerStats, Target, capture, find_targets, get_tensor, prepare
from onnxcompress.calibration.config import CalibrationConfig
from onnxcompress.calibration.pipeline import (
    calibrate_runtime,
    calibrate_weight,
    limit_blas_threads,
    open_calibration_data,
    stats_error,
    weight_rows,
)
from onnxcompress.config import WeightConfig
from onnxcompress.errors import ConfigError
from onnxcompress.inventory import WeightInfo, build_inventory

#: Pruning rules whose mask depends on one weight alone (so its encoding can be memoised).
LOCAL_PRUNING = ("none", "magnitude", "nm", "std")


class CalibrationCache:
    """Statistics of every calibratable weight of ``model`` on ``data`` (captured on first use),
    and the calibrated encoding of each (weight, setting) asked for so far.

    ``calibration``: the calibration options (``sequential`` is forced off: that is what makes the
    statistics plan-independent; ``bias_correction`` must be off).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        data: str | os.PathLike[str] | Mapping[str, np.ndarray],
        *,
        calibration: CalibrationConfig | None = None,
        min_elements: int = 256,
        seed: int = 0,
        threads: int | None = None,
    ) -> None:
        ccfg = dataclasses.replace(calibration or CalibrationConfig(), sequential=False)
        if ccfg.bias_correction or any(ov.get("bias_correction") for ov in ccfg.names.values()):
            raise ConfigError(
                "calibrated search candidates need bias_correction off (it edits biases per plan)"
            )
        self.model = onnx.ModelProto()  # compress_model edits the model it is given: keep our own
        self.model.CopyFrom(model)
        self.data = data
        self.calibration = ccfg
        self.min_elements = min_elements
        self.seed = seed
        self.threads = threads
        self._stats: dict[str, LayerStats] | None = None
        self._targets: dict[str, Target] = {}
        # codebook / pruned weights: CalibratedEncoding; format runtime: RuntimeWeight (a byte a weight)
        self._encodings: dict[tuple[str, WeightConfig], tuple[Any, float]] = {}
        self._users: Any = None  # the model's consumers, for runtime rewrites (computed once)
        # each weight's H is factorised once, not once per setting (and per OBS and GPTQ step)
        self._inverses = InverseMemo()
        self.capture_seconds = 0.0
        self.calibrate_seconds = 0.0
        self.calibrations = 0  # (weight, setting) pairs calibrated (cache misses)

    # ------------------------------------------------------------------ statistics

    def _ensure_stats(self) -> dict[str, LayerStats]:
        if self._stats is not None:
            return self._stats
        t0 = time.perf_counter()
        inv = build_inventory(self.model, min_elements=self.min_elements)
        infos = [w for w in inv.weights if w.compressible]
        targets, _ = find_targets(self.model, infos)
        self._stats = {}
        if targets:
            cmodel, targets = prepare(self.model, targets)
            batches, _ = open_calibration_data(
                self.model,
                self.data,
                samples=self.calibration.samples,
                batch_size=self.calibration.batch_size,
            )
            self._stats = capture(cmodel, targets, batches, threads=self.threads)
            self._targets = {t.info.name: t for t in targets}
        self.capture_seconds += time.perf_counter() - t0
        return self._stats

    @property
    def weights(self) -> list[str]:
        """The weights calibration handles (the others are compressed by the plain algorithms)."""
        return [n for n, st in self._ensure_stats().items() if st.samples > 0]

    # ------------------------------------------------------------------ encodings

    def encoding(
        self, w: np.ndarray, info: WeightInfo, cfg: WeightConfig
    ) -> tuple[Any, float] | None:
        """``(record, relative output error on the calibration statistics)`` of ``w`` under ``cfg``
        (the record: a :class:`CalibratedEncoding`, or a ``RuntimeWeight`` for ``format: runtime``),
        or None when calibration does not handle this weight or method."""
        stats = self._ensure_stats()
        st = stats.get(info.name)
        if st is None or st.samples == 0 or not methods.get(cfg.method).calibrated:
            return None
        if cfg.prunes and cfg.pruning not in LOCAL_PRUNING:
            raise ConfigError(
                f"{info.name}: pruning {cfg.pruning!r} depends on every weight's setting; "
                f"calibrated search candidates support {', '.join(LOCAL_PRUNING)}"
            )
        key = (info.name, cfg)
        hit = self._encodings.get(key)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        blas = limit_blas_threads()
        try:
            with self._inverses:
                if cfg.format == "runtime":  # GPTQ onto affine codes, as compress --calibration-data does
                    from onnxcompress.passes import runtime_native as rn
                    from onnxcompress.passes.versions import default_opset

                    if self._users is None:
                        self._users = rn.consumers(self.model)
                    rec, _, dec, _ = calibrate_runtime(
                        w, self._targets[info.name].info, cfg, st, self.calibration.resolve(info.name),
                        self._users, default_opset(self.model), None, False,
                    )  # fmt: skip
                    dec2 = weight_rows(dec, info.axis)
                else:
                    rec, _, dec2, _ = calibrate_weight(
                        w,
                        self._targets[info.name].info,
                        cfg,
                        st,
                        self.calibration.resolve(info.name),
                        seed=self.seed,
                    )
            err = stats_error(weight_rows(w, info.axis), dec2, st)
        finally:
            if blas is not None:
                blas.restore_original_limits()
        self.calibrate_seconds += time.perf_counter() - t0
        self.calibrations += 1
        self._encodings[key] = (rec, err)
        return rec, err

    def hook(
        self, w: np.ndarray, info: WeightInfo, cfg: WeightConfig
    ) -> tuple[Any, np.ndarray] | None:
        """``compress_model``'s weight hook: the memoised calibrated encoding (or None: plain); for a
        ``format: runtime`` weight, its calibrated ``RuntimeWeight`` and decoded array."""
        found = self.encoding(w, info, cfg)
        if found is None:
            return None
        if cfg.format == "runtime":  # the compressor takes a RuntimeWeight and its exact decoded array
            from onnxcompress.passes import runtime_native as rn

            return found[0], rn.decoded(found[0])
        return found[0].build()

    def weight_error(self, name: str, cfg: WeightConfig) -> float | None:
        """The relative output error ``sqrt(tr(dW H dW^T) / tr(W H W^T))`` of a weight under a
        setting already calibrated (stage 1's layer-output proxy), else None."""
        hit = self._encodings.get((name, cfg))
        return None if hit is None else hit[1]

    def layer_error(self, name: str, cfg: WeightConfig) -> float | None:
        """The same error, calibrating the weight first when needed (None: not calibratable)."""
        self._ensure_stats()
        t = self._targets.get(name)
        if t is None:
            return None
        found = self.encoding(get_tensor(self.model, name), t.info, cfg)
        return None if found is None else found[1]
