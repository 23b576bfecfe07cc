"""Direct feedback alignment (Nøkland 2016)."""

from __future__ import annotations

from trainables.rules._base import LearningRule


class DirectFeedbackAlignment(LearningRule):
    """Fixed random B[i] from the output error straight to each hidden layer:
    ẽ[i] = (B[i]ᵀ e[L-1]) ∘ σ'(a[i])."""

    name = "direct_feedback_alignment"
    description = "fixed random feedback from the output error to every hidden layer (Nøkland 2016)"
    direct = True
