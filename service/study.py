"""The study runner: a search space, a sampler and a budget → Ray Tune trials.

``run_study(spec)`` runs ``ray.tune.Tuner`` with Optuna choosing configurations
(on a persistent Optuna storage, one unique study name per study), records every
trial as an MLflow child run under one parent run per study, and returns the best
configuration. It is importable and runnable without FastAPI; the HTTP service
runs it as a Ray Job (``python -m service.study SPEC.json``).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from service.results import (
    StudyResult,
    _best,
    _final_evaluation,
    _record_best,
    _trial_summaries,
)
from service.settings import open_optuna_storage
from service.spec import StudyError, StudySpec
from service.tuner import (
    ProgressFn,
    _leave_ray,
    _new_tuner,
    _quiet_ray,
    _StudyMonitor,
    connect_ray,
)
from trainables.metrics import finite_or_none


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
    artifact_root = settings.default_artifact_root() if _is_local(tracking_uri) else None

    # MLflow first, in the driver: a new sqlite store must be created by one process.
    experiment_id = T.ensure_experiment(tracking_uri, spec.experiment_name, artifact_root)
    parent = T.open_study_run(spec, tracking_uri, experiment_id, resume)
    parent_id = parent.info.run_id
    c = T.client(tracking_uri)

    storage = open_optuna_storage(storage_url)
    experiment_dir = settings.tune_results_dir() / spec.name
    status, message = "SUCCEEDED", ""
    try:
        from ray import tune  # heavy: only once the study passed its checks

        from trainables.tune import train_trial

        monitor = _StudyMonitor(spec, progress)
        monitor.seen([], None)  # the study passed its checks: show it before Ray starts
        connect_ray()
        factory = T.TrialLoggerFactory(tracking_uri, experiment_id, parent_id, spec.name)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, callback_factory=factory),
            {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
        )
        if resume and tune.Tuner.can_restore(str(experiment_dir)):
            tuner = tune.Tuner.restore(
                str(experiment_dir), trainable=trainable, resume_unfinished=True,
                resume_errored=False, restart_errored=False,
                param_space=spec.param_space(),
            )
        else:
            if resume:
                raise StudyError(f"study {spec.name!r} has no saved state to resume from")
            tuner = _new_tuner(spec, space, storage, trainable, monitor, experiment_dir)
        grid = tuner.fit()
        if monitor.stopper.stop_all():
            status = "FAILED"
            message = (f"stopped: {len(monitor.failed)} failed trials exceed "
                       f"max_failed_trials={spec.max_failed_trials}")
        summaries = _trial_summaries(spec, grid, monitor)
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



def close_study_records(spec: StudySpec, status: str = "KILLED", reason: str = "cancelled") -> int:
    """End a study's records from outside its driver (after its job was stopped/killed):
    every RUNNING MLflow run of the study (parent and children) → ``status``, and every
    unfinished Optuna trial → FAIL. Idempotent; returns the number of runs closed."""
    import optuna

    from service import settings
    from service import tracking as T

    tracking_uri = spec.tracking_uri or settings.default_tracking_uri()
    closed = T.close_study_run(tracking_uri, spec.experiment_name, spec.name, status, reason)
    storage = open_optuna_storage(spec.storage or settings.default_optuna_storage())
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:  # the study never reached Optuna
        return closed
    unfinished = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    for t in storage.get_all_trials(study_id, deepcopy=False, states=unfinished):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
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
    print(json.dumps(finite_or_none(result.to_dict())))
    return 0 if result.status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
