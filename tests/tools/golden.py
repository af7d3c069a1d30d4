"""Record or check the sha256 of a fixed set of compressed outputs (a refactoring instrument).

A refactor that must not change the format runs ``--write`` before and ``--check`` after::

    python tests/tools/golden.py --write /tmp/golden.json
    python tests/tools/golden.py --check /tmp/golden.json

The set: every shipped model x every preset, as ``.onnx`` and ``.onnxc``, plus calibrated runs
(GPTQ and weighted k-means, with the least-squares refit) on 64 held-out images. It is not a test of the suite: deliberate format
changes change these bytes, so the hashes live outside the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("lenet_300_100", "lenet5", "resnet_digits")
PRESETS = ("safe", "balanced", "small", "deep-compression", "clipq")


def _runs(calib: Path) -> list[tuple[str, list[str]]]:
    runs: list[tuple[str, list[str]]] = []
    for m in MODELS:
        for p in PRESETS:
            for ext in (".onnx", ".onnxc"):
                runs.append((f"{m}-{p}{ext}", [f"models/{m}.onnx", "--preset", p]))
        for method in ("gptq", "weighted-kmeans"):
            runs.append(
                (
                    f"{m}-calib-{method}.onnx",
                    [f"models/{m}.onnx", "--sparsity", "0.5", "--bits", "4", "--calibration-data", str(calib),
                     "--calibration-method", method],
                )
            )  # fmt: skip
    return runs


def compute() -> dict[str, str]:
    from onnxcompress.cli import main

    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.npz"
        data = np.load(ROOT / "models" / "digits_test.npz")
        np.savez(calib, input=data["input"][:64])
        for name, args in _runs(calib):
            target = Path(tmp) / name
            with contextlib.redirect_stdout(io.StringIO()):
                rc = main(["compress", *args, "-o", str(target), "--quiet", "--seed", "0"])
            if rc != 0:
                raise SystemExit(f"{name}: exit {rc}")
            out[name] = hashlib.sha256(target.read_bytes()).hexdigest()
            print(f"{name:40s} {out[name][:16]}", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="JSON")
    g.add_argument("--check", metavar="JSON")
    a = ap.parse_args()
    import os

    os.chdir(ROOT)
    got = compute()
    if a.write:
        Path(a.write).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(got)} hashes to {a.write}")
        return 0
    want = json.loads(Path(a.check).read_text())
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    for k in bad:
        print(f"DIFFERS: {k}")
    print(f"{len(want) - len(bad)}/{len(want)} identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
