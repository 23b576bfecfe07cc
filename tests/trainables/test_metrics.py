"""The alignment metrics on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from trainables import metrics as M


def test_angles_identical_orthogonal_opposite():
    u = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    assert M.mean_sample_angle(u, u) == pytest.approx(0.0, abs=1e-5)
    assert M.mean_sample_angle(u, 3 * u) == pytest.approx(0.0, abs=1e-5)
    orth = torch.tensor([[2.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    assert M.mean_sample_angle(u, orth) == pytest.approx(90.0)
    assert M.mean_sample_angle(u, -u) == pytest.approx(180.0)  # never folded into [0, 90]
    assert M.angle_degrees(u, -2 * u) == pytest.approx(180.0)


def test_angle_is_a_mean_over_samples_not_of_the_batch():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 0° and 90°
    assert M.mean_sample_angle(u, v) == pytest.approx(45.0)
    w = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])  # 45° and 135°
    assert M.mean_sample_angle(u, w) == pytest.approx(90.0)


def test_zero_vectors_have_no_angle():
    u = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert M.mean_sample_angle(u, torch.tensor([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(90.0)
    assert math.isnan(M.angle_degrees(torch.zeros(3), torch.ones(3)))


def test_relative_error_and_sign_congruence():
    W = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    assert M.relative_error(W, W) == 0.0
    assert M.sign_congruence(W, W) == 100.0
    assert M.relative_error(W, torch.zeros_like(W)) == pytest.approx(1.0)
    assert M.relative_error(W, -W) == pytest.approx(2.0)
    assert M.sign_congruence(W, -W) == 0.0
    B = torch.tensor([[0.5, 2.0], [0.1, -9.0]])  # 3 of 4 signs agree
    assert M.sign_congruence(W, B) == pytest.approx(75.0)
