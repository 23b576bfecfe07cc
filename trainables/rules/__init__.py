"""Learning rules, one module each, found by name in ``RULES``."""

from __future__ import annotations

from trainables.registry import Registry
from trainables.rules._base import (
    FEEDBACK_SOLVERS,
    FeedbackSolver,
    LearningRule,
    LeastSquaresSolver,
    RuleSettings,
    SGDSolver,
    Step,
)
from trainables.rules.backprop import Backprop
from trainables.rules.direct_feedback_alignment import DirectFeedbackAlignment
from trainables.rules.feedback_alignment import FeedbackAlignment
from trainables.rules.kolen_pollack import KolenPollack
from trainables.rules.matched import Matched
from trainables.rules.node_perturbation import NodePerturbation
from trainables.rules.node_perturbation_direct import NodePerturbationDirect
from trainables.rules.synthetic_gradient import SyntheticGradient

__all__ = [
    "FEEDBACK_SOLVERS",
    "RULES",
    "Backprop",
    "DirectFeedbackAlignment",
    "FeedbackAlignment",
    "FeedbackSolver",
    "KolenPollack",
    "LearningRule",
    "LeastSquaresSolver",
    "Matched",
    "NodePerturbation",
    "NodePerturbationDirect",
    "RuleSettings",
    "SGDSolver",
    "Step",
    "SyntheticGradient",
    "make_rule",
]

RULES: Registry[type[LearningRule]] = Registry("rule")
for _rule in (
    Backprop,
    FeedbackAlignment,
    DirectFeedbackAlignment,
    NodePerturbation,
    NodePerturbationDirect,
    Matched,
    KolenPollack,
    SyntheticGradient,
):
    RULES.add(_rule.name, _rule)


def make_rule(name: str, net, settings: RuleSettings, generator) -> LearningRule:
    """Build the rule registered as ``name`` (unknown names list the valid ones)."""
    return RULES.get(name)(net, settings, generator)
