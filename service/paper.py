"""The paper's experiments as campaigns: per rule, a random search then K seeds of its best.

A campaign is one MLflow parent run (``credit.role=campaign``) with one study per
arm nested under it; ``credit report`` rebuilds the paper's figures from those runs
alone. Reference numbers are the paper's (DESIGN.md §3).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from search_spaces import SearchSpace, load_space, parse_space
from trainables.errors import ConfigError

DEFAULT_NOISE_LEVELS = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class Arm:
    """One curve of a figure: a rule (a preset), maybe with its noise level fixed."""

    key: str  # short id, part of study names: np, np-c0.001, fa, bp, ...
    label: str  # legend text
    preset: str
    noise_std: float | None = None  # fixed c (the space then does not tune it)


@dataclass(frozen=True)
class PaperExperiment:
    name: str
    arms: tuple[Arm, ...]
    metric: str  # what the table reports
    reference: dict[str, str]  # arm key → the paper's number, as text
    figure: str


PAPER: dict[str, PaperExperiment] = {
    "mnist-fc": PaperExperiment(
        name="mnist-fc",
        arms=(
            Arm("np", "node perturbation", "mnist-fc-node-perturbation"),
            Arm("fa", "feedback alignment", "mnist-fc-feedback-alignment"),
            Arm("bp", "backprop", "mnist-fc-backprop"),
        ),
        metric="test_error",
        reference={"np": "3.5 %", "fa": "4.3 %", "bp": "2.65 %",
                   "np-c0.0001": "3.5 %", "np-c0.001": "3.5 %", "np-c0.01": "3.6 %",
                   "np-c0.1": "15.9 %"},
        figure="fig1",
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
        metric="test_loss",
        # min test loss per 32 images; ours is per image, so ×32 to compare
        reference={"np": "515 ± 4", "adam": "538", "bp": "610 ± 14", "matched": "643",
                   "fa": "759"},
        figure="fig2",
    ),
    "cifar10-cnn": PaperExperiment(
        name="cifar10-cnn",
        arms=(
            Arm("np", "node perturbation (direct)", "cifar10-cnn-node-perturbation-direct"),
            Arm("dfa", "fixed feedback (DFA)", "cifar10-cnn-direct-feedback-alignment"),
            Arm("bp", "backprop", "cifar10-cnn-backprop"),
        ),
        metric="test_error",
        reference={"np": "75.2 %", "dfa": "72.5 %", "bp": "77.2 %"},  # test accuracy
        figure="cifar",
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
    if only:
        keys = [a.key for a in arms]
        unknown = [k for k in only if k not in keys]
        if unknown:
            raise ConfigError(f"unknown arm {unknown[0]!r} of {experiment}; valid: "
                              f"{', '.join(keys)}")
        arms = [a for a in arms if a.key in only]
    return arms


def arm_space(arm: Arm) -> SearchSpace:
    """The arm's search space: its preset, with ``noise_std`` fixed when the arm fixes c."""
    space = load_space(arm.preset)
    if arm.noise_std is None:
        return space
    data = space.model_dump(mode="json")
    data["params"].pop("noise_std", None)
    data["fixed"] = {**data["fixed"], "noise_std": arm.noise_std}
    data["name"] = f"{space.name}-c{arm.noise_std:g}".replace(".", "p").lower()
    data["description"] = f"{space.description} Noise fixed at c = {arm.noise_std:g}."
    return parse_space(data, source=f"arm {arm.key}")


@dataclass
class CampaignResult:
    run_id: str
    experiment: str
    tracking_uri: str
    studies: dict[str, Any] = field(default_factory=dict)  # arm key → StudyResult | error
    wall_time_s: float = 0.0


def run_campaign(
    experiment: str,
    *,
    trials: int = 20,
    seeds: int = 5,
    epochs: int = 20,
    dataset: str | None = None,
    data_dir: str | None = None,
    batches_per_epoch: int | None = None,
    noise_levels: Sequence[float] | None = None,
    only: Sequence[str] | None = None,
    parallel_trials: int = 2,
    sampler: str = "random",
    seed: int = 0,
    tracking_uri: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> CampaignResult:
    """Run every arm of ``experiment`` as a study nested under one campaign run."""
    from service import settings
    from service import tracking as T
    from service.spec import StudySpec
    from service.study import run_study

    arms = arms_of(experiment, noise_levels, only)
    tracking_uri = tracking_uri or settings.default_tracking_uri()
    name = name or f"paper-{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    common = dict(sampler=sampler, seed=seed, max_trials=trials, parallel_trials=parallel_trials,
                  epochs=epochs, dataset=dataset, data_dir=data_dir,
                  batches_per_epoch=batches_per_epoch, final_seeds=seeds,
                  tracking_uri=tracking_uri, storage=storage)
    # Validate every arm's spec before anything is created.
    specs = {arm.key: StudySpec(name=f"{name}-{arm.key}", space=arm_space(arm),
                                labels={"arm": arm.key, "arm_label": arm.label,
                                        "campaign": name},
                                **common) for arm in arms}
    start = time.perf_counter()
    experiment_id = T.ensure_experiment(tracking_uri, "credit-search",
                                        settings.default_artifact_root()
                                        if not tracking_uri.startswith("http") else None)
    c = T.client(tracking_uri)
    run = c.create_run(experiment_id, run_name=name,
                       tags={T.ROLE_TAG: "campaign", "credit.campaign": name,
                             "credit.experiment": experiment,
                             "credit.arms": ",".join(a.key for a in arms)})
    run_id = run.info.run_id
    T.log_params(c, run_id, {"experiment": experiment, "trials": trials, "seeds": seeds,
                             "epochs": epochs, "dataset": specs[arms[0].key].trial_config({})
                             .dataset, "sampler": sampler, "arms": [a.key for a in arms]})
    result = CampaignResult(run_id, experiment, tracking_uri)
    try:
        for arm in arms:
            spec = specs[arm.key].model_copy(update={"group_run_id": run_id})
            if progress:
                progress(arm.label, {"event": "start", "arm": arm.key})
            try:
                res = run_study(spec, progress=(lambda s, a=arm: progress(a.label, s))
                                if progress else None)
            except Exception as error:  # one arm failing must not lose the others
                result.studies[arm.key] = error
                c.set_tag(run_id, f"credit.error.{arm.key}", str(error)[:500])
                continue
            result.studies[arm.key] = res
            _log_arm(c, run_id, arm, res)
        result.wall_time_s = time.perf_counter() - start
        c.log_metric(run_id, "wall_time_s", result.wall_time_s)
        c.set_terminated(run_id, status="FINISHED")
    except BaseException:
        c.set_terminated(run_id, status="KILLED")
        raise
    return result


def _log_arm(c, run_id: str, arm: Arm, res) -> None:
    from service import tracking as T

    metrics: dict[str, float] = {}
    if res.best_value is not None:
        metrics[f"{arm.key}/best_trial_value"] = res.best_value
    for k, v in (res.final or {}).items():
        if k.startswith("final/") and isinstance(v, int | float) and math.isfinite(v):
            metrics[f"{arm.key}/{k[len('final/'):]}"] = v
    T.log_metrics(c, run_id, metrics, step=0)
    for k, v in (res.best_params or {}).items():
        T.log_params(c, run_id, {f"{arm.key}.best.{k}": v})
