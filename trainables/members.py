"""Hyperparameters of one network or of a population of same-shaped networks.

A population stacks K members' tensors along a leading member dimension
(``trainables/population.py``); a hyperparameter that differs between members is then a
tensor of shape (K,) instead of a float. These two helpers let the maths be written
once for both: ``per_member`` views such a tensor so that it broadcasts against a
stacked tensor, and ``add_scaled_`` is ``y += alpha·x`` for either kind of ``alpha``.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
Scalar = float | Tensor


def per_member(value: Scalar, like: Tensor) -> Scalar:
    """``value`` as it broadcasts against ``like``: a float unchanged, or a (K,) tensor
    viewed (K, 1, …, 1) with as many dimensions as ``like``."""
    if isinstance(value, Tensor):
        return value.view(-1, *([1] * (like.dim() - 1)))
    return value


def add_scaled_(y: Tensor, x: Tensor, alpha: Scalar) -> Tensor:
    """y ← y + alpha·x in place (one fused kernel when alpha is a float)."""
    if isinstance(alpha, Tensor):
        return y.add_(x * per_member(alpha, x))
    return y.add_(x, alpha=alpha)
