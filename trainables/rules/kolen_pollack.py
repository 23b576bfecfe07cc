"""Kolen–Pollack (Akrout et al. 2019): matched updates plus weight decay on W and B."""

from __future__ import annotations

import torch

from trainables.members import add_scaled_
from trainables.rules._base import LearningRule


class KolenPollack(LearningRule):
    """ΔB = ΔW, and both decay: with decay d = η·weight_decay, W − B shrinks by (1 − d)
    every step (exactly so with the sgd optimizer, which applies W's own decay)."""

    name = "kolen_pollack"
    description = "matched updates plus weight decay on both W and B, so B → W"
    tracks_weight_updates = True

    def after_weight_update(self, deltas, old_weights):
        # B ← B + ΔW + d·(W_old − B): ΔW already holds W's own decay −d·W_old.
        d = self.settings.lr * self.settings.weight_decay
        B = self.feedback[1:]
        gap = torch._foreach_sub(old_weights[1:], B)
        torch._foreach_add_(B, deltas[1:])
        if isinstance(d, torch.Tensor):  # a population: one decay per member
            for b, g in zip(B, gap, strict=True):
                add_scaled_(b, g, d)
        else:
            torch._foreach_add_(B, gap, alpha=d)
