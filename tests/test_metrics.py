"""Metrics against hand-computed values (cosine, relative L2, max abs, SNR, agreement, accuracy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxcompress.errors import DataError, InvalidModelError
from onnxcompress.evaluation.metrics import OutputAccumulator, compare_outputs, cosine_per_sample


def test_cosine_hand_values_and_zero_vectors():
    ref = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 2.0], [1.0, 0.0]])
    cand = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [-2.0, -2.0], [3.0, 0.0]])
    cos = cosine_per_sample(ref, cand)
    np.testing.assert_allclose(cos, [1 / math.sqrt(2), 1.0, 0.0, -1.0, 1.0], atol=1e-12)


def test_cosine_huge_values_do_not_overflow():
    ref = np.array([[1e300, 1e300]])
    cos = cosine_per_sample(ref, ref * 2)
    assert cos[0] == pytest.approx(1.0)


def test_error_metrics_hand_values():
    # diff = [0, 1], ||diff|| = 1, ||ref|| = 5 -> rel 0.2, SNR 10*log10(25) dB, max abs 1
    m = compare_outputs(np.array([[3.0, 4.0]]), np.array([[3.0, 5.0]]), class_like=False)
    assert m.rel_l2_error == pytest.approx(0.2)
    assert m.snr_db == pytest.approx(10 * math.log10(25.0))
    assert m.max_abs_error == pytest.approx(1.0)
    assert m.mean_cosine == pytest.approx((9 + 20) / (5 * math.sqrt(34)))
    assert m.top1_agreement is None and not m.class_like


def test_identical_and_zero_reference():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    same = compare_outputs(x, x.copy())
    assert same.rel_l2_error == 0.0 and same.snr_db == math.inf and same.max_abs_error == 0.0
    assert same.mean_cosine == pytest.approx(1.0) and same.min_cosine == pytest.approx(1.0)
    zeros = np.zeros((2, 3))
    assert compare_outputs(zeros, zeros).rel_l2_error == 0.0
    off = compare_outputs(zeros, np.ones((2, 3)))
    assert off.rel_l2_error == math.inf and off.snr_db == -math.inf and off.mean_cosine == 0.0


def test_nan_makes_metrics_nan():
    ref = np.ones((2, 3), np.float32)
    cand = ref.copy()
    cand[1, 1] = np.nan
    m = compare_outputs(ref, cand)
    assert math.isnan(m.mean_cosine) and math.isnan(m.rel_l2_error) and math.isnan(m.snr_db)


def test_agreement_hand_values():
    # 4 samples, 6 classes. ref argmax: 0, 1, 2, 3.
    ref = np.eye(4, 6) * 10
    cand = np.zeros((4, 6))
    cand[0, 0] = 10  # agrees
    cand[1, 1] = 10  # agrees
    cand[2] = [0, 0, 5, 6, 7, 8]  # top-1 = 5, ref 2 in top-5 (5,4,3,2,1/0 tie) -> top-5 agrees
    cand[3] = [9, 8, 7, 6, 0, 10]  # top-1 = 5, top-5 = {5,0,1,2,3}: 3 in it
    m = compare_outputs(ref, cand)
    assert m.class_like and m.num_classes == 6
    assert m.top1_agreement == pytest.approx(0.5)
    assert m.top5_agreement == pytest.approx(1.0)
    cand[3] = [9, 8, 7, 0, 6, 10]  # top-5 = {5,0,1,2,4}: 3 missing
    assert compare_outputs(ref, cand).top5_agreement == pytest.approx(0.75)


def test_accuracy_and_drop_hand_values():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    cand = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 0])
    m = compare_outputs(ref, cand, labels)
    assert m.ref_top1_accuracy == pytest.approx(0.75)  # right on 0, 1, 2
    assert m.cand_top1_accuracy == pytest.approx(0.25)  # right on 0 only
    assert m.top1_drop_pts == pytest.approx(50.0)
    assert m.ref_top5_accuracy == m.cand_top5_accuracy == 1.0  # C=2 < 5: top-k covers everything
    assert m.top5_drop_pts == 0.0
    assert m.top1_agreement == pytest.approx(0.5)


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((50, 7))
    cand = ref + 0.3 * rng.standard_normal((50, 7))
    labels = rng.integers(0, 7, 50)
    whole = compare_outputs(ref, cand, labels)
    acc = OutputAccumulator("output")
    for s in range(0, 50, 16):
        acc.update(ref[s : s + 16], cand[s : s + 16], labels[s : s + 16])
    parts = acc.result()
    for field in ("mean_cosine", "min_cosine", "rel_l2_error", "max_abs_error", "snr_db", "top1_drop_pts"):
        assert getattr(parts, field) == pytest.approx(getattr(whole, field)), field
    assert parts.top1_agreement == whole.top1_agreement and parts.samples == 50


def test_class_like_detection_and_override():
    assert not compare_outputs(np.ones((3, 1)), np.ones((3, 1))).class_like
    assert not compare_outputs(np.ones((3, 2, 2)), np.ones((3, 2, 2))).class_like
    forced = compare_outputs(np.eye(3, 4).reshape(3, 2, 2), np.eye(3, 4).reshape(3, 2, 2), class_like=True)
    assert forced.class_like and forced.top1_agreement == 1.0


def test_bad_inputs():
    with pytest.raises(InvalidModelError, match="differs"):
        compare_outputs(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(DataError, match="does not fit output"):
        compare_outputs(np.ones((2, 3)), np.ones((2, 3)), np.array([0, 3]))


def test_float64_accumulation_of_float16_outputs():
    ref = np.full((1, 4096), 100.0, np.float16)  # sum of squares overflows float16
    m = compare_outputs(ref, ref)
    assert m.rel_l2_error == 0.0 and m.mean_cosine == pytest.approx(1.0)
