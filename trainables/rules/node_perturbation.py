"""Node perturbation learns the feedback (Lansdell, Prakash & Kording 2019)."""

from __future__ import annotations

from trainables.members import per_member
from trainables.rules._base import RegressedFeedback, Step


class NodePerturbation(RegressedFeedback):
    """Feedback B[j] regresses the noise estimate λ̂[j-1] on ẽ[j], layer by layer.

    With hidden noise c·ξ added after the nonlinearity (all hidden layers at once),
    λ̂ = (L̃ − L)·ξ/c per sample — eq. (3) of the paper: E[λ̂ | x] ≈ ∂L/∂h.
    """

    name = "node_perturbation"
    description = "feedback learned from the node-perturbation estimate (L̃ − L)ξ/c, layer-wise"
    uses_noise = True

    def targets(self, step: Step):
        diff = step.noisy_loss - step.loss
        scale = diff / per_member(self.settings.noise_std, diff)  # (L̃ − L)/c
        # one trailing 1 per dimension of a sample of h[i] (features, or C, H, W)
        return [None] + [xi * scale.reshape(scale.shape + (1,) * len(self.net.hidden_shapes[i]))
                         for i, xi in enumerate(step.fp.noise)]
