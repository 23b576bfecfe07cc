"""The matched rule (the paper's 'Martinolli' rule): B receives W's update."""

from __future__ import annotations

import torch

from trainables.rules._base import LearningRule


class Matched(LearningRule):
    """B and W start random and independent; every ΔW is added to B as well, so
    W − B stays constant (Kolen–Pollack without decay)."""

    name = "matched"
    description = "B receives exactly W's update; both start random (Kolen–Pollack, no decay)"
    tracks_weight_updates = True

    def after_weight_update(self, deltas, old_weights):
        torch._foreach_add_(self.feedback[1:], deltas[1:])
