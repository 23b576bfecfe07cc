"""Feedback alignment (Lillicrap et al. 2016)."""

from __future__ import annotations

from trainables.rules._base import LearningRule


class FeedbackAlignment(LearningRule):
    """Fixed random B, layer by layer; B never changes."""

    name = "feedback_alignment"
    description = "fixed random feedback B, layer by layer (Lillicrap et al. 2016)"
