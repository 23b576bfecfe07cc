"""The study runner: a search space, a sampler and a budget → Ray Tune trials.

``run_study(spec)`` runs ``ray.tune.Tuner`` with Optuna choosing configurations
(on a persistent Optuna storage, one unique study name per study), records every
trial as an MLflow child run under one parent run per study, and returns the best
configuration. It is importable and runnable without FastAPI; the HTTP service
runs it as a Ray Job (``python -m service.study SPEC.json``).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search_spaces import SearchSpace, load_space, parse_space
from trainables.errors import ConfigError, CreditError

STUDY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SAMPLERS = ("random", "tpe", "qmc", "cmaes")


class StudyError(CreditError):
    """A study cannot start or resume (the message says why)."""


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str = Field(..., min_length=1, max_length=100)
    mode: Literal["min", "max"] = "min"


class Resources(BaseModel):
    """What one trial holds on the cluster."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    cpu: float = Field(1.0, gt=0, le=256)
    gpu: float = Field(0.0, ge=0, le=16)
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per trial, e.g. {\"worker_host\": 1} to pin trials")

    def ray(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu, **self.custom}


class EarlyStopping(BaseModel):
    """ASHA (asynchronous successive halving) over epochs."""

    model_config = ConfigDict(extra="forbid")
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2, le=10)


class StudySpec(BaseModel):
    """Everything that defines a study; the same schema serves CLI, runner and HTTP API."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., description="unique study name: lowercase letters, digits, . _ -")
    space: str | SearchSpace = Field(..., description="a preset name, a JSON file, or a space")
    sampler: Literal["random", "tpe", "qmc", "cmaes"] = "random"
    seed: int = Field(0, ge=0, lt=2**31)
    objective: Objective | None = Field(None, description="default: the space's objective")
    max_trials: int = Field(20, ge=1, le=10_000)
    parallel_trials: int = Field(1, ge=1, le=256)
    max_failed_trials: int | None = Field(None, ge=0, description="stop after this many failures")
    early_stopping: bool | EarlyStopping = False
    epochs: int = Field(5, ge=1, le=100_000)
    dataset: str | None = None
    data_dir: str | None = None
    batches_per_epoch: int | None = Field(None, ge=1)
    resources: Resources = Field(default_factory=Resources)
    final_seeds: int = Field(0, ge=0, le=100)
    tracking_uri: str | None = None
    storage: str | None = Field(None, description="Optuna storage URL (SQLAlchemy)")
    experiment_name: str = Field("credit-search", min_length=1, max_length=200)
    group_run_id: str | None = Field(
        None, description="MLflow run to nest this study's parent run under (a campaign)"
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="extra tags of the parent run (credit.<key>)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not STUDY_NAME.match(v) or ".." in v:
            raise ValueError(
                "must be 1-64 characters of lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return v

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return parse_space(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        space = self.search_space()
        if self.objective is None:
            self.objective = Objective(**space.objective.model_dump())
        # the study-level settings must make a valid trial config
        self.trial_config({})
        return self

    def search_space(self) -> SearchSpace:
        if isinstance(self.space, SearchSpace):
            return self.space
        space = load_space(self.space)
        return space

    def study_settings(self) -> dict[str, Any]:
        """The trial-config fields a study fixes for all its trials."""
        settings: dict[str, Any] = {"epochs": self.epochs}
        for key in ("dataset", "data_dir", "batches_per_epoch"):
            if getattr(self, key) is not None:
                settings[key] = getattr(self, key)
        if self.resources.gpu > 0:
            settings["device"] = "cuda"
        return settings

    def trial_config(self, sampled: dict[str, Any], seed: int | None = None):
        """The TrainConfig of one trial: the space's mid-point where ``sampled`` is silent."""
        space = self.search_space()
        values = {**space.midpoint(), **sampled}
        settings = self.study_settings()
        if seed is not None:
            settings["seed"] = seed
        return space.trial_config(values, **settings)


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


ProgressFn = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------- helpers
def _optuna_storage(url: str):
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                      if url.startswith("sqlite") else {})


def _sampler(name: str, seed: int):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def connect_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at ``RAY_ADDRESS``, or start a private local one (own temp dir)."""
    import ray

    if ray.is_initialized():
        return
    import logging

    from service.settings import ray_temp_dir

    _quiet_ray()
    address = os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"PYTHONPATH": _project_root()}}
    # The node IP this driver registers: CREDIT_RAY_NODE_IP, or loopback for a private
    # cluster (so a single-machine study never talks over the network).
    # (127.0.0.2: Ray rewrites "127.0.0.1" into the outward IP; the rest of 127/8 it keeps)
    node_ip = os.environ.get("CREDIT_RAY_NODE_IP") or (None if address else "127.0.0.2")
    extra = {"_node_ip_address": node_ip} if node_ip else {}
    # ray.init replaces a driver's SIGTERM handler with sys.exit; keep the caller's own.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env,
                 logging_level=logging.WARNING, **extra)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _temp_dir=str(ray_temp_dir()), log_to_driver=False, runtime_env=runtime_env,
                 **extra)
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def _leave_ray() -> None:
    """Disconnect (or, for a private cluster, stop) Ray: the driver's trial actors die."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _quiet_ray() -> None:
    """Our progress line replaces Tune's tables; its snapshot warnings are noise here."""
    import logging

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A failed trial is part of a study's normal life: its reason goes to MLflow and the
    # result, not as a traceback on the user's terminal.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _make_searcher(spec: StudySpec, space: SearchSpace, storage):
    """OptunaSearch that keeps early-stopped trials out of the completed set."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    epochs = spec.epochs

    class CreditOptunaSearch(OptunaSearch):
        def suggest(self, trial_id: str):
            params = super().suggest(trial_id)
            if params is not None:
                self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
            return params

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            stored = self._ot_study._storage.get_trial(ot_trial._trial_id)
            if stored.state.is_finished():  # told before a driver restart
                self._completed_trials.add(trial_id)
                return
            value = None if result is None else result.get(self.metric)
            if error or value is None or not math.isfinite(float(value)):
                state, value = optuna.trial.TrialState.FAIL, None
            elif int(result.get("epoch", epochs)) < epochs:
                state, value = optuna.trial.TrialState.PRUNED, None  # stopped by ASHA
            else:
                state = optuna.trial.TrialState.COMPLETE
            self._ot_study.tell(ot_trial, value, state=state)
            self._completed_trials.add(trial_id)

    return CreditOptunaSearch(
        space=space.to_optuna(), metric=spec.objective.metric, mode=spec.objective.mode,
        sampler=_sampler(spec.sampler, spec.seed), study_name=spec.name, storage=storage,
    )


class _StudyMonitor:
    """Driver-side Tune callback + stopper: counts, best so far, the failure budget."""

    def __init__(self, spec: StudySpec, progress: ProgressFn | None):
        from ray.tune import Callback
        from ray.tune.stopper import Stopper

        self.spec = spec
        self.progress = progress
        self.failed: dict[str, str] = {}
        self.best: float | None = None
        monitor = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                monitor._seen(trials, result)

            def on_trial_complete(self, iteration, trials, trial, **info):
                monitor._seen(trials, trial.last_result)

            def on_trial_error(self, iteration, trials, trial, **info):
                monitor.failed[trial.trial_id] = _error_text(trial)
                monitor._seen(trials, None)

        class _Stopper(Stopper):
            def __call__(self, trial_id, result):
                return False

            def stop_all(self):
                from service.failures import infrastructure_verdict

                limit = monitor.spec.max_failed_trials
                return (limit is not None and len(monitor.failed) > limit
                        or infrastructure_verdict(monitor.failed, limit) is not None)

        self.callback = _Callback()
        self.stopper = _Stopper()

    def _seen(self, trials, result) -> None:
        obj = self.spec.objective
        if result and int(result.get("epoch", 0)) >= self.spec.epochs:
            value = result.get(obj.metric)
            if value is not None and math.isfinite(value):
                better = self.best is None or (value < self.best if obj.mode == "min"
                                               else value > self.best)
                self.best = value if better else self.best
        if self.progress is not None:
            self.progress({"counts": _counts_from_tune(trials, self.spec.epochs),
                           "best": self.best, "metric": obj.metric,
                           "max_trials": self.spec.max_trials})


def _error_text(trial) -> str:
    from service.failures import failure_reason_of

    return failure_reason_of(trial)


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception))(?:\([\w.]+\))?: (.+)$")


def _exception_line(text: str) -> str:
    """The message of the innermost exception in a (remote) traceback, one line."""
    found = None
    for line in text.strip().splitlines():
        m = _EXCEPTION_LINE.match(line.strip())
        if m:
            found = m.group(2).strip()
    if found:
        return found[:500]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial failed")[:500]


def _counts_from_tune(trials, epochs: int) -> dict[str, int]:
    counts = {"complete": 0, "running": 0, "failed": 0, "pruned": 0, "pending": 0}
    for t in trials:
        if t.status == "ERROR":
            counts["failed"] += 1
        elif t.status == "TERMINATED":
            done = int((t.last_result or {}).get("epoch", 0))
            counts["complete" if done >= epochs else "pruned"] += 1
        elif t.status in ("RUNNING",):
            counts["running"] += 1
        else:
            counts["pending"] += 1
    return counts


# ------------------------------------------------------------------------ the runner
def run_study(spec: StudySpec, *, resume: bool = False,
              progress: ProgressFn | None = None) -> StudyResult:
    """Run (or resume) a study to the end and return its best configuration."""
    from service import settings
    from service import tracking as T

    start = time.perf_counter()
    _quiet_ray()
    space = spec.search_space()
    tracking_uri = spec.tracking_uri or settings.default_tracking_uri()
    if resume and tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[10:]).exists():
        raise StudyError(f"no study named {spec.name!r} to resume (no MLflow store at "
                         f"{tracking_uri[10:]})")
    storage_url = spec.storage or settings.default_optuna_storage()
    from service.stores import check_database  # before any record: one line, name kept free

    check_database("--storage (Optuna)", storage_url)
    check_database("--tracking-uri (MLflow)", tracking_uri)
    artifact_root = settings.default_artifact_root() if _is_local(tracking_uri) else None

    # MLflow first, in the driver: a new sqlite store must be created by one process.
    experiment_id = T.ensure_experiment(tracking_uri, spec.experiment_name, artifact_root)
    if os.environ.get("RAY_ADDRESS"):  # a cluster: check every node before any record
        from service.preflight import check_cluster

        connect_ray()
        try:
            check_cluster(spec, tracking_uri, experiment_id)
        except StudyError:
            _leave_ray()
            raise
    parent = _parent_run(spec, space, tracking_uri, experiment_id, resume)
    parent_id = parent.info.run_id
    c = T.client(tracking_uri)

    storage = _optuna_storage(storage_url)
    from service.storage import can_restore, tune_storage

    tune_store = tune_storage()
    status, message = "SUCCEEDED", ""
    try:
        from ray import tune  # heavy: only once the study passed its checks

        from trainables.tune import train_trial

        monitor = _StudyMonitor(spec, progress)
        monitor._seen([], None)  # the study passed its checks: show it before Ray starts
        connect_ray()
        factory = T.TrialLoggerFactory(tracking_uri, experiment_id, parent_id, spec.name)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, callback_factory=factory),
            spec.resources.ray(),
        )
        if resume and can_restore(tune_store, spec.name):
            tuner = tune.Tuner.restore(
                tune_store.experiment(spec.name), trainable=trainable, resume_unfinished=True,
                resume_errored=False, restart_errored=False,
                param_space=_param_space(spec, space),
                storage_filesystem=tune_store.filesystem,
            )
        else:
            if resume:
                raise StudyError(f"study {spec.name!r} has no saved state to resume from")
            tuner = _new_tuner(spec, space, storage, trainable, monitor, tune_store)
        grid = tuner.fit()
        from service.failures import (
            fail_unfinished_trials,
            infrastructure_verdict,
            record_failures,
            stopped_with_the_study,
        )

        summaries = _trial_summaries(spec, grid, monitor)
        failed = {**monitor.failed,
                  **{t.trial_id: t.error for t in summaries if t.state == "FAILED" and t.error}}
        verdict = infrastructure_verdict(failed, spec.max_failed_trials)
        if verdict:
            status, message = "FAILED", verdict
            stopped_with_the_study(summaries, verdict)
        elif monitor.stopper.stop_all():
            status = "FAILED"
            message = (f"stopped: {len(monitor.failed)} failed trials exceed "
                       f"max_failed_trials={spec.max_failed_trials}")
        fail_unfinished_trials(storage, spec.name)
        record_failures(tracking_uri, experiment_id, parent_id,
                        {t.trial_id: t.error for t in summaries if t.state == "FAILED"})
        pruned = {t.trial_id for t in summaries if t.state == "PRUNED"}
        T.close_stale_runs(tracking_uri, experiment_id, parent_id, pruned)
        result = _best(spec, space, storage, tracking_uri, experiment_id, parent_id, summaries)
        result.status = status if result.best_params is not None or status == "FAILED" \
            else "FAILED"
        if progress is not None:
            progress({"counts": dict(result.counts), "best": result.best_value,
                      "metric": spec.objective.metric, "max_trials": spec.max_trials})
        if result.best_params is None and not message:
            message = "no trial completed"
        if result.best_params is not None and spec.final_seeds > 0:
            result.final = _final_evaluation(spec, result, tracking_uri, experiment_id,
                                             parent_id, progress)
        result.message = message
        _record_best(c, parent_id, result)
        result.wall_time_s = time.perf_counter() - start
        c.log_metric(parent_id, "wall_time_s", result.wall_time_s)
        c.set_terminated(parent_id, status="FINISHED" if result.status == "SUCCEEDED"
                         else "FAILED")
        return result
    except BaseException as error:
        c.set_tag(parent_id, T.FAILURE_TAG, (str(error) or type(error).__name__)[:5000])
        # KeyboardInterrupt: Ctrl-C or our SIGTERM handler; SystemExit: a signal handler
        # of a library (Ray's exits on SIGTERM): either way the study was stopped.
        stopped = isinstance(error, (KeyboardInterrupt, SystemExit))
        # Parent first (a trial starting from now on closes itself), then end this
        # driver's trials (Ray kills the actors of a driver that leaves), then the runs.
        c.set_terminated(parent_id, status="KILLED" if stopped else "FAILED")
        _leave_ray()
        T.close_stale_runs(tracking_uri, experiment_id, parent_id, set())
        raise


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def _param_space(spec: StudySpec, space: SearchSpace) -> dict[str, Any]:
    base = {"experiment": space.experiment, "rule": space.rule, **space.fixed,
            **spec.study_settings(), "seed": spec.seed}
    return base


def _new_tuner(spec, space, storage, trainable, monitor, tune_store):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    searcher = ConcurrencyLimiter(_make_searcher(spec, space, storage),
                                  max_concurrent=spec.parallel_trials)
    if spec.early_stopping:
        es = spec.early_stopping if isinstance(spec.early_stopping, EarlyStopping) \
            else EarlyStopping()
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.epochs,
                                  grace_period=min(es.grace_period, spec.epochs),
                                  reduction_factor=es.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=_param_space(spec, space),
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric, mode=spec.objective.mode, search_alg=searcher,
            scheduler=scheduler, num_samples=spec.max_trials,
            max_concurrent_trials=spec.parallel_trials, reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=spec.name, **tune_store.run_config(), verbose=0,
            callbacks=[monitor.callback], stop=monitor.stopper,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )


def _parent_run(spec, space, tracking_uri, experiment_id, resume):
    from service import tracking as T

    c = T.client(tracking_uri)
    existing = T.find_runs(
        tracking_uri, experiment_id,
        f"tags.`{T.STUDY_TAG}` = '{spec.name}' and tags.`{T.ROLE_TAG}` = 'study'",
    )
    if existing and not resume:
        raise StudyError(f"study name {spec.name!r} is taken (MLflow run "
                         f"{existing[0].info.run_id}); choose another name or resume it")
    if resume:
        if not existing:
            raise StudyError(f"no study named {spec.name!r} to resume")
        run = existing[0]
        c.update_run(run.info.run_id, status="RUNNING")
        return run
    tags = {T.STUDY_TAG: spec.name, T.ROLE_TAG: "study", "credit.experiment": space.experiment,
            "credit.rule": space.rule, "credit.space": space.name,
            **{f"credit.{k}": v for k, v in spec.labels.items()}}
    if spec.group_run_id:
        tags[T.PARENT_TAG] = spec.group_run_id
    run = c.create_run(experiment_id, run_name=spec.name, tags=tags)
    payload = json.loads(spec.model_dump_json())
    payload["space"] = json.loads(space.model_dump_json())
    T.log_params(c, run.info.run_id, {
        "space": space.name, "experiment": space.experiment, "rule": space.rule,
        "sampler": spec.sampler, "seed": spec.seed, "objective": spec.objective.metric,
        "mode": spec.objective.mode, "max_trials": spec.max_trials,
        "parallel_trials": spec.parallel_trials, "epochs": spec.epochs,
        "early_stopping": bool(spec.early_stopping), "final_seeds": spec.final_seeds,
        "dataset": spec.trial_config({}).dataset,
    })
    c.log_dict(run.info.run_id, payload, "study_spec.json")
    return run


def _trial_summaries(spec, grid, monitor) -> list[TrialSummary]:
    out = []
    # ResultGrid keeps its results in the order of its trials (ray 2.60); the trial
    # objects carry the id also for trials that failed before their first report.
    trials = list(getattr(getattr(grid, "_experiment_analysis", None), "trials", []) or [])
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
    counts = {"complete": 0, "running": 0, "failed": 0, "pruned": 0, "pending": 0}
    for s in summaries:
        counts[s.state.lower()] = counts.get(s.state.lower(), 0) + 1
    study = optuna.load_study(study_name=spec.name, storage=storage)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_params = best_config = best_value = best_trial = best_run = None
    if completed:
        best = study.best_trial
        best_params = dict(best.params)
        best_value = best.value
        best_trial = best.user_attrs.get("tune_trial_id")
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
            **_tune_storage().run_config(),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    grid = tuner.fit()
    finals = [r.metrics for r in grid if r.error is None and r.metrics]
    keys = sorted({k for m in finals for k, v in m.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)
                   and (k.startswith(("test_", "train_", "angle/", "relative_error/",
                                      "sign_congruence/", "update_angle/")))})
    summary: dict[str, float] = {"final_seeds": float(len(finals))}
    for k in keys:
        values = [float(m[k]) for m in finals if k in m and math.isfinite(float(m[k]))]
        if not values:
            continue
        mean = sum(values) / len(values)
        sem = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
               / math.sqrt(len(values))) if len(values) > 1 else 0.0
        summary[f"final/{k}_mean"] = mean
        summary[f"final/{k}_sem"] = sem
    return summary


def _tune_storage():
    from service.storage import tune_storage

    return tune_storage()


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
    c.log_dict(parent_id, _jsonable(result.to_dict()), "result.json")
    c.set_tag(parent_id, "credit.status", result.status)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def close_study_records(spec: StudySpec, status: str = "KILLED", reason: str = "cancelled") -> int:
    """End a study's records from outside its driver (after its job was stopped/killed):
    every RUNNING MLflow run of the study (parent and children) → ``status``, and every
    unfinished Optuna trial → FAIL. Idempotent; returns the number of runs closed."""
    import optuna

    from service import settings
    from service import tracking as T

    tracking_uri = spec.tracking_uri or settings.default_tracking_uri()
    c = T.client(tracking_uri)
    closed = 0
    exp = c.get_experiment_by_name(spec.experiment_name)
    if exp is not None:
        parents = T.find_runs(tracking_uri, exp.experiment_id,
                              f"tags.`{T.STUDY_TAG}` = '{spec.name}' and "
                              f"tags.`{T.ROLE_TAG}` = 'study'")
        for parent in parents:
            closed += T.close_stale_runs(tracking_uri, exp.experiment_id, parent.info.run_id,
                                         set())
            if parent.info.status == "RUNNING":
                c.set_tag(parent.info.run_id, T.FAILURE_TAG, reason)
                c.set_tag(parent.info.run_id, "credit.status", "CANCELLED"
                          if status == "KILLED" else "FAILED")
                c.set_terminated(parent.info.run_id, status=status)
                closed += 1
    try:
        storage = _optuna_storage(spec.storage or settings.default_optuna_storage())
        study = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:  # the study never reached Optuna
        return closed
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                      optuna.trial.TrialState.WAITING)):
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return closed


def main(argv: list[str] | None = None) -> int:
    """``python -m service.study SPEC.json [--resume]``: the Ray Job entrypoint."""
    argv = sys.argv[1:] if argv is None else argv
    spec = StudySpec.model_validate_json(Path(argv[0]).read_text())

    def _terminate(signum, frame):  # `ray job stop` sends SIGTERM: end records as KILLED
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run_study(spec, resume="--resume" in argv)
    except (KeyboardInterrupt, SystemExit):
        print(f"credit: study {spec.name!r} stopped; its runs are closed as KILLED",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    print(json.dumps(_jsonable(result.to_dict())))
    return 0 if result.status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
