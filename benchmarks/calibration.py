"""Plain vs calibrated post-training compression, side by side on the same settings.

    python benchmarks/calibration.py [--quick] [--skip-cost] [--models lenet_300_100,lenet5,...]

For each shipped digits model and each setting: compress with the plain algorithms and with
calibration (256 samples from the first half of models/digits_test_aug.npz), write both as
.onnxc containers (entropy-coded) and .onnx, and measure test accuracy on models/digits_test.npz.
MiniLM runs when models/export_minilm.py finds its cache (mean cosine and nearest-neighbour
agreement against fp32). The cost section calibrates a synthetic ~25M-parameter MLP on 256 samples
and reports time and peak memory. Prints a Markdown table; writes benchmarks/results/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxcompress.calibration import CalibrationConfig, calibrate  # noqa: E402
from onnxcompress.compressor import compress_model  # noqa: E402
from onnxcompress.config import from_dict  # noqa: E402
from onnxcompress.sessions import make_session  # noqa: E402

MODELS = ROOT / "models"
SETTINGS = {
    "5b": {"weight": {"bits": 5}},
    "4b s70": {"weight": {"bits": 4, "sparsity": 0.7}},
    "4b s85": {"weight": {"bits": 4, "sparsity": 0.85}},
    "3b s92": {"weight": {"bits": 3, "sparsity": 0.92}},
}
LENET5_SETTINGS = {
    "4b s50": {"weight": {"bits": 4, "sparsity": 0.5}},
    "4b s85": {"weight": {"bits": 4, "sparsity": 0.85}},
    "3b s90": {"weight": {"bits": 3, "sparsity": 0.9}},
    "3b s93": {"weight": {"bits": 3, "sparsity": 0.93}},
}
CONV_SETTINGS = {
    "5b": {"weight": {"bits": 5}},
    "4b": {"weight": {"bits": 4}},
    "4b s50": {"weight": {"bits": 4, "sparsity": 0.5}},
    "3b s60": {"weight": {"bits": 3, "sparsity": 0.6}},
}


def sizes(model: onnx.ModelProto, tmp: Path) -> tuple[int, int | None]:
    onnx_path = tmp / "m.onnx"
    onnx.save(model, onnx_path)
    try:
        from onnxcompress.container import write_container

        write_container(model, tmp / "m.onnxc")
        return onnx_path.stat().st_size, (tmp / "m.onnxc").stat().st_size
    except Exception as exc:  # container optional: report .onnx size
        print(f"  (container unavailable: {exc})", file=sys.stderr)
        return onnx_path.stat().st_size, None


def digits(name: str, settings: dict, samples: int) -> list[dict]:
    aug = np.load(MODELS / "digits_test_aug.npz")
    test = np.load(MODELS / "digits_test.npz")
    half = aug["input"][: len(aug["input"]) // 2]
    calib = {"input": half[:: max(1, len(half) // samples)][:samples]}
    path = MODELS / f"{name}.onnx"
    base_bytes = path.stat().st_size

    def accuracy(m) -> float:
        y = make_session(m).run(None, {"input": test["input"]})[0]
        return float((y.argmax(1) == test["labels"]).mean())

    fp32 = accuracy(onnx.load(path))
    rows = []
    for label, plan in settings.items():
        cfg = from_dict(plan)
        with tempfile.TemporaryDirectory() as d:
            plain = compress_model(onnx.load(path), cfg)
            p_onnx, p_c = sizes(plain.model, Path(d))
            model = onnx.load(path)
            t0 = time.perf_counter()
            res = calibrate(model, calib, cfg, calibration=CalibrationConfig(samples=samples))
            cal = compress_model(model, cfg, weight_hook=res.hook)
            secs = time.perf_counter() - t0
            c_onnx, c_c = sizes(cal.model, Path(d))
        row = {
            "model": name, "setting": label, "fp32_acc": fp32,
            "plain_acc": accuracy(plain.model), "calib_acc": accuracy(cal.model),
            "ratio_onnx_plain": base_bytes / p_onnx, "ratio_onnx_calib": base_bytes / c_onnx,
            "ratio_container_plain": base_bytes / p_c if p_c else None,
            "ratio_container_calib": base_bytes / c_c if c_c else None,
            "out_err_plain": float(np.mean([w.error_plain for w in res.weights])),
            "out_err_calib": float(np.mean([w.error_calibrated for w in res.weights])),
            "calib_seconds": secs, "stages": res.stages,
        }  # fmt: skip
        print(
            f"  {name} {label}: acc fp32 {fp32:.4f} plain {row['plain_acc']:.4f} calib {row['calib_acc']:.4f}"
            f" ratio(container) {row['ratio_container_calib'] or 0:.1f}x  {secs:.1f}s",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        rows.append(row)
    return rows


def minilm(samples: int) -> list[dict] | str:
    try:
        sys.path.insert(0, str(MODELS.parent))
        from models import export_minilm as em

        paths = em._paths(em.DEFAULT_CACHE)
        if not all(p.exists() for p in paths.values()):
            return f"MiniLM skipped: no cache at {em.DEFAULT_CACHE} (build it with python models/export_minilm.py)"
        paths = em.ensure_minilm()
    except Exception as exc:
        return f"MiniLM skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    from onnxcompress.model_io import load_model

    z = np.load(paths["data"])
    feeds = {k: z[k] for k in z.files}
    n = len(next(iter(feeds.values())))
    calib = {k: v[: n // 2][:samples] for k, v in feeds.items()}
    test = {k: v[n // 2 :] for k, v in feeds.items()}
    base = load_model(paths["model"])
    sess = make_session(base)
    out_names = [o.name for o in sess.get_outputs()]

    def embed(m):
        s = make_session(m)
        y = s.run([out_names[0]], {k: v for k, v in test.items() if k in {i.name for i in s.get_inputs()}})[0]
        if y.ndim == 3:
            mask = test.get("attention_mask", np.ones(y.shape[:2]))[..., None]
            y = (y * mask).sum(1) / np.maximum(mask.sum(1), 1)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    ref = embed(base)
    rows = []
    for label, plan in {"4b/ch": {"weight": {"bits": 4, "granularity": "channel"}},
                        "3b/ch": {"weight": {"bits": 3, "granularity": "channel"}}}.items():  # fmt: skip
        cfg = from_dict(plan)
        plain = compress_model(load_model(paths["model"]), cfg)
        model = load_model(paths["model"])
        res = calibrate(model, calib, cfg, calibration=CalibrationConfig(samples=samples))
        cal = compress_model(model, cfg, weight_hook=res.hook)
        row = {"model": "minilm", "setting": label}
        for tag, m in (("plain", plain.model), ("calib", cal.model)):
            e = embed(m)
            sim = ref @ ref.T
            np.fill_diagonal(sim, -np.inf)
            sim2 = e @ e.T
            np.fill_diagonal(sim2, -np.inf)
            row[f"{tag}_cosine"] = float(np.mean(np.sum(e * ref, axis=1)))
            row[f"{tag}_nn_agree"] = float(np.mean(sim.argmax(1) == sim2.argmax(1)))
            row[f"{tag}_weight_ratio"] = sum(
                w.bytes_before for w in (plain if tag == "plain" else cal).report.weights
            ) / sum(w.bytes_after for w in (plain if tag == "plain" else cal).report.weights)
        rows.append(row)
    return rows


def cost(samples: int, quick: bool) -> list[dict]:
    """Time and peak memory of calibrating synthetic MLPs of growing size (4-bit, 50% sparse)."""
    from onnx import TensorProto, helper, numpy_helper

    out = []
    configs = [(1024, 4), (2048, 6)] if not quick else [(512, 4)]
    for width, layers in configs:
        rng = np.random.default_rng(0)
        inits, nodes, cur = [], [], "x"
        for i in range(layers):
            inits.append(
                numpy_helper.from_array(
                    (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"
                )
            )
            nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
            cur = f"r{i}"
        g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, width])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)], inits)  # fmt: skip
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        data = {"x": rng.normal(size=(samples, 16, width)).astype(np.float32)}
        cfg = from_dict({"weight": {"bits": 4, "sparsity": 0.5}})
        t0 = time.perf_counter()
        res = calibrate(model, data, cfg, calibration=CalibrationConfig(samples=samples), baseline=False)
        secs = time.perf_counter() - t0
        out.append({
            "params": width * width * layers, "layers": layers, "width": width, "samples": samples,
            "tokens_per_sample": 16, "seconds": secs, "capture_seconds": res.capture_seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })  # fmt: skip
        print(f"  cost: {out[-1]}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--models", default="lenet_300_100,lenet5,resnet_digits,minilm")
    ap.add_argument("--samples", type=int, default=256)
    args = ap.parse_args()
    names = args.models.split(",")
    rows: list[dict] = []
    notes: list[str] = []
    for name in names:
        if name == "minilm":
            r = minilm(args.samples)
            if isinstance(r, str):
                notes.append(r)
                print(r, file=sys.stderr)
            else:
                rows += r
            continue
        if not (MODELS / f"{name}.onnx").exists():
            notes.append(f"{name} skipped: models/{name}.onnx missing")
            continue
        settings = {"lenet_300_100": SETTINGS, "lenet5": LENET5_SETTINGS}.get(name, CONV_SETTINGS)
        if args.quick:
            settings = dict(list(settings.items())[1:2])
        rows += digits(name, settings, args.samples)
    costs = [] if args.skip_cost else cost(args.samples, args.quick)
    print(
        "| model | setting | ratio (.onnxc) plain / calib | fp32 acc | plain acc | calib acc | out err plain / calib | calib s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["model"] == "minilm":
            continue
        print(
            f"| {r['model']} | {r['setting']} | {r['ratio_container_plain'] or 0:.1f}x / {r['ratio_container_calib'] or 0:.1f}x "
            f"| {r['fp32_acc']:.4f} | {r['plain_acc']:.4f} | {r['calib_acc']:.4f} "
            f"| {r['out_err_plain']:.3f} / {r['out_err_calib']:.3f} | {r['calib_seconds']:.1f} |"
        )
    for r in rows:
        if r["model"] == "minilm":
            print(f"| minilm | {r['setting']} | weights {r['calib_weight_ratio']:.1f}x | cos plain {r['plain_cosine']:.4f} "
                  f"nn {r['plain_nn_agree']:.3f} | cos calib {r['calib_cosine']:.4f} nn {r['calib_nn_agree']:.3f} |")  # fmt: skip
    for c in costs:
        print(f"cost: {c['params'] / 1e6:.1f}M params, {c['layers']} layers, {c['samples']} samples x 16 tokens: "
              f"{c['seconds']:.1f} s (capture {c['capture_seconds']:.1f} s), peak RSS {c['peak_rss_mb']:.0f} MB")  # fmt: skip
    for n in notes:
        print(n)
    import onnxruntime

    result = {
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()},
        "calibration_data": "first half of models/digits_test_aug.npz, every k-th sample, 256 samples; "
                            "accuracy on models/digits_test.npz",
        "rows": rows, "cost": costs, "notes": notes,
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "calibration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
