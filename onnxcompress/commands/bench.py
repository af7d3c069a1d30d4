"""``onnxcompress bench MODEL [MODEL ...]``: side-by-side size, load time, latency and memory.

Each measurement runs in a fresh subprocess, models alternate over rounds, and the table shows
medians with ratios against the first model (see :mod:`onnxcompress.evaluation.bench`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxcompress.commands.verify import _positive_int
from onnxcompress.errors import DataError
from onnxcompress.evaluation.data import parse_int_range, parse_shape_overrides
from onnxcompress.sessions import OPTIMIZATION_LEVELS, parse_providers

HELP = "Benchmark models side by side: size, session creation, latency p50/p90/p99, throughput, memory."


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="+", metavar="MODEL", help=".onnx or .onnxc files; the first is the baseline"
    )
    parser.add_argument("--runs", type=_positive_int, default=100, help="timed runs per round (default 100)")
    parser.add_argument(
        "--warmup", type=_non_negative_int, default=10, help="untimed runs first (default 10)"
    )
    parser.add_argument(
        "--rounds", type=_positive_int, default=3, help="fresh processes per model (default 3)"
    )
    parser.add_argument("--batch-size", type=_positive_int, metavar="B", help="samples per run (default 1)")
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
        "--threads", type=_positive_int, metavar="N", help="intra-op threads (default: ORT's)"
    )
    parser.add_argument(
        "--opt-level", choices=OPTIMIZATION_LEVELS, default="all", help="graph optimization level"
    )
    parser.add_argument(
        "--decode",
        choices=("onnxruntime", "host"),
        default="onnxruntime",
        help="how compressed weights are rebuilt at load: onnxruntime (a stock InferenceSession folds the "
        "decode functions; default) or host (numpy first, as onnxcompress.load does)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from onnxcompress.commands.display import terminal_progress
    from onnxcompress.commands.render import format_bench
    from onnxcompress.evaluation.bench import BenchOptions, bench, bench_to_json

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
        p = Path(args.json)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(bench_to_json(report), encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot write {p}: {exc.strerror or exc}") from None
    return 0
