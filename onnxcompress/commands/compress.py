"""``onnxcompress compress MODEL -o OUT``: prune and codebook-quantize a model's weights."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from onnxcompress.config import (
    DEFAULT_PRESET,
    ENCODINGS,
    GRANULARITIES,
    INITS,
    METHODS,
    PRESETS,
    PRUNINGS,
    CompressionConfig,
    load_config,
    preset,
)  # fmt: skip
from onnxcompress.errors import ConfigError

HELP = "compress a model's weights (pruning + k-means / CLIP-Q codebooks) into a smaller ONNX model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="input ONNX model (.onnx, with or without external data)")
    p.add_argument(
        "-o",
        "--output",
        help="output .onnx, or .onnxc for the entropy-coded container (default: MODEL.cmp.onnx)",
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help=f"named starting point (default: {DEFAULT_PRESET})"
    )
    p.add_argument("--config", metavar="PLAN", help="YAML/JSON plan: global, op_types and names overrides")
    g = p.add_argument_group("global settings (override the preset and the plan's global section)")
    g.add_argument("--method", choices=METHODS)
    g.add_argument("--bits", type=int, help="codebook bits per weight, 1-8")
    g.add_argument("--sparsity", type=float, help="fraction of weights pruned, e.g. 0.9")
    g.add_argument(
        "--pruning", choices=PRUNINGS, help="how pruned weights are chosen (default: magnitude per layer)"
    )
    g.add_argument(
        "--quality", type=float, help="Deep Compression's threshold = quality x std (with --pruning std)"
    )
    g.add_argument("--nm", metavar="N:M", help="N:M structured sparsity along the input axis, e.g. 2:4")
    g.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        help="one codebook per tensor, per output channel or per group",
    )
    g.add_argument("--group-size", type=int, help="output channels per codebook with --granularity group")
    g.add_argument("--init", choices=INITS, help="k-means initialization (default: linear, the paper's best)")
    g.add_argument("--codebook-dtype", choices=["float32", "float16"])
    g.add_argument(
        "--encoding", choices=ENCODINGS, help="sparse position encoding (default: smallest per tensor)"
    )
    g.add_argument(
        "--format", choices=["codebook", "runtime"],
        help="codebook: smallest file, decoded at load; runtime: onnxruntime-native affine codes "
        "(MatMulNBits, GatherBlockQuantized, DequantizeLinear) that stay quantized in RAM",
    )  # fmt: skip
    g.add_argument("--block-size", type=int, help="with --format runtime: weights per scale (default 32)")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave matching weights alone (repeatable)",
    )
    p.add_argument("--min-elements", type=int, help="smallest tensor to compress (default 256)")
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--report", metavar="JSON", help="write the per-weight report as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the totals")
    from onnxcompress.calibration.cli import add_calibration_arguments

    add_calibration_arguments(p)
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
    overrides: dict[str, object] = {}
    for name in ("method", "bits", "sparsity", "pruning", "quality", "granularity", "group_size", "init",
                 "codebook_dtype", "encoding", "format", "block_size"):  # fmt: skip
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


def run(args: argparse.Namespace) -> int:
    from onnxcompress.compressor import compress_file
    from onnxcompress.report import format_report

    config = config_from_args(args)
    output = args.output or default_output(args.model)
    hooks: list = []

    def calibration_hook(model):
        from onnxcompress.calibration.cli import hook_from_args

        hook = hook_from_args(model, args, config)
        hooks.append(hook)
        return hook

    result = compress_file(
        args.model,
        output,
        config,
        overwrite=args.overwrite,
        progress=not args.quiet,
        # without calibration data there is no hook, and compress_file can read weights one by one
        hook_factory=calibration_hook if getattr(args, "calibration_data", None) else None,
    )
    report = result.report
    hook = hooks[0] if hooks else None
    if hook is not None:
        report.extra["calibration"] = hook.result.to_dict()
        if not args.quiet:
            print(hook.result.format())
            print()
    text = format_report(report)
    print(text if not args.quiet else "\n".join(text.splitlines()[-3:]))
    if result.container is not None and not args.quiet:
        from onnxcompress.container import format_report as format_staircase

        print()
        print(format_staircase(result.container))
    print(f"wrote {output}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(report.to_dict(), fh, indent=2, default=str)
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
