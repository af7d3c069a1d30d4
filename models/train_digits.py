"""Train the three digit classifiers, export them to ONNX and write the test sets and manifest.

Why digits: scikit-learn bundles the UCI handwritten digits (1797 images, 8x8, 17 grey levels), so
the project can ship real trained models whose accuracy anyone can regenerate offline. The images are
upsampled to 28x28 so that LeNet-300-100 and LeNet-5 have exactly the architectures (and parameter
counts) of Deep Compression's MNIST experiments.

Run from the repository root (three to four minutes on two CPU cores)::

    pip install torch==2.13.0 scikit-learn && python models/train_digits.py

Outputs (all in ``models/``): ``lenet_300_100.onnx``, ``lenet5.onnx``, ``resnet_digits.onnx``,
``digits_test.npz``, ``digits_test_aug.npz`` and ``manifest.json``. Everything is seeded and runs with
deterministic algorithms on one thread; bit-identical results are expected on the same CPU type and
library versions, not across them (floating-point kernels differ), which is why the committed files,
not this script, are the reference that ``tests/test_models_manifest.py`` checks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn
except ImportError as exc:
    print(
        f"train_digits: missing dependency ({exc.name}); run: pip install torch==2.13.0 scikit-learn",
        file=sys.stderr,
    )
    sys.exit(3)

# Run as a script, this file's folder is on sys.path, so the sibling helpers import directly.
from digits_data import IMAGE_SIZE, INPUT_KEY, LABEL_KEY, load
from onnx_names import name_anonymous_initializers

MODELS_DIR = Path(__file__).resolve().parent
OPSET = 17
SEED = 0
TEST_SIZE = 360
AUG_VARIANTS = 10
OUTPUT_NAME = "logits"
PREPROCESSING = (
    "x = images / 16 (8x8, float32); bilinear upsample to 28x28 (torch interpolate, "
    "align_corners=False); x = round(clip(x, 0, 1) * 255) / 255; shape [N,1,28,28]"
)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to multiples of 1/255 so the stored test sets reproduce the model inputs exactly."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def upsample(images_8x8: np.ndarray) -> torch.Tensor:
    """8x8 images with grey levels 0..16 -> [N,1,28,28] float32 in [0,1], quantized to 1/255 steps.

    Bilinear with align_corners=False (torch's default) is the documented preprocessing; quantizing
    afterwards makes the float inputs exactly representable as uint8/255.
    """
    x = torch.from_numpy(images_8x8.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return quantize(x)


def random_affine(
    x: torch.Tensor,
    gen: torch.Generator,
    max_shift: float,
    max_rot_deg: float,
    scale_range: tuple[float, float],
) -> torch.Tensor:
    """Apply one random shift/rotation/scale per image (bilinear, zero padding).

    Small affine jitter keeps 1437 training images from simply being memorised (the standard MNIST
    augmentation); the same transform, with other draws, builds the augmented test set.
    """
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_rot_deg)
    scale = scale_range[0] + torch.rand(n, generator=gen) * (scale_range[1] - scale_range[0])
    # affine_grid works in normalised coordinates: one pixel is 2/IMAGE_SIZE.
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * max_shift * 2.0 / IMAGE_SIZE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def make_augmented_test(x: torch.Tensor, y: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Deterministic harder test set: AUG_VARIANTS jittered + noisy copies of each held-out image.

    Ten times more images than the held-out set makes a 0.1-point accuracy change measurable (one
    image is 0.028 points), which is the resolution compression experiments need.
    """
    gen = torch.Generator().manual_seed(SEED + 1)
    reps = x.repeat_interleave(AUG_VARIANTS, dim=0)
    out = random_affine(reps, gen, max_shift=2.0, max_rot_deg=12.0, scale_range=(0.9, 1.1))
    out = out + 0.05 * torch.randn(out.shape, generator=gen)
    return quantize(out), np.repeat(y, AUG_VARIANTS)


def save_npz(path: Path, x: torch.Tensor, y: np.ndarray) -> None:
    """Store inputs as float32 (what the model is fed) so tools can read the npz by input name."""
    np.savez_compressed(path, **{INPUT_KEY: x.numpy().astype(np.float32), LABEL_KEY: y.astype(np.int64)})


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class LeNet300100(nn.Module):
    """Deep Compression's LeNet-300-100: 784-300-100-10 fully connected, ReLU; 266,610 parameters.

    Takes [N,1,28,28] like the other two models (flattened inside) so one test set feeds all three.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IMAGE_SIZE * IMAGE_SIZE, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """Caffe's LeNet as used by Deep Compression: conv20-pool-conv50-pool-fc500-ReLU-fc10; 431,080 parameters.

    Like Caffe's prototxt there is no non-linearity after the convolutions, only after fc500.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 projection (with BN) on the skip path when shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.proj: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.proj(x))


class ResNetDigits(nn.Module):
    """Small residual CNN: stem, three stages (32@14x14, 64@7x7, 128@4x4), global average pool, fc.

    The stem pools to 14x14 first so training takes about two minutes on two cores; it gives the
    compressor a model with BatchNorm, residual Adds, 1x1 projections and GlobalAveragePool to handle.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.stage1 = BasicBlock(widths[0], widths[0], 1)
        self.stage2 = BasicBlock(widths[0], widths[1], 2)
        self.stage3 = BasicBlock(widths[1], widths[2], 2)
        self.fc = nn.Linear(widths[2], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@dataclass(frozen=True)
class Spec:
    """What to train: the architecture, its expected size and the optimisation schedule."""

    name: str
    build: Callable[[], nn.Module]
    expected_params: int | None  # exact count required by the paper's architecture, None = free
    epochs: int
    lr: float
    description: str


SPECS: tuple[Spec, ...] = (
    Spec(
        "lenet_300_100",
        LeNet300100,
        266_610,
        60,
        1e-3,
        "LeNet-300-100 (Deep Compression): 784-300-100-10 fully connected, ReLU",
    ),
    Spec(
        "lenet5",
        LeNet5,
        431_080,
        40,
        1e-3,
        "LeNet-5, Caffe variant (Deep Compression): conv20@5x5-maxpool-conv50@5x5-maxpool-fc500-ReLU-fc10",
    ),
    Spec(
        "resnet_digits",
        ResNetDigits,
        None,
        30,
        2e-3,
        "Residual CNN: 3 stages (32/64/128 ch) of basic blocks with BatchNorm and 1x1 projections, GAP, fc",
    ),
)


# --------------------------------------------------------------------------------------------------
# Training, export, evaluation
# --------------------------------------------------------------------------------------------------


def train(spec: Spec, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Adam with a one-cycle (warm-up, cosine decay) schedule on augmented mini-batches.

    Seeded per model, so each model is reproducible on its own, whatever was trained before it.
    """
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = spec.build()
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    batch = 64
    steps_per_epoch = math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch
    )
    model.train()
    for epoch in range(spec.epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            xb = random_affine(x[idx], gen, max_shift=2.0, max_rot_deg=10.0, scale_range=(0.9, 1.1))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch + 1 == spec.epochs:
            print(f"  {spec.name} epoch {epoch + 1}/{spec.epochs} loss {total / len(x):.4f}", flush=True)
    return model.eval()


def export(model: nn.Module, path: Path) -> None:
    """Legacy TorchScript exporter: one self-contained file, weights as initializers, eval-mode BN folded.

    The legacy exporter (deprecated but kept on purpose) gives the plainest graph for these models:
    Gemm/Conv with named weight initializers, BatchNorm folded into the preceding Conv, and no
    external-data file or onnxscript dependency.
    """
    import onnx

    dummy = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_KEY],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_KEY: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            do_constant_folding=True,
        )
    graph = onnx.load(str(path))
    name_anonymous_initializers(
        graph.graph
    )  # BN-folded Conv weights: 'onnx::Conv_93' -> 'stage1.conv1.weight'
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))


def onnx_accuracy(path: Path, data: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
    """Accuracy of the exported model under onnxruntime (CPU), the number the manifest records."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run([OUTPUT_NAME], {INPUT_KEY: data[INPUT_KEY]})[0]
    return float((logits.argmax(1) == data[LABEL_KEY]).mean()), logits


def onnx_weight_count(path: Path) -> int:
    """Elements in floating-point initializers: what compression acts on (BN already folded in)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).size for t in model.graph.initializer if t.data_type in floats)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="output folder (default: models/)")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    digits = load_digits()
    idx_train, idx_test = train_test_split(
        np.arange(len(digits.target)), test_size=TEST_SIZE, stratify=digits.target, random_state=SEED
    )
    x_all = upsample(digits.images)
    y_all = digits.target.astype(np.int64)
    x_train, y_train = x_all[idx_train], torch.from_numpy(y_all[idx_train])
    x_test, y_test = x_all[idx_test], y_all[idx_test]

    test_files = {"test": out / "digits_test.npz", "test_aug": out / "digits_test_aug.npz"}
    save_npz(test_files["test"], x_test, y_test)
    save_npz(test_files["test_aug"], *make_augmented_test(x_test, y_test))
    # Evaluate on what was written, so the manifest's accuracies are exactly what users reproduce.
    test_data = {k: load(p) for k, p in test_files.items()}

    entries = []
    for spec in SPECS:
        model = spec.build()
        n_params = sum(p.numel() for p in model.parameters())
        if spec.expected_params is not None and n_params != spec.expected_params:
            raise AssertionError(f"{spec.name}: {n_params} parameters, expected {spec.expected_params}")
        print(f"training {spec.name} ({n_params:,} parameters)", flush=True)
        model = train(spec, x_train, y_train)
        path = out / f"{spec.name}.onnx"
        export(model, path)

        accuracies = {}
        for key, data in test_data.items():
            acc, logits = onnx_accuracy(path, data)
            with torch.no_grad():
                ref = model(torch.from_numpy(data[INPUT_KEY])).numpy()
            max_diff = float(np.abs(ref - logits).max())
            if max_diff > 1e-3:
                raise AssertionError(f"{spec.name}: onnxruntime differs from torch by {max_diff:g} on {key}")
            accuracies[key] = acc
        print(
            f"  {spec.name}: accuracy test {accuracies['test']:.4%}, test_aug {accuracies['test_aug']:.4%}",
            flush=True,
        )
        entries.append(
            {
                "name": spec.name,
                "description": spec.description,
                "file": path.name,
                "sha256": sha256(path),
                "file_bytes": path.stat().st_size,
                "parameters": n_params,
                "onnx_weight_elements": onnx_weight_count(path),
                "opset": OPSET,
                "input": {"name": INPUT_KEY, "shape": ["N", 1, IMAGE_SIZE, IMAGE_SIZE], "dtype": "float32"},
                "output": {"name": OUTPUT_NAME, "shape": ["N", 10], "dtype": "float32"},
                "data_files": [p.name for p in test_files.values()],
                "preprocessing": PREPROCESSING,
                "accuracy": {test_files[k].name: accuracies[k] for k in test_files},
            }
        )

    manifest = {
        "dataset": {
            "source": "sklearn.datasets.load_digits (UCI optdigits test part, 1797 8x8 images)",
            "split": f"train_test_split(test_size={TEST_SIZE}, stratify=labels, random_state={SEED}): "
            f"{len(idx_train)} train / {len(idx_test)} test",
            "preprocessing": PREPROCESSING,
            "files": {
                test_files["test"].name: {
                    "images": len(x_test),
                    "input_key": INPUT_KEY,
                    "label_key": LABEL_KEY,
                    "description": "held-out images, preprocessed model inputs",
                },
                test_files["test_aug"].name: {
                    "images": len(x_test) * AUG_VARIANTS,
                    "input_key": INPUT_KEY,
                    "label_key": LABEL_KEY,
                    "description": f"{AUG_VARIANTS} deterministic variants of each held-out image: shift <= 2 px, "
                    "rotation <= 12 deg, scale 0.9-1.1, Gaussian noise sigma 0.05, then clipped "
                    "and rounded to 1/255 steps",
                },
            },
            "storage": "np.savez_compressed; input float32 [N,1,28,28], every value a multiple of 1/255; "
            "labels int64 [N]",
        },
        "models": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
