"""The study runner: a search space, a sampler and a budget → Ray Tune trials.

``run_study(spec)`` runs ``ray.tune.Tuner`` with Optuna choosing configurations
(on a persistent Optuna storage, one unique study name per study), records every
trial as an MLflow child run under one parent run per study, and returns the best
configuration. It is importable and runnable without FastAPI; the HTTP service
runs it as a Ray Job (``service.runner.job``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from service import settings
from service.records import study_runs as R
from service.records import tags
from service.records import tracking as T
from service.records.optuna_trials import fail_unfinished_trials, lost_trial_ids, open_storage
from service.records.stores import check_database
from service.records.trial_logger import TrialLoggerFactory
from service.records.tune_storage import can_restore, tune_storage
from service.records.warm_start import seed_study, warm_trials
from service.runner.failures import (
    TrialErrors,
    failure_kind,
    infrastructure_verdict,
    stopped_with_the_study,
)
from service.runner.monitor import StudyMonitor
from service.runner.preflight import check_cluster, local_tracking
from service.runner.ray_cluster import connect_ray, leave_ray, quiet_ray
from service.runner.recovery import Recovery
from service.runner.relay import pack
from service.runner.resources import ResourceWatch
from service.runner.results import (
    StudyResult,
    best_of,
    final_evaluation,
    record_best,
    trial_summaries,
)
from service.runner.tuner import (
    ProgressFn,
    halving,
    members,
    new_tuner,
    tune_environment,
)
from service.runner.worker_code import TRAIN_POPULATION, TRAIN_TRIAL
from service.spec import StudyError, StudySpec
from service.trials import TrialState


# ------------------------------------------------------------------------ the runner
def run_study(spec: StudySpec, *, resume: bool = False,
              progress: ProgressFn | None = None) -> StudyResult:
    """Run (or resume) a study to the end and return its best configuration."""
    start = time.perf_counter()
    quiet_ray()
    records = _open_records(spec, resume)
    monitor = None
    try:
        if not resume:  # earlier studies' trials, then the configurations given by hand
            seed_study(spec, records.storage, records.warm)
        monitor = StudyMonitor(
            spec, progress,
            recovery=Recovery(spec.name, records.tracking_uri, records.experiment_id,
                              records.parent_id, records.storage),
            resources=ResourceWatch(spec.name, spec.resources.ray(), records.storage))
        monitor.seen([], None)  # the study passed its checks: show it before Ray starts
        connect_ray()
        with tune_environment():
            grid = _tuner(spec, records, monitor, resume).fit()
        result = _outcome(spec, records, grid, monitor, progress)
        if result.best_params is not None and spec.final_seeds > 0:
            result.final = final_evaluation(spec, result, records.tracking_uri,
                                            records.experiment_id, records.parent_id)
        _finish(spec, records, result, start)
        return result
    except BaseException as error:
        _abort(records, error)
        raise
    finally:
        if monitor is not None:
            monitor.close()


@dataclass
class _Records:
    """Where a study records itself: its MLflow experiment and parent run, Optuna."""

    tracking_uri: str
    experiment_id: str
    parent_id: str
    storage: Any
    warm: list  # trials of earlier studies for a new study's sampler (warm_start)


def _open_records(spec: StudySpec, resume: bool) -> _Records:
    """MLflow first, in the driver (a new sqlite store must be created by one process):
    the experiment and the study's parent run; then the Optuna storage."""
    tracking_uri = spec.tracking_uri or settings.default_tracking_uri()
    if resume and tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[10:]).exists():
        raise StudyError(f"no study named {spec.name!r} to resume (no MLflow store at "
                         f"{tracking_uri[10:]})")
    storage_url = spec.storage or settings.default_optuna_storage()
    # before any record: one line, the name kept free
    check_database("--storage (Optuna)", storage_url)
    check_database("--tracking-uri (MLflow)", tracking_uri)
    storage = open_storage(storage_url)
    # a warm start whose trials do not fit fails here, before any record
    warm = [] if resume else warm_trials(spec, storage)
    artifact_root = settings.default_artifact_root() if local_tracking(tracking_uri) else None
    experiment_id = T.ensure_experiment(tracking_uri, spec.experiment_name, artifact_root)
    if os.environ.get("RAY_ADDRESS"):  # a cluster: check every node before any record
        connect_ray()
        try:
            check_cluster(spec, tracking_uri, experiment_id)
        except StudyError:
            leave_ray()
            raise
    try:  # runs a crashed driver of this host left RUNNING end now, with the reason
        for name in R.close_orphaned_runs(tracking_uri, experiment_id,
                                          resuming=spec.name if resume else None):
            print(f"credit: study {name!r}: its driver had died; its runs are closed as "
                  "FAILED", file=sys.stderr)
    except Exception as error:  # never a reason not to start this study
        print(f"credit: could not close orphaned runs: {error}", file=sys.stderr)
    parent = R.open_study_run(spec, tracking_uri, experiment_id, resume)
    return _Records(tracking_uri, experiment_id, parent.info.run_id, storage, warm)


def _tuner(spec: StudySpec, records: _Records, monitor, resume: bool):
    """A new Tuner, or (``resume``) the one saved in Tune's storage (``CREDIT_STORAGE``)."""
    factory = TrialLoggerFactory(records.tracking_uri, records.experiment_id,
                                   records.parent_id, spec.name)
    errors = TrialErrors(spec.objective.metric)
    if members(spec) > 1:  # K configurations per Ray trial, one stacked model
        trainable = tune.with_parameters(TRAIN_POPULATION, packed=pack(
            metric=spec.objective.metric, mode=spec.objective.mode,
            callback_factory=factory, on_error=errors, halving=halving(spec)))
    else:
        trainable = tune.with_parameters(TRAIN_TRIAL, packed=pack(callback_factory=factory,
                                                                  on_error=errors))
    trainable = tune.with_resources(trainable, spec.resources.ray())
    tune_store = tune_storage()
    if resume and can_restore(tune_store, spec.name):
        return tune.Tuner.restore(
            tune_store.experiment(spec.name), trainable=trainable, resume_unfinished=True,
            resume_errored=False, restart_errored=False, param_space=spec.param_space(),
            storage_filesystem=tune_store.filesystem,
        )
    if resume:
        raise StudyError(f"study {spec.name!r} has no saved state to resume from")
    return new_tuner(spec, records.storage, trainable, monitor, tune_store)


def _outcome(spec: StudySpec, records: _Records, grid, monitor,
             progress: ProgressFn | None) -> StudyResult:
    """The trials' summaries and the best one; stale runs closed; status and message."""
    status, message = "SUCCEEDED", ""
    summaries = trial_summaries(spec, grid, monitor)
    failed = {**monitor.failed, **{t.trial_id: t.error for t in summaries
                                   if t.state == TrialState.FAILED and t.error}}
    verdict = infrastructure_verdict(failed, spec.max_failed_trials)
    if verdict:
        status, message = "FAILED", verdict
        stopped_with_the_study(summaries, verdict)
    elif monitor.stop_reason is not None:
        status, message = "FAILED", monitor.stop_reason
        stopped_with_the_study(summaries, message)
    elif monitor.over_budget():
        status = "FAILED"
        message = (f"stopped: {len(monitor.failed)} failed trials exceed "
                   f"max_failed_trials={spec.max_failed_trials}")
    # every trial of Tune's experiment (none seen: it did not end; nothing is judged lost)
    known = {t.trial_id for t in monitor.trials} or None
    fail_unfinished_trials(records.storage, spec.name, known)
    R.record_failures(records.tracking_uri, records.experiment_id, records.parent_id,
                      {t.trial_id: (t.error, failure_kind(t.error)) for t in summaries
                       if t.state == TrialState.FAILED and t.error})
    pruned = {t.trial_id for t in summaries if t.state == TrialState.PRUNED}
    R.close_stale_runs(records.tracking_uri, records.experiment_id, records.parent_id, pruned,
                       known_trial_ids=known)
    R.mark_lost_runs(records.tracking_uri, records.experiment_id, records.parent_id,
                     lost_trial_ids(records.storage, spec.name))
    result = best_of(spec, records.storage, records.tracking_uri, records.experiment_id,
                     records.parent_id, summaries)
    if result.best_params is None and not result.pareto:
        status, message = "FAILED", message or "no trial completed"
    result.status, result.message = status, message
    if progress is not None:
        progress({"counts": dict(result.counts), "best": result.best_value,
                  "metric": spec.objective.metric, "max_trials": spec.max_trials})
    return result


def _finish(spec: StudySpec, records: _Records, result: StudyResult, start: float) -> None:
    """The result on the parent run (with its table and plots: ``record_study_results``),
    which ends FINISHED (SUCCEEDED) or FAILED."""
    c = T.client(records.tracking_uri)
    record_best(c, records.parent_id, result)
    problem = R.record_study_results(records.tracking_uri, records.parent_id, spec,
                                     records.storage, result.final)
    if problem:  # the results stand without their pictures
        print(f"credit: study {result.name!r}: its table and plots were not put on its "
              f"parent run: {problem}", file=sys.stderr)
    result.wall_time_s = time.perf_counter() - start
    c.log_metric(records.parent_id, "wall_time_s", result.wall_time_s)
    c.set_terminated(records.parent_id,
                     status="FINISHED" if result.status == "SUCCEEDED" else "FAILED")


def _abort(records: _Records, error: BaseException) -> None:
    """The study stopped (KILLED) or failed: the parent run first (a trial starting from
    now on closes itself), then this driver's trials end (Ray kills the actors of a
    driver that leaves), then the runs they left open."""
    c = T.client(records.tracking_uri)
    c.set_tag(records.parent_id, tags.FAILURE, (str(error) or type(error).__name__)[:5000])
    # KeyboardInterrupt: Ctrl-C or our SIGTERM handler; SystemExit: a signal handler
    # of a library (Ray's exits on SIGTERM): either way the study was stopped.
    stopped = isinstance(error, (KeyboardInterrupt, SystemExit))
    c.set_terminated(records.parent_id, status="KILLED" if stopped else "FAILED")
    leave_ray()
    R.close_stale_runs(records.tracking_uri, records.experiment_id, records.parent_id, set())
