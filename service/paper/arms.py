"""The paper's experiments as campaign arms: per rule, a random search then K seeds of its best.

A campaign is one MLflow parent run (``credit.role=campaign``) with one study per
arm nested under it; ``credit report`` rebuilds the paper's figures from those runs
alone. Reference numbers are the paper's tables (README, "Results on full MNIST").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search_spaces import STUDY_FIELDS, SearchSpace, load_space, parse_space
from trainables.errors import ConfigError

DEFAULT_NOISE_LEVELS = (1e-4, 1e-3, 1e-2, 1e-1)
#: ``ours``: the paper's rules, each searched on our network; ``authors``: the authors'
#: own fixed settings, networks and metric (no search); ``fair``: every rule searched on
#: the same network, at each width (mnist-autoencoder).
PROTOCOLS = ("ours", "authors", "fair")


@dataclass(frozen=True)
class Arm:
    """One curve of a figure: a rule (a preset), maybe with its noise level or other
    TrainConfig fields fixed."""

    key: str  # short id, part of study names: np, np-c0.001, fa, bp, ...
    label: str  # legend text
    preset: str
    noise_std: float | None = None  # fixed c (the space then does not tune it)
    fixed: tuple[tuple[str, Any], ...] = ()  # more fields held constant, e.g. the width


@dataclass(frozen=True)
class PaperExperiment:
    """One of the paper's experiments: its arms, the number its table reports (``table``:
    ``error`` %, ``loss32`` = min test loss per 32 images, ``accuracy`` %), the paper's
    numbers, and which figures ``credit report`` draws (names in ``report.FIGURES``)."""

    name: str
    arms: tuple[Arm, ...]
    table: str
    reference: dict[str, str]  # arm key → the paper's number, as text
    figures: tuple[str, ...]
    artifacts: bool = False  # the trials store codes and reconstructions


PAPER: dict[str, PaperExperiment] = {
    "mnist-fc": PaperExperiment(
        name="mnist-fc",
        arms=(
            Arm("np", "node perturbation", "mnist-fc-node-perturbation"),
            Arm("fa", "feedback alignment", "mnist-fc-feedback-alignment"),
            Arm("bp", "backprop", "mnist-fc-backprop"),
        ),
        table="error",
        reference={"np": "3.5 %", "fa": "4.3 %", "bp": "2.65 %",
                   "np-c0.0001": "3.5 %", "np-c0.001": "3.5 %", "np-c0.01": "3.6 %",
                   "np-c0.1": "15.9 %"},
        figures=("fig1.png",),
    ),
    "mnist-autoencoder": PaperExperiment(
        name="mnist-autoencoder",
        arms=(
            Arm("np", "node perturbation", "mnist-autoencoder-node-perturbation"),
            Arm("fa", "feedback alignment", "mnist-autoencoder-feedback-alignment"),
            Arm("bp", "backprop", "mnist-autoencoder-backprop"),
            Arm("adam", "backprop + Adam", "mnist-autoencoder-backprop-adam"),
            Arm("matched", "matched", "mnist-autoencoder-matched"),
        ),
        table="loss32",  # ours is per image, so ×32 to compare
        reference={"np": "515 ± 4", "adam": "538", "bp": "610 ± 14", "matched": "643",
                   "fa": "759"},
        figures=("fig2.png", "fig2_latent.png", "fig2_reconstructions.png"),
        artifacts=True,
    ),
    "cifar10-cnn": PaperExperiment(
        name="cifar10-cnn",
        arms=(
            Arm("np", "node perturbation (direct)", "cifar10-cnn-node-perturbation-direct"),
            Arm("dfa", "fixed feedback (DFA)", "cifar10-cnn-direct-feedback-alignment"),
            Arm("bp", "backprop", "cifar10-cnn-backprop"),
        ),
        table="accuracy",
        reference={"np": "75.2 %", "dfa": "72.5 %", "bp": "77.2 %"},
        figures=("cifar10.png",),
    ),
}


def noise_arm(c: float) -> Arm:
    return Arm(f"np-c{c:g}", f"node perturbation, c = {c:g}", "mnist-fc-node-perturbation", c)


def arms_of(experiment: str, noise_levels: Sequence[float] | None,
            only: Sequence[str] | None = None) -> list[Arm]:
    """The arms of a campaign: the paper's rules (and, for mnist-fc, fixed noise levels),
    optionally restricted to the keys in ``only``."""
    if experiment not in PAPER:
        raise ConfigError(f"unknown paper experiment {experiment!r}; valid: {', '.join(PAPER)}")
    arms = list(PAPER[experiment].arms)
    if experiment == "mnist-fc":
        levels = DEFAULT_NOISE_LEVELS if noise_levels is None else noise_levels
        arms[1:1] = [noise_arm(c) for c in levels]
    elif noise_levels:
        raise ConfigError("--noise-levels applies to mnist-fc only (the paper's Fig. 1)")
    return _only(arms, only, experiment)


def _only(arms: list, only: Sequence[str] | None, what: str) -> list:
    """The arms whose keys are in ``only`` (all when it is empty); an unknown key is an
    error listing the valid ones."""
    if not only:
        return arms
    keys = [a.key for a in arms]
    unknown = [k for k in only if k not in keys]
    if unknown:
        raise ConfigError(f"unknown arm {unknown[0]!r} of {what}; valid: {', '.join(keys)}")
    return [a for a in arms if a.key in only]


def arm_space(arm: Arm) -> SearchSpace:
    """The arm's search space: its preset, with ``noise_std`` fixed when the arm fixes c,
    and the arm's other fixed fields."""
    space = load_space(arm.preset)
    if arm.noise_std is None and not arm.fixed:
        return space
    data = space.model_dump(mode="json")
    fixed = dict(arm.fixed)
    if arm.noise_std is not None:
        fixed["noise_std"] = arm.noise_std
    for key in fixed:
        data["params"].pop(key, None)
    data["fixed"] = {**data["fixed"], **fixed}
    suffix = "-".join(f"{k.split('_')[0]}{v}" for k, v in arm.fixed)
    if arm.noise_std is not None:
        suffix = "-".join(filter(None, (f"c{arm.noise_std:g}", suffix)))
    data["name"] = f"{space.name}-{suffix}".replace(".", "p").replace("_", "-").lower()[:64]
    data["description"] = f"{space.description} Fixed: {fixed}."
    return parse_space(data, source=f"arm {arm.key}")


#: The fair comparison: every rule on the authors' autoencoder (ReLU output, their
#: initialisation) at both widths, each searched over its own parameters.
FAIR_RULES = (("np", "node perturbation", "mnist-autoencoder-node-perturbation"),
              ("sg", "synthetic gradient", "mnist-autoencoder-synthetic-gradient"),
              ("bp", "backprop", "mnist-autoencoder-backprop"),
              ("adam", "backprop + Adam", "mnist-autoencoder-backprop-adam"),
              ("matched", "matched", "mnist-autoencoder-matched"),
              ("fa", "feedback alignment", "mnist-autoencoder-feedback-alignment"))
FAIR_WIDTHS = (50, 200)


def fair_arms() -> list[Arm]:
    return [Arm(f"{key}-{w}", f"{label}, 784-{w}-2-{w}-784", preset,
                fixed=(("hidden_width", w), ("output_activation", "relu"), ("init", "authors")))
            for w in FAIR_WIDTHS for key, label, preset in FAIR_RULES]


def fixed_arm_space(arm: FixedArm) -> SearchSpace:
    """A one-point space for an arm run at fixed settings: the forward rate is its only
    'parameter', with one choice, so the ordinary study machinery runs it."""
    cfg = {k: v for k, v in arm.config.items()
           if k not in STUDY_FIELDS and k != "batches_per_epoch"}
    lr = cfg.pop("lr")
    data = {"name": f"authors-{arm.config['experiment']}-{arm.key}".lower(),
            "description": f"The authors' settings ({arm.source}).",
            "experiment": arm.config["experiment"], "rule": arm.config["rule"], "fixed": cfg,
            "params": {"lr": {"type": "categorical", "choices": [lr]}}}
    if arm.config.get("step_test_images"):
        data["objective"] = {"metric": "step_test_loss", "mode": "min"}
    return parse_space(data, source=f"arm {arm.key}")


def authors_arms(experiment: str) -> list[FixedArm]:
    if experiment == "mnist-autoencoder":
        return list(AUTHORS_AUTOENCODER_ARMS)
    if experiment == "mnist-fc":
        return [AUTHORS_FC_FA]
    raise ConfigError(f"--protocol authors: no recorded settings of the authors for "
                      f"{experiment!r}; valid: mnist-autoencoder, mnist-fc")


def protocol_arms(experiment: str, protocol: str, noise_levels: Sequence[float] | None,
                  only: Sequence[str] | None) -> list[Arm | FixedArm]:
    """The arms of a campaign under ``protocol`` (see ``PROTOCOLS``)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if protocol == "ours":
        return list(arms_of(experiment, noise_levels, only))
    if noise_levels:
        raise ConfigError("--noise-levels applies to --protocol ours only")
    if protocol == "authors":
        arms: list[Arm | FixedArm] = list(authors_arms(experiment))
    elif experiment != "mnist-autoencoder":
        raise ConfigError("--protocol fair: the widths compared are the autoencoder's; "
                          "valid: mnist-autoencoder")
    else:
        arms = list(fair_arms())
    return _only(arms, only, f"{experiment} (--protocol {protocol})")


# ----------------------------------------------------------------- authors' protocol
@dataclass(frozen=True)
class FixedArm:
    """One arm run exactly as the authors ran it: a fixed configuration, no search.

    ``reference`` is the authors' printed number in the units of ``metric``;
    ``source`` names the file of their repository (benlansdell/synthfeedback) the
    settings come from.
    """

    key: str
    label: str
    config: dict[str, Any]
    metric: str
    reference: float
    source: str


#: The authors' autoencoder code (AENPModel5 and its variants): tanh hidden layers, a
#: linear 2-unit code, a ReLU output, truncated-normal weights and biases 0.1, loss
#: summed over pixels and batch, plain SGD for W and B, batch 32, 1,001 "epochs" of
#: 1,000 random batches, per step the loss of 32 random test images; the table is the
#: minimum over epochs of the per-epoch mean (``best_step_test_loss``).
AUTHORS_AUTOENCODER_COMMON: dict[str, Any] = {
    "experiment": "mnist-autoencoder", "dataset": "mnist", "output_activation": "relu",
    "init": "authors", "loss_reduction": "sum", "optimizer": "sgd", "momentum": 0.0,
    "batch_size": 32, "batches_per_epoch": 1000, "epochs": 1001, "step_test_images": 32,
}
AUTHORS_AUTOENCODER_ARMS: tuple[FixedArm, ...] = tuple(
    FixedArm(key, label, {**AUTHORS_AUTOENCODER_COMMON, **cfg}, "best_step_test_loss", ref, src)
    for key, label, cfg, ref, src in (
        ("np-50", "node perturbation, 784-50-2-50-784",
         {"rule": "node_perturbation", "hidden_width": 50, "lr": 1e-4, "feedback_lr": 8e-6,
          "noise_std": 0.018942}, 515.30,
         "mains/3_autoencoder_np_test_sgd_goodparam.py, configs/np.json "
         "(nodepert_ae5_sgd_convparams), models/npmodels.py AENPModel5 (nn = 50)"),
        ("bp-200", "backprop (SGD), 784-200-2-200-784, untuned η",
         {"rule": "backprop", "hidden_width": 200, "lr": 5e-5}, 609.84,
         "mains/3_autoencoder_np_test_bpauto_goodparam.py, configs/np.json "
         "(nodepert_ae5_bpauto: η 5e-5)"),
        ("adam-200", "backprop + Adam, 784-200-2-200-784",
         {"rule": "backprop", "optimizer": "adam", "hidden_width": 200,
          "lr": 1.411275857690097e-4}, 538.25,
         "mains/3_autoencoder_np_test_adam.py, configs/np_optimized.json (nodepert_ae5_adam)"),
        ("matched-50", "matched, 784-50-2-50-784, 350 epochs",
         {"rule": "matched", "hidden_width": 50, "lr": 1e-4, "epochs": 350}, 643.38,
         "mains/3_autoencoder_np_test_matched_goodparam.py, configs/np.json "
         "(nodepert_ae5_matched_convparams: 350 epochs)"),
        ("fa-200", "feedback alignment, 784-200-2-200-784",
         {"rule": "feedback_alignment", "hidden_width": 200, "lr": 5e-5}, 759.17,
         "mains/3_autoencoder_np_test_faauto_goodparam.py, configs/np.json (nodepert_ae5_faauto)"),
        ("sg-50", "synthetic gradient (B regressed on the true ∂L/∂h), 784-50-2-50-784",
         {"rule": "synthetic_gradient", "hidden_width": 50, "lr": 1e-4, "feedback_lr": 8e-6},
         512.7,
         "mains/3_autoencoder_np_test_synthgrad_goodparam.py, configs/np.json "
         "(nodepert_ae5_synthgrad_convparams)"),
    )
)

#: Feedback alignment on mnist-fc as the authors ran it (FAModel4_Small, configs/sf.json
#: feedbackalignment4_small): He-scaled weights and feedback, loss summed over the batch,
#: plain SGD η = 4e-4, batch 32, 2,000 "epochs" of 1,000 batches (2,000,000 steps).
AUTHORS_FC_FA = FixedArm(
    "fa-fc", "feedback alignment, 784-50-20-10",
    {"experiment": "mnist-fc", "dataset": "mnist", "rule": "feedback_alignment",
     "init": "authors", "loss_reduction": "sum", "optimizer": "sgd", "momentum": 0.0,
     "lr": 4e-4, "batch_size": 32, "batches_per_epoch": 1000, "epochs": 2000},
    "test_error", 0.043,
    "mains/2b_establish_convergence_feedforward_feedbackalignment.py, configs/sf.json "
    "(feedbackalignment4_small), models/sfmodels.py FAModel4_Small",
)
