"""Benchmark: onnxcompress.algorithms.kmeans1d.kmeans_1d vs scikit-learn KMeans on 1-D weights.

Both start from the same linear init (evenly spaced on [min, max], Deep Compression's), run Lloyd with
``tol=0`` and ``max_iter=300``, on the same float32 tensor. SSE is measured in float64 for both
(scikit-learn computes in float32 for float32 input, which is part of what is being compared).

scikit-learn's Lloyd costs O(n k) per iteration, so full runs on the largest problems take many minutes
(10^6 x 256 is ~2 min per run on 2 cores; 10^7 x 256 would be ~25 min). Problems with ``n * k`` above
``--cap-above`` are therefore compared at a fixed iteration budget (``--cap-iters``, both libraries
run exactly that many Lloyd iterations from the same init, labelled "capped"); our fully converged run
(max_iter=300) is reported alongside. Nothing is subsampled.

Run:  python benchmarks/kmeans_vs_sklearn.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxcompress.algorithms.kmeans1d import kmeans_1d, kmeans_sse  # noqa: E402


def make_weights(n: int, dist: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dist == "gaussian":
        return (rng.standard_normal(n) * 0.02).astype(np.float32)
    return rng.laplace(scale=0.02, size=n).astype(np.float32)


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_case(x: np.ndarray, k: int, max_iter: int, repeats: int) -> dict:
    from sklearn.cluster import KMeans

    init = np.linspace(float(x.min()), float(x.max()), k, dtype=np.float64)

    t_ours, (c, lab) = timed(lambda: kmeans_1d(x, k, init="linear", max_iter=max_iter, tol=0.0), repeats)
    sse_ours = kmeans_sse(x, c, lab)

    def fit_sklearn():
        km = KMeans(
            n_clusters=k,
            init=init.astype(x.dtype).reshape(-1, 1),
            n_init=1,
            algorithm="lloyd",
            max_iter=max_iter,
            tol=0.0,
            random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on capped runs
            return km.fit(x.reshape(-1, 1))

    t_sk, km = timed(fit_sklearn, repeats)
    sse_sk = kmeans_sse(x, km.cluster_centers_.ravel(), km.labels_)
    return {
        "time_ours_s": t_ours,
        "time_sklearn_s": t_sk,
        "speedup": t_sk / t_ours,
        "sse_ours": sse_ours,
        "sse_sklearn": sse_sk,
        "sse_ratio": sse_ours / sse_sk if sse_sk > 0 else float("nan"),
        "sklearn_n_iter": int(km.n_iter_),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes up to 10^6 only")
    ap.add_argument("--cap-above", type=float, default=1e8, help="n*k above which both run --cap-iters only")
    ap.add_argument("--cap-iters", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kmeans_vs_sklearn.json")
    args = ap.parse_args(argv)

    import sklearn

    sizes = [10**4, 10**5, 10**6] + ([] if args.quick else [10**7])
    rows = []
    for n in sizes:
        for dist in ("gaussian", "laplace"):
            x = make_weights(n, dist)
            for k in (16, 256):
                capped = n * k > args.cap_above
                max_iter = args.cap_iters if capped else 300
                # best of >= 2 for both: a first call pays the page faults of fresh 100 MB buffers,
                # which would penalise whichever library runs first
                repeats = 3 if n <= 10**5 else 2
                r = run_case(x, k, max_iter, repeats)
                row = {"n": n, "dist": dist, "k": k, "max_iter": max_iter, "capped": capped, **r}
                if capped:
                    t_full, (c, lab) = timed(lambda x=x, k=k: kmeans_1d(x, k), 1)
                    row["time_ours_full_s"] = t_full
                    row["sse_ours_full"] = kmeans_sse(x, c, lab)
                rows.append(row)
                print(
                    f"n={n:>9} {dist:8} k={k:3} iters={max_iter:3} ours {r['time_ours_s']:8.3f}s "
                    f"sklearn {r['time_sklearn_s']:8.3f}s x{r['speedup']:8.1f} sse ratio {r['sse_ratio']:.6f}",
                    file=sys.stderr,
                    flush=True,
                )

    print("| n | weights | k | Lloyd iters | ours (s) | sklearn (s) | speed-up | SSE ours / sklearn | note |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["capped"]:
            note = (
                f"capped at {r['max_iter']} iterations for both; ours to convergence: "
                f"{r['time_ours_full_s']:.2f} s, SSE {r['sse_ours_full'] / r['sse_sklearn']:.4f}x sklearn-capped"
            )
            iters = f"{r['max_iter']} (cap)"
        else:
            note = f"sklearn stopped after {r['sklearn_n_iter']}"
            iters = "<= 300"
        print(
            f"| {r['n']:.0e} | {r['dist']} | {r['k']} | {iters} | {r['time_ours_s']:.4f} | "
            f"{r['time_sklearn_s']:.3f} | {r['speedup']:.{0 if r['speedup'] >= 10 else 1}f}x | {r['sse_ratio']:.6f} | {note} |"
        )

    meta = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "cap_above_nk": args.cap_above,
        "cap_iters": args.cap_iters,
        "init": "linear (np.linspace(min, max, k)) for both",
        "tol": 0.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
