"""Per-weight compression search: the smallest model that keeps its accuracy (issue 12).

Stage 1 (:mod:`.sensitivity`) measures each weight alone; stage 2 (:mod:`.allocate`) allocates
sparsity and bits from that table; stage 3 (:mod:`.bayes`) refines with Optuna on the real model.
:func:`search` runs all three (:mod:`.api`); ``onnxcompress search`` is its command. Needs the
``search`` extra (optuna; matplotlib for the plots).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from onnxcompress.search.api import SearchResult, search
from onnxcompress.search.metrics import Metric, load_metric
from onnxcompress.search.space import Choice, Plan
from onnxcompress.search.structured import StructuredSearch

__all__ = ["Choice", "Metric", "Plan", "SearchResult", "StructuredSearch", "load_metric", "search"]


class _CallableModule(types.ModuleType):
    """``oc.search`` is both this package and the function: importing any ``onnxcompress.search.*``
    module rebinds the package attribute, so the package itself forwards calls to :func:`search`."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
