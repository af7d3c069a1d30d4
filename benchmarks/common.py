"""Shared helpers for the benchmark scripts (deep_compression, peers, speed) and make_docs.

Why one module: every script must report the same environment block, measure accuracy and embedding
fidelity the same way, and pick "our best" settings with the same bounded search, so the numbers in
``docs/benchmarks.md`` are comparable across tables. Nothing here is part of the installed package.

Conventions:

* A model is a :class:`Case`: the three digit classifiers in ``models/`` (fidelity = top-1 accuracy on
  the held-out and augmented sets) and MiniLM (fidelity = mean cosine to the fp32 ONNX embeddings and
  nearest-neighbour agreement over the 500 test sentences).
* "Within 1 point" means: digits, top-1 accuracy drop <= 1 percentage point on *both* test sets;
  MiniLM, mean cosine >= 0.99 to fp32 (one point of cosine). The digits search selects on the test
  sets themselves (the repository ships no separate validation split), so "our best" is an
  optimistic, test-selected figure; the docs say so.
* Timings on the shared 2-core machine are noisy: helpers return medians of repeats.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

DIGIT_MODELS = ("lenet_300_100", "lenet5", "resnet_digits")
DIGIT_SETS = {"held-out": "digits_test.npz", "augmented": "digits_test_aug.npz"}
MAX_ACCURACY_DROP_PTS = 1.0
MIN_COSINE = 0.99


# --------------------------------------------------------------------------- environment and output


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not on Linux/macOS
        return None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", None)


def environment() -> dict[str, Any]:
    """Versions and machine facts stored with every result file (numbers mean nothing without them)."""
    import onnxcompress

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "onnxcompress": onnxcompress.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "load_average_at_end": list(load) if load else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results(name: str, payload: Mapping[str, Any], out: Path | None = None) -> Path:
    """Write ``{"environment": ..., **payload}`` to ``benchmarks/results/<name>.json``."""
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "environment": environment(), **payload}
    path.write_text(json.dumps(_plain(data), indent=2) + "\n")
    print(f"\nwrote {path}", file=sys.stderr)
    return path


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; numbers right-aligned, text left-aligned (by the first row's cell types)."""
    rows = [list(r) for r in rows]
    align = []
    for i in range(len(headers)):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) or _looks_numeric(r[i]) for r in rows)
        align.append("---:" if numeric else "---")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _looks_numeric(c: object) -> bool:
    s = str(c).rstrip("x%s").replace(",", "").replace(" KB", "").replace(" MB", "").strip()
    try:
        float(s)
        return True
    except ValueError:
        return False


def _cell(c: object) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c).replace("|", "\\|").replace("\n", " ")


def kb(n: int | float | None) -> str:
    """Bytes as KB with one decimal (the paper's unit) or MB above 10 MB."""
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 10e6 else f"{n / 1e3:.1f} KB"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (errors are recorded in result rows, never raised)."""
    text = f"{type(exc).__name__}: " + " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (the machine is shared: a single run is noise)."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def latency(paths: Sequence[str | os.PathLike[str]], data: Path | None, *, rounds: int = 3, runs: int = 50,
            batch_size: int = 1, decode: str = "onnxruntime") -> dict[str, dict[str, float]]:  # fmt: skip
    """Session creation time and p50 latency per model, via ``onnxcompress.evaluation.bench``.

    Each measurement runs in a fresh subprocess, models alternate over ``rounds`` and the medians
    over rounds are returned (keyed by ``str(path)``); a model that fails to load gets an ``error``.
    """
    from onnxcompress.evaluation.bench import bench

    out: dict[str, dict[str, float]] = {}
    ok = []
    for p in paths:  # one failing model must not sink the others' measurements
        try:
            bench(
                [p],
                runs=2,
                warmup=0,
                rounds=1,
                data=data,
                batch_size=batch_size,
                progress=False,
                decode=decode,
            )
            ok.append(p)
        except Exception as exc:  # noqa: BLE001 -- recorded in the row
            out[str(p)] = {"error": one_line(exc)}  # type: ignore[dict-item]
    if ok:
        rep = bench(ok, runs=runs, warmup=5, rounds=rounds, data=data, batch_size=batch_size, progress=False,
                    decode=decode)  # fmt: skip
        for m in rep.models:
            out[m.model] = {"create_s": m.create_s, "p50_ms": m.p50_ms, "peak_rss_bytes": m.peak_rss_bytes}
    return out


# --------------------------------------------------------------------------- models and fidelity


@dataclass
class Case:
    """One benchmark model: where it is, how to measure its fidelity, what data drives latency."""

    name: str
    path: Path
    params: int
    kind: str  # "digits" or "embeddings"
    bench_data: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def fidelity(self, model: Any, threads: int | None = None) -> dict[str, float]:
        if self.kind == "digits":
            return digits_accuracy(model, threads=threads)
        return embedding_fidelity(model, self.extra["inputs"], self.extra["reference"], threads=threads)

    def passes(self, fid: Mapping[str, float], base: Mapping[str, float]) -> bool:
        """Whether ``fid`` is within 1 point of the fp32 fidelity ``base`` (module docstring)."""
        if self.kind == "digits":
            return all(base[k] - fid[k] <= MAX_ACCURACY_DROP_PTS / 100 + 1e-9 for k in DIGIT_SETS)
        return fid["cosine"] >= MIN_COSINE

    def fidelity_text(self, fid: Mapping[str, float] | None) -> tuple[str, str]:
        """Two display cells: accuracy on both sets, or cosine and nearest-neighbour agreement."""
        if not fid:
            return "-", "-"
        if self.kind == "digits":
            return pct(fid.get("held-out")), pct(fid.get("augmented"))
        return f"cos {fid['cosine']:.4f}", f"NN {fid['nn_agreement']:.3f}"


_DIGITS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def digits_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not _DIGITS:
        for key, fname in DIGIT_SETS.items():
            with np.load(MODELS_DIR / fname) as z:
                _DIGITS[key] = (z["input"].astype(np.float32), z["labels"].astype(np.int64))
    return _DIGITS


def session_of(model: Any, threads: int | None = None) -> Any:
    """A session from a path/bytes/proto through the project's only session factory; sessions pass."""
    if hasattr(model, "run") and hasattr(model, "get_inputs"):
        return model
    from onnxcompress.sessions import make_session

    return make_session(model, threads=threads)


def digits_accuracy(model: Any, threads: int | None = None, batch: int = 512) -> dict[str, float]:
    """Top-1 accuracy on the held-out and augmented digit sets."""
    sess = session_of(model, threads)
    name = sess.get_inputs()[0].name
    out = {}
    for key, (x, y) in digits_sets().items():
        pred = np.concatenate(
            [sess.run(None, {name: x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)]
        )
        out[key] = float(np.mean(pred == y))
    return out


def embeddings(model: Any, inputs: Mapping[str, np.ndarray], threads: int | None = None,
               batch: int = 100) -> np.ndarray:  # fmt: skip
    sess = session_of(model, threads)
    names = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in inputs.items() if k in names}
    n = len(next(iter(feed.values())))
    return np.concatenate(
        [sess.run(None, {k: v[i : i + batch] for k, v in feed.items()})[0] for i in range(0, n, batch)]
    ).astype(np.float64)


def nearest_neighbours(e: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row."""
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def embedding_fidelity(model: Any, inputs: Mapping[str, np.ndarray], reference: np.ndarray,
                       threads: int | None = None) -> dict[str, float]:  # fmt: skip
    """Mean cosine to the fp32 embeddings and agreement of each sentence's nearest neighbour."""
    return embedding_metrics(embeddings(model, inputs, threads), reference)


def embedding_metrics(e: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """:func:`embedding_fidelity` of embeddings already computed."""
    cos = np.sum(e * reference, 1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12)
    nn = float(np.mean(nearest_neighbours(e) == nearest_neighbours(reference)))
    return {"cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos)), "nn_agreement": nn}


def digit_cases() -> list[Case]:
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    return [
        Case(
            m["name"], MODELS_DIR / m["file"], int(m["parameters"]), "digits", MODELS_DIR / "digits_test.npz"
        )
        for m in manifest["models"]
        if m["name"] in DIGIT_MODELS
    ]


def minilm_case(skip: bool = False, *, reference: bool = True) -> tuple[Case | None, str | None]:
    """MiniLM as a Case (with ``reference``: its fp32 ONNX embeddings, computed once), or why not."""
    if skip:
        return None, "skipped (--skip-minilm)"
    try:
        sys.path.insert(0, str(MODELS_DIR))
        from export_minilm import ensure_minilm  # type: ignore[import-not-found]

        paths = ensure_minilm()
    except Exception as exc:  # noqa: BLE001 -- any failure means: skip with its message
        return None, f"MiniLM unavailable: {one_line(exc)}"
    finally:
        if sys.path and sys.path[0] == str(MODELS_DIR):
            sys.path.pop(0)
    import onnx

    proto = onnx.load(str(paths["model"]), load_external_data=False)
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    with np.load(paths["data"]) as z:
        inputs = {k: z[k] for k in z.files}
    case = Case("minilm", Path(paths["model"]), params, "embeddings", Path(paths["data"]), {"inputs": inputs})
    if reference:
        case.extra["reference"] = embeddings(case.path, inputs)
    return case, None


# --------------------------------------------------------------------------- compressing


@dataclass
class Trial:
    """One compression setting tried on one model, with everything the tables need."""

    label: str
    config: dict[str, Any]
    onnx_bytes: int = 0
    onnxc_bytes: int = 0
    fidelity: dict[str, float] = field(default_factory=dict)
    passed: bool = False
    seconds: float = 0.0
    error: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def compress_to(src: Path, dst: Path, config: Mapping[str, Any]) -> Any:
    """Compress ``src`` to ``dst`` with a plan given as a plain dict; returns the CompressionResult."""
    from onnxcompress.compressor import compress_file
    from onnxcompress.config import from_dict

    return compress_file(src, dst, from_dict(dict(config)), overwrite=True)


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk, external data included (the same rule as ``onnxcompress bench``)."""
    p = Path(path)
    if p.suffix in (".onnx", ".onnxc"):
        from onnxcompress.model_io import size_on_disk

        return size_on_disk(p)
    return p.stat().st_size


def try_config(case: Case, label: str, config: Mapping[str, Any], workdir: Path, base: Mapping[str, float],
               *, keep: bool = False) -> Trial:  # fmt: skip
    """Compress, pack into ``.onnxc``, measure fidelity (of the .onnx: the container is lossless)."""
    from onnxcompress.container import write_container

    trial = Trial(label, dict(config))
    stem = workdir / f"{case.name}-{abs(hash(json.dumps(config, sort_keys=True))):x}"
    onnx_path, onnxc_path = stem.with_suffix(".onnx"), stem.with_suffix(".onnxc")
    t0 = time.perf_counter()
    try:
        compress_to(case.path, onnx_path, config)
        trial.seconds = time.perf_counter() - t0
        trial.onnx_bytes = file_bytes(onnx_path)
        stats = write_container(onnx_path, onnxc_path)
        trial.onnxc_bytes = stats.container_bytes
        trial.steps = [{"name": s.name, "bytes": s.bytes} for s in stats.steps]
        trial.fidelity = case.fidelity(onnx_path)
        trial.passed = case.passes(trial.fidelity, base)
    except Exception as exc:  # noqa: BLE001 -- a failing setting is a result, not a crash
        trial.error = one_line(exc)
    finally:
        if not keep:
            for p in (onnx_path, onnxc_path, Path(str(onnx_path) + ".data")):
                p.unlink(missing_ok=True)
    return trial


def search_best(case: Case, base: Mapping[str, float], *, budget_s: float = 180.0,
                log: Callable[[str], None] = lambda s: None) -> tuple[Trial | None, list[Trial]]:  # fmt: skip
    """Bounded post-training search for the smallest ``.onnxc`` within 1 point of fp32 fidelity.

    Why this shape: bit width and pruning interact, so a full grid is too slow on 2 cores. Stage 1
    finds, per codebook granularity (per tensor; per channel with fp16 codebooks, since fp32
    per-channel codebooks cost more than they save on small models), the fewest bits that pass with
    no pruning. Stage 2 climbs a sparsity ladder from each granularity's stage-1 point (and one bit
    more, which leaves room for pruning error), with global (per-layer sparsity from one threshold) and
    per-layer magnitude pruning, stopping each ladder at its first failure. ``budget_s`` caps the
    wall time; the trials tried so far are returned with the winner (None if nothing passed).
    """
    t_end = time.perf_counter() + budget_s
    trials: list[Trial] = []
    granularities = {
        "tensor": {"granularity": "tensor"},
        "channel": {"granularity": "channel", "codebook_dtype": "float16"},
    }
    bit_ladder = (8, 7, 6, 5, 4, 3) if case.kind == "digits" else (8, 6, 5, 4)
    sparsity_ladder = (
        (0.5, 0.6, 0.7, 0.8, 0.85, 0.875, 0.9, 0.925, 0.95) if case.kind == "digits" else (0.3, 0.5, 0.7)
    )
    with tempfile.TemporaryDirectory(prefix="onnxcompress-bench-") as tmp:
        work = Path(tmp)

        def run(label: str, cfg: dict[str, Any]) -> Trial | None:
            if time.perf_counter() > t_end:
                return None
            t = try_config(case, label, cfg, work, base)
            trials.append(t)
            log(f"  {case.name} {label}: {t.onnxc_bytes:,} B .onnxc, {t.fidelity} {'ok' if t.passed else 'FAIL'}"
                + (f" {t.error}" if t.error else ""))  # fmt: skip
            return t

        stage1: list[tuple[str, int]] = []
        for gname, g in granularities.items():
            for bits in bit_ladder:
                t = run(f"{gname} {bits}b", {"weight": {"bits": bits, **g}})
                if t is None or not t.passed:
                    break
                stage1 = [s for s in stage1 if s[0] != gname] + [(gname, bits)]
        starts = [(g, b) for g, bits in stage1 for b in dict.fromkeys((bits, min(bits + 1, 8)))]
        for gname, bits in starts:
            for prune in ("global", "magnitude"):
                for s in sparsity_ladder:
                    cfg = {"weight": {"bits": bits, "sparsity": s, "pruning": prune, **granularities[gname]}}
                    t = run(f"{gname} {bits}b {prune} {s:.0%}", cfg)
                    if t is None or not t.passed:
                        break
    passing = [t for t in trials if t.passed]
    best = min(passing, key=lambda t: t.onnxc_bytes) if passing else None
    return best, trials


# --------------------------------------------------------------------------- results of other scripts


def load_result(name: str) -> dict[str, Any] | None:
    """A previously written ``benchmarks/results/<name>.json`` or None."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
