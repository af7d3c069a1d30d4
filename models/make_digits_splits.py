"""Build the validation and calibration splits of the digits from the TRAINING images only.

Why: a search (``onnxcompress search``) or calibration that tunes on the test sets would report
numbers it has fitted. These splits come from the 1437 images the models were trained on
(``train_test_split(test_size=360, stratify=labels, random_state=0)``, the split of
``train_digits.py``), never from the 360 held-out ones, so ``digits_test.npz`` and
``digits_test_aug.npz`` stay unseen.

The models have fitted their training images (clean accuracy about 100%), so the splits are
*augmented* like ``digits_test_aug.npz`` (shift <= 2 px, rotation <= 12 deg, scale 0.9-1.1, Gaussian
noise sigma 0.05, clipped and rounded to 1/255), which makes them as hard as the augmented test set
and gives a compression-induced accuracy drop room to show.

* ``digits_val.npz``: 1000 images, one augmented variant of each of 1000 training images
  (stratified choice), keys ``input`` / ``labels``;
* ``digits_calib.npz``: 256 images, one augmented variant of each of 256 of the other 437 training
  images (disjoint from the validation images), same keys.

Pure numpy plus scikit-learn's bundled data (no torch, no download): the bilinear upsampling is
torch's ``interpolate(mode="bilinear", align_corners=False)`` written out, checked here against the
committed ``digits_test.npz`` (same preprocessing, bit for bit), and the affine jitter is
``affine_grid`` + ``grid_sample(bilinear, zeros, align_corners=False)`` written out. The random
draws are numpy's (seeded), so the variants differ from the test set's torch draws but follow the
same distribution. Deterministic: two runs write byte-identical arrays.

Run from the repository root::

    python models/make_digits_splits.py        # a second or two; rewrites both npz files
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(MODELS_DIR))

from digits_data import IMAGE_SIZE, INPUT_KEY, LABEL_KEY, load  # noqa: E402

SEED = 0  # the seed of train_digits.py's split
SPLIT_SEED = 12  # this script's own draws
TEST_SIZE = 360
VAL_SIZE = 1000
CALIB_SIZE = 256
METHOD = (
    "from the 1437 TRAINING images of train_test_split(test_size=360, stratify=labels, random_state=0) "
    "only: {n} of them (stratified, numpy seed 12), one augmented variant each (shift <= 2 px, "
    "rotation <= 12 deg, scale 0.9-1.1, Gaussian noise sigma 0.05, clipped, rounded to 1/255), "
    "preprocessed like the test sets; built by models/make_digits_splits.py (numpy, deterministic)"
)


def quantize(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to multiples of 1/255, as train_digits.py stores model inputs."""
    return (np.round(np.clip(x, 0.0, 1.0) * np.float32(255.0)) / np.float32(255.0)).astype(np.float32)


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear source indices and weights for one axis (align_corners=False)."""
    scale = np.float32(n_in / n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    return i0, i1, lam


def upsample(images_8x8: np.ndarray) -> np.ndarray:
    """8x8 grey levels 0..16 -> float32 [N,1,28,28] in [0,1], quantized to 1/255 steps."""
    x = images_8x8.astype(np.float32) / np.float32(16.0)
    r0, r1, ry = _axis_weights(x.shape[1], IMAGE_SIZE)
    c0, c1, cx = _axis_weights(x.shape[2], IMAGE_SIZE)
    one = np.float32(1.0)
    rows = x[:, r0, :] * (one - ry)[None, :, None] + x[:, r1, :] * ry[None, :, None]
    out = rows[:, :, c0] * (one - cx)[None, None, :] + rows[:, :, c1] * cx[None, None, :]
    return quantize(out[:, None])


def random_affine(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random shift/rotation/scale per image, like train_digits.random_affine (max_rot 12 deg).

    Normalised coordinates as torch's affine_grid (align_corners=False): pixel j sits at
    (2j + 1) / W - 1; the source point is theta @ (x, y, 1); bilinear sampling with zero padding.
    """
    n, _, h, w = x.shape
    angle = (rng.random(n) * 2 - 1) * np.radians(12.0)
    scale = 0.9 + rng.random(n) * 0.2
    shift = (rng.random((n, 2)) * 2 - 1) * 2.0 * 2.0 / IMAGE_SIZE
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    gx = (2 * np.arange(w) + 1) / w - 1
    gy = (2 * np.arange(h) + 1) / h - 1
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    sx = cos[:, None, None] * xx - sin[:, None, None] * yy + shift[:, 0, None, None]
    sy = sin[:, None, None] * xx + cos[:, None, None] * yy + shift[:, 1, None, None]
    ix = ((sx + 1) * w - 1) / 2  # grid_sample's unnormalisation (align_corners=False)
    iy = ((sy + 1) * h - 1) / 2
    x0, y0 = np.floor(ix).astype(np.int64), np.floor(iy).astype(np.int64)
    fx, fy = ix - x0, iy - y0
    img = x[:, 0].astype(np.float64)
    out = np.zeros((n, h, w))
    batch = np.arange(n)[:, None, None]
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = y0 + dy, x0 + dx
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            vals = img[batch, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
            out += np.where(inside, vals, 0.0) * wy * wx
    return out[:, None].astype(np.float32)


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The augmented test set's recipe: affine jitter, Gaussian noise sigma 0.05, 1/255 rounding."""
    out = random_affine(x, rng)
    out = out + np.float32(0.05) * rng.standard_normal(out.shape).astype(np.float32)
    return quantize(out)


def build(out_dir: Path = MODELS_DIR) -> dict[str, dict[str, object]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx_train, idx_test = train_test_split(
        np.arange(len(digits.target)), test_size=TEST_SIZE, stratify=digits.target, random_state=SEED
    )
    x_all = upsample(digits.images)
    y_all = digits.target.astype(np.int64)
    # The upsampling must be the models' preprocessing: check it on the committed test set. torch's
    # kernel sums in another order, so a few values land on the other side of a rounding step.
    test_file = MODELS_DIR / "digits_test.npz"
    if test_file.is_file():
        ref = load(test_file)
        diff = np.abs(ref[INPUT_KEY] - x_all[idx_test])
        off = int((diff > 0).sum())
        if (
            not np.array_equal(ref[LABEL_KEY], y_all[idx_test])
            or diff.max() > 1.5 / 255
            or off > 1e-3 * diff.size
        ):
            raise SystemExit(
                f"preprocessing differs from digits_test.npz ({off} values, max {diff.max():g}); not writing"
            )
        print(
            f"preprocessing matches digits_test.npz: {diff.size - off:,} of {diff.size:,} values exact, "
            f"{off} one 1/255 step off (torch sums in another order)"
        )
    assert not set(idx_train) & set(idx_test)
    idx_val, idx_rest = train_test_split(
        idx_train, train_size=VAL_SIZE, stratify=y_all[idx_train], random_state=SPLIT_SEED
    )
    idx_calib, _ = train_test_split(
        idx_rest, train_size=CALIB_SIZE, stratify=y_all[idx_rest], random_state=SPLIT_SEED
    )
    idx_val, idx_calib = np.sort(idx_val), np.sort(idx_calib)
    rng = np.random.default_rng(SPLIT_SEED)
    files: dict[str, dict[str, object]] = {}
    for name, idx in (("digits_val.npz", idx_val), ("digits_calib.npz", idx_calib)):
        x = augment(x_all[idx], rng)
        y = y_all[idx]
        np.savez_compressed(out_dir / name, **{INPUT_KEY: x, LABEL_KEY: y})
        files[name] = {
            "images": int(len(x)),
            "input_key": INPUT_KEY,
            "label_key": LABEL_KEY,
            "description": METHOD.format(n=len(idx))
            + ("; for tuning (search)" if "val" in name else "; for calibration, disjoint from digits_val"),
            "source_indices_sha": __import__("hashlib")
            .sha256(idx.astype(np.int64).tobytes())
            .hexdigest()[:16],
        }
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR)
    parser.add_argument("--no-manifest", action="store_true", help="do not update models/manifest.json")
    args = parser.parse_args()
    files = build(args.out)
    for name, info in files.items():
        print(f"wrote {args.out / name}: {info['images']} images")
    if not args.no_manifest:
        path = MODELS_DIR / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["dataset"]["files"].update(files)
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
