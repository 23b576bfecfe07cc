"""Plain-number helpers: mean ± standard error, strict JSON."""

from __future__ import annotations

import math

import pytest

from trainables.numbers import finite_or_none, mean_sem


def test_mean_and_standard_error_skip_missing_and_non_finite_values():
    mean, sem = mean_sem([1.0, 2.0, 3.0, None, float("nan")])
    assert mean == pytest.approx(2.0)
    assert sem == pytest.approx(1.0 / math.sqrt(3))  # sample std 1, n = 3
    assert mean_sem([0.25]) == (0.25, 0.0)
    assert all(math.isnan(x) for x in mean_sem([None]))


def test_finite_or_none_makes_strict_json():
    assert finite_or_none({"a": [1.0, float("nan")], "b": (float("inf"), "x")}) == \
        {"a": [1.0, None], "b": [None, "x"]}
