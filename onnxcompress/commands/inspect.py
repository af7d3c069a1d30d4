"""``onnxcompress inspect MODEL``: the weight inventory and what compress would do with each.

With the plan flags of ``compress`` (``--preset``, ``--config``, ``--bits``...) it is a dry run:
each weight's resolved setting under that plan, and warnings for plan entries that match nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "list the model's weights and what compress would do with each (a dry run of a plan)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from onnxcompress.commands.plan_view import add_plan_arguments

    p.add_argument("model", help="ONNX model (.onnx, or an .onnxc container)")
    p.add_argument(
        "--compressible", action="store_true", help="show only the tensors that would be compressed"
    )
    p.add_argument("--json", metavar="PATH", help="also write the inventory as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary line")
    p.add_argument(
        "--groups",
        action="store_true",
        help="print the structured-pruning groups (channels removed together)",
    )
    add_plan_arguments(p)


def run(args: argparse.Namespace) -> int:
    # imported here: `onnxcompress --help` must not pay for onnx
    from onnxcompress import model_io
    from onnxcompress.commands.plan_view import format_plan, plan_from_args, setting_of
    from onnxcompress.inventory import build_inventory
    from onnxcompress.plan_check import check_plan

    model_io.check_input(args.model)
    if args.groups:
        from onnxcompress.commands.render import format_structured_groups
        from onnxcompress.structured import analyze

        print(format_structured_groups(analyze(model_io.open_model(args.model)).summary()))
        return 0
    if args.json:
        model_io.check_output(args.json, inputs=[args.model], overwrite=True)
    config, base = plan_from_args(args)
    model = model_io.open_model(args.model, load_external=False)
    inv = build_inventory(model, min_elements=config.min_elements, code_vectors=config.code_vectors)
    text = format_plan(inv, config, only_compressed=args.compressible)
    summary = [ln for ln in text.splitlines() if ln.startswith(("left alone:", "dry run:"))]
    print(text if not args.quiet else "\n".join(summary))
    for issue in check_plan(config, inv, base=base):
        print(f"onnxcompress: warning: {issue}", file=sys.stderr)
    if args.json:
        data = [
            {
                "name": w.name, "shape": list(w.shape), "dtype": w.dtype, "source": w.source, "graph": w.graph,
                "op_types": list(w.op_types), "layers": list(w.layers), "role": w.role, "axis": w.axis,
                "skip_reason": w.skip_reason, "setting": setting_of(w, config),
            }
            for w in inv.weights
        ]  # fmt: skip
        model_io.write_report(
            args.json, json.dumps({"quantized_model": inv.quantized_model, "tensors": data}, indent=2)
        )
    return 0
