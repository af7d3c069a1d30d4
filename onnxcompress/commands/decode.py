"""``onnxcompress decode MODEL -o dense.onnx``: write the plain fp32 model a compressed one stands for."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "rebuild a compressed model's weights into a plain ONNX model any runtime loads (no decode at load time)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="compressed model (.onnx, or an .onnxc container)")
    p.add_argument("-o", "--output", help="output .onnx (default: MODEL.dense.onnx)")
    p.add_argument(
        "--external-data",
        action="store_true",
        help="write the weights to OUTPUT.data beside the model (automatic above 2 GB)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the output path")


def default_output(model: str) -> Path:
    p = Path(model)
    stem = p.name[: -len(".cmp.onnx")] if p.name.endswith(".cmp.onnx") else p.stem
    return p.with_name(stem + ".dense.onnx")


def run(args: argparse.Namespace) -> int:
    from onnxcompress.dense import decode_file
    from onnxcompress.formatting import human_bytes
    from onnxcompress.model_io import check_input

    check_input(args.model)
    out = Path(args.output) if args.output else default_output(args.model)
    result = decode_file(args.model, out, overwrite=args.overwrite, external_data=args.external_data or None)
    if args.quiet:
        print(out)
        return 0
    if result.weights:
        print(f"decoded {result.weights} weight(s) with {result.decode_nodes} decode node(s)")
    else:
        print("the model holds no compressed weights: written as it is")
    assert result.bytes_before is not None and result.bytes_after is not None
    print(
        f"wrote {', '.join(map(str, result.files))} ({human_bytes(result.bytes_after)}, "
        f"from {human_bytes(result.bytes_before)}: {result.bytes_after / result.bytes_before:.2f}x larger)"
    )
    return 0
