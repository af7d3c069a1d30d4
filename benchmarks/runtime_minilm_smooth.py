"""Int8 activations on MiniLM with SmoothQuant (issue 15): how close can the fast int8 path get to
weight-only fidelity, side by side with onnxruntime's ``quantize_dynamic``?

``--activations int8`` runs MiniLM at onnxruntime's int8 GEMM speed (the kernel its own
``quantize_dynamic`` ends up with) but quantizes each activation tensor with one scale, and
MiniLM's LayerNorm outputs carry a few outlier channels. ``compress --smooth ALPHA`` (calibration
option ``smooth``) moves them into the weights first (:mod:`onnxcompress.calibration.smooth`).

    python benchmarks/runtime_minilm_smooth.py [--rounds 3] [--quick]

Protocol: calibration (GPTQ and the smoothing statistics) on validation sentences ``val[:256]``;
the one choice made here beyond the flags (which MatMuls keep float activations: the FFN-down
projections, whose inputs are GELU outputs) was made on validation sentences too. Fidelity (mean
cosine, nearest-neighbour agreement to the fp32 embeddings) is measured once on the 500 test
sentences; size, session creation, peak RSS and p50 (batch 1, the first test sentence padded to 64
tokens) by ``onnxcompress.evaluation.bench``: fresh processes, models alternating, ``--rounds``
rounds, medians. Writes ``benchmarks/results/runtime_minilm_smooth.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import embedding_metrics, embeddings, md_table, write_results  # noqa: E402

MINILM = Path(__file__).resolve().parent.parent / ".cache" / "minilm"
CAL_N = 256  # calibration sentences: val[:CAL_N]
FFN_DOWN = "*.layer.[0-9].output.dense.weight_t"  # the FFN-down MatMuls (GELU outputs in)
W8A8 = {"format": "runtime", "bits": 8, "activations": "int8", "granularity": "channel"}


def _plain(src: Path, dst: Path, plan: Mapping[str, Any]) -> dict[str, Any]:
    from onnxcompress.compressor import compress_file
    from onnxcompress.config import from_dict

    compress_file(src, dst, from_dict(dict(plan)), overwrite=True, external_data=False)
    return {}


def _calibrated(src: Path, dst: Path, plan: Mapping[str, Any], smooth: float) -> dict[str, Any]:
    from onnxcompress.calibration import CalibrationConfig, calibrate
    from onnxcompress.compressor import compress_file
    from onnxcompress.config import from_dict

    cfg = from_dict(dict(plan))
    with np.load(MINILM / "val_sentences.npz") as z:
        cal = {k: z[k][:CAL_N] for k in z.files}
    info: dict[str, Any] = {}

    def hook_factory(model: Any) -> Any:
        t0 = time.perf_counter()
        res = calibrate(model, cal, cfg, calibration=CalibrationConfig(smooth=smooth), baseline=False)
        info.update(seconds=time.perf_counter() - t0, smoothed=[x.input for x in res.smoothed])
        return res.hook

    compress_file(src, dst, cfg, overwrite=True, hook_factory=hook_factory, external_data=False)
    return info


def _ort_dynamic(src: Path, dst: Path) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return {}


VARIANTS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "ORT quantize_dynamic int8": _ort_dynamic,
    "ours w8a8 per-channel": lambda s, d: _plain(s, d, {"weight": W8A8}),
    "ours w8a8 per-channel, GPTQ": lambda s, d: _calibrated(s, d, {"weight": W8A8}, 0.0),
    "ours w8a8 per-channel, GPTQ, --smooth 0.5": lambda s, d: _calibrated(s, d, {"weight": W8A8}, 0.5),
    "ours w8a8, GPTQ, --smooth 0.5, FFN-down float": lambda s, d: _calibrated(
        s, d, {"weight": W8A8, "names": {FFN_DOWN: {"activations": "float"}}}, 0.5
    ),
    "ours weight-only 8-bit (MatMulNBits acc4)": lambda s, d: _plain(s, d, {"weight": {"format": "runtime", "bits": 8}}),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one round of 5 runs (a smoke test)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (MINILM / "meta.json").exists():
        print("MiniLM is not built: run `python models/export_minilm.py` first", file=sys.stderr)
        return 1
    from onnxcompress.evaluation.bench import bench

    t_start = time.perf_counter()
    src = MINILM / "minilm.onnx"
    with np.load(MINILM / "sentences.npz") as z:
        test = {k: z[k] for k in z.files}
    ref = embeddings(str(src), test)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, Path] = {"fp32": src}
        build: dict[str, dict[str, Any]] = {}
        for i, (label, make) in enumerate(VARIANTS.items()):
            dst = Path(tmp) / f"v{i}.onnx"
            t0 = time.perf_counter()
            build[label] = {**make(src, dst), "build_seconds": time.perf_counter() - t0}
            paths[label] = dst
            print(f"built {label} ({build[label]['build_seconds']:.0f} s)", file=sys.stderr)
        fid = {label: embedding_metrics(embeddings(str(p), test), ref) for label, p in paths.items()}
        rounds, runs = (1, 5) if args.quick else (args.rounds, 50)
        rep = bench([str(p) for p in paths.values()], runs=runs, warmup=5, rounds=rounds, batch_size=1,
                    data=str(MINILM / "sentences.npz"), progress=False)  # fmt: skip
        base = rep.models[0]
        for label, m in zip(paths, rep.models, strict=True):
            rows.append({
                "variant": label, **build.get(label, {}), **fid[label],
                "size_bytes": m.size_bytes, "create_s": m.create_s, "p50_ms": m.p50_ms, "cpu_p50_ms": m.cpu_p50_ms,
                "peak_rss_bytes": m.peak_rss_bytes, "model_rss_bytes": m.model_rss_bytes,
                "size_x": m.size_bytes / base.size_bytes, "create_x": m.create_s / base.create_s,
                "p50_x": m.p50_ms / base.p50_ms, "cpu_p50_x": (m.cpu_p50_ms or 0) / (base.cpu_p50_ms or 1),
                "peak_rss_x": (m.peak_rss_bytes or 0) / (base.peak_rss_bytes or 1),
            })  # fmt: skip
    table = md_table(
        ["variant", "size", "create", "peak RSS", "p50", "CPU p50", "test cos", "test NN"],
        [[r["variant"], f"x{r['size_x']:.3f}", f"x{r['create_x']:.2f}", f"x{r['peak_rss_x']:.2f}",
          f"{r['p50_ms']:.2f} ms (x{r['p50_x']:.2f})", f"x{r['cpu_p50_x']:.2f}", f"{r['cosine']:.4f}",
          f"{r['nn_agreement']:.3f}"] for r in rows],
    )  # fmt: skip
    print(table)
    write_results("runtime_minilm_smooth", {
        "description": __doc__.split("\n\n")[0],
        "protocol": {"calibration": f"val_sentences[:{CAL_N}]", "fidelity": "500 test sentences",
                     "latency": "batch 1, first test sentence, 64 tokens", "rounds": rounds, "runs": runs,
                     "ffn_down_float_pattern": FFN_DOWN},
        "quick": args.quick, "rows": rows, "table_md": table, "seconds": time.perf_counter() - t_start,
    }, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
