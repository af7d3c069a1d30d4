"""Session-creation time of a model with thousands of small weights, original vs compressed.

onnxruntime's load time grows with the number of decode calls, which is why onnxcompress decodes
whole groups of weights per call. This measures the worst case the issue names: 5,000 small
weights (16x16 MatMuls), compressed at 4 bits, each model loaded in its own fresh process over
alternating rounds (``onnxcompress.evaluation.bench``). Prints a Markdown table and writes
``benchmarks/results/load_time.json``.

    python benchmarks/load_time.py [--weights 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from onnxcompress import __version__
from onnxcompress.compressor import compress_model
from onnxcompress.config import CompressionConfig, WeightConfig
from onnxcompress.evaluation.bench import bench

RESULTS = Path(__file__).resolve().parent / "results"


def chain_model(count: int, shape: tuple[int, int] = (16, 16), seed: int = 0) -> onnx.ModelProto:
    """``count`` MatMuls in a chain, each with its own small weight."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(count):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / 4).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", shape[0]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bits", type=int, default=4)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        orig_path, comp_path = Path(d) / "original.onnx", Path(d) / "compressed.onnx"
        model = chain_model(args.weights)
        onnx.save(model, orig_path)
        t0 = time.perf_counter()
        result = compress_model(
            model, CompressionConfig(weight=WeightConfig(bits=args.bits), min_elements=256)
        )
        compress_s = time.perf_counter() - t0
        onnx.save(result.model, comp_path)
        report = bench(
            [orig_path, comp_path], runs=20, warmup=2, rounds=args.rounds, batch_size=1, progress=False
        )
    orig, comp = report.models
    create = [float(np.median([r.create_s for r in m.rounds])) for m in (orig, comp)]
    spread = [(min(r.create_s for r in m.rounds), max(r.create_s for r in m.rounds)) for m in (orig, comp)]
    p50 = [float(np.median([r.p50_ms for r in m.rounds])) for m in (orig, comp)]
    paired = [c.create_s / o.create_s for o, c in zip(orig.rounds, comp.rounds, strict=True)]
    rows = [
        ("original", orig.size_bytes, create[0], spread[0], p50[0]),
        ("compressed", comp.size_bytes, create[1], spread[1], p50[1]),
    ]
    print(f"{args.weights} weights of 16x16, {args.bits}-bit k-means, {result.report.groups} decode group(s); "
          f"compression took {compress_s:.1f} s\n")  # fmt: skip
    print("| model | bytes | session creation (median) | min..max | p50 latency |")
    print("|---|---:|---:|---:|---:|")
    for name, size, c, (lo, hi), p in rows:
        print(f"| {name} | {size:,} | {c:.3f} s | {lo:.3f}..{hi:.3f} s | {p:.3f} ms |")
    print(f"\nload-time ratio compressed/original: median {create[1] / create[0]:.2f}x, "
          f"paired by round {np.median(paired):.2f}x (range {min(paired):.2f}..{max(paired):.2f})")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "load_time",
        "weights": args.weights,
        "bits": args.bits,
        "decode_groups": result.report.groups,
        "compress_seconds": compress_s,
        "rows": [
            {
                "model": n,
                "bytes": s,
                "create_s_median": c,
                "create_s_min": lo,
                "create_s_max": hi,
                "p50_ms": p,
            }
            for n, s, c, (lo, hi), p in rows
        ],
        "load_ratio_median": create[1] / create[0],
        "load_ratio_paired_median": float(np.median(paired)),
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnxcompress": __version__,
        },  # fmt: skip
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
    }
    (RESULTS / "load_time.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
