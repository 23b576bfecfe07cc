"""Numbers as the service writes them for people: one formatter for tables, pages and
progress lines."""

from __future__ import annotations

import math
from typing import Any


def number(value: Any, fmt: str = ".4g", missing: str | None = "-") -> str:
    """``value`` in ``fmt`` (a format spec: ``.4g``, ``.2f``); ``missing`` for None and, if
    given, for NaN and infinities (``missing=None``: they print as ``nan``/``inf``); a
    value that is not a float as it is."""
    if value is None:
        return missing or ""
    if isinstance(value, float):
        if not math.isfinite(value) and missing is not None:
            return missing
        return format(value, fmt)
    return str(value)


def mean_sem(mean: float, sem: float, fmt: str = ".6g") -> str:
    """``mean ± sem`` (the standard error to two significant digits)."""
    return f"{number(mean, fmt, missing=None)} ± {number(sem, '.2g', missing=None)}"
