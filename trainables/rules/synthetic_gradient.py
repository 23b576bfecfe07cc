"""The synthetic-gradient control: feedback regressed on the true gradient."""

from __future__ import annotations

from trainables.rules._base import RegressedFeedback, Step


class SyntheticGradient(RegressedFeedback):
    """Like node perturbation, but B[j] regresses the true λ[j-1] = W[j]ᵀe[j]
    (computed by backprop) instead of the noisy estimate: what NP could reach
    with perfect gradient estimates."""

    name = "synthetic_gradient"
    description = "control: feedback regressed on the true gradient ∂L/∂h instead of λ̂"

    def targets(self, step: Step):
        _, true_signals = self.net.backward(step.fp, step.e_out, [None, *self.net.weights[1:]])
        return true_signals
