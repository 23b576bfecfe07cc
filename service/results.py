"""A study's outcome: trial summaries from Tune's result grid, the best trial from
Optuna, the final K-seed evaluation, and the result recorded on the parent run."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from service.settings import TUNE_TRIAL_ID, trial_counts
from service.storage import tune_storage
from trainables.metrics import LAYER_METRICS, finite_or_none, mean_sem


@dataclass
class TrialSummary:
    trial_id: str
    state: str  # COMPLETE | RUNNING | FAILED | PRUNED | PENDING
    params: dict[str, Any]
    value: float | None = None
    epochs: int = 0
    run_id: str | None = None
    error: str | None = None
    failure_kind: str | None = None  # infrastructure | trial (service.failures)


@dataclass
class StudyResult:
    name: str
    status: str  # SUCCEEDED | FAILED
    objective: dict[str, str]
    best_params: dict[str, Any] | None
    best_config: dict[str, Any] | None
    best_value: float | None
    best_trial_id: str | None
    best_run_id: str | None
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    counts: dict[str, int]
    trials: list[TrialSummary] = field(default_factory=list)
    final: dict[str, float] | None = None
    message: str = ""
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def _error_text(trial) -> str:
    from service.failures import failure_reason_of

    return failure_reason_of(trial)


_EXCEPTION_LINE = re.compile(
    r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt))(?:\([\w.]+\))?: (.+)$")


def last_exception(text: str) -> tuple[str, str] | None:
    """(type, message) of the last ``SomethingError: message`` line of a traceback or log:
    the innermost exception, the reason a trial or a driver failed."""
    found = None
    for line in text.strip().splitlines():
        m = _EXCEPTION_LINE.match(line.strip())
        if m:
            found = (m.group(1), m.group(2).strip())
    return found


def _exception_line(text: str) -> str:
    """The message of the innermost exception in a (remote) traceback, one line."""
    found = last_exception(text)
    if found:
        return found[1][:500]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial failed")[:500]


def _trial_summaries(spec, grid, monitor) -> list[TrialSummary]:
    out = []
    # ResultGrid keeps its results in the order of Tune's trials (ray 2.60), which the
    # monitor saw at the experiment's end: they carry the id also of trials that failed
    # before their first report.
    trials = monitor.trials
    for i, r in enumerate(grid):
        metrics = r.metrics or {}
        trial_id = metrics.get("trial_id") or (trials[i].trial_id if i < len(trials) else "?")
        done = int(metrics.get("epoch", 0) or 0)
        if r.error is not None:
            state = "FAILED"
        elif done >= spec.epochs:
            state = "COMPLETE"
        elif done > 0:
            state = "PRUNED"
        else:
            state = "PENDING"
        value = metrics.get(spec.objective.metric)
        tuned = spec.search_space().params
        params = {k: v for k, v in (r.config or {}).items() if k in tuned}
        error = (_short_error(r.error) if r.error else None) or monitor.failed.get(trial_id)
        from service.failures import failure_kind

        out.append(TrialSummary(trial_id, state, params,
                                value if state == "COMPLETE" else None, done, None, error,
                                failure_kind(error) if state == "FAILED" else None))
    return out


def _short_error(error: BaseException) -> str:
    from service.failures import reason_of_exception

    return reason_of_exception(error)


def _best(spec, space, storage, tracking_uri, experiment_id, parent_id, summaries):
    import optuna

    from service import tracking as T

    runs = {r.data.tags.get(T.TRIAL_TAG): r for r in
            T.child_runs(tracking_uri, experiment_id, parent_id)
            if r.data.tags.get(T.ROLE_TAG) == "trial"}
    for s in summaries:
        if s.trial_id in runs:
            s.run_id = runs[s.trial_id].info.run_id
    counts = trial_counts()
    for s in summaries:
        counts[s.state.lower()] = counts.get(s.state.lower(), 0) + 1
    study = optuna.load_study(study_name=spec.name, storage=storage)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_params = best_config = best_value = best_trial = best_run = None
    if completed:
        best = study.best_trial
        best_params = dict(best.params)
        best_value = best.value
        best_trial = best.user_attrs.get(TUNE_TRIAL_ID)
        best_config = spec.trial_config(best_params).model_dump()
        best_run = runs[best_trial].info.run_id if best_trial in runs else None
    return StudyResult(
        name=spec.name, status="SUCCEEDED", objective=spec.objective.model_dump(),
        best_params=best_params, best_config=best_config, best_value=best_value,
        best_trial_id=best_trial, best_run_id=best_run, parent_run_id=parent_id,
        experiment_id=experiment_id, tracking_uri=tracking_uri, counts=counts,
        trials=summaries,
    )


def _final_evaluation(spec, result, tracking_uri, experiment_id, parent_id, progress):
    """Rerun the best configuration with K seeds; mean ± standard error per metric."""
    from ray import tune

    from service import tracking as T
    from trainables.tune import train_trial

    seeds = list(range(1, spec.final_seeds + 1))
    factory = T.TrialLoggerFactory(tracking_uri, experiment_id, parent_id, spec.name, "final")
    config = dict(result.best_config)
    config["seed"] = tune.grid_search(seeds)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_trial, callback_factory=factory),
                            spec.resources.ray()),
        param_space=config,
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.parallel_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{spec.name}-final", verbose=0,
            **tune_storage().run_config(),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    grid = tuner.fit()
    finals = [r.metrics for r in grid if r.error is None and r.metrics]
    keys = sorted({k for m in finals for k, v in m.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)
                   and k.startswith(("test_", "train_", *(f"{m}/" for m in LAYER_METRICS)))})
    summary: dict[str, float] = {"final_seeds": float(len(finals))}
    for k in keys:
        mean, sem = mean_sem(float(m[k]) for m in finals if k in m)
        if math.isnan(mean):
            continue
        summary[f"final/{k}_mean"] = mean
        summary[f"final/{k}_sem"] = sem
    return summary


def _record_best(c, parent_id: str, result: StudyResult) -> None:
    from service import tracking as T

    if result.best_params is not None:
        T.log_params(c, parent_id, {f"best.{k}": v for k, v in result.best_params.items()})
        T.log_metrics(c, parent_id, {f"best_{result.objective['metric']}": result.best_value},
                      step=0)
        if result.best_run_id:
            c.set_tag(parent_id, "credit.best_run_id", result.best_run_id)
        c.set_tag(parent_id, "credit.best_trial_id", result.best_trial_id or "")
    if result.final:
        T.log_metrics(c, parent_id, result.final, step=0)
    counts = {f"trials_{k}": float(v) for k, v in result.counts.items()}
    T.log_metrics(c, parent_id, counts, step=0)
    c.log_dict(parent_id, finite_or_none(result.to_dict()), "result.json")
    c.set_tag(parent_id, "credit.status", result.status)
