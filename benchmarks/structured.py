"""Structured pruning: FLOP reduction against measured latency, and accuracy after refit.

Models:

* ``resnet_digits`` (models/, trained): pruned post-training with the ``activation`` criterion and
  a least-squares refit on *training-derived* images (``models/digits_calib.npz``, the calibration split, when present, else
  the training split of scikit-learn's digits, preprocessed like models/train_digits.py in numpy);
  accuracy on the held-out ``digits_test.npz`` and ``digits_test_aug.npz`` (never used for tuning);
* a MobileNetV2-style CNN and a ResNet-18-shaped CNN built here with onnx.helper (random He
  initialisation: they measure FLOPs and latency only, so L1 criterion, no refit);
* MiniLM (all-MiniLM-L6-v2 from ``models/export_minilm.py``'s cache; skipped with the reason when
  absent): the transformer MLP neurons (MatMul -> bias Add -> Erf GELU -> MatMul) pruned with the
  ``obs`` criterion and a least-squares refit on the 500 *validation* sentences
  (``val_sentences.npz``, disjoint from the test sentences) plus, where the cache has it, the 959
  sentences of the calibration split (``calib_sentences.npz``, disjoint from both), fed unpadded
  (each sentence at its own length: padding rows would outnumber the real tokens 3.5 to 1 in the
  refit); mean cosine to the fp32 ONNX embeddings on the 500 test sentences. Rows with attention
  heads removed as well (``MINILM_HEAD_SETTINGS``, chosen on validation by
  ``structured_minilm_select.py --calibration-split``) are under ``head_rows``; each section
  records the calibration it used.

Latency: p50 in onnxruntime (CPU, one intra-op thread), every measurement in a fresh subprocess,
models alternated over rounds and the median over rounds reported (``onnxcompress.evaluation.bench``).
Both the wall-clock p50 and the CPU-time p50 of the process are recorded: the machine is shared
with other jobs, and a run longer than the scheduler's time slice is preempted in some rounds and
not in others (measured: MobileNet-style fp32 wall p50 3.4 / 3.4 / 7.2 ms over three rounds, CPU
time 3.35 / 3.33 / 3.39 ms), which made wall-clock speedups of the mid-sized networks swing from
0.6x to 8x the FLOP reduction. Speedups are given for both; the CPU-time one is the load-robust
figure. Goal checks: latency speedup >= 0.8 x FLOP reduction; resnet_digits >= 1.5x faster within
1 point of test accuracy; MiniLM >= 1.3x faster with mean cosine >= 0.98.

MiniLM's refit: ridge 0.1 toward the sliced weights with the residual-stream target, chosen on
held-out validation sentences by ``structured_minilm_select.py`` (see ``MINILM_REFIT``); rows at
uniform ratios 0.3 / 0.35 / 0.4 and the ``global`` allocation at 0.35. ``resnet_digits_b1_floor``
(``--only b1-floor``): the fixed per-run cost that caps the batch-1 speedup of the small CNN.

    python benchmarks/structured.py [--rounds 5] [--runs 100] [--quick] [--skip-minilm]
    python benchmarks/structured.py --only minilm [--only b1-floor]   # merge into the results file
    python benchmarks/structured.py --only minilm --remeasure-minilm /tmp/structured-bench-XXXX
    python benchmarks/structured.py --only minilm-heads   # only the head + MLP rows, merged in
    python benchmarks/structured.py --only resnet   # only the resnet_digits rows, merged in
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS_DIR, digits_accuracy, load_result, md_table, write_results  # noqa: E402

from onnxcompress.structured import StructuredConfig, count_flops, prune_model  # noqa: E402

# Kept channel counts are rounded up to a multiple of 16: onnxruntime's blocked (NCHWc) convolutions
# on AVX-512 work in blocks of 16 channels, and a width off the block (56 instead of 64) measured
# up to 3x slower at batch 32 in a first run with multiples of 8.
ROUND_TO = 16
HEADLINE_RATIO = 0.5  # fixed before measuring; the other ratios are a sweep for information
# Added after the headline missed "speedup >= 0.8 x FLOP reduction" at batch 1 (0.76x): the measured
# per-run floor (``--only b1-floor``: ~9% of the fp32 run does not shrink with channels) caps the
# batch-1 speedup at 1 / (0.09 + 0.91 / F) for a FLOP reduction F, below 0.8 F for any F > 3.8, and
# the uniform ratios here give only 1.34x, 1.44x or 3.9x (widths 16/32/64 rounded to 16). Global
# allocation at 0.4 gives F = 2.1x: within both the 1.5x and the 0.8 F bounds by that arithmetic.
# Chosen from FLOP counts and the floor alone, before its latency was measured; its accuracy is
# reported on the test sets like every row and was not used to choose it (an exploratory script
# printed the test accuracy of 0.35-0.45 uniform/global beside their FLOPs: all within 1 point).
FLOOR_AWARE = (0.4, "global")
DIGITS_SETTINGS = [(0.3, "uniform"), (0.5, "uniform"), (0.6, "uniform"), (0.7, "uniform"), FLOOR_AWARE]

# ------------------------------------------------------------------------- calibration (training data)


def _upsample(images: np.ndarray, size: int = 28) -> np.ndarray:
    """models/train_digits.py's preprocessing in numpy: /16, bilinear (align_corners=False) to
    28x28, rounded to multiples of 1/255 (matches torch to within one grey level)."""
    x = images.astype(np.float32) / 16.0
    n, h, w = x.shape

    def coords(inp: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.clip((np.arange(out) + 0.5) * inp / out - 0.5, 0, None)
        i0 = np.minimum(np.floor(c).astype(int), inp - 1)
        i1 = np.minimum(i0 + 1, inp - 1)
        return i0, i1, (c - i0).astype(np.float32)

    r0, r1, fr = coords(h, size)
    c0, c1, fc = coords(w, size)
    rows = x[:, r0, :] * (1 - fr)[None, :, None] + x[:, r1, :] * fr[None, :, None]
    out = rows[:, :, c0] * (1 - fc) + rows[:, :, c1] * fc
    return (np.round(np.clip(out, 0, 1) * 255) / 255).astype(np.float32)[:, None]


def calibration_images() -> tuple[np.ndarray, str]:
    """The calibration split (``models/digits_calib.npz``, 256 augmented training images, disjoint
    from ``digits_val.npz``, which is kept for tuning) when present, else the training split."""
    calib = MODELS_DIR / "digits_calib.npz"
    if calib.exists():
        with np.load(calib) as z:
            return z["input"].astype(np.float32), "models/digits_calib.npz (256 augmented training images)"
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    train, _ = train_test_split(np.arange(len(d.target)), test_size=360, stratify=d.target, random_state=0)
    return _upsample(d.images[train]), "sklearn digits training split (1437 images), numpy preprocessing"


# ------------------------------------------------------------------------- networks built in the script
class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, act: str | None = "Relu"
    ) -> str:
        n = self.name("conv")
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        self.inits += [
            numpy_helper.from_array(w, f"{n}.w"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"{n}.b"),
        ]
        bn = [numpy_helper.from_array(v.astype(np.float32), f"{n}.bn{i}") for i, v in enumerate(
            (1 + 0.1 * self.rng.standard_normal(cout), 0.1 * self.rng.standard_normal(cout), np.zeros(cout), np.ones(cout)))]  # fmt: skip
        self.inits += bn
        p = k // 2
        self.nodes.append(helper.make_node("Conv", [x, f"{n}.w", f"{n}.b"], [f"{n}.y"], name=n, kernel_shape=[k, k],
                                           pads=[p, p, p, p], strides=[stride, stride], group=group))  # fmt: skip
        self.nodes.append(
            helper.make_node("BatchNormalization", [f"{n}.y", *[t.name for t in bn]], [f"{n}.n"])
        )
        out = f"{n}.n"
        if act == "Relu":
            self.nodes.append(helper.make_node("Relu", [out], [f"{n}.r"]))
            out = f"{n}.r"
        elif act == "Relu6":
            self.inits += [
                numpy_helper.from_array(np.float32(0), f"{n}.lo"),
                numpy_helper.from_array(np.float32(6), f"{n}.hi"),
            ]
            self.nodes.append(helper.make_node("Clip", [out, f"{n}.lo", f"{n}.hi"], [f"{n}.r"]))
            out = f"{n}.r"
        return out

    def add(self, a: str, b: str, relu: bool) -> str:
        n = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [n]))
        if relu:
            self.nodes.append(helper.make_node("Relu", [n], [n + ".r"]))
            return n + ".r"
        return n

    def head(self, x: str, c: int, classes: int = 1000) -> None:
        self.nodes += [
            helper.make_node("GlobalAveragePool", [x], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["flat"]),
        ]
        w = (self.rng.standard_normal((classes, c)) * np.sqrt(1.0 / c)).astype(np.float32)
        self.inits += [
            numpy_helper.from_array(w, "fc.w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b"),
        ]
        self.nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"))

    def model(self, name: str, size: int) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], self.inits)  # fmt: skip
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def resnet18_shaped(size: int = 112, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    x = b.conv("input", 3, 64, 7, stride=2)
    b.nodes.append(
        helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    )
    x, cin = "pool", 64
    for stage, c in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            h = b.conv(x, cin, c, 3, stride)
            h = b.conv(h, c, c, 3, 1, act=None)
            short = b.conv(x, cin, c, 1, stride, act=None) if stride != 1 or cin != c else x
            x, cin = b.add(h, short, relu=True), c
    b.head(x, 512)
    return b.model("resnet18_shaped", size)


def mobilenet_v2_style(size: int = 112, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    x, cin = b.conv("input", 3, 32, 3, stride=2, act="Relu6"), 32
    for t, c, n, s in (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
    ):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = b.conv(x, cin, hidden, 1, act="Relu6") if t != 1 else x
            h = b.conv(h, hidden, hidden, 3, stride, group=hidden, act="Relu6")
            h = b.conv(h, hidden, c, 1, act=None)
            x = b.add(h, x, relu=False) if stride == 1 and cin == c else h
            cin = c
    x = b.conv(x, cin, 1280, 1, act="Relu6")
    b.head(x, 1280)
    return b.model("mobilenet_v2_style", size)


# ------------------------------------------------------------------------- measurement
def _save(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    p = folder / f"{name}.onnx"
    onnx.save(model, str(p))
    return p


def _lat(
    paths: list[Path], rounds: int, runs: int, batch: int, data: Path | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """(wall-clock p50, CPU-time p50) per model stem, in ms."""
    from onnxcompress.evaluation.bench import bench

    rep = bench(
        [str(p) for p in paths],
        runs=runs,
        warmup=10,
        rounds=rounds,
        batch_size=batch,
        threads=1,
        progress=False,
        data=str(data) if data is not None else None,
    )
    wall = {Path(m.model).stem: m.p50_ms for m in rep.models}
    cpu = {Path(m.model).stem: float(m.cpu_p50_ms or float("nan")) for m in rep.models}
    return wall, cpu


def _digits_key(ratio: float, allocation: str) -> str:
    return f"digits_s{int(round(ratio * 100))}" + ("" if allocation == "uniform" else f"_{allocation}")


def resnet_digits_section(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    """resnet_digits pruned post-training with refit on training-derived images, timed against
    fp32 side by side; fills ``resnet_digits``, ``structured_plus_codebook`` and its goals."""
    calib, calib_source = calibration_images()
    base = onnx.load(str(MODELS_DIR / "resnet_digits.onnx"))
    acc0 = digits_accuracy(base)
    f0 = count_flops(base).total
    digits_rows: list[dict[str, Any]] = []
    paths = [_save(base, work, "digits_fp32")]
    pruned_models: dict[float, onnx.ModelProto] = {}
    for ratio, allocation in DIGITS_SETTINGS:
        pm, rep = prune_model(
            base, StructuredConfig(ratio=ratio, samples=512, round_to=ROUND_TO, allocation=allocation), {"input": calib}
        )
        if allocation == "uniform":
            pruned_models[ratio] = pm
        acc = digits_accuracy(pm)
        digits_rows.append({"ratio": ratio, "allocation": allocation, "key": _digits_key(ratio, allocation),
                            "flops": rep.flops_after, "flop_reduction": f0 / rep.flops_after,
                            "params": rep.params_after, "held_out": acc["held-out"], "augmented": acc["augmented"],
                            "file_bytes": pm.ByteSize(), "prune_seconds": rep.seconds})  # fmt: skip
        paths.append(_save(pm, work, _digits_key(ratio, allocation)))
    # structured + codebook (8-bit k-means, default preset) on the 0.5 model; codebook alone on the original
    from onnxcompress.compressor import compress_model
    from onnxcompress.config import preset

    cb_only = compress_model(_copy(base), preset("safe")).model
    s_cb = compress_model(_copy(pruned_models[0.5]), preset("safe")).model
    paths += [_save(cb_only, work, "digits_codebook"), _save(s_cb, work, "digits_s50_codebook")]
    lat_b1, cpu_b1 = _lat(paths, args.rounds, args.runs, 1)
    lat_b32, cpu_b32 = _lat(paths, args.rounds, max(10, args.runs // 4), 32)
    for r in digits_rows:
        key = r["key"]
        r["speedup_b1"] = lat_b1["digits_fp32"] / lat_b1[key]
        r["speedup_b32"] = lat_b32["digits_fp32"] / lat_b32[key]
        r["cpu_speedup_b1"] = cpu_b1["digits_fp32"] / cpu_b1[key]
        r["cpu_speedup_b32"] = cpu_b32["digits_fp32"] / cpu_b32[key]
        r["within_1pt"] = all(
            acc0[k] - r[k2] <= 0.01 + 1e-9 for k, k2 in (("held-out", "held_out"), ("augmented", "augmented"))
        )
        r["ratio_speedup_to_flops_b32"] = r["speedup_b32"] / r["flop_reduction"]
        r["ratio_speedup_to_flops_b1"] = r["speedup_b1"] / r["flop_reduction"]
        r["cpu_ratio_speedup_to_flops_b1"] = r["cpu_speedup_b1"] / r["flop_reduction"]
    results["resnet_digits"] = {"calibration": calib_source, "fp32": {"flops": f0, "accuracy": acc0,
                                "p50_ms_b1": lat_b1["digits_fp32"], "p50_ms_b32": lat_b32["digits_fp32"],
                                "cpu_p50_ms_b1": cpu_b1["digits_fp32"], "cpu_p50_ms_b32": cpu_b32["digits_fp32"]},
                                "rows": digits_rows}  # fmt: skip
    combo = []
    f50 = count_flops(pruned_models[0.5]).total  # a codebook model runs the same dense kernels once decoded
    for label, key, flops, acc in (
        ("fp32", "digits_fp32", f0, acc0),
        ("codebook 8-bit", "digits_codebook", f0, digits_accuracy(cb_only)),
        ("structured 0.5 + refit", "digits_s50", f50, digits_accuracy(pruned_models[0.5])),
        ("structured 0.5 + codebook 8-bit", "digits_s50_codebook", f50, digits_accuracy(s_cb)),
    ):
        combo.append({"model": label, "file_bytes": (work / f"{key}.onnx").stat().st_size, "flops": flops,
                      "p50_ms_b1": lat_b1[key], "p50_ms_b32": lat_b32[key], "cpu_p50_ms_b1": cpu_b1[key],
                      "cpu_p50_ms_b32": cpu_b32[key], "held_out": acc["held-out"],
                      "augmented": acc["augmented"]})  # fmt: skip
    results["structured_plus_codebook"] = combo
    goals: dict[str, Any] = {}
    for prefix, r in (
        ("resnet_digits", next(r for r in digits_rows if (r["ratio"], r["allocation"]) == (HEADLINE_RATIO, "uniform"))),
        ("resnet_digits_floor_aware", next(r for r in digits_rows if (r["ratio"], r["allocation"]) == FLOOR_AWARE)),
    ):
        goals.update({
            f"{prefix}_setting": f"{r['ratio']} {r['allocation']}",
            f"{prefix}_1.5x_faster_b1": r["speedup_b1"] >= 1.5,
            f"{prefix}_1.5x_faster_b32": r["speedup_b32"] >= 1.5,
            f"{prefix}_within_1pt": r["within_1pt"],
            f"{prefix}_speedup_ge_0.8x_flops_b1": r["speedup_b1"] >= 0.8 * r["flop_reduction"],
            f"{prefix}_speedup_ge_0.8x_flops_b32": r["speedup_b32"] >= 0.8 * r["flop_reduction"],
            f"{prefix}_1.5x_faster_b1_cpu": r["cpu_speedup_b1"] >= 1.5,
            f"{prefix}_speedup_ge_0.8x_flops_b1_cpu": r["cpu_speedup_b1"] >= 0.8 * r["flop_reduction"],
            f"{prefix}_1.5x_faster_b32_cpu": r["cpu_speedup_b32"] >= 1.5,
            f"{prefix}_speedup_ge_0.8x_flops_b32_cpu": r["cpu_speedup_b32"] >= 0.8 * r["flop_reduction"],
        })  # fmt: skip
    results["goals"] = {**results.get("goals", {}), **goals}
    print(resnet_digits_md(results))


def resnet_digits_md(results: dict[str, Any]) -> str:
    """The resnet_digits section as Markdown (printed by the run, shown in docs/benchmarks.md)."""
    out: list[str] = []
    d = results["resnet_digits"]
    fp = d["fp32"]
    out.append(f"resnet_digits (calibration: {d['calibration']}; fp32 {fp['accuracy']['held-out']:.2%} / "
          f"{fp['accuracy']['augmented']:.2%}, {fp['flops'] / 1e6:.2f} MFLOPs, p50 {fp['p50_ms_b1']:.3f} ms b1, "
          f"{fp['p50_ms_b32']:.2f} ms b32)")  # fmt: skip
    out.append(md_table(["ratio", "allocation", "MFLOPs", "FLOP red.", "held-out", "augmented", "speedup b1",
                    "speedup b32", "speedup/FLOPs b1", "speedup/FLOPs b32", "within 1 pt"],
                   [[r["ratio"], r.get("allocation", "uniform"), f"{r['flops'] / 1e6:.2f}", f"{r['flop_reduction']:.2f}x",
                     f"{r['held_out']:.2%}", f"{r['augmented']:.2%}", f"{r['speedup_b1']:.2f}x",
                     f"{r['speedup_b32']:.2f}x", f"{r['speedup_b1'] / r['flop_reduction']:.2f}",
                     f"{r['ratio_speedup_to_flops_b32']:.2f}", r["within_1pt"]] for r in d["rows"]]))  # fmt: skip
    out.append("\nstructured + codebook on resnet_digits")
    out.append(md_table(["model", "file", "p50 b1 ms", "p50 b32 ms", "held-out", "augmented"],
                   [[c["model"], f"{c['file_bytes']:,}", f"{c['p50_ms_b1']:.3f}", f"{c['p50_ms_b32']:.2f}",
                     f"{c['held_out']:.2%}", f"{c['augmented']:.2%}"] for c in results["structured_plus_codebook"]]))  # fmt: skip
    return "\n\n".join(x.strip("\n") for x in out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="fresh-process latency rounds (median reported)")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per measurement")
    ap.add_argument("--quick", action="store_true", help="2 rounds x 20 runs (smoke test)")
    ap.add_argument("--skip-minilm", action="store_true", help="leave MiniLM out")
    ap.add_argument("--only", action="append", choices=("resnet", "minilm", "minilm-heads", "b1-floor"),
                    help="run only this section (repeatable) and merge it into the existing results file")
    ap.add_argument("--remeasure-minilm", metavar="DIR",
                    help="with --only minilm: re-time the pruned MiniLM models a previous run left in DIR "
                         "(its temporary folder) instead of pruning again; cosines are kept")
    ap.add_argument("--reuse-minilm", action="store_true",
                    help="keep the MiniLM section (and its goals) of the existing results file instead of rerunning it")  # fmt: skip
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.runs = 2, 20
    work = Path(tempfile.mkdtemp(prefix="structured-bench-"))
    if args.only:
        return run_only(args, work)
    results: dict[str, Any] = {
        "threads": 1,
        "rounds": args.rounds,
        "runs": args.runs,
        "machine": "shared 2-core machine, loaded by other jobs",
    }

    resnet_digits_section(args, work, results)

    # ---- random-init CNNs built here: FLOPs vs latency (kept widths multiples of ROUND_TO; the
    # MobileNet at 0.3 also with multiples of 8, the channel-rounding comparison)
    synth: list[dict[str, Any]] = []
    for name, build in (("mobilenet_v2_style", mobilenet_v2_style), ("resnet18_shaped", resnet18_shaped)):
        m = build()
        fm = count_flops(m).total
        mpaths = [_save(m, work, f"{name}_fp32")]
        rows = []
        variants = [(0.3, ROUND_TO), (0.5, ROUND_TO)] + ([(0.3, 8)] if name.startswith("mobilenet") else [])
        for ratio, round_to in variants:
            pm, rep = prune_model(m, StructuredConfig(ratio=ratio, criterion="l1", round_to=round_to))
            key = f"{name}_s{int(ratio * 100)}_r{round_to}"
            mpaths.append(_save(pm, work, key))
            rows.append({"ratio": ratio, "round_to": round_to, "key": key, "flops": rep.flops_after,
                         "flop_reduction": fm / rep.flops_after, "params": rep.params_after,
                         "refused_groups": sum(1 for g in rep.groups if g.refused)})  # fmt: skip
        lat, cpu = _lat(mpaths, args.rounds, max(10, args.runs // 5), 1)
        for r in rows:
            r["speedup_b1"] = lat[f"{name}_fp32"] / lat[r["key"]]
            r["cpu_speedup_b1"] = cpu[f"{name}_fp32"] / cpu[r["key"]]
            r["speedup_over_flops"] = r["speedup_b1"] / r["flop_reduction"]
            r["cpu_speedup_over_flops"] = r["cpu_speedup_b1"] / r["flop_reduction"]
            r["goal_0.8x_met"] = r["speedup_over_flops"] >= 0.8
            r["goal_0.8x_met_cpu"] = r["cpu_speedup_over_flops"] >= 0.8
            if r["round_to"] == ROUND_TO:
                results["goals"][f"{name}_{r['ratio']}_speedup_ge_0.8x_flops_wall"] = r["goal_0.8x_met"]
                results["goals"][f"{name}_{r['ratio']}_speedup_ge_0.8x_flops_cpu"] = r["goal_0.8x_met_cpu"]
        synth.append({"model": name, "flops": fm, "p50_ms_b1": lat[f"{name}_fp32"],
                      "cpu_p50_ms_b1": cpu[f"{name}_fp32"], "rows": rows})  # fmt: skip
    results["built_networks"] = synth
    previous = load_result("structured") if args.reuse_minilm else None
    if previous is not None and isinstance(previous.get("minilm"), dict):
        results["minilm"] = {**previous["minilm"], "reused_from_run_of": previous["environment"]["date_utc"]}
        results["goals"].update({k: v for k, v in previous["goals"].items() if k.startswith("minilm")})
    else:
        results["minilm"] = minilm_section(args, work, results["goals"])

    # ---- print (resnet_digits printed by its section)
    print(built_networks_md(synth))
    print(minilm_md(results["minilm"]))
    print(goals_md(results["goals"]))
    write_results("structured", results)
    return 0


def built_networks_md(synth: list[dict[str, Any]]) -> str:
    """The built networks' table (random init, batch 1, 1 thread)."""
    return "\nbuilt networks (random init, batch 1, 1 thread)\n\n" + md_table(
        ["model", "ratio", "round to", "MFLOPs", "FLOP red.", "speedup wall", "speedup CPU", "wall/FLOP red.",
         "CPU/FLOP red."],
        [[s["model"], r["ratio"], r["round_to"], f"{r['flops'] / 1e6:.1f}", f"{r['flop_reduction']:.2f}x",
          f"{r['speedup_b1']:.2f}x", f"{r['cpu_speedup_b1']:.2f}x", f"{r['speedup_over_flops']:.2f}",
          f"{r['cpu_speedup_over_flops']:.2f}"] for s in synth for r in s["rows"]],
    )  # fmt: skip


def goals_md(goals: dict[str, Any]) -> str:
    """The goals of issue 14, met or missed, one table."""
    return "\ngoals:\n\n" + md_table(
        ["goal", "result"],
        [[k, "met" if v is True else "**missed**" if v is False else str(v)] for k, v in goals.items()],
    )


def render(data: dict[str, Any]) -> str:
    """``structured.json`` as Markdown: what the run printed, section by section."""
    parts = [resnet_digits_md(data)] if "resnet_digits" in data else []
    if data.get("built_networks"):
        parts.append(built_networks_md(data["built_networks"]))
    if "minilm" in data:
        parts.append(minilm_md(data["minilm"]))
    parts.append(goals_md(data.get("goals", {})))
    return "\n\n".join(x.strip("\n") for x in parts)


def minilm_md(mini: dict[str, Any] | str) -> str:
    """The MiniLM section as Markdown (printed by the run, shown in docs/benchmarks.md)."""
    out: list[str] = []
    if isinstance(mini, str):
        out.append("\nMiniLM: " + mini)
    else:
        out.append(f"\nMiniLM MLP neurons (calibration: {mini['calibration']}; FLOPs at {mini['seq']} tokens, "
              f"fp32 {mini['fp32']['flops'] / 1e6:.0f} MFLOPs, p50 {mini['fp32']['p50_ms_b1']:.2f} ms wall, "
              f"{mini['fp32']['cpu_p50_ms_b1']:.2f} ms CPU, batch 1)")
        out.append(md_table(["ratio", "allocation", "MLP width", "heads kept", "FLOP red.", "speedup wall", "speedup CPU",
                        "mean cos", "min cos", "NN agree", "prune s"],
                       [[r["ratio"], r.get("allocation", "uniform"), r["mlp_width"], r.get("heads_kept", "12"),
                         f"{r['flop_reduction']:.2f}x", f"{r['speedup_b1']:.2f}x",
                         f"{r['cpu_speedup_b1']:.2f}x", f"{r['cosine']:.4f}", f"{r['cosine_min']:.3f}",
                         f"{r['nn_agreement']:.1%}", f"{r['prune_seconds']:.0f}"] for r in mini["rows"]]))  # fmt: skip
        if "head_rows" in mini:
            h = mini["head_rows"]
            out.append(f"\nMiniLM heads + MLP neurons (own run: fp32 p50 {h['fp32']['p50_ms_b1']:.2f} ms wall, "
                  f"{h['fp32']['cpu_p50_ms_b1']:.2f} ms CPU)")
            out.append(md_table(["MLP ratio", "head ratio", "heads alloc.", "heads kept", "MLP width", "FLOP red.",
                            "speedup wall", "speedup CPU", "mean cos", "min cos", "NN agree"],
                           [[r["ratio"], f"{round(r['heads'] * 12)}/12", r["heads_allocation"], r["heads_kept"],
                             r["mlp_width"], f"{r['flop_reduction']:.2f}x", f"{r['speedup_b1']:.2f}x",
                             f"{r['cpu_speedup_b1']:.2f}x", f"{r['cosine']:.4f}", f"{r['cosine_min']:.3f}",
                             f"{r['nn_agreement']:.1%}"] for r in h["rows"]]))  # fmt: skip
    return "\n\n".join(x.strip("\n") for x in out)


# Refit settings chosen on VALIDATION data only (benchmarks/structured_minilm_select.py: calibrate on
# val_sentences[:350], mean cosine on the held-out val_sentences[350:], uniform ratio 0.35): plain
# ridge 1e-3 (the earlier setting) 0.9711, ridge 1e-2 0.9703, 1e-1 0.9443; ridge 1e-1 toward the
# sliced weights 0.9747 (1.0: 0.9689); + residual-stream target 0.9765 (the best, used below).
# The global allocation (obs marginal costs) at 0.35 with the earlier refit: 0.9847 in-sample
# against 0.9910 for uniform, so it is measured here but not the headline.
MINILM_REFIT = {"ridge": 0.1, "refit_prior": "sliced", "refit_residual": True}
# (ratio = fraction of the 6 x 1536 MLP neurons removed, allocation, refit settings)
MINILM_SETTINGS: tuple[tuple[float, str, dict[str, Any]], ...] = (
    (0.3, "uniform", MINILM_REFIT),
    (0.35, "uniform", MINILM_REFIT),
    (0.4, "uniform", MINILM_REFIT),
    (0.35, "global", MINILM_REFIT),
)
# Attention heads + MLP neurons (issue 14). First chosen by ``structured_minilm_select.py --heads``
# (calibration val_sentences[:350]; held-out cosine on val_sentences[350:]): MLP 0.3 + 6 of 72 heads
# (global) 0.9799 at 1.306x FLOPs; + 12 heads 0.9744 at 1.345x; those rows, measured on test with
# a 500-sentence calibration, are kept under head_rows_val_calibration. Now chosen by
# ``structured_minilm_select.py --calibration-split`` (calibration: the 959-sentence calibration
# split + val_sentences[:350]; rule fixed before the run: most FLOPs removed with held-out cosine
# >= 0.98): MLP 0.3 + 18 of 72 heads (global), 0.9806 at 1.388x (MLP 0.35 + 6 heads 0.9826 at
# 1.373x; MLP 0.3 + 12 heads 0.9830 at 1.345x, measured beside it as the like-for-like comparison
# with the earlier calibration).
MINILM_HEAD_SETTINGS: tuple[tuple[float, float, str], ...] = ((0.3, 3 / 12, "global"), (0.3, 2 / 12, "global"))
MINILM_CRITERION = "obs"
MINILM_SEQ = 64  # the test sentences are padded to 64 tokens: FLOPs and latency at that length


def _length_buckets(data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One batch per sentence length, each sentence cut to its real tokens (no padding rows)."""
    lengths = data["attention_mask"].sum(axis=1)
    return [{k: v[lengths == n, :n] for k, v in data.items()} for n in np.unique(lengths)]


def minilm_section(args: argparse.Namespace, work: Path, goals: dict[str, Any], heads_only: bool = False) -> dict[str, Any] | str:
    from common import embedding_fidelity, minilm_case

    if args.skip_minilm:
        return "skipped (--skip-minilm)"
    case, why = minilm_case(reference=True)
    if case is None:
        return why or "MiniLM unavailable"
    test = case.extra["inputs"]
    reference = case.extra["reference"]
    val_path = case.path.parent / "val_sentences.npz"
    if val_path.exists():
        with np.load(val_path) as z:
            calib = {k: z[k] for k in z.files}
        calib_source = f"{len(calib['input_ids'])} validation sentences (val_sentences.npz, disjoint from test), unpadded"
        pool_path = case.path.parent / "calib_sentences.npz"
        if pool_path.exists():  # more text for the least-squares refit (see structured_minilm_select.py)
            with np.load(pool_path) as z:
                calib = {k: np.concatenate([z[k], calib[k]]) for k in calib}
            calib_source = (
                f"{len(calib['input_ids'])} sentences: calib_sentences.npz + val_sentences.npz "
                "(both disjoint from test), unpadded"
            )
        report_idx = np.arange(len(test["input_ids"]))
    else:  # an older cache: calibrate on the first 100 test sentences, report on the other 400
        calib = {k: v[:100] for k, v in test.items()}
        calib_source = "first 100 test sentences (no validation split in this cache), unpadded; cosine on the other 400"
        report_idx = np.arange(100, len(test["input_ids"]))
    batches = _length_buckets(calib)
    base = onnx.load(str(case.path))
    dims = {"seq": MINILM_SEQ}
    f0 = count_flops(base, dims).total
    mpaths = [case.path]
    rows: list[dict[str, Any]] = []
    refused: dict[str, str] = {}
    settings = [(r, a, s) for r, a, s in MINILM_SETTINGS] if not heads_only else []
    settings += [(r, "uniform", {**MINILM_REFIT, "heads": h, "heads_allocation": ha})
                 for r, h, ha in MINILM_HEAD_SETTINGS]  # fmt: skip
    for ratio, allocation, refit_settings in settings:
        cfg = StructuredConfig(ratio=ratio, criterion=MINILM_CRITERION, samples=len(calib["input_ids"]),
                               round_to=ROUND_TO, allocation=allocation, **refit_settings)  # fmt: skip
        pm, rep = prune_model(base, cfg, batches)
        refused.update({g.name: g.refused for g in rep.groups if g.refused})
        fid = embedding_fidelity(pm, {k: v[report_idx] for k, v in test.items()}, reference[report_idx])
        tag = f"_h{round(cfg.heads * 12)}{cfg.heads_allocation[0]}" if cfg.heads else ""
        path = _save(pm, work, f"minilm_s{int(ratio * 100)}_{allocation}{tag}")
        mpaths.append(path)
        widths = [g.channels_after for g in rep.groups if not g.refused and g.kind != "heads"]
        heads = [g.channels_after for g in rep.groups if not g.refused and g.kind == "heads"]
        rows.append({"ratio": ratio, "allocation": allocation, **refit_settings, "key": path.stem,
                     "mlp_width": "/".join(map(str, widths)) if len(set(widths)) > 1 else str(widths[0]),
                     "heads_kept": "/".join(map(str, heads)) if len(set(heads)) != 1 else str(heads[0]),
                     "flops": count_flops(pm, dims).total, "params": rep.params_after,
                     "prune_seconds": rep.seconds, "refit": [r.__dict__ for r in rep.refit], **fid})  # fmt: skip
        rows[-1]["flop_reduction"] = f0 / rows[-1]["flops"]
        del pm
    wall, cpu = _lat(mpaths, args.rounds, max(10, args.runs // 5), 1, data=case.bench_data)
    b = case.path.stem
    _minilm_speedups(rows, wall, cpu, b, goals)
    return {"calibration": calib_source, "criterion": MINILM_CRITERION, "seq": MINILM_SEQ,
            "latency_input": f"first test sentence, padded to {MINILM_SEQ} tokens, batch 1",
            "fp32": {"flops": f0, "p50_ms_b1": wall[b], "cpu_p50_ms_b1": cpu[b]}, "rows": rows,
            "refused_groups": refused}  # fmt: skip


def remeasure_minilm(args: argparse.Namespace, folder: Path, previous: Any, goals: dict[str, Any]) -> dict[str, Any]:
    """Time again the models of the previous MiniLM run (same files, fresh processes side by side)."""
    from common import minilm_case

    case, why = minilm_case(reference=False)
    if case is None or not isinstance(previous, dict):
        raise SystemExit(f"cannot remeasure: {why or 'no previous MiniLM results'}")
    rows = previous["rows"]
    paths = [case.path] + [folder / f"{r['key']}.onnx" for r in rows]
    wall, cpu = _lat(paths, args.rounds, max(10, args.runs // 5), 1, data=case.bench_data)
    b = case.path.stem
    _minilm_speedups(rows, wall, cpu, b, goals)
    previous["fp32"].update({"p50_ms_b1": wall[b], "cpu_p50_ms_b1": cpu[b]})
    previous["latency_remeasured"] = "models pruned in the previous run, timed again on a quieter machine"
    return previous


def _minilm_speedups(rows: list[dict[str, Any]], wall: dict[str, float], cpu: dict[str, float], b: str,
                     goals: dict[str, Any]) -> None:  # fmt: skip
    for r in rows:
        r["speedup_b1"] = wall[b] / wall[r["key"]]
        r["cpu_speedup_b1"] = cpu[b] / cpu[r["key"]]
        r["meets_1.3x_wall_and_0.98"] = r["speedup_b1"] >= 1.3 and r["cosine"] >= 0.98
        r["meets_1.3x_cpu_and_0.98"] = r["cpu_speedup_b1"] >= 1.3 and r["cosine"] >= 0.98
    _minilm_goals(rows, goals)


def _minilm_goals(rows: list[dict[str, Any]], goals: dict[str, Any]) -> None:
    goals["minilm_1.3x_faster_cos_0.98_some_ratio_wall"] = any(r["meets_1.3x_wall_and_0.98"] for r in rows)
    goals["minilm_1.3x_faster_cos_0.98_some_ratio_cpu"] = any(r["meets_1.3x_cpu_and_0.98"] for r in rows)
    ok = [r for r in rows if r["cosine"] >= 0.98]
    fast = [r for r in rows if r["speedup_b1"] >= 1.3]
    goals["minilm_best_wall_speedup_at_cos_0.98"] = max((r["speedup_b1"] for r in ok), default=None)
    goals["minilm_best_cos_at_1.3x_wall"] = max((r["cosine"] for r in fast), default=None)
    ok_cpu = [r["cpu_speedup_b1"] for r in ok]
    goals["minilm_best_cpu_speedup_at_cos_0.98"] = max(ok_cpu, default=None)


def run_only(args: argparse.Namespace, work: Path) -> int:
    """``--only``: rerun some sections and merge them into the existing results (other keys kept)."""
    results = load_result("structured") or {}
    results.pop("benchmark", None)
    env = results.pop("environment", None)
    if env is not None and "environment_of_other_sections" not in results:
        results["environment_of_other_sections"] = env
    goals = results.setdefault("goals", {})
    if "resnet" in args.only:
        for k in [k for k in goals if k.startswith("resnet_digits")]:
            del goals[k]
        resnet_digits_section(args, work, results)
        results["resnet_digits"]["rounds"], results["resnet_digits"]["runs"] = args.rounds, args.runs
    if "minilm" in args.only:
        previous = results.get("minilm")
        for k in [k for k in goals if k.startswith("minilm")]:
            del goals[k]
        mini = (
            remeasure_minilm(args, Path(args.remeasure_minilm), previous, goals)
            if args.remeasure_minilm
            else minilm_section(args, work, goals)
        )
        if isinstance(mini, dict):
            mini["rounds"], mini["runs"] = args.rounds, max(10, args.runs // 5)
            if isinstance(previous, dict) and "earlier_refit_rows" not in previous:
                mini["earlier_refit_rows"] = {  # the plain-ridge refit, as measured in its own run
                    "refit": "lstsq, ridge 1e-3 toward zero, no residual target, uniform",
                    "rows": [{k: v for k, v in r.items() if k != "refit"} for r in previous["rows"]],
                }
            elif isinstance(previous, dict):
                mini["earlier_refit_rows"] = previous["earlier_refit_rows"]
        results["minilm"] = mini
        print(minilm_md(mini))
    if "minilm-heads" in args.only:
        mini = results.get("minilm")
        if not isinstance(mini, dict):
            raise SystemExit("--only minilm-heads adds rows to an existing MiniLM section: run --only minilm first")
        heads = minilm_section(args, work, {}, heads_only=True)
        if isinstance(heads, dict):
            previous_heads = mini.get("head_rows")
            if isinstance(previous_heads, dict) and "calibration" not in previous_heads:  # the run before the split
                mini["head_rows_val_calibration"] = {**previous_heads, "calibration": mini.get("calibration")}
            mini["head_rows"] = {
                "what": "attention heads + MLP neurons (MINILM_HEAD_SETTINGS, chosen on validation by "
                "structured_minilm_select.py --heads); pruned, and timed against fp32 side by side, in "
                "their own run (speedups relative to that run's fp32)",
                "calibration": heads["calibration"],
                "fp32": heads["fp32"], "rows": heads["rows"], "rounds": args.rounds, "runs": max(10, args.runs // 5),
                "refused_groups": heads["refused_groups"],
            }  # fmt: skip
            for k in [k for k in goals if k.startswith("minilm")]:
                del goals[k]
            _minilm_goals(mini["rows"] + mini["head_rows"]["rows"], goals)
        print(minilm_md(mini))
    if "b1-floor" in args.only:
        results["resnet_digits_b1_floor"] = b1_floor(args.rounds)
        print(json.dumps(results["resnet_digits_b1_floor"], indent=1))
    write_results("structured", results)
    return 0


def b1_floor(rounds: int) -> dict[str, Any]:
    """Why resnet_digits misses "speedup >= 0.8 x FLOP reduction" at batch 1: the cost that does
    not scale with channels. The same 23-node graph with every group cut to one channel (about
    0.1% of the FLOPs) still costs ~20 us a run (session call, per-node dispatch, allocation);
    with that fixed part, even a kernel time exactly proportional to FLOPs caps the batch-1 speedup.
    Timed in process with ``time.thread_time`` (CPU time of the thread: robust to the shared
    machine), 300 runs x ``rounds``, models alternated, median reported."""
    import time

    import onnxruntime as ort

    calib, _ = calibration_images()
    base = onnx.load(str(MODELS_DIR / "resnet_digits.onnx"))
    models = {"fp32": base}
    for name, cfg in (("s50_round16", StructuredConfig(ratio=0.5, samples=512, round_to=16)),
                      ("s50_round1", StructuredConfig(ratio=0.5, samples=512, round_to=1)),
                      ("one_channel", StructuredConfig(ratio=0.99, round_to=1, refit="none", criterion="l1"))):  # fmt: skip
        models[name] = prune_model(base, cfg, {"input": calib})[0]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]) for k, m in models.items()}  # fmt: skip
    x = calib[:1]
    for s in sessions.values():
        for _ in range(200):
            s.run(None, {"input": x})
    per_round: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(max(rounds, 5)):
        for k, s in sessions.items():
            t = []
            for _ in range(300):
                t0 = time.thread_time_ns()
                s.run(None, {"input": x})
                t.append(time.thread_time_ns() - t0)
            per_round[k].append(float(np.median(t)) / 1e3)
    out: dict[str, Any] = {"method": "in-process CPU time per run (thread_time), batch 1, 1 thread", "models": {}}
    for k, m in models.items():
        out["models"][k] = {"flops": count_flops(m, {"N": 1}).total, "cpu_p50_us": float(np.median(per_round[k])),
                            "nodes": len(m.graph.node)}  # fmt: skip
    f0, t0 = out["models"]["fp32"]["flops"], out["models"]["fp32"]["cpu_p50_us"]
    floor = out["models"]["one_channel"]["cpu_p50_us"]
    for k in ("s50_round16", "s50_round1"):
        red = f0 / out["models"][k]["flops"]
        sp = t0 / out["models"][k]["cpu_p50_us"]
        bound = t0 / (floor + (t0 - floor) / red)  # fixed floor + FLOP-proportional rest
        out["models"][k].update({"flop_reduction": red, "speedup": sp, "speedup_over_flops": sp / red,
                                 "bound_with_floor": bound, "bound_over_flops": bound / red})  # fmt: skip
    out["floor_share_of_fp32"] = floor / t0
    return out


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


if __name__ == "__main__":
    sys.exit(main())
