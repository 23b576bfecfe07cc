"""Backpropagation: errors go down through Wᵀ itself (weight transport)."""

from __future__ import annotations

from trainables.rules._base import LearningRule


class Backprop(LearningRule):
    """B = W: the exact gradient, the reference every other rule is measured against."""

    name = "backprop"
    description = "exact gradient: errors sent down through Wᵀ (weight transport)"

    def init_feedback(self, generator):
        return [None] * len(self.net.layers)

    def pathway(self):
        return [None, *self.net.weights[1:]]

    def all_finite(self) -> bool:
        return True
