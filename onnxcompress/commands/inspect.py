"""``onnxcompress inspect MODEL``: the weight inventory and what compress would do with each."""

from __future__ import annotations

import argparse
import json

HELP = "list the model's weights, their roles and whether they would be compressed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model (.onnx, or an .onnxc container)")
    p.add_argument("--min-elements", type=int, default=256, help="smallest tensor to compress (default 256)")
    p.add_argument(
        "--compressible", action="store_true", help="show only the tensors that would be compressed"
    )
    p.add_argument("--json", metavar="PATH", help="also write the inventory as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary line")


def run(args: argparse.Namespace) -> int:
    # imported here: `onnxcompress --help` must not pay for onnx
    from onnxcompress import model_io
    from onnxcompress.commands.render import format_inventory
    from onnxcompress.inventory import build_inventory

    if args.json:
        model_io.check_output(args.json, inputs=[args.model], overwrite=True)
    model = model_io.open_model(args.model, load_external=False)
    inv = build_inventory(model, min_elements=args.min_elements)
    text = format_inventory(inv, show_all=not args.compressible)
    print(text if not args.quiet else text.strip().splitlines()[-1])
    if args.json:
        data = [
            {
                "name": w.name, "shape": list(w.shape), "dtype": w.dtype, "source": w.source, "graph": w.graph,
                "op_types": list(w.op_types), "role": w.role, "axis": w.axis, "skip_reason": w.skip_reason,
            }
            for w in inv.weights
        ]  # fmt: skip
        model_io.write_report(
            args.json, json.dumps({"quantized_model": inv.quantized_model, "tensors": data}, indent=2)
        )
    return 0
