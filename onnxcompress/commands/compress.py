"""``onnxcompress compress MODEL -o OUT``: prune and codebook-quantize a model's weights."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from onnxcompress.config import (
    DEFAULT_PRESET,
    PRESET_CAVEATS,
    CompressionConfig,
    load_config,
    preset,
)
from onnxcompress.errors import ConfigError, NoCompressibleWeightsError

HELP = "compress a model's weights (pruning + k-means / CLIP-Q codebooks) into a smaller ONNX model"

#: The one rule for combining plan sources, shown by ``--help`` and quoted in the README (a test
#: checks both): what is typed last, on the command line, wins.
PLAN_ORDER = (
    "Order: --preset, then the --config plan, then the flags; each overrides the one before "
    "(flags set the global weight: settings, the plan's op_types and names entries still refine "
    "them; --exclude adds patterns)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="input ONNX model (.onnx, with or without external data; an .onnxc is expanded first)"
    )
    p.add_argument(
        "-o",
        "--output",
        help="output .onnx, or .onnxc for the entropy-coded container (default: MODEL.cmp.onnx)",
    )
    from onnxcompress.commands.plan_view import add_plan_arguments

    add_plan_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--external-data", action=argparse.BooleanOptionalAction, default=None,
        help="write the initializers to OUTPUT.data beside the .onnx output (same permissions), or "
        "(--no-external-data) everything in one file; default: as the input is stored. onnxruntime "
        "reads external initializers from the file instead of the protobuf, so a --format runtime model's "
        "session holds less private memory and is created faster (8-bit MLP: peak RSS x0.67 of fp32, x0.77 "
        "as one file; MiniLM 8-bit: x0.88, x0.93 as one file); not with an .onnxc output (the container "
        "holds everything)",
    )  # fmt: skip
    p.add_argument("--report", metavar="JSON", help="write the per-weight report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the totals")
    from onnxcompress.commands._calibration_args import add_calibration_arguments

    add_calibration_arguments(p)
    from onnxcompress.commands._structured_args import add_structured_arguments

    add_structured_arguments(p)
    v = p.add_argument_group("verification after compressing (needs onnxruntime)")
    v.add_argument(
        "--verify-data", metavar="DATA", help="compare original and compressed on this .npz / folder"
    )
    try:
        from onnxcompress.commands.verify import add_gate_arguments

        add_gate_arguments(v)
        v.add_argument(
            "--labels", default=None, help="labels key in the data file (default: 'labels' if present)"
        )
        v.add_argument("--batch-size", type=int, default=64)
    except ImportError:  # the verify command is optional at import time
        pass


def config_from_args(args: argparse.Namespace) -> CompressionConfig:
    cfg = preset(args.preset or DEFAULT_PRESET)
    if args.config:
        cfg = load_config(args.config, cfg)
    overrides: dict[str, Any] = {}
    for name in ("method", "bits", "sparsity", "pruning", "quality", "granularity", "group_size", "init",
                 "codebook_dtype", "encoding", "format", "block_size", "activations", "accuracy_level"):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if args.nm:
        try:
            n, m = (int(x) for x in args.nm.split(":"))
        except ValueError:
            raise ConfigError(f"--nm expects N:M such as 2:4, got {args.nm!r}") from None
        overrides.update(n=n, m=m, pruning="nm")
    if (
        args.sparsity is not None
        and args.pruning is None
        and cfg.weight.pruning in ("std", "nm")
        and not args.nm
    ):
        overrides["pruning"] = "magnitude"
    if "pruning" not in overrides and args.quality is not None:
        overrides["pruning"] = "std"
    weight = dataclasses.replace(cfg.weight, **overrides)
    return dataclasses.replace(
        cfg,
        weight=weight,
        exclude=tuple(cfg.exclude) + tuple(args.exclude),
        min_elements=args.min_elements if args.min_elements is not None else cfg.min_elements,
        seed=args.seed if args.seed is not None else cfg.seed,
    )


def default_output(model: str) -> str:
    p = Path(model)
    return str(p.with_name(p.stem + ".cmp.onnx"))


def check_paths(args: argparse.Namespace, output: str) -> None:
    """Every input and output path, before any work: nothing is written when one is wrong."""
    from onnxcompress import model_io
    from onnxcompress.compressor import check_external_data_output

    model_io.check_input(args.model)
    check_external_data_output(output, getattr(args, "external_data", False))
    if args.config:
        model_io.check_plan_path(args.config)
    for flag in ("calibration_data", "verify_data"):
        if getattr(args, flag, None):
            model_io.check_data_path(getattr(args, flag), "--" + flag.replace("_", "-"))
    model_io.check_output(output, inputs=[args.model], overwrite=args.overwrite)
    if args.report:
        model_io.check_output(args.report, inputs=[args.model], overwrite=True)


def warn_plan(args: argparse.Namespace, config: CompressionConfig, model: Any) -> None:
    """Plan entries that match nothing, or that ``pruning: global`` overrides, as warnings on stderr
    (the run goes on: a typo in a plan should be seen, not fatal). ``model``: the opened input,
    the same ModelProto that is then compressed (the file is parsed once)."""
    from onnxcompress.commands.plan_view import plan_from_args
    from onnxcompress.inventory import build_inventory
    from onnxcompress.plan_check import check_plan

    _, base = plan_from_args(args)
    inv = build_inventory(model, min_elements=config.min_elements, code_vectors=config.code_vectors)
    for issue in check_plan(config, inv, base=base):
        print(f"onnxcompress: warning: {issue}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from onnxcompress.calibration import CalibrationResult
    from onnxcompress.commands.display import terminal_progress
    from onnxcompress.commands.render import format_calibration, format_report
    from onnxcompress.compressor import compress_file
    from onnxcompress.model_io import open_model, write_report

    output = args.output or default_output(args.model)
    check_paths(args, output)
    config = config_from_args(args)
    calibrations: list[CalibrationResult] = []

    from onnxcompress.commands._structured_args import structured_config_from_args

    structured = structured_config_from_args(args)
    # a hook (calibration, structured pruning) runs the model: it needs the external data loaded;
    # without one, compress_file reads each weight from its data file when it compresses it
    hooked = bool(getattr(args, "calibration_data", None) or structured)
    model = open_model(args.model, load_external=hooked)
    warn_plan(args, config, model)
    structured_reports: list[dict[str, Any]] = []

    with terminal_progress(enabled=not args.quiet) as progress:

        def calibration_hook(model: Any) -> Any:
            from onnxcompress.commands._calibration_args import calibrate_from_args

            if structured is not None:  # channels go first, the codebook stage quantizes what is left
                from onnxcompress.commands._structured_args import prune_in_place

                structured_reports.append(prune_in_place(model, structured, args))
            calibration = calibrate_from_args(model, args, config, progress)
            if calibration is None:
                return None
            calibrations.append(calibration)
            return calibration.hook

        try:
            result = compress_file(
                args.model,
                output,
                config,
                overwrite=args.overwrite,
                progress=progress,
                # without calibration data or structured pruning there is no hook, and compress_file
                # can read weights one by one
                hook_factory=calibration_hook if hooked else None,
                model=model,
                external_data=args.external_data,
            )
        except NoCompressibleWeightsError as exc:
            raise NoCompressibleWeightsError(f"{exc} (--min-elements, --exclude, --config)") from None
    report = result.report
    if structured_reports:
        report.extra["structured"] = structured_reports[0]
    calibrated = bool(getattr(args, "calibration_data", None))
    caveat = PRESET_CAVEATS.get(args.preset or "") if not calibrated else None
    # with --verify-data the damage is measured below, not predicted
    for warning in ([caveat] if caveat else []) + ([] if args.verify_data else report.warnings):
        print(f"onnxcompress: warning: {warning}", file=sys.stderr)
    if calibrations:
        report.extra["calibration"] = calibrations[0].to_dict()
        if not args.quiet:
            print(format_calibration(calibrations[0]))
            print()
    text = format_report(report)
    totals = ("weights:", "weight bytes:", "file:", "time:")  # what -q keeps: the totals, no table
    print(text if not args.quiet else "\n".join(ln for ln in text.splitlines() if ln.startswith(totals)))
    if result.container is not None and not args.quiet:
        from onnxcompress.container import format_report as format_staircase

        print()
        print(format_staircase(result.container))
    data = Path(str(output) + ".data")
    print(f"wrote {output}" + (f" and {data} (external data)" if data.exists() else ""))
    if args.report:
        write_report(args.report, json.dumps(report.to_dict(), indent=2, default=str))
    if args.verify_data:
        from onnxcompress.commands.verify import run_verification

        print(file=sys.stderr)
        return run_verification(args.model, output, _verify_args(args))
    return 0


def _verify_args(args: argparse.Namespace) -> argparse.Namespace:
    """The subset of arguments the verify command expects, taken from compress's flags."""
    ns = argparse.Namespace(**vars(args))
    ns.data = args.verify_data
    return ns
