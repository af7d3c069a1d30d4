"""Helpers for users' own test suites.

``assert_models_close(reference, candidate, data, max_accuracy_drop=0.5)`` in a pytest test turns
"is my compressed model still good?" into one assertion whose failure message is the verification
table, so a regression shows which output and which gate moved, and by how much.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnxcompress.evaluation.data import DataSource
from onnxcompress.evaluation.verify import Gates, VerifyResult, verify

__all__ = ["assert_models_close"]


def assert_models_close(
    reference: Any,
    candidate: Any,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray] | DataSource | None = None,
    *,
    max_accuracy_drop: float | None = None,
    min_agreement: float | None = None,
    min_cosine: float | None = None,
    max_rel_error: float | None = None,
    labels_key: str | None = None,
    batch_size: int | None = None,
    samples: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    int_range: Mapping[str, tuple[int, int]] | tuple[int, int] | None = None,
    class_outputs: Sequence[str] | None = None,
    providers: Any = None,
) -> VerifyResult:
    """Verify ``candidate`` against ``reference``; raise ``AssertionError`` with the summary on failure.

    Gates are keyword arguments (same meaning as the CLI flags; accuracy drop in percentage points).
    With no gate given, ``min_cosine=0.99`` is applied so the call always asserts something.
    Returns the :class:`~onnxcompress.evaluation.verify.VerifyResult` for further checks.
    """
    gates = Gates(
        max_accuracy_drop=max_accuracy_drop,
        min_agreement=min_agreement,
        min_cosine=min_cosine,
        max_rel_error=max_rel_error,
    )
    if not gates.any():
        gates = Gates(min_cosine=0.99)
    result = verify(
        reference,
        candidate,
        data,
        labels_key=labels_key,
        batch_size=batch_size,
        gates=gates,
        providers=providers,
        progress=None,
        shapes=shapes,
        int_range=int_range,
        samples=samples,
        class_outputs=class_outputs,
    )
    if not result.passed:
        from onnxcompress.evaluation.reports import render_text

        raise AssertionError(result.summary() + "\n\n" + render_text(result))
    return result
