"""Command-line glue for structured pruning (``compress --structured RATIO``, plan ``structured:``).

Wiring (in ``onnxcompress/commands/compress.py``): :func:`add_structured_arguments` adds the flag;
:func:`structured_config_from_args` reads the flag and the plan file's ``structured:`` section
(None when neither asks for it); :func:`prune_in_place` runs on the loaded ModelProto before the
codebook stage compresses it, so ``compress`` prunes channels first and quantizes what is left.
Refit and the ``activation`` criterion use ``--calibration-data`` when it is given (training or
validation samples, never the test set).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import onnx

from onnxcompress.structured.config import StructuredConfig, structured_from_dict


def add_structured_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--structured",
        type=float,
        metavar="RATIO",
        help="structured pruning first: remove this fraction of the channels of every dependency group "
        "(the model gets smaller and faster; refit with --calibration-data)",
    )
    parser.add_argument(
        "--structured-heads",
        type=float,
        metavar="RATIO",
        help="structured pruning of attention heads: remove this fraction of the heads of every attention "
        "layer the analysis can follow (Q/K/V columns and output-projection rows of whole heads; "
        "separate from --structured, which sets the MLP / channel ratio)",
    )
    parser.add_argument(
        "--structured-allocation",
        choices=("uniform", "global"),
        help="how the ratio is spread: uniform (default; every group loses that fraction) or global "
        "(the groups together lose that fraction of their channels, taken where the criterion says "
        "they cost least: layers that refit well lose more)",
    )
    parser.add_argument(
        "--structured-latency",
        choices=("none", "model", "groups"),
        help="measure the latency change of structured pruning in process: model (default; pruned vs "
        "original), groups (also each group pruned alone: one measurement per group) or none",
    )


def structured_config_from_args(args: argparse.Namespace) -> StructuredConfig | None:
    section: Any = None
    if getattr(args, "config", None):
        from onnxcompress.config import read_plan_file

        section = read_plan_file(args.config).get("structured")
    cfg = structured_from_dict(section) if section is not None else None
    if getattr(args, "structured", None) is not None:
        cfg = structured_from_dict(args.structured, cfg)
    if getattr(args, "structured_heads", None) is not None:
        cfg = structured_from_dict({"heads": args.structured_heads}, cfg)
    if cfg is None or not cfg.active:
        return None
    allocation = getattr(args, "structured_allocation", None)
    if allocation is not None:
        cfg = dataclasses.replace(cfg, allocation=allocation)
    latency = getattr(args, "structured_latency", None)
    if latency is not None:
        return dataclasses.replace(cfg, latency=latency)
    if section is None or not isinstance(section, dict) or "latency" not in section:
        return dataclasses.replace(cfg, latency="model")  # the command shows it unless told not to
    return cfg


def prune_in_place(model: onnx.ModelProto, cfg: StructuredConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Replace ``model`` by its structurally pruned copy; print the table unless ``--quiet``."""
    from onnxcompress.commands.render import format_structured_report
    from onnxcompress.structured.api import prune_model, pruning_inputs

    # the samples ``search --structured-ratios`` pruned with: a searched plan is reproduced exactly
    data = pruning_inputs(model, getattr(args, "calibration_data", None) or None, cfg.samples)
    pruned, report = prune_model(model, cfg, data)
    model.CopyFrom(pruned)
    if not getattr(args, "quiet", False):
        print(format_structured_report(report))
        print()
    return report.to_dict()
