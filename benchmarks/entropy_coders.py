"""Benchmark the entropy coders on realistic Deep Compression streams.

For each stream (k-means index streams of 4, 5, 6 and 8 bits from Gaussian and Laplacian weights;
relative-gap streams and 1-bit masks from 90% random sparsity) and each coder, prints bits/symbol
against the order-0 entropy and encode/decode throughput in MB/s of symbols (one symbol = one
byte), as a Markdown table, and writes the same as JSON to
``benchmarks/results/entropy_coders.json`` with versions and machine info.

    python benchmarks/entropy_coders.py [--symbols 4000000] [--repeat 3]

Streams: weights drawn i.i.d., quantized into 2**bits uniform-width bins over +-3 sigma (what
k-means with the paper's linear initialization converges close to); gaps are Deep Compression's
relative index (gap - 1 in gap_bits, filler entries for longer gaps) over a 90%-pruned tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxcompress import entropy  # noqa: E402
from onnxcompress.container.pack import runs_encode  # noqa: E402


def kmeans_stream(rng: np.random.Generator, n: int, bits: int, dist: str) -> np.ndarray:
    w = rng.standard_normal(n) if dist == "gaussian" else rng.laplace(size=n) / np.sqrt(2)
    edges = np.linspace(-3, 3, (1 << bits) + 1)[1:-1]
    return np.searchsorted(edges, w).astype(np.uint8)


def gap_stream(rng: np.random.Generator, n: int, gap_bits: int, density: float = 0.1) -> np.ndarray:
    """Relative-index gaps (with fillers) of a tensor pruned to ``density``, about n entries."""
    size = int(n / density)
    pos = np.flatnonzero(rng.random(size) < density)
    gaps = np.diff(pos, prepend=-1) - 1
    span = 1 << gap_bits
    fillers = gaps // span
    out = np.full(int(fillers.sum()) + gaps.size, span - 1, dtype=np.uint8)
    ends = np.cumsum(fillers + 1) - 1
    out[ends] = (gaps % span).astype(np.uint8)
    return out


def timed(repeat: int, fn, *args) -> tuple[float, object]:
    """Best wall time of ``fn(*args)`` over ``repeat`` runs, and its result."""
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=4_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "entropy_coders.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.symbols
    streams: list[tuple[str, np.ndarray, int]] = []
    for dist in ("gaussian", "laplacian"):
        for bits in (4, 5, 6, 8):
            streams.append((f"kmeans-{bits}bit-{dist}", kmeans_stream(rng, n, bits, dist), 1 << bits))
    for gb in (4, 5):
        streams.append((f"gaps-{gb}bit-90%sparse", gap_stream(rng, n, gb), 1 << gb))
    mask = (rng.random(n) < 0.1).astype(np.uint8)
    streams.append(("mask-bits-90%sparse", mask, 2))
    streams.append(("mask-runs-90%sparse", runs_encode(np.packbits(mask, bitorder="little").tobytes()), 256))

    try:
        import zstandard

        zstd_version = zstandard.__version__
    except ImportError:  # pragma: no cover
        zstandard = None
        zstd_version = None
    rows = []
    print("| stream | symbols | H0 bits/sym | coder | bits/sym | vs H0 | encode MB/s | decode MB/s |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name, sym, alphabet in streams:
        h0 = entropy.order0_entropy(sym, alphabet)
        coders = entropy.available_coders() + (["zstd-9 (bytes)"] if zstandard else [])
        for coder in coders:
            if coder.startswith("zstd"):
                cctx, dctx = zstandard.ZstdCompressor(level=9), zstandard.ZstdDecompressor()
                te, payload = timed(args.repeat, cctx.compress, sym.tobytes())
                td, back = timed(args.repeat, dctx.decompress, payload)
                back = np.frombuffer(back, dtype=np.uint8)
            else:
                mod = entropy.get_coder(coder)
                te, payload = timed(args.repeat, mod.encode, sym, alphabet)
                td, back = timed(args.repeat, mod.decode, payload, sym.size, alphabet)
            assert np.array_equal(back, sym), (name, coder)
            bps = len(payload) * 8 / sym.size
            row = {
                "stream": name, "symbols": int(sym.size), "alphabet": alphabet, "entropy_bits": h0,
                "coder": coder, "payload_bytes": len(payload), "bits_per_symbol": bps,
                "overhead_vs_entropy": bps / h0 - 1 if h0 else None,
                "encode_MBps": sym.size / te / 1e6, "decode_MBps": sym.size / td / 1e6,
            }  # fmt: skip
            rows.append(row)
            over = f"{100 * row['overhead_vs_entropy']:+.2f}%" if h0 else "n/a"
            print(
                f"| {name} | {sym.size:,} | {h0:.4f} | {coder} | {bps:.4f} | {over} | "
                f"{row['encode_MBps']:.1f} | {row['decode_MBps']:.1f} |"
            )
    info = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "constriction": _version("constriction"),
        "zstandard": zstd_version,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "symbols_per_stream": n,
        "repeat": args.repeat,
        "timing": "best of repeat, single thread, wall clock",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def _version(pkg: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
