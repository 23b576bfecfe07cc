"""Plain numbers, torch-free: a mean with its standard error, and strict JSON (no NaN).

Summaries and results use these where no tensor is in sight: a study's driver, the
paper's tables, a result written as JSON.
"""

from __future__ import annotations

import math
from typing import Any


def mean_sem(values) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / √n) of the finite values, None
    and NaN skipped; (nan, nan) if none is left, a standard error of 0 for one value."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return math.nan, math.nan
    mean = sum(kept) / len(kept)
    if len(kept) == 1:
        return mean, 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))
    return mean, std / math.sqrt(len(kept))


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) as ``None``, for strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj
