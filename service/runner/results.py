"""A study's outcome: trial summaries from Tune's result grid, the best trial from
Optuna, the final K-seed evaluation, and the result recorded on the parent run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from ray import tune

from service.records import tags
from service.records import tracking as T
from service.records.optuna_trials import TUNE_TRIAL_ID, pareto_trials, values_of
from service.records.study_plots import log_pareto_plot
from service.records.trial_logger import TrialLoggerFactory
from service.records.tune_storage import tune_storage
from service.records.warm_start import own_trials
from service.runner.failures import TrialErrors, failure_kind, trial_failure
from service.runner.relay import pack
from service.runner.tuner import result_loggers, tune_environment
from service.runner.worker_code import TRAIN_TRIAL
from service.spec import StudySpec
from service.tracebacks import reason_of_exception
from service.trials import TrialState, better, count, trial_state
from trainables.layers import LAYER_METRICS
from trainables.numbers import finite_or_none, mean_sem
from trainables.trial_reports import POPULATION_KEY, members_of


@dataclass
class TrialSummary:
    trial_id: str
    state: TrialState
    params: dict[str, Any]
    value: float | None = None
    epochs: int = 0
    run_id: str | None = None
    error: str | None = None
    failure_kind: str | None = None  # infrastructure | trial (service.runner.failures)
    values: dict[str, float] | None = None  # COMPLETE: each objective's value, by metric


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
    #: every objective (the first is ``objective``); several: the Pareto front, no best
    objectives: list[dict[str, str]] = field(default_factory=list)
    pareto: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def member_summaries(spec: StudySpec, config: dict, metrics: dict,
                     error: str | None) -> list[TrialSummary]:
    """One summary per member of a population trial (``error``: why the Ray trial itself
    failed, if it did: the members it left unfinished failed with it)."""
    reported = members_of(metrics) or {}
    out = []
    for member in config.get(POPULATION_KEY, []):
        m = reported.get(member["key"], {})
        state = TrialState(m.get("state", TrialState.FAILED))
        reason = m.get("error")
        if state in (TrialState.RUNNING, TrialState.PENDING):
            state, reason = TrialState.FAILED, error or "the population ended before it"
        elif state == TrialState.FAILED and reason is None:
            reason = error or "the population failed before its first report"
        value = m.get("value") if state == TrialState.COMPLETE else None
        out.append(TrialSummary(member["key"], state, dict(member["params"]), value,
                                int(m.get("epoch", 0)), None, reason,
                                failure_kind(reason) if state == TrialState.FAILED else None))
    return out


def trial_summaries(spec: StudySpec, grid, monitor) -> list[TrialSummary]:
    """One summary per trial of Tune's result grid (per member of a population): state,
    parameters, value, reason."""
    out = []
    # ResultGrid keeps its results in the order of Tune's trials (ray 2.60), which the
    # monitor saw at the experiment's end: they carry the id also of trials that failed
    # before their first report.
    trials = monitor.trials
    tuned = spec.search_space().params
    for i, r in enumerate(grid):
        metrics = r.metrics or {}
        trial_id = metrics.get("trial_id") or (trials[i].trial_id if i < len(trials) else "?")
        if POPULATION_KEY in (r.config or {}):
            error = (reason_of_exception(r.error) if r.error else trial_failure(metrics)) \
                or monitor.failed.get(trial_id)
            out.extend(member_summaries(spec, r.config, metrics, error))
            continue
        done = int(metrics.get("epoch", 0) or 0)
        own = trial_failure(metrics)  # the trial failed by itself (not retried)
        state = trial_state(done, spec.epochs, failed=r.error is not None or own is not None)
        value = metrics.get(spec.objective.metric)
        params = {k: v for k, v in (r.config or {}).items() if k in tuned}
        error = (reason_of_exception(r.error) if r.error else own) \
            or monitor.failed.get(trial_id)
        complete = state == TrialState.COMPLETE
        out.append(TrialSummary(trial_id, state, params, value if complete else None, done,
                                None, error,
                                failure_kind(error) if state == TrialState.FAILED else None,
                                {o.metric: metrics.get(o.metric) for o in spec.objectives}
                                if complete else None))
    return out


def best_of(spec: StudySpec, storage, tracking_uri: str, experiment_id: str, parent_id: str,
            summaries: list[TrialSummary]) -> StudyResult:
    """The study's result: counts, and its best COMPLETE trial from Optuna with its run."""
    runs = {r.data.tags.get(tags.TRIAL): r for r in
            T.child_runs(tracking_uri, experiment_id, parent_id)
            if r.data.tags.get(tags.ROLE) == tags.TRIAL_ROLE}
    for s in summaries:
        if s.trial_id in runs:
            s.run_id = runs[s.trial_id].info.run_id
    counts = count(s.state for s in summaries)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    own = own_trials(study.get_trials(deepcopy=False))  # not those of a warm start
    best_params = best_config = best_value = best_trial = best_run = pareto = None
    if spec.multi_objective:
        pareto = [pareto_entry(t, spec, runs) for t in
                  pareto_trials(own, [(o.metric, o.mode) for o in spec.objectives])]
    else:
        best = None
        for t in own:
            if t.state == optuna.trial.TrialState.COMPLETE and \
                    better(t.value, None if best is None else best.value, spec.objective.mode):
                best = t
        if best is not None:
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
        trials=summaries, objectives=[o.model_dump() for o in spec.objectives],
        pareto=pareto,
    )


def pareto_entry(trial, spec: StudySpec, runs: dict[str, Any]) -> dict[str, Any]:
    """One trial of the Pareto front: number, Tune id, parameters, values, MLflow run."""
    trial_id = trial.user_attrs.get(TUNE_TRIAL_ID)
    return {"number": trial.number, "trial_id": trial_id, "params": dict(trial.params),
            "values": values_of(trial, [o.metric for o in spec.objectives]),
            "run_id": runs[trial_id].info.run_id if trial_id in runs else None}


def final_evaluation(spec: StudySpec, result: StudyResult, tracking_uri: str,
                     experiment_id: str, parent_id: str) -> dict[str, float]:
    """Rerun the best configuration with K seeds; mean ± standard error per metric."""
    seeds = list(range(1, spec.final_seeds + 1))
    factory = TrialLoggerFactory(tracking_uri, experiment_id, parent_id, spec.name,
                                 tags.FINAL_ROLE)
    config = dict(result.best_config)
    config["seed"] = tune.grid_search(seeds)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(TRAIN_TRIAL, packed=pack(
            callback_factory=factory, on_error=TrialErrors(spec.objective.metric))),
            spec.resources.ray()),
        param_space=config,
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.parallel_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{spec.name}-final", verbose=0, callbacks=result_loggers(),
            **tune_storage().run_config(),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=spec.max_trial_restarts),
        ),
    )
    with tune_environment():
        grid = tuner.fit()
    finals = [r.metrics for r in grid
              if r.error is None and r.metrics and trial_failure(r.metrics) is None]
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


def record_best(c, parent_id: str, result: StudyResult) -> None:
    """The result on the study's parent run: best params and value, counts, result.json."""
    if result.best_params is not None:
        T.log_params(c, parent_id, {f"best.{k}": v for k, v in result.best_params.items()})
        T.log_metrics(c, parent_id, {f"best_{result.objective['metric']}": result.best_value},
                      step=0)
        if result.best_run_id:
            c.set_tag(parent_id, tags.BEST_RUN, result.best_run_id)
        c.set_tag(parent_id, tags.BEST_TRIAL, result.best_trial_id or "")
    if result.final:
        T.log_metrics(c, parent_id, result.final, step=0)
    if result.pareto:
        log_pareto_plot(c, parent_id, result.name, result.objectives,
                        [t.values for t in result.trials if t.values], result.pareto)
    counts = {f"trials_{k}": float(v) for k, v in result.counts.items()}
    T.log_metrics(c, parent_id, counts, step=0)
    c.log_dict(parent_id, finite_or_none(result.to_dict()), "result.json")
    c.set_tag(parent_id, tags.STATUS, result.status)
