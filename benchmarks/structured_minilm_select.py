"""Choose MiniLM's structured-pruning refit settings on validation data only.

The 500 validation sentences (``val_sentences.npz``, disjoint from the 500 test sentences) are
split: the first 350 calibrate (obs criterion and least-squares refit, unpadded), the other 150
are held out and score each setting by the mean cosine of its embeddings to the fp32 model's.
The in-sample cosine on the 350 is printed beside it: it is far more optimistic (0.99 against
0.97), which is why a held-out split is needed to choose. ``benchmarks/structured.py`` then
calibrates the chosen setting on all 500 and reports on the test sentences; this script never
reads them.

    python benchmarks/structured_minilm_select.py [--ratio 0.35]
    python benchmarks/structured_minilm_select.py --heads   # MLP ratio x head ratio, refit as chosen
    python benchmarks/structured_minilm_select.py --calibration-split   # the same, more calibration text

Writes ``benchmarks/results/structured_minilm_select.json`` (``--heads``:
``structured_minilm_heads_select.json``): with ``--heads`` it scores combinations of the MLP
neuron ratio and the attention-head ratio (``HEAD_SETTINGS``) with the refit chosen before
(``structured.MINILM_REFIT``), and picks the one with the most FLOPs removed whose held-out cosine
is at least the MLP-only headline's (``MLP_ONLY_HELD_OUT``); ``benchmarks/structured.py`` reports
it on the test sentences.

``--calibration-split`` calibrates on the cache's calibration split (``calib_sentences.npz``, 959
sentences in neither the test nor the validation split) plus ``val_sentences[:350]``, still scores
on ``val_sentences[350:]``, and writes ``structured_minilm_calib_select.json``. Why: on 350
sentences the refit scored 0.9965 in sample and 0.974-0.980 held out; a probe of MLP 0.3 + 12 heads
(global) on the 1,309 sentences scored 0.9830 held out (0.9744 on 350). Its settings
(``CALIB_SETTINGS``) and rule (the most FLOPs removed with held-out cosine >= 0.98, the issue's bar
itself; the 150 held-out sentences scored below the test set on every earlier setting) were fixed
before the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import embedding_fidelity, embeddings, md_table, minilm_case, write_results  # noqa: E402
from structured import MINILM_REFIT, MINILM_SEQ, ROUND_TO, _length_buckets  # noqa: E402

from onnxcompress.structured import StructuredConfig, count_flops, prune_model  # noqa: E402

CALIBRATE = 350
# (label, allocation, ridge, refit_prior, refit_residual)
SETTINGS = (
    ("ridge 1e-3 toward zero (earlier)", "uniform", 1e-3, "zero", False),
    ("ridge 1e-2 toward zero", "uniform", 1e-2, "zero", False),
    ("ridge 1e-1 toward zero", "uniform", 1e-1, "zero", False),
    ("ridge 1e-1 toward sliced", "uniform", 1e-1, "sliced", False),
    ("ridge 1 toward sliced", "uniform", 1.0, "sliced", False),
    ("ridge 1e-1 toward sliced + residual target", "uniform", 1e-1, "sliced", True),
)
# (MLP neuron ratio, head ratio, heads allocation): 1/12 and 2/12 remove one and two of each
# layer's 12 heads (uniform), or 6 and 12 of the 72 heads wherever the obs costs are lowest (global)
MLP_ONLY_HELD_OUT = 0.9765  # MLP ratio 0.35 alone, ridge 1e-1 toward sliced + residual target
CALIB_SETTINGS = (
    (0.3, 2 / 12, "global"), (0.35, 1 / 12, "global"), (0.35, 2 / 12, "global"),
    (0.4, 1 / 12, "global"), (0.4, 2 / 12, "global"), (0.3, 3 / 12, "global"),
)  # fmt: skip
CALIB_MIN_HELD_OUT = 0.98
HEAD_SETTINGS = (
    (0.3, 0.0, "uniform"), (0.3, 1 / 12, "uniform"), (0.35, 1 / 12, "uniform"),
    (0.3, 1 / 12, "global"), (0.3, 2 / 12, "global"), (0.25, 2 / 12, "global"),
)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.35)
    ap.add_argument("--heads", action="store_true", help="score MLP x head ratios (HEAD_SETTINGS) instead")
    ap.add_argument("--calibration-split", action="store_true",
                    help="score CALIB_SETTINGS calibrated on calib_sentences.npz + val_sentences[:350]")  # fmt: skip
    args = ap.parse_args()
    case, why = minilm_case(reference=False)
    if case is None:
        print(f"MiniLM: {why}")
        return 0
    with np.load(case.path.parent / "val_sentences.npz") as z:
        val = {k: z[k] for k in z.files}
    calib = {k: v[:CALIBRATE] for k, v in val.items()}
    held = {k: v[CALIBRATE:] for k, v in val.items()}
    ref_calib, ref_held = embeddings(case.path, calib), embeddings(case.path, held)
    base = onnx.load(str(case.path))
    f0 = count_flops(base, {"seq": MINILM_SEQ}).total
    if args.calibration_split:
        pool_path = case.path.parent / "calib_sentences.npz"
        if not pool_path.exists():
            print(f"MiniLM: no calibration split ({pool_path}): rerun models/export_minilm.py")
            return 1
        with np.load(pool_path) as z:
            calib = {k: np.concatenate([z[k], calib[k]]) for k in calib}
        return select_heads(base, f0, calib, held, None, ref_held, CALIB_SETTINGS, CALIB_MIN_HELD_OUT,
                            f"calib_sentences.npz ({len(calib['input_ids']) - CALIBRATE}) + val_sentences[:{CALIBRATE}]",
                            "structured_minilm_calib_select")  # fmt: skip
    if args.heads:
        return select_heads(base, f0, calib, held, ref_calib, ref_held, HEAD_SETTINGS, MLP_ONLY_HELD_OUT,
                            f"val_sentences[:{CALIBRATE}]", "structured_minilm_heads_select")  # fmt: skip
    rows: list[dict[str, Any]] = []
    for label, allocation, ridge, prior, residual in SETTINGS:
        cfg = StructuredConfig(ratio=args.ratio, criterion="obs", samples=CALIBRATE, round_to=ROUND_TO,
                               allocation=allocation, ridge=ridge, refit_prior=prior, refit_residual=residual)  # fmt: skip
        pm, rep = prune_model(base, cfg, _length_buckets(calib))
        rows.append({"setting": label, "allocation": allocation, "ridge": ridge, "refit_prior": prior,
                     "refit_residual": residual, "flop_reduction": f0 / count_flops(pm, {"seq": MINILM_SEQ}).total,
                     "cosine_calibration": embedding_fidelity(pm, calib, ref_calib)["cosine"],
                     "cosine_held_out": embedding_fidelity(pm, held, ref_held)["cosine"]})  # fmt: skip
        print(rows[-1], flush=True)
    best = max(rows, key=lambda r: r["cosine_held_out"])
    print(md_table(["setting", "FLOP red.", "cos (350 calibration)", "cos (150 held out)"],
                   [[r["setting"], f"{r['flop_reduction']:.3f}x", f"{r['cosine_calibration']:.4f}",
                     f"{r['cosine_held_out']:.4f}"] for r in rows]))  # fmt: skip
    print(f"chosen: {best['setting']}")
    write_results("structured_minilm_select", {"ratio": args.ratio, "calibration": f"val_sentences[:{CALIBRATE}]",
                                               "selection": f"val_sentences[{CALIBRATE}:]", "rows": rows,
                                               "chosen": best["setting"]})  # fmt: skip
    return 0


def select_heads(base, f0, calib, held, ref_calib, ref_held, settings, threshold, calib_label, out) -> int:  # type: ignore[no-untyped-def]
    """Score (MLP ratio, head ratio, allocation) ``settings``; choose the most FLOPs removed with a
    held-out cosine >= ``threshold``. ``ref_calib`` None: the in-sample cosine is not computed."""
    rows: list[dict[str, Any]] = []
    for ratio, heads, allocation in settings:
        cfg = StructuredConfig(ratio=ratio, heads=heads, heads_allocation=allocation, criterion="obs",
                               samples=len(calib["input_ids"]), round_to=ROUND_TO, **MINILM_REFIT)  # fmt: skip
        pm, rep = prune_model(base, cfg, _length_buckets(calib))
        kept = [g.channels_after for g in rep.groups if g.kind == "heads"]
        rows.append({"ratio": ratio, "heads": heads, "heads_allocation": allocation,
                     "heads_kept": "/".join(map(str, kept)), "prune_seconds": rep.seconds,
                     "flop_reduction": f0 / count_flops(pm, {"seq": MINILM_SEQ}).total,
                     "cosine_calibration": None if ref_calib is None else embedding_fidelity(pm, calib, ref_calib)["cosine"],
                     "cosine_held_out": embedding_fidelity(pm, held, ref_held)["cosine"]})  # fmt: skip
        print(rows[-1], flush=True)
    # the rule, fixed before the run: among the settings that remove heads, the most FLOPs removed
    # whose held-out cosine is at least that of the MLP-only headline (ratio 0.35, same split and
    # refit: 0.9765 in structured_minilm_select.json); if none reaches it, the best held-out cosine
    with_heads = [r for r in rows if r["heads"] > 0]
    ok = [r for r in with_heads if r["cosine_held_out"] >= threshold]
    best = (
        max(ok, key=lambda r: (round(r["flop_reduction"], 6), r["cosine_held_out"]))  # ties: the better cosine
        if ok
        else max(with_heads, key=lambda r: r["cosine_held_out"])
    )
    print(md_table(["MLP ratio", "head ratio", "allocation", "heads kept", "FLOP red.", "cos (in sample)",
                    "cos (150 held out)"],
                   [[r["ratio"], f"{round(r['heads'] * 12)}/12", r["heads_allocation"], r["heads_kept"],
                     f"{r['flop_reduction']:.3f}x", "-" if r["cosine_calibration"] is None else
                     f"{r['cosine_calibration']:.4f}", f"{r['cosine_held_out']:.4f}"] for r in rows]))  # fmt: skip
    print(f"chosen: MLP {best['ratio']}, heads {best['heads']:.4f} {best['heads_allocation']}")
    write_results(out, {
        "refit": MINILM_REFIT, "criterion": "obs", "calibration": calib_label,
        "selection": f"val_sentences[{CALIBRATE}:]",
        "rule": f"settings with heads: most FLOPs removed with held-out cosine >= {threshold}, else the best "
                "held-out cosine",
        "rows": rows, "chosen": {k: best[k] for k in ("ratio", "heads", "heads_allocation")}})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
