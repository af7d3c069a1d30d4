"""Calibration-aware post-training compression (issue 7).

``calibrate(model, data, config)`` -> :class:`CalibrationResult` whose ``hook`` is a
``compress_model`` weight hook. Numerics live in :mod:`onnxcompress.algorithms.calibrated`.
"""

from onnxcompress.calibration.config import CalibrationConfig, load_calibration_config
from onnxcompress.calibration.pipeline import CalibrationResult, WeightCalibration, calibrate

__all__ = [
    "CalibrationConfig",
    "CalibrationResult",
    "WeightCalibration",
    "calibrate",
    "load_calibration_config",
]
