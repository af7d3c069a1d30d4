"""Benchmark: how fast onnxcompress converts, how much memory it needs, and what loading costs.

1. Compression wall time and peak resident memory per model and per million parameters, for the digit
   models, MiniLM (when available) and a synthetic MLP of 10 x [3200, 3200] MatMuls (102.4M fp32
   parameters, 410 MB, external data; generated in a temporary folder; ``--quick`` skips it), each at
   8 bits (preset "safe") and at sparsity 0.9 with 5 bits. Every compression runs in a fresh
   subprocess whose ``ru_maxrss`` is its peak (the interpreter + imports baseline is reported too).
2. For the synthetic model: session creation time, p50 latency (batch 1) and peak RSS of the original
   and both compressed files, and a check that the compressed models load, run and match the
   numpy-decoded reference outputs.
3. 1-D k-means (ours) against scikit-learn's KMeans on a few sizes, reusing
   ``benchmarks/kmeans_vs_sklearn.py``'s ``run_case`` (its own JSON has the full sweep).
4. Session creation time and p50 latency of compressed against original digit models.

Timings are medians of alternated repeats on a shared 2-core machine: treat them as noisy.

Run:  python benchmarks/speed.py [--quick] [--skip-minilm]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    "8-bit (safe)": {"weight": {"bits": 8}},
    "sparsity 0.9 + 5-bit": {"weight": {"bits": 5, "sparsity": 0.9}},
}
SYNTH_LAYERS = 10
SYNTH_WIDTH = 3200
WORKER_PREFIX = "SPEED_RESULT "


# --------------------------------------------------------------------------- worker (fresh process)


def _rss() -> int:
    from onnxcompress.evaluation.bench import peak_rss_bytes

    return peak_rss_bytes() or 0


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Compress one model in this (fresh) process; peak RSS is this process's high-water mark."""
    from onnxcompress.compressor import compress_file
    from onnxcompress.config import from_dict

    baseline = _rss()
    t0 = time.perf_counter()
    result = compress_file(spec["input"], spec["output"], from_dict(spec["config"]), overwrite=True)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "compress_model_s": result.report.seconds,
        "peak_rss_bytes": _rss(),
        "baseline_rss_bytes": baseline,
        "params_compressed": result.report.params,
        "bytes_before": result.report.file_bytes_before,
        "bytes_after": result.report.file_bytes_after,
    }


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(WORKER_PREFIX):
            return json.loads(line[len(WORKER_PREFIX) :])
    tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
    return {"error": f"worker exit {proc.returncode}: {tail}"}


# --------------------------------------------------------------------------- synthetic model


def make_synthetic(folder: Path, layers: int = SYNTH_LAYERS, width: int = SYNTH_WIDTH) -> Path:
    """An fp32 MLP of ``layers`` MatMul+Relu blocks, weights saved as external data (batch fixed to 1)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) * (1.0 / np.sqrt(width))).astype(
            np.float32
        )
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        out = "y" if i == layers - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "synthetic_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "synthetic_mlp.onnx"
    (folder / "synthetic_mlp.onnx.data").unlink(missing_ok=True)  # onnx.save appends to existing data
    onnx.save(model, str(path), save_as_external_data=True, location="synthetic_mlp.onnx.data")
    return path


def check_runs(original: Path, compressed: Path) -> dict[str, Any]:
    """Run both on one input; the compressed output must be close (relative L2) to the original's."""
    x = np.random.default_rng(1).standard_normal((1, SYNTH_WIDTH)).astype(np.float32)
    try:
        ref = common.session_of(original).run(None, {"x": x})[0].astype(np.float64)
        out = common.session_of(compressed).run(None, {"x": x})[0].astype(np.float64)
    except Exception as exc:  # noqa: BLE001 -- a load/run failure is the finding
        return {"runs": False, "error": common.one_line(exc)}
    rel = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))
    return {"runs": True, "finite": bool(np.isfinite(out).all()), "rel_l2_vs_fp32": rel}


# --------------------------------------------------------------------------- sections


def compression_rows(cases: list[tuple[str, Path, int]], work: Path, log: Any) -> list[dict[str, Any]]:
    rows = []
    for name, path, params in cases:
        for label, cfg in SETTINGS.items():
            out = work / f"{name}-{len(rows)}.onnx"
            r = run_worker({"input": str(path), "output": str(out), "config": cfg})
            r.update(model=name, setting=label, params=params, output=str(out))
            if "wall_s" in r:
                r["params_per_s"] = params / r["wall_s"]
                r["s_per_mparam"] = r["wall_s"] / (params / 1e6)
                r["peak_rss_per_mparam"] = (r["peak_rss_bytes"] - r["baseline_rss_bytes"]) / (params / 1e6)
            log(f"compress {name} {label}: {r.get('wall_s', r.get('error'))}")
            rows.append(r)
    return rows


def kmeans_rows(log: Any) -> list[dict[str, Any]]:
    """A short 1-D k-means comparison through the kmeans_vs_sklearn benchmark's own functions."""
    try:
        import kmeans_vs_sklearn as kb  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001
        return [{"error": f"cannot import benchmarks/kmeans_vs_sklearn.py: {common.one_line(exc)}"}]
    rows = []
    for n, k in ((10**5, 16), (10**5, 256), (10**6, 16)):
        try:
            r = kb.run_case(kb.make_weights(n, "gaussian"), k, 300, 1)
        except Exception as exc:  # noqa: BLE001 -- e.g. scikit-learn missing
            rows.append({"n": n, "k": k, "error": common.one_line(exc)})
            continue
        rows.append({"n": n, "k": k, **r})
        log(f"kmeans n={n} k={k}: {r['time_ours_s']:.3f}s vs {r['time_sklearn_s']:.3f}s")
    return rows


def render(data: dict[str, Any]) -> str:
    """Markdown tables (make_docs.py calls this on the JSON, so the docs hold exactly this output)."""
    out = ["Compression in a fresh process per run (wall time includes loading and saving the model; peak "
           "RSS is the process's high-water mark, of which the interpreter and imports take the baseline):", ""]  # fmt: skip
    rows = []
    for r in data["compression"]:
        if "error" in r:
            rows.append([r["model"], r["setting"], f"{r['params']:,}", "failed", r["error"], "", "", "", ""])
            continue
        rows.append([
            r["model"], r["setting"], f"{r['params']:,}", f"{r['wall_s']:.2f}", f"{r['s_per_mparam']:.2f}",
            f"{r['params_per_s'] / 1e6:.2f}", f"{r['peak_rss_bytes'] / 2**20:,.0f}",
            f"{r['baseline_rss_bytes'] / 2**20:,.0f}", f"{common.kb(r['bytes_before'])} -> {common.kb(r['bytes_after'])}",
        ])  # fmt: skip
    out.append(common.md_table(["model", "setting", "params", "wall (s)", "s / M params", "M params / s",
                                "peak RSS (MiB)", "baseline RSS (MiB)", "file"], rows))  # fmt: skip
    synth = data.get("synthetic")
    if synth:
        out += ["", f"Synthetic {synth['params'] / 1e6:.1f}M-parameter MLP ({SYNTH_LAYERS} x [{SYNTH_WIDTH}, "
                f"{SYNTH_WIDTH}] MatMul, fp32 external data): session creation (a stock session constant-folds the decode; rows marked "
                "onnxcompress.load decode the weights in numpy first), batch-1 p50 latency and peak RSS "
                "(fresh process each, medians of rounds), and a run check against the fp32 output (the weights are i.i.d. "
                "Gaussian: pruning 90% of them removes most of the signal, so a large error at that setting is "
                "expected; the check is that the model loads, runs and stays finite):", ""]  # fmt: skip
        rows = []
        for r in synth["sessions"]:
            chk = r.get("check") or {}
            rows.append([
                r["name"], common.kb(r.get("bytes")),
                f"{r['create_s']:.2f}" if "create_s" in r else "failed",
                f"{r['p50_ms']:.2f}" if "p50_ms" in r else r.get("error", "-"),
                f"{r['peak_rss_bytes'] / 2**20:,.0f}" if r.get("peak_rss_bytes") else "-",
                ("runs, rel. L2 to fp32 " + f"{chk['rel_l2_vs_fp32']:.4f}") if chk.get("runs") else chk.get("error", "-"),
            ])  # fmt: skip
        out.append(common.md_table(["file", "size", "load (s)", "p50 (ms)", "peak RSS (MiB)", "check"], rows))
    elif data.get("synthetic_skipped"):
        out += ["", f"Synthetic 100M model: {data['synthetic_skipped']}"]
    out += ["", "1-D k-means, ours against scikit-learn KMeans (same linear init, Lloyd, tol 0, max 300 "
            "iterations, one run each; the full sweep is in the kmeans_vs_sklearn section):", ""]  # fmt: skip
    rows = [
        [f"{r['n']:,}", r["k"], "failed", r["error"], "", ""] if "error" in r else
        [f"{r['n']:,}", r["k"], f"{r['time_ours_s']:.3f}", f"{r['time_sklearn_s']:.3f}", f"{r['speedup']:.0f}x",
         f"{r['sse_ratio']:.6f}"]
        for r in data["kmeans"]
    ]  # fmt: skip
    out.append(common.md_table(["n", "k", "ours (s)", "sklearn (s)", "speed-up", "SSE ours / sklearn"], rows))
    out += ["", "Digit models: session creation and batch-1 p50 latency, original against compressed "
            "(ORT constant-folds the decode at load, so latency should match; .onnxc adds the container decode):", ""]  # fmt: skip
    rows = []
    for r in data["digit_sessions"]:
        rows.append([r["model"], r["file"], common.kb(r.get("bytes")),
                     f"{r['create_s'] * 1e3:.1f}" if "create_s" in r else "failed",
                     f"{r['p50_ms']:.3f}" if "p50_ms" in r else r.get("error", "-")])  # fmt: skip
    out.append(common.md_table(["model", "file", "size", "load (ms)", "p50 (ms)"], rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 100M-parameter synthetic model")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--make-synthetic", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(WORKER_PREFIX + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.make_synthetic:  # in a child, so the parent's memory high-water mark stays small
        make_synthetic(Path(args.make_synthetic))
        return 0
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    data: dict[str, Any] = {
        "description": __doc__.split("\n\n")[0],
        "settings": SETTINGS,
        "quick": args.quick,
    }
    digits = common.digit_cases()
    cases = [(c.name, c.path, c.params) for c in digits]
    mini, why = common.minilm_case(args.skip_minilm, reference=False)
    if mini is not None:
        cases.append((mini.name, mini.path, mini.params))
    data["skipped"] = [why] if why else []
    with tempfile.TemporaryDirectory(prefix="onnxcompress-speed-") as tmp:
        work = Path(tmp)
        synth_path = None
        if not args.quick:
            t0 = time.perf_counter()
            # Children inherit the parent's ru_maxrss on Linux (onnxcompress.evaluation.bench reports
            # that as peak RSS): build the 410 MB model in a child and check outputs only at the end.
            subprocess.run([sys.executable, __file__, "--make-synthetic", str(work)], check=True)
            synth_path = work / "synthetic_mlp.onnx"
            data["synthetic_generate_s"] = time.perf_counter() - t0
            cases.append(("synthetic_mlp", synth_path, SYNTH_LAYERS * SYNTH_WIDTH**2))
        else:
            data["synthetic_skipped"] = "skipped (--quick)"
        data["compression"] = compression_rows(cases, work, log)
        if synth_path is not None:
            outs = [r for r in data["compression"] if r["model"] == "synthetic_mlp" and "error" not in r]
            files = [("fp32 original", synth_path)] + [
                (f"compressed, {r['setting']}", Path(r["output"])) for r in outs
            ]
            lat = common.latency([p for _, p in files], None, rounds=max(2, args.rounds - 1), runs=30)
            host = common.latency([p for _, p in files[1:]], None, rounds=max(2, args.rounds - 1), runs=30,
                                  decode="host")  # fmt: skip
            sessions = []
            for name, p in files:
                row = {"name": name, "bytes": common.file_bytes(p), **lat.get(str(p), {})}
                sessions.append(row)
                log(f"synthetic {name}: {row}")
            for name, p in files[1:]:
                row = {"name": f"{name}, onnxcompress.load (host decode)", "bytes": common.file_bytes(p),
                       "decode": "host", **host.get(str(p), {})}  # fmt: skip
                sessions.append(row)
                log(f"synthetic {row['name']}: {row}")
            data["synthetic"] = {"params": SYNTH_LAYERS * SYNTH_WIDTH**2, "sessions": sessions}
        data["digit_sessions"] = []
        synth_files = files if synth_path is not None else []
        for c in digits:
            outs = [r for r in data["compression"] if r["model"] == c.name and "error" not in r]
            files = [("fp32 original", c.path)]
            for r in outs:
                files.append((f"{r['setting']} .onnx", Path(r["output"])))
            if outs:
                from onnxcompress.container import write_container

                cpath = Path(outs[0]["output"]).with_suffix(".onnxc")
                write_container(outs[0]["output"], cpath)
                files.append((f"{outs[0]['setting']} .onnxc", cpath))
            lat = common.latency([p for _, p in files], c.bench_data, rounds=args.rounds)
            for name, p in files:
                data["digit_sessions"].append({"model": c.name, "file": name, "bytes": common.file_bytes(p),
                                               **lat.get(str(p), {})})  # fmt: skip
        data["kmeans"] = kmeans_rows(log)
        for (_, p), row in zip(
            synth_files[1:],
            [r for r in data.get("synthetic", {}).get("sessions", [])[1:] if r.get("decode") != "host"],
            strict=True,
        ):
            row["check"] = check_runs(synth_files[0][1], p)  # last: loading 100M models grows this process
            log(f"check {p.name}: {row['check']}")
    for r in data["compression"]:
        r.pop("output", None)
    data["seconds"] = time.perf_counter() - t_start
    text = render(data)
    print(text)
    common.write_results("speed", data, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
