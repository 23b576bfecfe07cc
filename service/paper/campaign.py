"""A campaign: every arm of one of the paper's experiments as a study, nested under one
MLflow parent run (``credit.role=campaign``); the arms themselves are ``service.paper.arms``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service import settings
from service.paper.arms import Arm, FixedArm, arm_space, fixed_arm_space, protocol_arms
from service.records import tags
from service.records import tracking as T
from service.runner.study import run_study
from service.spec import StudySpec


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
    epochs: int | None = None,
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
    protocol: str = "ours",
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> CampaignResult:
    """Run every arm of ``experiment`` as a study nested under one campaign run.

    Under ``protocol="authors"`` each arm runs the authors' fixed settings (no search):
    one trial and ``seeds - 1`` more seeds, with the arm's own epochs, batches per epoch
    and dataset unless given here.
    """
    arms = protocol_arms(experiment, protocol, noise_levels, only)
    tracking_uri = tracking_uri or settings.default_tracking_uri()
    name = name or f"paper-{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    common = dict(sampler=sampler, seed=seed, parallel_trials=parallel_trials,
                  data_dir=data_dir, tracking_uri=tracking_uri, storage=storage)
    # Validate every arm's spec before anything is created.
    specs = {arm.key: _arm_spec(arm, name, protocol, trials=trials, seeds=seeds,
                                epochs=epochs, dataset=dataset,
                                batches_per_epoch=batches_per_epoch, **common)
             for arm in arms}
    start = time.perf_counter()
    c, run_id = _open_campaign_run(name, experiment, protocol, arms, specs[arms[0].key],
                                   seeds, tracking_uri)
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


def _arm_spec(arm: Arm | FixedArm, campaign: str, protocol: str, *, trials: int, seeds: int,
              epochs: int | None, dataset: str | None, batches_per_epoch: int | None,
              **common):
    """The study of one arm: a search (``Arm``) or the authors' fixed settings, one trial
    and ``seeds - 1`` more seeds (``FixedArm``: its own epochs, batches, dataset unless
    given)."""
    labels = {"arm": arm.key, "arm_label": arm.label, "campaign": campaign,
              "protocol": protocol}
    if isinstance(arm, FixedArm):
        cfg = arm.config
        return StudySpec(
            name=f"{campaign}-{arm.key}", space=fixed_arm_space(arm), max_trials=1,
            final_seeds=max(seeds - 1, 0), epochs=epochs or cfg["epochs"],
            batches_per_epoch=batches_per_epoch or cfg.get("batches_per_epoch"),
            dataset=dataset or cfg.get("dataset"),
            labels={**labels, "fixed": "1", "reference": f"{arm.reference:g}",
                    "source": arm.source[:250]}, **common)
    return StudySpec(name=f"{campaign}-{arm.key}", space=arm_space(arm), max_trials=trials,
                     final_seeds=seeds, epochs=epochs or 20, dataset=dataset,
                     batches_per_epoch=batches_per_epoch, labels=labels, **common)


def _open_campaign_run(name: str, experiment: str, protocol: str, arms, first, seeds: int,
                       tracking_uri: str):
    """The campaign's MLflow run (the arms' studies nest under it): (client, run id)."""
    experiment_id = T.ensure_experiment(tracking_uri, "credit-search",
                                        settings.default_artifact_root()
                                        if not tracking_uri.startswith("http") else None)
    c = T.client(tracking_uri)
    run = c.create_run(experiment_id, run_name=name,
                       tags={tags.ROLE: "campaign", tags.CAMPAIGN: name,
                             tags.EXPERIMENT: experiment, tags.PROTOCOL: protocol,
                             tags.ARMS: ",".join(a.key for a in arms)})
    T.log_params(c, run.info.run_id, {
        "experiment": experiment, "protocol": protocol, "trials": first.max_trials,
        "seeds": seeds, "epochs": first.epochs, "dataset": first.trial_config({}).dataset,
        "sampler": first.sampler, "arms": [a.key for a in arms]})
    return c, run.info.run_id


def _log_arm(c, run_id: str, arm: Arm, res) -> None:
    metrics: dict[str, float] = {}
    if res.best_value is not None:
        metrics[f"{arm.key}/best_trial_value"] = res.best_value
    for k, v in (res.final or {}).items():
        if k.startswith("final/") and isinstance(v, int | float) and math.isfinite(v):
            metrics[f"{arm.key}/{k[len('final/'):]}"] = v
    T.log_metrics(c, run_id, metrics, step=0)
    for k, v in (res.best_params or {}).items():
        T.log_params(c, run_id, {f"{arm.key}.best.{k}": v})
