"""Calibration flags of ``compress`` and the calibration they ask for.

``add_calibration_arguments(parser)`` in ``add_arguments``; ``calibrate_from_args(model, args,
config, progress)`` returns the :class:`~onnxcompress.calibration.CalibrationResult` (whose
``hook`` feeds ``compress_model``), or None without ``--calibration-data``. Bias correction edits
the biases of ``model`` in place, so compress that same ModelProto afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from onnxcompress.calibration.config import (
    PRUNE_METHODS,
    QUANT_METHODS,
    CalibrationConfig,
    load_calibration_config,
)
from onnxcompress.calibration.pipeline import CalibrationResult, calibrate
from onnxcompress.config import CompressionConfig
from onnxcompress.progress import ProgressCallback


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("calibration (post-training, data-aware compression)")
    g.add_argument(
        "--calibration-data", metavar="DATA",
        help="inputs to calibrate on: .npz keyed by input name, .npy, or a folder; enables calibrated methods",
    )  # fmt: skip
    g.add_argument("--calibration-samples", type=int, metavar="N", help="samples used (default 256)")
    g.add_argument(
        "--calibration-method", choices=QUANT_METHODS,
        help="how codebook assignments are chosen (default gptq: error feedback onto the k-means codebook)",
    )  # fmt: skip
    g.add_argument(
        "--calibration-pruning", choices=PRUNE_METHODS, help="obs (default, SparseGPT) or magnitude"
    )
    g.add_argument(
        "--no-refit", action="store_true", help="keep the k-means codebook values (no least-squares refit)"
    )
    g.add_argument("--bias-correction", action="store_true", help="shift biases by the mean output change")
    g.add_argument(
        "--no-sequential", action="store_true",
        help="collect all statistics from the original model in one pass (faster, usually less accurate)",
    )  # fmt: skip
    g.add_argument("--damp", type=float, help="Hessian dampening, fraction of mean diag (default 0.01)")
    g.add_argument(
        "--smooth", type=float, metavar="ALPHA",
        help="SmoothQuant: first move activation outliers into the weights of --activations int8 MatMuls "
        "(per-channel scales from the calibration data; 0.5 is typical; MiniLM w8a8: nearest-neighbour "
        "agreement 0.89 -> 0.92, 0.96 with the FFN-down MatMuls on float activations)",
    )  # fmt: skip
    g.add_argument(
        "--calibration-batch-size", type=int, metavar="N", help="batch size when running the model"
    )


def calibration_config_from_args(args: argparse.Namespace) -> CalibrationConfig:
    cfg = CalibrationConfig()
    plan = getattr(args, "config", None)
    if plan:
        cfg = load_calibration_config(plan, cfg)
    ov: dict[str, Any] = {}
    if getattr(args, "calibration_samples", None) is not None:
        ov["samples"] = args.calibration_samples
    if getattr(args, "calibration_method", None):
        ov["quant_method"] = args.calibration_method
    if getattr(args, "calibration_pruning", None):
        ov["prune_method"] = args.calibration_pruning
    if getattr(args, "no_refit", False):
        ov["refit"] = False
    if getattr(args, "bias_correction", False):
        ov["bias_correction"] = True
    if getattr(args, "no_sequential", False):
        ov["sequential"] = False
    if getattr(args, "damp", None) is not None:
        ov["damp"] = args.damp
    if getattr(args, "smooth", None) is not None:
        ov["smooth"] = args.smooth
    if getattr(args, "calibration_batch_size", None) is not None:
        ov["batch_size"] = args.calibration_batch_size
    return dataclasses.replace(cfg, **ov)


def calibrate_from_args(
    model: Any, args: argparse.Namespace, config: CompressionConfig, progress: ProgressCallback | None = None
) -> CalibrationResult | None:
    """Calibrate ``model`` (a ModelProto, or a path that is loaded) when ``--calibration-data`` is
    given; None otherwise. Prints nothing."""
    data = getattr(args, "calibration_data", None)
    if not data:
        return None
    if not hasattr(model, "graph"):
        from onnxcompress.model_io import open_model

        model = open_model(model)
    ccfg = calibration_config_from_args(args)
    return calibrate(model, data, config, calibration=ccfg, progress=progress)
