"""Choose MiniLM's structured-pruning refit settings on validation data only.

The 500 validation sentences (``val_sentences.npz``, disjoint from the 500 test sentences) are
split: the first 350 calibrate (obs criterion and least-squares refit, unpadded), the other 150
are held out and score each setting by the mean cosine of its embeddings to the fp32 model's.
The in-sample cosine on the 350 is printed beside it: it is far more optimistic (0.99 against
0.97), which is why a held-out split is needed to choose. ``benchmarks/structured.py`` then
calibrates the chosen setting on all 500 and reports on the test sentences; this script never
reads them.

    python benchmarks/structured_minilm_select.py [--ratio 0.35]

Writes ``benchmarks/results/structured_minilm_select.json``.
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
from structured import MINILM_SEQ, ROUND_TO, _length_buckets  # noqa: E402

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.35)
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


if __name__ == "__main__":
    sys.exit(main())
