"""Benchmark: Deep Compression's staircase on our models, with the paper's settings and with ours.

For LeNet-300-100, LeNet-5, the residual CNN (and MiniLM unless ``--skip-minilm`` or it cannot be
built) this measures, at each step of the staircase (original -> pruned only -> pruned + quantized
``.onnx`` -> entropy-coded ``.onnxc``), the file size, the ratio to the original file and the
fidelity (top-1 accuracy on the held-out and augmented digit sets; cosine and nearest-neighbour
agreement for MiniLM). It does so twice:

* "paper": Han et al. 2015's LeNet settings, post-training: 8% of weights kept (sparsity 0.92),
  6-bit codebooks for fully connected layers, 8-bit for conv, 5-bit relative index.
* "ours": the smallest ``.onnxc`` that stays within 1 point of fp32 fidelity, found by the bounded
  search in :func:`common.search_best` (bits, codebook granularity, global or per-layer pruning).

The paper's published rows (with retraining, on MNIST) are printed beside ours (post-training, no
retraining, on scikit-learn's 8x8 digits upsampled to 28x28): they are not the same experiment.

Run:  python benchmarks/deep_compression.py [--skip-minilm] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PAPER_CONFIG: dict[str, Any] = {
    "weight": {"sparsity": 0.92, "bits": 6, "gap_bits": 5},
    "op_types": {"Conv": {"bits": 8}},
}

# Han, Mao, Dally, "Deep Compression", ICLR 2016 (arXiv 1510.00149), Table 1: with retraining, MNIST.
PAPER_ROWS = [
    {"model": "lenet_300_100", "original_kb": 1070, "compressed_kb": 27, "ratio": 40,
     "top1_error_before": 0.0164, "top1_error_after": 0.0158},
    {"model": "lenet5", "original_kb": 1720, "compressed_kb": 44, "ratio": 39,
     "top1_error_before": 0.0080, "top1_error_after": 0.0074},
]  # fmt: skip


def prune_only(config: dict[str, Any]) -> dict[str, Any] | None:
    """The pruning part of a plan alone (kept values stored raw), or None when the plan does not prune."""
    w = config["weight"]
    if not w.get("sparsity"):
        return None
    keep = {k: w[k] for k in ("sparsity", "pruning", "gap_bits") if k in w}
    return {"weight": {"method": "prune", **keep}}


def staircase(
    case: common.Case, config: dict[str, Any], base: dict[str, float], work: Path
) -> list[dict[str, Any]]:
    """Original, pruned, pruned + quantized and entropy-coded sizes and fidelity for one plan."""
    from onnxcompress.container import write_container

    original = common.file_bytes(case.path)
    steps: list[dict[str, Any]] = [
        {"step": "original (fp32)", "bytes": original, "ratio": 1.0, "fidelity": base}
    ]
    p_cfg = prune_only(config)
    if p_cfg is not None:
        path = work / f"{case.name}-pruned.onnx"
        row: dict[str, Any] = {"step": "pruned", "config": p_cfg}
        try:
            common.compress_to(case.path, path, p_cfg)
            row.update(bytes=common.file_bytes(path), fidelity=case.fidelity(path))
            row["ratio"] = original / row["bytes"]
        except Exception as exc:  # noqa: BLE001 -- recorded in the row
            row["error"] = common.one_line(exc)
        steps.append(row)
    path = work / f"{case.name}-pq.onnx"
    t0 = time.perf_counter()
    row = {"step": "pruned + quantized (.onnx)" if p_cfg else "quantized (.onnx)", "config": config}
    try:
        result = common.compress_to(case.path, path, config)
        row["compress_s"] = time.perf_counter() - t0
        row.update(bytes=common.file_bytes(path), fidelity=case.fidelity(path))
        row["ratio"] = original / row["bytes"]
        row["bits_per_weight"] = result.report.bits_per_weight
        steps.append(row)
        cpath = path.with_suffix(".onnxc")
        stats = write_container(path, cpath)
        steps.append({
            "step": "entropy coded (.onnxc)", "bytes": stats.container_bytes,
            "ratio": original / stats.container_bytes, "fidelity": case.fidelity(cpath),
        })  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        row["error"] = common.one_line(exc)
        steps.append(row)
    return steps


def run_case(case: common.Case, budget: float) -> dict[str, Any]:
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    base = case.fidelity(case.path)
    log(f"{case.name}: fp32 {base}")
    out: dict[str, Any] = {"model": case.name, "kind": case.kind, "params": case.params, "fp32": base}
    with tempfile.TemporaryDirectory(prefix="onnxcompress-dc-") as tmp:
        out["paper"] = {"config": PAPER_CONFIG, "steps": staircase(case, PAPER_CONFIG, base, Path(tmp))}
    t0 = time.perf_counter()
    best, trials = common.search_best(case, base, budget_s=budget, log=log)
    out["search"] = {
        "seconds": time.perf_counter() - t0,
        "budget_s": budget,
        "trials": [t.to_dict() for t in trials],
    }
    if best is not None:
        with tempfile.TemporaryDirectory(prefix="onnxcompress-dc-") as tmp:
            out["ours"] = {"label": best.label, "config": best.config,
                           "steps": staircase(case, best.config, base, Path(tmp))}  # fmt: skip
    else:
        out["ours"] = None
    return out


def render(results: list[dict[str, Any]], skipped: list[str]) -> str:
    """The Markdown tables (also used by make_docs.py, so the docs hold exactly this output)."""
    lines = [
        "Staircase per model: size on disk (external data included), ratio to the original file, and "
        "fidelity at each step. Digits: top-1 accuracy on the held-out (360) and augmented (3,600) sets. "
        "MiniLM: mean cosine to fp32 embeddings and nearest-neighbour agreement over 500 sentences.",
        "",
    ]
    rows = []
    for r in results:
        case = common.Case(r["model"], Path(), r["params"], r["kind"], Path())
        for which in ("paper", "ours"):
            block = r.get(which)
            if not block:
                rows.append([r["model"], which, "no setting passed", "-", "-", "-", "-"])
                continue
            setting = "paper settings" if which == "paper" else f"ours: {block['label']}"
            for s in block["steps"]:
                if s["step"].startswith("original") and which == "ours":
                    continue
                a, b = case.fidelity_text(s.get("fidelity"))
                if "error" in s:
                    a, b = "failed", s["error"]
                rows.append([r["model"], setting, s["step"], common.kb(s.get("bytes")),
                             f"{s['ratio']:.1f}x" if s.get("ratio") else "-", a, b])  # fmt: skip
    lines.append(common.md_table(["model", "settings", "step", "size", "ratio", "acc held-out / cosine",
                                  "acc augmented / NN agr."], rows))  # fmt: skip
    lines += ["", "Published (Han et al. 2015, Table 1: pruning + quantization **with retraining**, on MNIST; "
              "sizes in the paper's KB) beside ours (**post-training, no retraining**, on scikit-learn digits; "
              "our final .onnxc):", ""]  # fmt: skip
    prow = []
    for p in PAPER_ROWS:
        prow.append([p["model"], "Han et al. 2015", f"{p['original_kb']} KB", f"{p['compressed_kb']} KB",
                     f"{p['ratio']}x", f"{100 * (1 - p['top1_error_before']):.2f}%",
                     f"{100 * (1 - p['top1_error_after']):.2f}%"])  # fmt: skip
        for r in results:
            if r["model"] != p["model"]:
                continue
            for which in ("paper", "ours"):
                block = r.get(which)
                if not block or "error" in block["steps"][-1]:
                    continue
                last = block["steps"][-1]
                prow.append([r["model"], f"onnxcompress, {'paper settings' if which == 'paper' else block['label']}",
                             common.kb(block["steps"][0]["bytes"]), common.kb(last["bytes"]),
                             f"{last['ratio']:.1f}x", common.pct(r["fp32"]["held-out"]),
                             common.pct(last["fidelity"]["held-out"])])  # fmt: skip
    lines.append(common.md_table(["model", "source", "original", "compressed", "ratio", "top-1 before",
                                  "top-1 after"], prow))  # fmt: skip
    search = [f"{r['model']}: {len(r['search']['trials'])} settings in {r['search']['seconds']:.0f} s"
              for r in results]  # fmt: skip
    lines += ["", "Search (post-training, selected on the test sets themselves, so optimistic): "
              + "; ".join(search) + "."]  # fmt: skip
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-minilm", action="store_true", help="digit models only")
    ap.add_argument("--budget", type=float, default=150.0, help="search seconds per digit model")
    ap.add_argument("--minilm-budget", type=float, default=300.0, help="search seconds for MiniLM")
    ap.add_argument("--models", nargs="*", help="subset of model names")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cases = common.digit_cases()
    skipped = []
    mini, why = common.minilm_case(args.skip_minilm or bool(args.models and "minilm" not in args.models))
    if mini is not None:
        cases.append(mini)
    elif why:
        skipped.append(why)
    if args.models:
        cases = [c for c in cases if c.name in args.models]
    results = [run_case(c, args.minilm_budget if c.kind == "embeddings" else args.budget) for c in cases]
    text = render(results, skipped)
    print(text)
    common.write_results("deep_compression", {
        "description": __doc__.split("\n\n")[0], "paper_config": PAPER_CONFIG, "paper_published": PAPER_ROWS,
        "criterion": {"max_accuracy_drop_pts": common.MAX_ACCURACY_DROP_PTS, "min_cosine": common.MIN_COSINE},
        "models": results, "skipped": skipped, "seconds": time.perf_counter() - t0,
    }, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
