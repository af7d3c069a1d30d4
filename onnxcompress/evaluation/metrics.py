"""Streaming comparison metrics between a reference and a candidate model's outputs.

Per output, accumulated batch by batch (so data sets of any size stream through):

* every numeric output: mean and min per-sample cosine similarity, relative L2 error
  ``||c - r|| / ||r||`` over the whole output, max absolute error, and SNR in dB
  ``10 log10(sum r^2 / sum (c - r)^2)``;
* class-like outputs (2-D ``[N, C]`` with ``C >= 2``, or the names given with ``--class-outputs``,
  flattened to ``[N, -1]``): top-1 agreement (same argmax) and top-5 agreement (the reference's
  top-1 class is among the candidate's top 5, "top-5 accuracy against the reference");
* with labels, per class-like output: top-1 and top-5 accuracy of both models and the drop in
  percentage points (reference minus candidate; negative means the candidate is better).

Numerics: everything accumulates in float64. Cosine of two zero vectors is 1 (they agree), of one
zero and one non-zero vector 0. A relative error with a zero reference is 0 when the candidate is
zero too, else infinity; SNR with no error is +inf. NaN or inf in either output makes the affected
metrics NaN, which fails every gate (a gate never passes on NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcompress.errors import DataError, InvalidModelError

TOPK = 5


@dataclass(frozen=True)
class OutputMetrics:
    """Final metrics of one output. Accuracy fields are fractions in [0, 1]; drops are points."""

    name: str
    shape: tuple[int, ...]  # per-sample shape
    samples: int
    class_like: bool
    num_classes: int | None
    mean_cosine: float
    min_cosine: float
    rel_l2_error: float
    max_abs_error: float
    snr_db: float
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    ref_top1_accuracy: float | None = None
    cand_top1_accuracy: float | None = None
    ref_top5_accuracy: float | None = None
    cand_top5_accuracy: float | None = None
    top1_drop_pts: float | None = None
    top5_drop_pts: float | None = None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["shape"] = list(self.shape)
        return {k: json_float(v) for k, v in d.items()}


def json_float(v: Any) -> Any:
    """JSON has no inf/NaN: encode them as strings so reports stay valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v




def cosine_per_sample(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity of two ``[N, D]`` arrays in float64, with zero vectors handled."""
    r = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    c = np.asarray(cand, dtype=np.float64).reshape(len(cand), -1)
    # scale each row by its max magnitude first: squares of large values would overflow float64
    rs = np.max(np.abs(r), axis=1, keepdims=True)
    cs = np.max(np.abs(c), axis=1, keepdims=True)
    rn = np.divide(r, rs, out=np.zeros_like(r), where=rs > 0)
    cn = np.divide(c, cs, out=np.zeros_like(c), where=cs > 0)
    dot = np.einsum("ij,ij->i", rn, cn)
    nr = np.sqrt(np.einsum("ij,ij->i", rn, rn))
    nc = np.sqrt(np.einsum("ij,ij->i", cn, cn))
    denom = nr * nc
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), 0.0)
    both_zero = (nr == 0) & (nc == 0)
    cos = np.where(both_zero, 1.0, cos)
    bad = ~(np.isfinite(r).all(axis=1) & np.isfinite(c).all(axis=1))
    cos = np.where(bad, np.nan, np.clip(cos, -1.0, 1.0))
    return cos


def topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries per row (unordered), ``[N, k]``."""
    k = min(k, x.shape[1])
    if k == x.shape[1]:
        return np.broadcast_to(np.arange(k), (x.shape[0], k))
    return np.argpartition(-x, k - 1, axis=1)[:, :k]


class OutputAccumulator:
    """Accumulates the metrics of one output across batches; :meth:`result` finalizes them."""

    def __init__(self, name: str, *, class_like: bool | None = None) -> None:
        self.name = name
        self._class_like = class_like
        self.shape: tuple[int, ...] | None = None
        self.n = 0
        self.cos_sum = 0.0
        self.cos_min = math.inf
        self.cos_nan = False
        self.sq_ref = 0.0
        self.sq_diff = 0.0
        self.max_abs = 0.0
        self.nonfinite = False
        self.agree1 = 0
        self.agree5 = 0
        self.labelled = 0
        self.ref1 = self.cand1 = self.ref5 = self.cand5 = 0
        self.num_classes: int | None = None

    @property
    def class_like(self) -> bool:
        if self._class_like is not None:
            return self._class_like
        return self.shape is not None and len(self.shape) == 1 and self.shape[0] >= 2

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add one batch (rows beyond the batch's valid count must already be dropped)."""
        ref = np.asarray(ref)
        cand = np.asarray(cand)
        if ref.shape != cand.shape:
            raise InvalidModelError(
                f"output {self.name!r}: reference shape {ref.shape} differs from candidate shape {cand.shape}"
            )
        if ref.dtype.kind not in "fiub" or cand.dtype.kind not in "fiub":
            raise InvalidModelError(f"output {self.name!r} has non-numeric dtype {ref.dtype}; cannot compare")
        if ref.ndim == 0:
            ref, cand = ref.reshape(1), cand.reshape(1)
        sample_shape = tuple(ref.shape[1:])
        if self.shape is None:
            self.shape = sample_shape
        n = ref.shape[0]
        if n == 0:
            return
        r = ref.astype(np.float64).reshape(n, -1)
        c = cand.astype(np.float64).reshape(n, -1)
        finite = bool(np.isfinite(r).all() and np.isfinite(c).all())
        if not finite:
            self.nonfinite = True
        cos = cosine_per_sample(r, c)
        if np.isnan(cos).any():
            self.cos_nan = True
        else:
            self.cos_sum += float(cos.sum())
            self.cos_min = min(self.cos_min, float(cos.min()))
        if finite:
            d = c - r
            # float32 outputs squared stay far inside float64's range (1e77 < 1e308)
            self.sq_ref += float(np.sum(r * r))
            self.sq_diff += float(np.sum(d * d))
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))) if d.size else 0.0)
        self.n += n
        if self.class_like and r.shape[1] >= 1:
            self.num_classes = r.shape[1]
            ref_top1 = r.argmax(axis=1)
            cand_top1 = c.argmax(axis=1)
            cand_top5 = topk_indices(c, TOPK)
            self.agree1 += int(np.sum(ref_top1 == cand_top1))
            self.agree5 += int(np.sum((cand_top5 == ref_top1[:, None]).any(axis=1)))
            if labels is not None:
                labels = np.asarray(labels).reshape(-1)[:n]
                if labels.size and (labels.min() < 0 or labels.max() >= r.shape[1]):
                    raise DataError(
                        f"labels range {int(labels.min())}..{int(labels.max())} does not fit output "
                        f"{self.name!r} with {r.shape[1]} classes (use --class-outputs to pick the right output)"
                    )
                ref_top5 = topk_indices(r, TOPK)
                self.labelled += n
                self.ref1 += int(np.sum(ref_top1 == labels))
                self.cand1 += int(np.sum(cand_top1 == labels))
                self.ref5 += int(np.sum((ref_top5 == labels[:, None]).any(axis=1)))
                self.cand5 += int(np.sum((cand_top5 == labels[:, None]).any(axis=1)))

    def result(self) -> OutputMetrics:
        nan = math.nan
        n = self.n
        if self.nonfinite:
            rel = snr = max_abs = nan
        else:
            if self.sq_ref > 0:
                rel = math.sqrt(self.sq_diff / self.sq_ref)
            else:
                rel = 0.0 if self.sq_diff == 0 else math.inf
            if self.sq_diff == 0:
                snr = math.inf
            elif self.sq_ref == 0:
                snr = -math.inf
            else:
                snr = 10.0 * math.log10(self.sq_ref / self.sq_diff)
            max_abs = self.max_abs
        mean_cos = nan if (self.cos_nan or n == 0) else self.cos_sum / n
        min_cos = nan if (self.cos_nan or n == 0) else self.cos_min
        cl = self.class_like
        kw: dict = {}
        if cl and n:
            kw = {"top1_agreement": self.agree1 / n, "top5_agreement": self.agree5 / n}
            if self.labelled:
                m = self.labelled
                kw.update(
                    ref_top1_accuracy=self.ref1 / m,
                    cand_top1_accuracy=self.cand1 / m,
                    ref_top5_accuracy=self.ref5 / m,
                    cand_top5_accuracy=self.cand5 / m,
                    top1_drop_pts=100.0 * (self.ref1 - self.cand1) / m,
                    top5_drop_pts=100.0 * (self.ref5 - self.cand5) / m,
                )
        return OutputMetrics(
            name=self.name,
            shape=self.shape or (),
            samples=n,
            class_like=cl,
            num_classes=self.num_classes if cl else None,
            mean_cosine=mean_cos,
            min_cosine=min_cos,
            rel_l2_error=rel,
            max_abs_error=max_abs,
            snr_db=snr,
            **kw,
        )


def compare_outputs(
    ref: np.ndarray,
    cand: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    name: str = "output",
    class_like: bool | None = None,
) -> OutputMetrics:
    """One-shot convenience: metrics of a single pair of whole outputs."""
    acc = OutputAccumulator(name, class_like=class_like)
    acc.update(ref, cand, labels)
    return acc.result()
