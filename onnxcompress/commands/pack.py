"""``onnxcompress pack MODEL.onnx -o MODEL.onnxc``: entropy-code a compressed model into a container."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "entropy-code a compressed .onnx model into an .onnxc container (Deep Compression's third stage)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="compressed ONNX model (.onnx; external data is read and inlined)")
    p.add_argument("-o", "--output", help="output container (default: MODEL.onnxc)")
    p.add_argument(
        "--coder",
        choices=["auto", "ans", "huffman", "raw"],
        default="auto",
        help="entropy coder for code/gap/mask streams (default: auto, the smallest per stream)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the output path")


def output_path(model: Path, output: str | None, suffix: str) -> Path:
    """The output path: ``output``, or the input with ``suffix`` (checked by :func:`check_paths`)."""
    return Path(output) if output else model.with_suffix(suffix)


def check_paths(inp: Path, out: Path, overwrite: bool) -> None:
    """The input must be a readable file, the output pass :func:`onnxcompress.model_io.check_output`."""
    from onnxcompress.model_io import check_input, check_output

    check_input(inp)
    check_output(out, inputs=[inp], overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    from onnxcompress.container import format_report, write_container

    inp = Path(args.model)
    out = output_path(inp, args.output, ".onnxc")
    check_paths(inp, out, args.overwrite)
    stats = write_container(inp, out, coder=args.coder)
    if not args.quiet:
        print(format_report(stats))
        print()
        print(f"wrote {out} ({stats.container_bytes:,} bytes, {stats.ratio:.2f}x smaller than the .onnx)")
    else:
        print(out)
    return 0
