"""``onnxcompress bench MODEL [MODEL ...]``: side-by-side size, load time, latency and memory.

Each measurement runs in a fresh subprocess, models alternate over rounds, and the table shows
medians with ratios against the first model (see :mod:`onnxcompress.evaluation.bench`).
"""

from __future__ import annotations

import argparse

from onnxcompress.commands.arguments import non_negative_int, positive_int
from onnxcompress.commands.verify import check_paths
from onnxcompress.evaluation.bench import BenchOptions
from onnxcompress.evaluation.data import parse_int_range, parse_shape_overrides
from onnxcompress.sessions import OPTIMIZATION_LEVELS, parse_providers

HELP = "Benchmark models side by side: size, session creation, latency p50/p90/p99, throughput, memory."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="+", metavar="MODEL", help=".onnx or .onnxc files; the first is the baseline"
    )
    d = BenchOptions()  # the defaults are the library's, stated once
    parser.add_argument("--runs", type=positive_int, default=d.runs, help=f"timed runs per round (default {d.runs})")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=d.warmup, help=f"untimed runs first (default {d.warmup})"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=d.rounds, help=f"fresh processes per model (default {d.rounds})"
    )
    parser.add_argument("--batch-size", type=positive_int, metavar="B", help="samples per run (default 1)")
    parser.add_argument(
        "--shape",
        action="append",
        metavar="NAME=AxB",
        help="shape for symbolic input dims, e.g. input=1x3x224x224",
    )
    parser.add_argument("--int-range", action="append", metavar="LO:HI", help="synthetic integer input range")
    parser.add_argument("--data", metavar="FILE_OR_DIR", help="take the input batch from this data instead")
    parser.add_argument("--providers", nargs="+", metavar="EP", help="cpu, cuda, tensorrt, ... (default cpu)")
    parser.add_argument(
        "--allow-fallback", action="store_true", help="drop unavailable providers instead of failing"
    )
    parser.add_argument(
        "--threads", type=positive_int, metavar="N", help="intra-op threads (default: ORT's)"
    )
    parser.add_argument(
        "--opt-level", choices=OPTIMIZATION_LEVELS, default=d.optimization_level, help="graph optimization level"
    )
    parser.add_argument(
        "--decode",
        choices=("onnxruntime", "host"),
        default=d.decode,
        help="how compressed weights are rebuilt at load: onnxruntime (a stock InferenceSession folds the "
        "decode functions; default) or host (numpy first, as onnxcompress.load does)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from onnxcompress.commands.display import terminal_progress
    from onnxcompress.commands.render import format_bench
    from onnxcompress.evaluation.bench import bench, bench_to_json
    from onnxcompress.model_io import write_report

    check_paths(args, args.models)

    providers = parse_providers(args.providers)
    options = BenchOptions(
        runs=args.runs,
        warmup=args.warmup,
        rounds=args.rounds,
        batch_size=args.batch_size,
        shapes=parse_shape_overrides(args.shape),
        int_range=parse_int_range(args.int_range),
        data=args.data,
        providers=tuple(providers) if providers is not None else None,
        threads=args.threads,
        optimization_level=args.opt_level,
        allow_fallback=args.allow_fallback,
        decode=args.decode,
    )
    with terminal_progress(enabled=not args.quiet) as progress:
        report = bench(args.models, options, progress=progress)
    print(format_bench(report))
    if args.json:
        write_report(args.json, bench_to_json(report))
    return 0
