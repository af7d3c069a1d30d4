"""Load the digits test sets shipped in ``models/`` (``digits_test.npz``, ``digits_test_aug.npz``).

Each file is a compressed npz keyed by the models' input name, so ``onnxcompress verify --data FILE
--labels labels`` can read it directly:

* ``input``: float32 [N, 1, 28, 28], the exact model inputs. Preprocessing: 8x8 images (grey levels
  0..16) divided by 16, bilinearly upsampled to 28x28 (torch ``interpolate``, ``align_corners=False``),
  clipped to [0, 1] and rounded to multiples of 1/255 (so ``uint8 = round(input * 255)`` is lossless).
* ``labels``: int64 [N], the digit 0..9.

This helper only adds validation; ``np.load`` gives the same arrays. It needs numpy alone (no torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SIZE = 28
INPUT_KEY = "input"
LABEL_KEY = "labels"


def load(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{"input": float32 [N,1,28,28], "labels": int64 [N]}`` from a digits test-set npz."""
    with np.load(path) as npz:
        x = np.ascontiguousarray(npz[INPUT_KEY], dtype=np.float32)
        y = np.ascontiguousarray(npz[LABEL_KEY], dtype=np.int64)
    if x.ndim != 4 or x.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE) or len(x) != len(y):
        raise ValueError(f"{path}: unexpected shapes input {x.shape}, labels {y.shape}")
    return {INPUT_KEY: x, LABEL_KEY: y}
