"""The plan flags (``--preset``, ``--config``, global settings, ``--exclude``, ``--min-elements``) and
the dry-run table: what each weight of a model would get, without compressing anything.

Why a module of its own: ``inspect`` shows the resolved setting per weight with exactly the flags
``compress`` takes, so a user can try a plan before paying for it. The flags are declared once
here; the config is built by :func:`onnxcompress.commands.compress.config_from_args`, the same
function ``compress`` uses, so the dry run cannot drift from the real run.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from onnxcompress.config import CHOICES, DEFAULT_PRESET, PRESETS

if TYPE_CHECKING:
    from onnxcompress.config import CompressionConfig
    from onnxcompress.inventory import Inventory, WeightInfo

#: widest line of the dry-run table
WIDTH = 100
_GLOBAL_FLAGS = ("method", "bits", "sparsity", "pruning", "quality", "nm", "granularity", "group_size",
                 "init", "codebook_dtype", "encoding", "format", "block_size", "activations",
                 "accuracy_level")  # fmt: skip


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The plan flags, declared once for ``compress`` and ``inspect`` (same names, meaning, defaults)."""
    from onnxcompress.commands.compress import PLAN_ORDER
    from onnxcompress.methods import METHODS as METHOD_TABLE

    p.add_argument(
        "--preset", choices=sorted(PRESETS), help=f"named starting point (default: {DEFAULT_PRESET})"
    )
    p.add_argument("--config", metavar="PLAN", help="YAML/JSON plan: global, op_types and names overrides")
    g = p.add_argument_group("global settings", PLAN_ORDER)
    g.add_argument(
        "--method", choices=CHOICES["method"],
        help="; ".join(f"{m.name}: {m.summary}" for m in METHOD_TABLE.values()) + f" (default: {next(iter(METHOD_TABLE))})",
    )  # fmt: skip
    g.add_argument("--bits", type=int, help="codebook bits per weight, 1-8")
    g.add_argument("--sparsity", type=float, help="fraction of weights pruned, e.g. 0.9")
    g.add_argument(
        "--pruning",
        choices=CHOICES["pruning"],
        help="how pruned weights are chosen (default: magnitude per layer)",
    )
    g.add_argument(
        "--quality", type=float, help="Deep Compression's threshold = quality x std (with --pruning std)"
    )
    g.add_argument("--nm", metavar="N:M", help="N:M structured sparsity along the input axis, e.g. 2:4")
    g.add_argument(
        "--granularity",
        choices=CHOICES["granularity"],
        help="one codebook per tensor, per output channel or per group",
    )
    g.add_argument("--group-size", type=int, help="output channels per codebook with --granularity group")
    g.add_argument(
        "--init", choices=CHOICES["init"], help="k-means initialization (default: linear, the paper's best)"
    )
    g.add_argument("--codebook-dtype", choices=CHOICES["codebook_dtype"])
    g.add_argument(
        "--encoding",
        choices=CHOICES["encoding"],
        help="sparse position encoding (default: smallest per tensor)",
    )
    g.add_argument(
        "--format", choices=CHOICES["format"],
        help="codebook: smallest file, decoded at load; runtime: onnxruntime-native affine codes "
        "(MatMulNBits, GatherBlockQuantized, DequantizeLinear) that stay quantized in RAM",
    )  # fmt: skip
    g.add_argument("--block-size", type=int, help="with --format runtime: weights per scale (default 32)")
    g.add_argument(
        "--activations", choices=CHOICES["activations"],
        help="with --format runtime --bits 8: int8 computes MatMul/Gemm/Conv on int8 activations quantized "
        "at run time (MatMulInteger/ConvInteger; fastest MatMul on CPU, ConvInteger is slow in onnxruntime); "
        "the weight scale is per tensor with --granularity tensor (the default), else per output channel",
    )  # fmt: skip
    g.add_argument(
        "--accuracy-level", type=_accuracy_level, metavar="{0,1,2,3,4}",
        help="with --format runtime: the accuracy_level of the MatMulNBits nodes (MatMul/Gemm weights). "
        "4 (default): onnxruntime quantizes the activations to int8 inside the kernel, its fast path, which "
        "costs accuracy (MiniLM-L6 8-bit: nearest-neighbour agreement 0.970); 1: fp32 activations (0.988 "
        "there), slower: at 8 bits 16-20x slower than fp32 on CPU; 0 lets onnxruntime choose, 2/3 fp16/bf16",
    )  # fmt: skip
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave matching weights alone (repeatable)",
    )
    p.add_argument("--min-elements", type=int, help="smallest tensor to compress (default 256)")
    p.add_argument("--seed", type=int)


def _accuracy_level(text: str) -> int | str:
    """``--accuracy-level``'s value as an int, or the text as given: the plan validation then refuses
    it in one ``ConfigError`` line (argparse would print its usage block too)."""
    try:
        return int(text)
    except ValueError:
        return text


def plan_given(args: argparse.Namespace) -> bool:
    """Whether the user named a plan (a preset, a file, a global flag or an exclude)."""
    return bool(
        args.preset
        or args.config
        or args.exclude
        or any(getattr(args, f, None) is not None for f in _GLOBAL_FLAGS)
    )


def plan_from_args(args: argparse.Namespace) -> tuple[CompressionConfig, CompressionConfig]:
    """(the plan ``compress`` would use with these flags, the preset it starts from)."""
    from onnxcompress import model_io
    from onnxcompress.commands.compress import config_from_args
    from onnxcompress.config import preset, read_plan_file

    name = args.preset or DEFAULT_PRESET
    if args.config:
        model_io.check_plan_path(args.config)
        data = read_plan_file(args.config)
        name = data.get("preset", name) if isinstance(data.get("preset", name), str) else name
    return config_from_args(args), preset(name) if name in PRESETS else preset(DEFAULT_PRESET)


def _short(text: str, width: int, *, left: bool = False) -> str:
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3) :] if left else text[: width - 3] + "..."


def _skip(reason: str) -> str:
    return "skip: " + reason.split(" (")[0]


def setting_of(w: WeightInfo, config: CompressionConfig) -> str:
    """What compress would do with ``w``: the resolved setting, or why it is left alone."""
    if not w.compressible:
        return _skip(w.skip_reason or "")
    cfg = config.resolve(w.name, w.op_types)
    return "skip: excluded by the plan" if cfg is None else cfg.describe()


def format_plan(inv: Inventory, config: CompressionConfig, *, only_compressed: bool = False) -> str:
    """The dry-run table (one row per float tensor, at most :data:`WIDTH` columns) and a summary
    per setting. Generated names (``onnx::MatMul_1160``) carry their consumer node's name."""
    from onnxcompress.formatting import human_bytes, table

    rows: list[list[Any]] = []
    totals: dict[str, list[int]] = {}
    for w in inv.weights:
        setting = setting_of(w, config)
        key = "left alone" if setting.startswith("skip") else setting
        t = totals.setdefault(key, [0, 0, 0])
        t[0] += 1
        t[1] += w.size
        t[2] += w.nbytes
        if only_compressed and key == "left alone":
            continue
        rows.append(
            [w.display_name(), "/".join(w.op_types) or "-", "x".join(map(str, w.shape)) or "scalar", setting]
        )
    widths = [0, 18, 12, 30]
    for r in rows:  # every column but the name at its budget; the name gets what is left
        for i in (1, 2, 3):
            r[i] = _short(str(r[i]), widths[i])
    col = [
        max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(["tensor", "op", "shape", "setting"])
    ]
    name_width = max(12, WIDTH - sum(col[1:]) - 6)
    for r in rows:
        r[0] = _short(r[0], name_width, left=True)
    lines = [table(["tensor", "op", "shape", "setting"], rows, "llll"), ""]
    for key, (n, elements, nbytes) in sorted(
        totals.items(), key=lambda kv: (kv[0] == "left alone", -kv[1][2])
    ):
        lines.append(f"{key}: {n} tensor(s), {elements:,} elements, {human_bytes(nbytes)}")
    consts = [w for w in inv.weights if w.source == "constant"]
    if consts:
        graphs = sorted({w.graph for w in consts if w.graph})
        where = (
            f", {sum(1 for w in consts if w.graph)} inside subgraphs ({', '.join(graphs[:3])})"
            if graphs
            else ""
        )
        lines.append(f"{len(consts)} tensor(s) are Constant nodes{where}")
    if inv.quantized_model:
        lines.append("note: the model already contains quantized operators; their weights are left alone")
    lines.append(
        "dry run: nothing was compressed (a weight whose compressed form would not be smaller is left alone)"
    )
    return "\n".join(lines)
