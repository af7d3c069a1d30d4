"""Benchmark: onnxcompress against what users would otherwise pick, on the same models.

Peers, each on the fp32 model: onnxruntime ``quantize_dynamic`` (int8), onnxruntime
``MatMulNBitsQuantizer`` (4 bit, block 32 and 128, MatMul only, and block 32 with Gather), the fp32
file(s) under zstd level 19 and xz preset 9 (lossless archives: load = decompress + session), and
onnxsim 0.8.1 when it is installed (k-means 4 bit and magnitude pruning: a peer for *accuracy* at a
given bit width or sparsity, not for size, since it writes dense float initializers back).

For each: size on disk, ratio to fp32, fidelity (top-1 accuracy on both digit sets, or cosine and
nearest-neighbour agreement for MiniLM), session creation time and p50 latency (batch 1, fresh
subprocess per measurement, models alternated, medians of rounds). Beside each peer: our smallest
``.onnx`` (and ``.onnxc``) with fidelity at least the peer's, taken from every setting tried by
``deep_compression.py``'s search (run it first; otherwise only the settings run here count), and our
best fidelity at a size no larger than the peer's. A peer that fails is a row with its error.

Run:  python benchmarks/peers.py [--skip-minilm] [--rounds 3]
"""

from __future__ import annotations

import argparse
import lzma
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

OURS_FIXED: dict[str, dict[str, Any]] = {
    "ours 8-bit per-tensor (preset safe)": {"weight": {"bits": 8}},
    "ours 4-bit per-channel": {"weight": {"bits": 4, "granularity": "channel", "codebook_dtype": "float16"}},
}


def model_files(path: Path) -> list[Path]:
    """The model file and its external data files (what an archive of "the fp32 model" holds)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    files = [path]
    proto = onnx.load(str(path), load_external_data=False)
    for t in _get_all_tensors(proto):
        for e in t.external_data:
            if e.key == "location" and (path.parent / e.value) not in files:
                files.append(path.parent / e.value)
    return files


def make_archive(case: common.Case, work: Path, codec: str) -> dict[str, Any]:
    """Compress the fp32 file(s) losslessly; load time is decompression (median of 3) + session."""
    data = b"".join(p.read_bytes() for p in model_files(case.path))
    t0 = time.perf_counter()
    if codec == "zstd":
        import zstandard

        blob = zstandard.ZstdCompressor(level=19, threads=2).compress(data)
        dec = lambda: zstandard.ZstdDecompressor().decompress(blob, max_output_size=len(data))  # noqa: E731
    else:
        blob = lzma.compress(data, preset=9)
        dec = lambda: lzma.decompress(blob)  # noqa: E731
    compress_s = time.perf_counter() - t0
    decompress_s, out = common.median_time(dec, 3)
    assert out == data
    path = work / f"{case.name}.{codec}"
    path.write_bytes(blob)
    return {"path": path, "compress_s": compress_s, "decompress_s": decompress_s}


def ort_int8(case: common.Case, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(case.path, out, weight_type=QuantType.QInt8)


def ort_nbits(case: common.Case, out: Path, block: int, gather: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    ops = ("MatMul", "Gather") if gather else ("MatMul",)
    axes = (("MatMul", 0), ("Gather", 1)) if gather else None
    q = MatMulNBitsQuantizer(
        onnx.load(str(case.path)), bits=4, block_size=block, is_symmetric=True,
        op_types_to_quantize=ops, quant_axes=axes,
    )  # fmt: skip
    q.process()
    q.model.save_model_to_file(str(out), use_external_data_format=False)


def onnxsim_peer(case: common.Case, out: Path, what: str, value: float) -> None:
    import onnx
    import onnxsim  # type: ignore[import-not-found]

    proto = onnx.load(str(case.path))
    if what == "kmeans":
        proto = onnxsim.quantize_weight_only_kmeans(proto, bits=int(value))
    else:
        proto = onnxsim.apply_magnitude_pruning(proto, sparsity=value, global_sparsity=True)
    onnx.save(proto, str(out))


def new_ops(original: Path, converted: Path) -> dict[str, int]:
    """Nodes of op types the original lacks (MatMulNBits, DynamicQuantizeLinear, our decode ops...):
    zero of them means the converter changed nothing it runs differently (e.g. Gemm-only models)."""
    import onnx

    before = {n.op_type for n in onnx.load(str(original), load_external_data=False).graph.node}
    counts: dict[str, int] = {}
    for n in onnx.load(str(converted), load_external_data=False).graph.node:
        if n.op_type not in before:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def note(x: dict[str, Any]) -> str:
    if "new_ops" in x and not x["new_ops"] and x["role"] == "peer":
        return "nothing converted (no MatMul: the model uses Gemm)"
    if x["role"] == "accuracy peer" and x.get("ratio", 2) < 1:
        return "dense float initializers written back: larger than fp32"
    return ""


def onnxsim_version() -> str | None:
    try:
        import onnxsim  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 -- not installed or broken: skip the peer
        return None
    return str(getattr(onnxsim, "__version__", "?"))


def best_setting(model: str) -> dict[str, Any] | None:
    """Our best plan and every trial for ``model`` from deep_compression.json, if it was run."""
    data = common.load_result("deep_compression")
    for m in (data or {}).get("models", []):
        if m["model"] == model:
            return m
    return None


def at_least(case: common.Case, fid: dict[str, float], ref: dict[str, float]) -> bool:
    keys = list(common.DIGIT_SETS) if case.kind == "digits" else ["cosine", "nn_agreement"]
    return all(fid[k] >= ref[k] - 1e-12 for k in keys)


def score(case: common.Case, fid: dict[str, float]) -> float:
    """One number to rank fidelity (mean accuracy, or cosine)."""
    return sum(fid[k] for k in common.DIGIT_SETS) / 2 if case.kind == "digits" else fid["cosine"]


def run_case(case: common.Case, rounds: int, sim: str | None) -> dict[str, Any]:
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    base = case.fidelity(case.path)
    original = common.file_bytes(case.path)
    prev = best_setting(case.name)
    ours_trials = [t for t in (prev or {}).get("search", {}).get("trials", []) if not t.get("error")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="onnxcompress-peers-") as tmp:
        work = Path(tmp)
        makers: list[tuple[str, str, Any]] = [
            ("fp32", "reference", None),
            ("onnxruntime quantize_dynamic int8", "peer", lambda p: ort_int8(case, p)),
            ("onnxruntime MatMulNBits 4-bit b32 (MatMul)", "peer", lambda p: ort_nbits(case, p, 32, False)),
            ("onnxruntime MatMulNBits 4-bit b128 (MatMul)", "peer", lambda p: ort_nbits(case, p, 128, False)),
            ("onnxruntime MatMulNBits 4-bit b32 (MatMul+Gather)", "peer", lambda p: ort_nbits(case, p, 32, True)),
        ]  # fmt: skip
        if sim:
            makers += [
                (f"onnxsim {sim} k-means 4-bit", "accuracy peer", lambda p: onnxsim_peer(case, p, "kmeans", 4)),
                (f"onnxsim {sim} global magnitude 50%", "accuracy peer",
                 lambda p: onnxsim_peer(case, p, "prune", 0.5)),
            ]  # fmt: skip
        for label, cfg in OURS_FIXED.items():
            makers.append((label, "ours", cfg))
        makers.append(("ours 4-bit per-tensor (as onnxsim k-means)", "ours", {"weight": {"bits": 4}}))
        makers.append(("ours global magnitude 50%, prune only (as onnxsim)", "ours",
                       {"weight": {"method": "prune", "sparsity": 0.5, "pruning": "global"}}))  # fmt: skip
        if prev and prev.get("ours"):
            makers.append((f"ours best ({prev['ours']['label']})", "ours", prev["ours"]["config"]))
        for i, (label, role, how) in enumerate(makers):
            row: dict[str, Any] = {"name": label, "role": role}
            path = case.path if how is None else work / f"m{i}.onnx"
            t0 = time.perf_counter()
            try:
                if isinstance(how, dict):
                    common.compress_to(case.path, path, how)
                    row["config"] = how
                elif how is not None:
                    how(path)
                row["convert_s"] = time.perf_counter() - t0 if how is not None else None
                row["path"] = path
                row["bytes"] = common.file_bytes(path)
                row["fidelity"] = case.fidelity(path)
                if role != "reference":
                    row["new_ops"] = new_ops(case.path, path)
            except Exception as exc:  # noqa: BLE001 -- a failing peer is a row that says so
                row["error"] = common.one_line(exc)
            rows.append(row)
            if isinstance(how, dict) and "error" not in row:  # our container of the same model
                from onnxcompress.container import write_container

                cpath = path.with_suffix(".onnxc")
                write_container(path, cpath)
                rows.append({"name": label + " .onnxc", "role": "ours", "path": cpath,
                             "bytes": cpath.stat().st_size, "fidelity": row["fidelity"]})  # fmt: skip
            log(f"{case.name} {label}: {row.get('bytes')} B {row.get('fidelity')} {row.get('error', '')}")
        for codec, label in (("zstd", "fp32 + zstd -19"), ("xz", "fp32 + xz -9")):
            arch = make_archive(case, work, codec)
            rows.append({"name": label, "role": "peer (lossless)", "bytes": arch["path"].stat().st_size,
                         "fidelity": base, "convert_s": arch["compress_s"], "decompress_s": arch["decompress_s"]})  # fmt: skip
        loadable = [r["path"] for r in rows if "path" in r and "error" not in r]
        lat = common.latency(loadable, case.bench_data, rounds=rounds)
        fp32_lat = lat.get(str(case.path), {})
        for r in rows:
            p = r.pop("path", None)
            if p is not None:
                m = lat.get(str(p), {})
                if "error" in m:
                    r["error"] = r.get("error") or m["error"]
                r.update({k: m[k] for k in ("create_s", "p50_ms") if k in m})
            elif "decompress_s" in r and "create_s" in fp32_lat:
                r["create_s"] = r["decompress_s"] + fp32_lat["create_s"]
                r["p50_ms"] = fp32_lat["p50_ms"]
            if r.get("bytes"):
                r["ratio"] = original / r["bytes"]
    # our candidates: every search trial (deep_compression.py) plus the settings run here
    cands = [{"label": t["label"], "onnx": t["onnx_bytes"], "onnxc": t["onnxc_bytes"], "fidelity": t["fidelity"]}
             for t in ours_trials]  # fmt: skip
    byname = {r["name"]: r for r in rows}
    for r in rows:
        if r["role"] == "ours" and not r["name"].endswith(".onnxc") and "error" not in r:
            c = byname.get(r["name"] + " .onnxc", {})
            cands.append(
                {"label": r["name"], "onnx": r["bytes"], "onnxc": c.get("bytes"), "fidelity": r["fidelity"]}
            )
    for r in rows:
        if r["role"] == "ours" or "fidelity" not in r or "error" in r:
            continue
        same = [c for c in cands if at_least(case, c["fidelity"], r["fidelity"])]
        if same:
            c = min(same, key=lambda c: c["onnx"])
            r["ours_same_fidelity"] = {**c, "ratio_onnx": original / c["onnx"]}
            cc = min((c for c in same if c.get("onnxc")), key=lambda c: c["onnxc"], default=None)
            if cc:
                r["ours_same_fidelity_onnxc"] = {**cc, "ratio_onnxc": original / cc["onnxc"]}
        fit = [c for c in cands if c["onnx"] <= r["bytes"]]
        if fit:
            r["ours_same_size"] = max(fit, key=lambda c: score(case, c["fidelity"]))
    return {"model": case.name, "kind": case.kind, "params": case.params, "fp32_bytes": original,
            "fp32_fidelity": base, "rows": rows, "candidates": len(cands)}  # fmt: skip


def render(results: list[dict[str, Any]], skipped: list[str]) -> str:
    """Markdown tables (make_docs.py calls this on the JSON, so the docs hold exactly this output)."""
    out = [
        "Sizes on disk (external data included); ratio = fp32 bytes / bytes. Fidelity: digits = top-1 "
        "accuracy (held-out / augmented); MiniLM = mean cosine to fp32 and nearest-neighbour agreement. "
        "Load = session creation (archives: decompression + fp32 session), p50 = batch-1 latency; both "
        "medians over alternating fresh-process rounds on a shared, noisy 2-core machine. "
        '"ours at >= fidelity": our smallest .onnx (and .onnxc) among every setting tried whose fidelity '
        'is at least the peer\'s on every metric; "ours at <= size": our best fidelity at no more bytes.',
        "",
    ]
    for r in results:
        case = common.Case(r["model"], Path(), r["params"], r["kind"], Path())
        out += [f"**{r['model']}** ({r['params']:,} parameters, fp32 {common.kb(r['fp32_bytes'])})", ""]
        rows = []
        for x in r["rows"]:
            a, b = case.fidelity_text(x.get("fidelity"))
            same = x.get("ours_same_fidelity")
            samec = x.get("ours_same_fidelity_onnxc")
            size = x.get("ours_same_size")
            rows.append([
                x["name"], x["role"], common.kb(x.get("bytes")), f"{x['ratio']:.1f}x" if x.get("ratio") else "-",
                a if "error" not in x else "failed", b if "error" not in x else x["error"],
                f"{x['create_s']:.3f}" if x.get("create_s") is not None else "-",
                f"{x['p50_ms']:.3f}" if x.get("p50_ms") is not None else "-",
                f"{same['ratio_onnx']:.1f}x ({same['label']})" if same else "-",
                f"{samec['ratio_onnxc']:.1f}x" if samec else "-",
                " / ".join(case.fidelity_text(size["fidelity"])) if size else "-",
                note(x),
            ])  # fmt: skip
        out.append(common.md_table(["model file", "role", "size", "ratio", "acc held-out / cosine",
                                    "acc aug / NN agr.", "load (s)", "p50 (ms)", "ours at >= fidelity (.onnx)",
                                    "(.onnxc)", "ours at <= size", "note"], rows))  # fmt: skip
        out.append("")
    if skipped:
        out.append("Skipped: " + "; ".join(skipped))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="latency rounds (fresh process each)")
    ap.add_argument("--models", nargs="*", help="subset of model names")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    sim = onnxsim_version()
    skipped = [] if sim else ["onnxsim: not installed (pip install onnxsim==0.8.1)"]
    cases = common.digit_cases()
    mini, why = common.minilm_case(args.skip_minilm or bool(args.models and "minilm" not in args.models))
    if mini is not None:
        cases.append(mini)
    elif why and not args.models:
        skipped.append(why)
    if args.models:
        cases = [c for c in cases if c.name in args.models]
    results = [run_case(c, args.rounds, sim) for c in cases]
    text = render(results, skipped)
    print(text)
    common.write_results("peers", {"description": __doc__.split("\n\n")[0], "onnxsim": sim, "models": results,
                                   "skipped": skipped, "seconds": time.perf_counter() - t0}, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
