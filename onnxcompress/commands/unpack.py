"""``onnxcompress unpack MODEL.onnxc -o MODEL.onnx``: expand a container to the exact model it holds."""

from __future__ import annotations

import argparse

from onnxcompress.commands.pack import check_paths, output_path

HELP = "expand an .onnxc container into the byte-identical .onnx model that was packed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", help="an .onnxc container (recognised by its header, whatever its name)")
    p.add_argument("-o", "--output", help="output .onnx (default: CONTAINER.onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the output path")


def run(args: argparse.Namespace) -> int:
    from onnxcompress.container import unpack_to_file
    from onnxcompress.errors import ContainerError
    from onnxcompress.model_io import check_input, is_container

    inp = check_input(args.container)
    if not is_container(inp):  # before the output check: the default output would be the input
        raise ContainerError(f"{inp}: not an .onnxc container (no container header); it needs no unpacking")
    out = output_path(inp, args.output, ".onnx")
    check_paths(inp, out, args.overwrite)
    n = unpack_to_file(inp, out)
    print(out if args.quiet else f"wrote {out} ({n:,} bytes)")
    return 0
