"""Run compressed models from Python and compare them with the original on the held-out digits.

Usage: python load.py COMPRESSED [COMPRESSED ...]   (.onnx or .onnxc; exit 1 if one lost > 0.5 points)
"""

from __future__ import annotations

import sys
import time

import numpy as np

import onnxcompress as oc

ORIGINAL = "../../models/lenet5.onnx"
DATA = "../../models/digits_test.npz"


def accuracy(session, images: np.ndarray, labels: np.ndarray) -> float:
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: images})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def main(paths: list[str]) -> int:
    data = np.load(DATA)
    images, labels = data["input"], data["labels"]
    ref_acc = accuracy(oc.load(ORIGINAL), images, labels)  # an uncompressed model loads the same way
    worst = 0.0
    for path in paths:
        start = time.perf_counter()
        session = oc.load(path)  # weights rebuilt in numpy (decode="host"), then one ORT session
        load_s = time.perf_counter() - start
        acc = accuracy(session, images, labels)
        print(f"{path}: loaded in {load_s:.2f} s, top-1 {acc:.2%} (original {ref_acc:.2%})")
        worst = max(worst, ref_acc - acc)
    return 0 if worst <= 0.005 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
