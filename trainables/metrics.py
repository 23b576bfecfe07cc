"""Alignment metrics between the true (backprop) and the synthetic error pathway.

All are computed per layer on a fixed batch (trainables/README.md §4):
- ``relative_error``: ‖W − B‖_F / ‖W‖_F;
- ``angle``: degrees in [0, 180] (never folded) between the true signal Wᵀe and
  the synthetic Bᵀẽ, per sample, averaged over the samples;
- ``update_angle``: degrees between the whole weight update and backprop's;
- ``sign_congruence``: % of entries where sign W = sign B (biases are not in B).

``LAYER_METRICS`` names these families: a trial reports ``<family>/<layer>``.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


#: The per-layer metric families, reported as ``<family>/<layer name>``.


def angle_degrees(u: Tensor, v: Tensor) -> float:
    """Angle between two tensors taken as flat vectors, in degrees (0–180); NaN if one is 0."""
    u, v = u.flatten().double(), v.flatten().double()
    denom = u.norm() * v.norm()
    if denom == 0:
        return math.nan
    cos = torch.clamp(torch.dot(u, v) / denom, -1.0, 1.0)
    return math.degrees(math.acos(cos.item()))


def mean_sample_angle(true: Tensor, synthetic: Tensor) -> float:
    """Mean over samples (rows) of the per-sample angle, in degrees (0–180).

    Samples where either vector is zero (e.g. dead ReLUs) have no angle and are skipped.
    """
    u = true.flatten(1).double()
    v = synthetic.flatten(1).double()
    denom = u.norm(dim=1) * v.norm(dim=1)
    keep = denom > 0
    if not bool(keep.any()):
        return math.nan
    cos = torch.clamp((u * v).sum(1)[keep] / denom[keep], -1.0, 1.0)
    return torch.rad2deg(torch.acos(cos)).mean().item()


def relative_error(W: Tensor, B: Tensor) -> float:
    """‖W − B‖_F / ‖W‖_F."""
    return ((W - B).norm() / W.norm()).item()


def sign_congruence(W: Tensor, B: Tensor) -> float:
    """Percentage of entries with sign W = sign B."""
    return (torch.sign(W) == torch.sign(B)).double().mean().item() * 100.0
