"""``onnxcompress inspect MODEL``: the weight inventory and what compress would do with each."""

from __future__ import annotations

import argparse
import json

from onnxcompress.inventory import build_inventory
from onnxcompress.model_io import load_model
from onnxcompress.report import format_inventory

HELP = "list the model's weights, their roles and whether they would be compressed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model (.onnx)")
    p.add_argument("--min-elements", type=int, default=256, help="smallest tensor to compress (default 256)")
    p.add_argument(
        "--compressible", action="store_true", help="show only the tensors that would be compressed"
    )
    p.add_argument("--json", metavar="PATH", help="also write the inventory as JSON")
    p.add_argument(
        "--groups",
        action="store_true",
        help="print the structured-pruning groups (channels removed together)",
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "groups", False):
        from onnxcompress.structured import analyze, format_groups

        print(format_groups(analyze(load_model(args.model)).summary()))
        return 0
    model = load_model(args.model, load_external=False)
    inv = build_inventory(model, min_elements=args.min_elements)
    print(format_inventory(inv, show_all=not args.compressible))
    if args.json:
        data = [
            {
                "name": w.name, "shape": list(w.shape), "dtype": w.dtype, "source": w.source, "graph": w.graph,
                "op_types": list(w.op_types), "role": w.role, "axis": w.axis, "skip_reason": w.skip_reason,
            }
            for w in inv.weights
        ]  # fmt: skip
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"quantized_model": inv.quantized_model, "tensors": data}, fh, indent=2)
    return 0
