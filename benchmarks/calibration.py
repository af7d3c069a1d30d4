"""Plain vs calibrated post-training compression, side by side on the same settings.

    python benchmarks/calibration.py [--quick] [--skip-cost] [--models lenet_300_100,lenet5,resnet_digits,minilm]
                                     [--digits-samples 256] [--minilm-samples 128] [--samples 256]
                                     [--settings LABEL,...] [--timeout 900] [--resume] [--merge OTHER.json]

For each model and each setting (a plan, plus calibration options), the model is compressed twice
with the *same* plan: with the plain algorithms and with calibration (OBS pruning + GPTQ onto the
codebook + least-squares refit unless the setting says otherwise). Both are packed into ``.onnxc``
containers; the ratio is fp32 ``.onnx`` bytes (external data included) / container bytes.

Data (calibration never sees a test image, nor a variant of one):

* digits: calibration on ``--digits-samples`` of ``models/digits_calib.npz`` (256 images made from the
  training images only by ``models/make_digits_splits.py``, augmented like the test set); accuracy on
  all of ``digits_test.npz`` and ``digits_test_aug.npz``. fp32 accuracy is measured on the same sets.
  "Within 1 point" = top-1 drop <= 1 point on both.
* MiniLM: calibration on ``--minilm-samples`` of the 500 validation sentences (``val_sentences.npz``,
  spread evenly); mean cosine to the fp32 ONNX embeddings and nearest-neighbour agreement over the 500
  test sentences (the brief's metric), which share no sentence with the validation split.

Every (model, setting) row is isolated: an exception or the per-part ``--timeout`` becomes an
``error`` in the row, and the JSON (``benchmarks/results/calibration.json``) is rewritten after
every row, so a partial run keeps what it measured (``--resume`` skips rows already there).

The cost section runs each size in a fresh subprocess (so peak RSS is per configuration):
synthetic MLPs (MatMul + Relu, 16 tokens per sample) with a growing number of layers, and a ~25M
parameter one, calibrated on ``--samples`` samples (4 bit, 50% sparsity, OBS + GPTQ + refit).

The conv speed section (``--conv-only``, issue 16) times calibration of a MobileNet-style model
built here (``mobilenet_se``: depthwise + pointwise convs, squeeze-excite, 4.9 MB, random weights:
timing only) on ``--conv-samples`` N(0, 1) images, under cProfile, in a fresh subprocess, and keeps
the profile's top costs. ``--conv-code DIR`` runs another checkout's code (``git archive COMMIT |
tar -x -C DIR``) for a before/after row; ``--conv-blas default`` leaves OpenBLAS its own thread count
(what a CLI user gets) instead of this script's one thread.

Timings are from a shared 2-core machine that other jobs load: treat them as rough.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # 2 BLAS threads were ~10x slower under load

import numpy as np  # noqa: E402
import onnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
if os.environ.get("CALIB_BENCH_CODE"):  # a conv-speed child timing another checkout's code
    sys.path.insert(0, os.environ["CALIB_BENCH_CODE"])

from common import (  # noqa: E402
    MODELS_DIR,
    RESULTS_DIR,
    embeddings,
    file_bytes,
    md_table,
    nearest_neighbours,
    one_line,
    write_results,
)

from onnxcompress.calibration import CalibrationConfig, calibrate  # noqa: E402
from onnxcompress.compressor import compress_model  # noqa: E402
from onnxcompress.config import from_dict  # noqa: E402
from onnxcompress.evaluation.bench import peak_rss_bytes  # noqa: E402

OUT = RESULTS_DIR / "calibration.json"
MIN_COSINE, MIN_NN = 0.99, 0.95
TARGETS = {"lenet_300_100": 40.0, "lenet5": 40.0, "resnet_digits": 12.0, "minilm": 8.0}

# A setting: a plan (as in a YAML plan file) and calibration options (CalibrationConfig fields).
# The lists are a small bounded search, ordered from mild to aggressive; both paths get each one.
G = {"pruning": "global"}
CH = {"granularity": "channel", "codebook_dtype": "float16"}
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "lenet_300_100": {
        "5b g85": {"plan": {"weight": {"bits": 5, "sparsity": 0.85, **G}}},
        "4b g88": {"plan": {"weight": {"bits": 4, "sparsity": 0.88, **G}}},
        "4b g90": {"plan": {"weight": {"bits": 4, "sparsity": 0.90, **G}}},
        "3b g90": {"plan": {"weight": {"bits": 3, "sparsity": 0.90, **G}}},
        # OBS choosing each row's mask over all 784 columns at once (block_size >= cols) instead of
        # per 128-column block: better on this model's fc1 (measured: 3b g90 augmented 91.3% -> 93.6%)
        "3b g85 obs-block1024": {
            "plan": {"weight": {"bits": 3, "sparsity": 0.85, **G}},
            "calib": {"block_size": 1024},
        },
        "3b g88 obs-block1024": {
            "plan": {"weight": {"bits": 3, "sparsity": 0.88, **G}},
            "calib": {"block_size": 1024},
        },
        "3b g90 obs-block1024": {
            "plan": {"weight": {"bits": 3, "sparsity": 0.90, **G}},
            "calib": {"block_size": 1024},
        },
        "4b g92": {"plan": {"weight": {"bits": 4, "sparsity": 0.92, **G}}},
    },
    "lenet5": {
        "4b g88": {"plan": {"weight": {"bits": 4, "sparsity": 0.88, **G}}},
        "4b g90": {"plan": {"weight": {"bits": 4, "sparsity": 0.90, **G}}},
        "3b g90": {"plan": {"weight": {"bits": 3, "sparsity": 0.90, **G}}},
        "4b g92": {"plan": {"weight": {"bits": 4, "sparsity": 0.92, **G}}},
        "4b g93": {"plan": {"weight": {"bits": 4, "sparsity": 0.93, **G}}},
        "3b g93": {"plan": {"weight": {"bits": 3, "sparsity": 0.93, **G}}},
        "4b g94": {"plan": {"weight": {"bits": 4, "sparsity": 0.94, **G}}},
    },
    "resnet_digits": {
        "3b/ch": {"plan": {"weight": {"bits": 3, **CH}}},
        "3b/ch g40": {"plan": {"weight": {"bits": 3, **CH, "sparsity": 0.4, **G}}},
        "3b/ch g50": {"plan": {"weight": {"bits": 3, **CH, "sparsity": 0.5, **G}}},
        "2b/ch": {"plan": {"weight": {"bits": 2, **CH}}},
        "2b/ch g30": {"plan": {"weight": {"bits": 2, **CH, "sparsity": 0.3, **G}}},
        "3b g60": {"plan": {"weight": {"bits": 3, "sparsity": 0.6, **G}}},
    },
    "minilm": {
        # the word embedding (30522 x 384, half the parameters) is a Gather: per-tensor codebook there
        # (per-row codebooks would cost 30522 codebooks); calibration weights it by lookup counts
        "5b/ch emb3b": {
            "plan": {
                "weight": {"bits": 5, **CH},
                "op_types": {"Gather": {"bits": 3, "granularity": "tensor"}},
            }
        },
        "4b/ch emb4b": {
            "plan": {
                "weight": {"bits": 4, **CH},
                "op_types": {"Gather": {"bits": 4, "granularity": "tensor"}},
            }
        },
        "4b/ch emb3b": {
            "plan": {
                "weight": {"bits": 4, **CH},
                "op_types": {"Gather": {"bits": 3, "granularity": "tensor"}},
            }
        },
        "5b/ch emb2b": {
            "plan": {
                "weight": {"bits": 5, **CH},
                "op_types": {"Gather": {"bits": 2, "granularity": "tensor"}},
            }
        },
        "5b/ch emb4b": {
            "plan": {
                "weight": {"bits": 5, **CH},
                "op_types": {"Gather": {"bits": 4, "granularity": "tensor"}},
            }
        },
    },
}
# Calibration options every setting of a family starts from (a setting's "calib" overrides them).
# Digits: bias correction on (measured on LeNet-5 4b g90: augmented 96.9% -> 97.7%, held-out equal).
DEFAULT_CALIB = {"digits": {"bias_correction": True}, "minilm": {}}
QUICK = {
    "lenet_300_100": ["3b g85 obs-block1024"],
    "lenet5": ["4b g92"],
    "resnet_digits": ["2b/ch"],
    "minilm": ["4b/ch emb4b"],
}


# ------------------------------------------------------------------------------------------ helpers


class SettingTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise SettingTimeout after ``seconds`` (SIGALRM; native calls finish their current step first)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise SettingTimeout(f"timed out after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def container_bytes(model: onnx.ModelProto) -> int:
    from onnxcompress.container import write_container

    with tempfile.TemporaryDirectory(prefix="calib-bench-") as d:
        return int(write_container(model, Path(d) / "m.onnxc").container_bytes)


def onnx_bytes(model: onnx.ModelProto) -> int:
    return model.ByteSize()


@dataclasses.dataclass
class Case:
    name: str
    path: Path
    base_bytes: int
    load: Callable[[], onnx.ModelProto]
    calib: dict[str, np.ndarray]
    fidelity: Callable[[Any], dict[str, float]]
    passes: Callable[[Mapping[str, float], Mapping[str, float]], bool]
    data_note: str


def digits_case(name: str, samples: int) -> Case:
    path = MODELS_DIR / f"{name}.onnx"
    with np.load(MODELS_DIR / "digits_test.npz") as z:
        test_x, test_y = z["input"], z["labels"]
    with np.load(MODELS_DIR / "digits_test_aug.npz") as z:
        aug_x, aug_y = z["input"], z["labels"]
    with np.load(MODELS_DIR / "digits_calib.npz") as z:  # training images only (make_digits_splits.py)
        cal_x = z["input"]
    idx = np.linspace(0, len(cal_x) - 1, min(samples, len(cal_x))).round().astype(np.int64)
    sets = {"held-out": (test_x, test_y), "augmented": (aug_x, aug_y)}

    def fidelity(model: Any) -> dict[str, float]:
        from onnxcompress.sessions import make_session

        sess = make_session(model)
        inp = sess.get_inputs()[0].name
        return {k: float(np.mean(sess.run(None, {inp: x})[0].argmax(1) == y)) for k, (x, y) in sets.items()}

    def passes(fid: Mapping[str, float], base: Mapping[str, float]) -> bool:
        return all(base[k] - fid[k] <= 0.01 + 1e-9 for k in sets)

    return Case(
        name, path, path.stat().st_size, lambda: onnx.load(path), {"input": cal_x[idx]}, fidelity, passes,
        f"calibration: {len(idx)} of models/digits_calib.npz (training images, augmented like the test set); "
        "test: all of digits_test.npz and digits_test_aug.npz, which calibration never sees",
    )  # fmt: skip


def minilm_case(samples: int) -> Case:
    from models.export_minilm import ensure_minilm
    from onnxcompress.model_io import open_model

    paths = ensure_minilm()
    with np.load(paths["data"]) as z:
        inputs = {k: z[k] for k in z.files}
    with np.load(paths["validation"]) as z:
        validation = {k: z[k] for k in z.files}
    n_val = len(next(iter(validation.values())))
    idx = np.linspace(0, n_val - 1, min(samples, n_val)).round().astype(np.int64)
    reference = embeddings(paths["model"], inputs)
    ref_nn = nearest_neighbours(reference)

    def fidelity(model: Any) -> dict[str, float]:
        e = embeddings(model, inputs)
        cos = np.sum(e * reference, 1) / (
            np.linalg.norm(e, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12
        )
        nn = float(np.mean(nearest_neighbours(e) == ref_nn))
        return {"cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos)), "nn_agreement": nn}

    def passes(fid: Mapping[str, float], base: Mapping[str, float]) -> bool:
        return fid["cosine"] >= MIN_COSINE and fid["nn_agreement"] >= MIN_NN

    return Case(
        "minilm", Path(paths["model"]), file_bytes(paths["model"]), lambda: open_model(paths["model"]),
        {k: v[idx] for k, v in validation.items()}, fidelity, passes,
        f"calibration: {len(idx)} of the {n_val} validation sentences (val_sentences.npz, evenly spread); "
        f"fidelity vs fp32 ONNX embeddings over the {len(next(iter(inputs.values())))} test sentences, "
        "which share no sentence with the validation split",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ rows


def measure(case: Case, model: onnx.ModelProto, base_fid: Mapping[str, float]) -> dict[str, Any]:
    part: dict[str, Any] = {"onnx_bytes": onnx_bytes(model)}
    part["onnxc_bytes"] = container_bytes(model)
    part["ratio"] = case.base_bytes / part["onnxc_bytes"]
    part["ratio_onnx"] = case.base_bytes / part["onnx_bytes"]
    part["fidelity"] = case.fidelity(model)
    part["passed"] = case.passes(part["fidelity"], base_fid)
    return part


def run_setting(case: Case, label: str, setting: Mapping[str, Any], base_fid: Mapping[str, float],
                samples: int, timeout: float | None) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {"model": case.name, "setting": label, "plan": setting["plan"],
                           "calibration": setting.get("calib", {})}  # fmt: skip
    try:
        cfg = from_dict(setting["plan"])
        family = "minilm" if case.name == "minilm" else "digits"
        ccfg = CalibrationConfig(samples=samples, **{**DEFAULT_CALIB[family], **setting.get("calib", {})})
        row["calibration"] = {k: v for k, v in ccfg.to_dict().items() if k != "names" or v}
    except Exception as exc:  # noqa: BLE001
        row["error"] = one_line(exc)
        return row
    # plain
    part: dict[str, Any] = {}
    try:
        with time_limit(timeout):
            t0 = time.perf_counter()
            plain = compress_model(case.load(), cfg)
            part["compress_s"] = time.perf_counter() - t0
            part.update(measure(case, plain.model, base_fid))
        del plain
    except Exception as exc:  # noqa: BLE001 -- a failure is a result
        part["error"] = one_line(exc)
    row["plain"] = part
    # calibrated
    part = {}
    try:
        with time_limit(timeout):
            model = case.load()
            t0 = time.perf_counter()
            res = calibrate(model, case.calib, cfg, calibration=ccfg)
            part["calibrate_s"] = time.perf_counter() - t0
            part["capture_s"] = res.capture_seconds
            t1 = time.perf_counter()
            cal = compress_model(model, cfg, weight_hook=res.hook)
            part["compress_s"] = time.perf_counter() - t1
            errs = [(w.error_plain, w.error_calibrated) for w in res.weights if w.error_plain is not None]
            part["out_err_plain"] = float(np.mean([e[0] for e in errs])) if errs else None
            part["out_err_calib"] = float(np.mean([e[1] for e in errs])) if errs else None
            part["weights_calibrated"] = len(res.weights)
            part["weights_skipped"] = dict(res.skipped)
            part["stages"] = res.stages
            part.update(measure(case, cal.model, base_fid))
        del model, res, cal
    except Exception as exc:  # noqa: BLE001
        part["error"] = one_line(exc)
    row["calibrated"] = part
    return row


def fmt_part(p: Mapping[str, Any] | None, kind: str) -> list[str]:
    if not p or "fidelity" not in p:
        err = (p or {}).get("error", "not run")
        return [f"error: {err[:60]}", "-", "-"]
    f = p["fidelity"]
    ok = "yes" if p["passed"] else "no"
    if kind == "minilm":
        return [f"{p['ratio']:.1f}x", f"cos {f['cosine']:.4f} / NN {f['nn_agreement']:.3f}", ok]
    return [f"{p['ratio']:.1f}x", f"{100 * f['held-out']:.2f} / {100 * f['augmented']:.2f}", ok]


def tables(result: Mapping[str, Any]) -> str:
    out = []
    for name, info in result["models"].items():
        rows = [r for r in result["rows"] if r["model"] == name]
        if not rows and "error" not in info:
            continue
        kind = "minilm" if name == "minilm" else "digits"
        fid = info.get("fp32") or {}
        if kind == "minilm":
            base = "fp32: cosine 1, NN 1"
            head = ["setting", "ratio plain", "plain cos / NN", "ok", "ratio calib", "calib cos / NN", "ok",
                    "calib s"]  # fmt: skip
        else:
            base = (f"fp32: {100 * fid['held-out']:.2f}% held-out / {100 * fid['augmented']:.2f}% "
                    "augmented") if fid else ""  # fmt: skip
            head = ["setting", "ratio plain", "plain acc % (held-out / aug)", "ok", "ratio calib",
                    "calib acc % (held-out / aug)", "ok", "calib s"]  # fmt: skip
        out.append(f"\n### {name} (target {TARGETS.get(name, 0):g}x)  {base}")
        if "error" in info:
            out.append(f"error: {info['error']}")
        body = []
        for r in rows:
            if "error" in r:
                body.append([r["setting"], f"error: {r['error']}", "", "", "", "", "", ""])
                continue
            c = r.get("calibrated") or {}
            cal = fmt_part(c, kind)
            secs = c.get("calibrate_s")
            body.append(
                [r["setting"], *fmt_part(r.get("plain"), kind), *cal, "-" if secs is None else f"{secs:.1f}"]
            )
        out.append(md_table(head, body))
        best = info.get("best") or {}
        for path in ("plain", "calibrated"):
            b = best.get(path)
            out.append(
                f"best {path} within 1 point: " + (f"{b['setting']} {b['ratio']:.1f}x" if b else "none")
            )
    if result.get("conv_speed"):
        out.append("\n### calibration speed on a MobileNet-style conv model (issue 16; timing only, random weights)")
        out.append("Each row: one profiled `calibrate` in a fresh process; load = 1-minute load average of the shared "
                   "2-core machine (other jobs ran beside it). BLAS threads 1: this script's setting; library "
                   "default: what a CLI user gets.\n")  # fmt: skip
        body = []
        for c in result["conv_speed"]:
            if "error" in c:
                body.append([c.get("label"), "", "", "", "", "", "", "", f"error: {c['error']}"])
                continue
            top = "; ".join(f"{_short(t['function'])} {t['seconds']:.1f}" for t in c.get("top_costs", [])[:5])
            body.append([
                c["label"], f"{c['model_mb']:.1f} MB, {c['input']}", c["plan"], c["samples"], c["blas"],
                f"{c['seconds']:.1f}", f"{c['capture_seconds']:.1f}", f"{c['load_before'][0]:.1f} / {c['load_after'][0]:.1f}",
                top,
            ])  # fmt: skip
        out.append(md_table(["code", "model", "plan", "samples", "BLAS threads", "calibrate s (profiled)",
                             "capture s", "load 1-min before / after", "top costs (tottime s)"], body))  # fmt: skip
    if result.get("cost"):
        out.append("\n### calibration cost (synthetic MLP, 16 tokens/sample, 4 bit, 50% sparsity)")
        body = [[c.get("params", 0) / 1e6, c.get("layers"), c.get("width"), c.get("samples"),
                 c.get("seconds"), c.get("capture_seconds"), c.get("stages"), c.get("peak_rss_mb"), c.get("error", "")]
                for c in result["cost"]]  # fmt: skip
        out.append(md_table(["params (M)", "layers", "width", "samples", "calibrate s", "capture s", "stages",
                             "peak RSS MB", "error"], body))  # fmt: skip
    return "\n".join(out)


def best_of(rows: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    ok = [
        (r[path]["ratio"], r["setting"], r[path]["fidelity"]) for r in rows if r.get(path, {}).get("passed")
    ]
    if not ok:
        return None
    ratio, setting, fid = max(ok, key=lambda t: t[0])
    return {"setting": setting, "ratio": ratio, "fidelity": fid}


def closest_at_target(
    rows: list[dict[str, Any]], path: str, target: float, kind: str
) -> dict[str, Any] | None:
    """The row at or above the target ratio with the best fidelity (worst metric of the two)."""

    def score(f: Mapping[str, float]) -> float:
        return min(f["cosine"], f["nn_agreement"]) if kind == "minilm" else min(f["held-out"], f["augmented"])

    cands = [r for r in rows if r.get(path, {}).get("ratio", 0) >= target and "fidelity" in r[path]]
    if not cands:
        return None
    r = max(cands, key=lambda r: score(r[path]["fidelity"]))
    return {"setting": r["setting"], "ratio": r[path]["ratio"], "fidelity": r[path]["fidelity"]}


def fid_text(f: Mapping[str, float] | None, kind: str) -> str:
    if not f:
        return "-"
    if kind == "minilm":
        return f"cos {f['cosine']:.4f}, NN {f['nn_agreement']:.3f}"
    return f"{100 * f['held-out']:.2f} / {100 * f['augmented']:.2f}"


def summary(result: Mapping[str, Any]) -> str:
    body = []
    for name, info in result["models"].items():
        kind = "minilm" if name == "minilm" else "digits"
        rows = [r for r in result["rows"] if r["model"] == name]
        t = TARGETS.get(name, 0.0)
        cells: list[object] = [name, f"{t:g}x", fid_text(info.get("fp32"), kind)]
        for path in ("plain", "calibrated"):
            b = best_of(rows, path)
            cells.append(
                f"{b['ratio']:.1f}x ({b['setting']}): {fid_text(b['fidelity'], kind)}" if b else "none"
            )
            c = closest_at_target(rows, path, t, kind)
            cells.append(f"{c['ratio']:.1f}x ({c['setting']}): {fid_text(c['fidelity'], kind)}" if c else "-")
        body.append(cells)
    head = ["model", "target", "fp32", "plain: best passing", "plain: best at >= target",
            "calibrated: best passing", "calibrated: best at >= target"]  # fmt: skip
    return "### summary (passing = within 1 point; MiniLM: cos >= 0.99 and NN >= 0.95)\n" + md_table(
        head, body
    )


# ------------------------------------------------------------------------------------------ cost


def mlp(width: int, layers: int, tokens: int = 16) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, cur = [], [], "x"
    for i in range(layers):
        w = (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        cur = f"r{i}"
    g = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, width])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", tokens, width])], inits,
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def cost_child(width: int, layers: int, samples: int) -> dict[str, Any]:
    """One cost measurement (run in a fresh process by :func:`cost`)."""
    model = mlp(width, layers)
    data = {"x": np.random.default_rng(1).normal(size=(samples, 16, width)).astype(np.float32)}
    rss0 = (peak_rss_bytes() or 0) / 2**20
    cfg = from_dict({"weight": {"bits": 4, "sparsity": 0.5}})
    t0 = time.perf_counter()
    res = calibrate(model, data, cfg, calibration=CalibrationConfig(samples=samples), baseline=False)
    secs = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = compress_model(model, cfg, weight_hook=res.hook)
    return {
        "params": width * width * layers, "layers": layers, "width": width, "samples": samples, "tokens_per_sample": 16,
        "seconds": secs, "capture_seconds": res.capture_seconds, "capture_mode": res.capture_mode, "stages": res.stages,
        "per_layer_seconds": [w.seconds for w in res.weights], "compress_with_hook_seconds": time.perf_counter() - t1,
        "weights_calibrated": len(res.weights), "ratio_weights": out.report.ratio,
        "rss_before_mb": rss0, "peak_rss_mb": (peak_rss_bytes() or 0) / 2**20,
    }  # fmt: skip


def _short(function: str) -> str:
    """A profile entry's name, without cProfile's decoration of builtins."""
    if "onnxruntime" in function and function.endswith(".run>"):
        return "onnxruntime run"
    for kind in ("ndarray", "ufunc"):
        prefix = "<method '"
        if function.startswith(prefix) and f"of 'numpy.{kind}' objects>" in function:
            name = function[len(prefix) :].split("'")[0]
            return f"{kind}.{name}"
    return function


def mobilenet_se(size: int = 224, classes: int = 512, seed: int = 0) -> onnx.ModelProto:
    """A MobileNet-style classifier (4.9 MB fp32, 1.2M parameters): a 3x3 stride-2 stem, eleven
    depthwise 3x3 + pointwise 1x1 blocks (squeeze-excite in the last six), global pooling, a Gemm
    head. Random He-initialised weights: for timing, not accuracy."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, act: bool = True,
             name: str = "") -> str:  # fmt: skip
        fan = cin // group * k * k
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan)).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.c"], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4, group=group, name=name))  # fmt: skip
        if not act:
            return f"{name}.c"
        nodes.append(helper.make_node("Relu", [f"{name}.c"], [f"{name}.r"]))
        return f"{name}.r"

    def squeeze_excite(x: str, c: int, name: str) -> str:
        nodes.append(helper.make_node("GlobalAveragePool", [x], [f"{name}.gap"]))
        s = conv(f"{name}.gap", c, c // 4, 1, name=f"{name}.fc1")
        s = conv(s, c // 4, c, 1, act=False, name=f"{name}.fc2")
        nodes.append(helper.make_node("Sigmoid", [s], [f"{name}.sig"]))
        nodes.append(helper.make_node("Mul", [x, f"{name}.sig"], [f"{name}.out"]))
        return f"{name}.out"

    x = conv("input", 3, 16, 3, 2, name="stem")
    blocks = [(16, 32, 1, False), (32, 64, 2, False), (64, 64, 1, False), (64, 128, 2, False), (128, 128, 1, False),
              (128, 256, 2, True), (256, 256, 1, True), (256, 256, 1, True), (256, 256, 1, True),
              (256, 512, 2, True), (512, 512, 1, True)]  # fmt: skip
    for i, (cin, cout, stride, se) in enumerate(blocks):
        x = conv(x, cin, cin, 3, stride, group=cin, name=f"b{i}.dw")
        if se:
            x = squeeze_excite(x, cin, f"b{i}.se")
        x = conv(x, cin, cout, 1, name=f"b{i}.pw")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["feat"]))
    w = (rng.standard_normal((classes, 512)) / np.sqrt(512)).astype(np.float32)
    inits += [numpy_helper.from_array(w, "head.w"), numpy_helper.from_array(np.zeros(classes, np.float32), "head.b")]
    nodes.append(helper.make_node("Gemm", ["feat", "head.w", "head.b"], ["logits"], transB=1, name="head"))
    g = helper.make_graph(
        nodes, "mobilenet_se", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits,
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


CONV_PLANS: dict[str, dict[str, Any]] = {
    "4b": {"weight": {"bits": 4}},
    "4b s50": {"weight": {"bits": 4, "sparsity": 0.5}},
}


def conv_child(samples: int, size: int, plan: str) -> dict[str, Any]:
    """One profiled calibration of :func:`mobilenet_se` (run in a fresh process by :func:`conv_speed`)."""
    import cProfile
    import pstats

    import onnxcompress

    model = mobilenet_se(size)
    data = {"input": np.random.default_rng(1).standard_normal((samples, 3, size, size)).astype(np.float32)}
    cfg = from_dict(CONV_PLANS[plan])
    load0 = os.getloadavg()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    res = calibrate(model, data, cfg, calibration=CalibrationConfig(samples=samples))
    prof.disable()
    secs = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    rows = []
    for (path, line, func), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(path).name}:{line}({func})" if line else func, "seconds": tottime})
    rows.sort(key=lambda r: -r["seconds"])
    return {
        "model_mb": model.ByteSize() / 1e6, "params": sum(int(np.prod(t.dims)) for t in model.graph.initializer),
        "input": f"{samples}x3x{size}x{size}", "samples": samples, "plan": plan, "seconds": secs,
        "capture_seconds": res.capture_seconds, "stages": res.stages, "capture_mode": res.capture_mode,
        "weights_calibrated": len(res.weights), "weights_skipped": len(res.skipped),
        "load_before": list(load0), "load_after": list(os.getloadavg()), "code": str(Path(onnxcompress.__file__).parent),
        "top_costs": rows[:8],
    }  # fmt: skip


def conv_speed(label: str, code: Path | None, blas: str, samples: int, size: int, plan: str,
               timeout: float | None) -> dict[str, Any]:  # fmt: skip
    env = dict(os.environ)
    if code is not None:
        env["CALIB_BENCH_CODE"] = str(code)
    env["OPENBLAS_NUM_THREADS"] = "1" if blas == "1" else ""  # "": OpenBLAS's (and the library's) default
    cmd = [sys.executable, __file__, "--conv-child", f"{samples},{size},{plan}"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
        row = json.loads(p.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001
        row = {"error": one_line(exc)}
    row.update(label=label, blas="1" if blas == "1" else "library default",
               process_seconds=time.perf_counter() - t0)  # fmt: skip
    log(f"  conv {label} ({row['blas']}): {row.get('seconds', row.get('error'))}")
    return row


def cost(samples: int, quick: bool, timeout: float | None) -> Iterator[dict[str, Any]]:
    configs = [(512, 2), (512, 4)] if quick else [(1024, 2), (1024, 4), (1024, 8), (1024, 16), (2048, 6)]
    for width, layers in configs:
        cmd = [sys.executable, __file__, "--cost-child", f"{width},{layers},{samples}"]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            if p.returncode != 0:
                raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
            row = json.loads(p.stdout.strip().splitlines()[-1])
        except Exception as exc:  # noqa: BLE001
            row = {"params": width * width * layers, "layers": layers, "width": width, "samples": samples,
                   "error": one_line(exc), "seconds_until_error": time.perf_counter() - t0}  # fmt: skip
        row["process_seconds"] = time.perf_counter() - t0
        log(
            f"  cost {width}x{layers}: {json.dumps({k: v for k, v in row.items() if k != 'per_layer_seconds'})}"
        )
        yield row


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one setting per model, small cost models")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--cost-only", action="store_true")
    ap.add_argument("--models", default="lenet_300_100,lenet5,resnet_digits,minilm")
    ap.add_argument("--settings", default=None, help="comma-separated setting labels to run (default: all)")
    ap.add_argument("--samples", type=int, default=256, help="calibration samples of the cost models")
    ap.add_argument("--digits-samples", type=int, default=256, help="of the 256 images of models/digits_calib.npz")
    ap.add_argument("--minilm-samples", type=int, default=128)
    ap.add_argument(
        "--timeout", type=float, default=900, help="seconds per plain or calibrated part (0: none)"
    )
    ap.add_argument("--resume", action="store_true", help="keep rows of an earlier run; skip those settings")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        help="fold the model rows of another result file (e.g. a MiniLM run) into --out",
    )
    ap.add_argument("--conv-only", action="store_true", help="only the conv speed row (keeps the rest of --out)")
    ap.add_argument("--conv-label", default="current", help="the conv row's label (e.g. before / after)")
    ap.add_argument("--conv-code", type=Path, default=None, help="import onnxcompress from this folder")
    ap.add_argument("--conv-blas", choices=("1", "default"), default="1")
    ap.add_argument("--conv-samples", type=int, default=128)
    ap.add_argument("--conv-size", type=int, default=224)
    ap.add_argument("--conv-plan", choices=sorted(CONV_PLANS), default="4b")
    ap.add_argument("--cost-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--conv-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cost_child:
        w, n, s = (int(v) for v in args.cost_child.split(","))
        print(json.dumps(cost_child(w, n, s)))
        return 0
    if args.conv_child:
        n, size, plan = args.conv_child.split(",")
        print(json.dumps(conv_child(int(n), int(size), plan)))
        return 0
    if args.conv_only:
        kept = json.loads(args.out.read_text()) if args.out.is_file() else {"models": {}, "rows": [], "cost": []}
        kept.pop("benchmark", None)  # "environment" stays: it describes the model rows' run
        row = conv_speed(args.conv_label, args.conv_code, args.conv_blas, args.conv_samples, args.conv_size,
                         args.conv_plan, args.timeout or None)  # fmt: skip
        key = (row["label"], row["blas"], row.get("plan", args.conv_plan), row.get("input"))
        kept["conv_speed"] = [
            r for r in kept.get("conv_speed", []) if (r["label"], r["blas"], r.get("plan"), r.get("input")) != key
        ] + [row]
        write_results("calibration", kept, out=args.out)
        print(tables({"models": {}, "rows": [], "conv_speed": kept["conv_speed"]}))
        return 0
    timeout = args.timeout or None

    result: dict[str, Any] = {
        "description": __doc__.split("\n\n")[2].strip() if __doc__ else "",
        "criterion": {"digits": "top-1 drop <= 1 point on both test halves",
                      "minilm": f"mean cosine >= {MIN_COSINE} and NN agreement >= {MIN_NN}"},  # fmt: skip
        "targets_ratio": TARGETS,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "digits_samples": args.digits_samples, "minilm_samples": args.minilm_samples, "cost_samples": args.samples,
        "models": {}, "rows": [], "cost": [],
    }  # fmt: skip
    if args.out.is_file():  # conv speed rows come from --conv-only runs: a full run keeps them
        result["conv_speed"] = json.loads(args.out.read_text()).get("conv_speed", [])
    if args.resume and args.out.is_file():
        old = json.loads(args.out.read_text())
        result["rows"], result["models"], result["cost"] = (
            old.get("rows", []),
            old.get("models", {}),
            old.get("cost", []),
        )
        if old.get("merged_runs"):
            result["merged_runs"] = [*old["merged_runs"], old.get("command")]
    for extra in args.merge:  # rows of a run made in parallel into another file replace ours
        other = json.loads(extra.read_text())
        keys = {(r["model"], r["setting"]) for r in other.get("rows", [])}
        result["rows"] = [r for r in result["rows"] if (r["model"], r["setting"]) not in keys] + other.get(
            "rows", []
        )
        result["models"].update(other.get("models", {}))
        if other.get("cost"):
            result["cost"] = other["cost"]
        result.setdefault("merged_runs", []).append(other.get("command"))
    defined = {(m, label) for m, labels in SETTINGS.items() for label in labels}
    result["rows"] = [
        r for r in result["rows"] if (r["model"], r["setting"]) in defined
    ]  # drop retired settings
    done = {(r["model"], r["setting"]) for r in result["rows"] if "error" not in r}

    def save() -> None:
        write_results("calibration", result, out=args.out)

    names = [] if args.cost_only else [n for n in args.models.split(",") if n]
    wanted = set(args.settings.split(",")) if args.settings else None
    for name in names:
        t_model = time.perf_counter()
        info = result["models"].setdefault(name, {})
        try:
            case = (
                minilm_case(args.minilm_samples)
                if name == "minilm"
                else digits_case(name, args.digits_samples)
            )
            info.update(path=str(case.path.relative_to(ROOT)) if case.path.is_relative_to(ROOT) else str(case.path),
                        fp32_bytes=case.base_bytes, data=case.data_note)  # fmt: skip
            info.pop("error", None)
            info["fp32"] = case.fidelity(case.load())
            log(f"{name}: fp32 {info['fp32']}  ({case.base_bytes:,} B)")
        except Exception as exc:  # noqa: BLE001 -- the model is skipped with its reason
            info["error"] = one_line(exc)
            log(f"{name}: skipped: {info['error']}")
            save()
            continue
        settings = SETTINGS.get(name, {})
        labels = [x for x in (QUICK.get(name, []) if args.quick else settings) if x in settings]
        for label in labels:
            if (wanted and label not in wanted) or (name, label) in done:
                continue
            t0 = time.perf_counter()
            n_cal = args.minilm_samples if name == "minilm" else args.digits_samples
            row = run_setting(case, label, settings[label], info["fp32"], n_cal, timeout)
            row["seconds"] = time.perf_counter() - t0
            result["rows"] = [r for r in result["rows"] if (r["model"], r["setting"]) != (name, label)] + [
                row
            ]
            p, c = row.get("plain", {}), row.get("calibrated", {})
            log(f"  {name} {label}: plain {p.get('ratio', 0):.1f}x {p.get('fidelity', p.get('error'))} | "
                f"calib {c.get('ratio', 0):.1f}x {c.get('fidelity', c.get('error'))} ({row['seconds']:.0f} s)")  # fmt: skip
            mrows = [r for r in result["rows"] if r["model"] == name]
            info["best"] = {k: best_of(mrows, k) for k in ("plain", "calibrated")}
            save()
        info["seconds"] = info.get("seconds", 0) + time.perf_counter() - t_model
        save()
    if not args.skip_cost:
        result["cost"] = []
        for row in cost(args.samples, args.quick, timeout):
            result["cost"].append(row)
            save()
    for name, info in result["models"].items():
        mrows = [r for r in result["rows"] if r["model"] == name]
        info["best"] = {k: best_of(mrows, k) for k in ("plain", "calibrated")}
    result["summary_markdown"] = summary(result)
    save()
    print(summary(result))
    print(tables(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
