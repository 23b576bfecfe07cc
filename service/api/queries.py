"""Reads of the study domain: a study by id or name, the list, its counts and best
configuration, its trials. Nothing here writes.

Reads are served from the study's row alone: the sync (``service.api.sync``) keeps its
counts, best, trials and the best run's metrics there (``read_records`` computes them
from Optuna and MLflow), so a request never waits on Optuna, MLflow or Ray. Every read
takes the caller's ``Principal``: a study it does not own is ``StudyNotFound``, as if it
did not exist. MLflow is read at the service's own address
(``settings.mlflow_tracking_uri``), never at the one stored with a study: that one goes
stale when MLflow moves (a local stack restarted on another port serves the same store)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from service.api.errors import StudyNotFound, StudyStateConflict
from service.api.principals import ANYONE, Principal
from service.api.services import Services
from service.api.validation import CREATE_FIELDS
from service.records import db, study_runs, tags, tracking
from service.records.db import StudyRecord
from service.records.links import optuna_study
from service.records.optuna_trials import (
    RESTARTS_ATTR,
    STATES,
    TUNE_TRIAL_ID,
    WAITING_ATTR,
    values_of,
)
from service.records.warm_start import own_trials
from service.runner.failures import failure_kind
from service.spec import StudySpec
from service.trials import COUNT_KEYS, TrialState, better, empty_counts

log = logging.getLogger("credit.api")


# ------------------------------------------------------------------------- a study
def get_study(svc: Services, ref: str, principal: Principal = ANYONE) -> StudyRecord:
    """A study by id, or by name, if ``principal`` may see it."""
    with svc.db.session() as session:
        record = db.get_study(session, ref) or db.get_study_by_name(session, ref)
    if record is None or not principal.owns(record.owner):
        raise StudyNotFound(f"no study with id or name {ref!r}")
    return record


def list_studies(svc: Services, statuses: list[str] | None, offset: int, limit: int,
                 principal: Principal = ANYONE) -> tuple[list[StudyRecord], int]:
    with svc.db.session() as session:
        return db.list_studies(session, statuses, offset, limit, owner=principal.owner_filter)


def public_spec(record: StudyRecord) -> dict[str, Any]:
    """The spec as the client sees it: what it sent, defaults filled in, no server paths."""
    return {k: v for k, v in record.spec.items() if k in CREATE_FIELDS}


def optuna_link(svc: Services, name: str) -> str | None:
    """The study's page in the service's optuna-dashboard, if it has one."""
    base = svc.settings.optuna_dashboard_url
    if not base:
        return None
    try:
        return optuna_study(base, svc.optuna_storage().get_study_id_from_name(name))
    except KeyError:  # the driver has not created the Optuna study yet
        return None


# ------------------------------------------------------------- where it stands now
def current_counts(record: StudyRecord) -> dict[str, int]:
    """Trials by state: the runner's own final counts once it recorded a result (they
    beat progress), else the counts the sync last read."""
    result = record.result or {}
    if result.get("counts"):
        return {k: result["counts"].get(k, 0) for k in COUNT_KEYS}
    return dict((record.progress or {}).get("counts") or {})


def current_best(record: StudyRecord) -> dict[str, Any] | None:
    """The study's best trial: the runner's final result once it recorded one (it beats
    progress), else the best COMPLETE trial the sync last read; None while no trial has
    completed. Keys: value, params, config (None: not recorded), trial_id, run_id,
    final_evaluation, and metrics (the last of its MLflow run, as the sync read them)."""
    result = record.result or {}
    found = (record.progress or {}).get("best")
    if result.get("best_params") is not None:
        best = {"value": result["best_value"], "params": result["best_params"],
                "config": result.get("best_config"), "trial_id": result.get("best_trial_id"),
                "run_id": result.get("best_run_id"), "final_evaluation": result.get("final")}
    elif found is not None:
        best = {"value": found["value"], "params": found["params"], "config": None,
                "trial_id": found.get("trial_id"), "run_id": found.get("run_id"),
                "final_evaluation": None}
    else:
        return None
    same = found is not None and found.get("trial_id") == best["trial_id"]
    best["metrics"] = dict(found.get("metrics") or {}) if same else {}
    return best


def current_restarts(record: StudyRecord) -> int:
    """How many times the study's trials were restarted after an infrastructure failure,
    in all (as the sync last read them; 0 for a row stored before restarts existed)."""
    return int((record.progress or {}).get("restarts") or 0)


def is_final(record: StudyRecord) -> bool:
    """Whether the study has really finished: it has ended, and its records agree (its
    runner recorded a result, or no trial of it is still counted RUNNING)."""
    if record.active:
        return False
    if record.result is not None:
        return True
    return not current_counts(record).get("running")


def best_of(svc: Services, ref: str, principal: Principal = ANYONE) -> dict[str, Any]:
    """The best configuration (``current_best``) with the study's objective, from the
    row alone. ``StudyStateConflict`` while no trial has completed."""
    record = get_study(svc, ref, principal)
    if svc.spec_of(record).multi_objective:
        raise StudyStateConflict(
            f"study {record.name!r} has several objectives and no single best "
            f"configuration: its Pareto front is GET /studies/{record.id}/pareto")
    best = current_best(record)
    if best is None:
        state = record.status if not record.active else \
            f"{record.status}, no trial completed yet"
        raise StudyStateConflict(f"study {record.name!r} has no completed trial ({state})")
    spec = svc.spec_of(record)
    config = best["config"] if best["config"] is not None else \
        spec.trial_config(best["params"]).model_dump()
    return {"study_id": record.id, "status": record.status, "final": is_final(record),
            "metric": spec.objective.metric, "mode": spec.objective.mode,
            "value": best["value"], "params": best["params"], "config": config,
            "metrics": best["metrics"], "trial_id": best["trial_id"],
            "mlflow_run_id": best["run_id"],
            "mlflow_url": svc.mlflow_link(record.experiment_id, best["run_id"]),
            "final_evaluation": best["final_evaluation"]}


# --------------------------------------------------------- the records themselves
def restarts_of(trial: Any) -> int:
    """How many times an Optuna trial was restarted (its ``RESTARTS_ATTR``; absent: 0)."""
    try:
        return max(0, int(trial.user_attrs.get(RESTARTS_ATTR) or 0))
    except (TypeError, ValueError):
        return 0


def read_progress(svc: Services, spec: StudySpec) -> dict[str, Any] | None:
    """Trial counts by state, the best COMPLETE trial so far, the trials' restarts in all
    and why the study waits ("" unless its driver says so: ``WAITING_ATTR``), from
    Optuna storage."""
    storage = svc.optuna_storage()
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        return None
    counts = empty_counts()
    best = None
    restarts = 0
    for t in own_trials(storage.get_all_trials(study_id, deepcopy=False)):
        state = STATES[t.state]
        counts[state.key] += 1
        restarts += restarts_of(t)
        if state == TrialState.COMPLETE and not spec.multi_objective and \
                better(t.value, None if best is None else best.value, spec.objective.mode):
            best = t
    waiting = storage.get_study_user_attrs(study_id).get(WAITING_ATTR)
    return {"counts": counts,
            "best": None if best is None else {
                "value": best.value, "params": dict(best.params),
                "trial_id": best.user_attrs.get(TUNE_TRIAL_ID), "number": best.number},
            "restarts": restarts, "waiting": waiting if isinstance(waiting, str) else ""}


def _trial_runs(tracking_uri: str, record: StudyRecord) -> tuple[dict[str, Any], bool]:
    """MLflow child runs of the study's trials, by Tune trial id; whether MLflow answered."""
    if not record.experiment_id or not record.parent_run_id:
        return {}, True
    try:
        runs = tracking.child_runs(tracking_uri, record.experiment_id, record.parent_run_id)
    except Exception as error:  # MLflow down: answer without the run links
        log.warning("MLflow runs of study %s unavailable: %s", record.name, error)
        return {}, False
    return {r.data.tags.get(tags.TRIAL): r for r in runs
            if r.data.tags.get(tags.ROLE) == "trial"}, True


def _failure_of(run: Any, failed: bool, mlflow_ok: bool = True) -> dict[str, Any]:
    """A failed trial's whole reason and its kind, as its MLflow run keeps them."""
    if not failed:
        return {}
    reason = run.data.tags.get(tags.FAILURE) if run is not None else None
    kind = run.data.tags.get(tags.FAILURE_KIND) if run is not None else None
    unknown = "failed (no reason recorded: the trial never reached MLflow)" if mlflow_ok \
        else "failed (its reason is in MLflow, which did not answer)"
    return {"failure": reason or unknown, "failure_kind": kind or failure_kind(reason)}


def live_trials(svc: Services, record: StudyRecord) -> tuple[list[dict[str, Any]], bool]:
    """Every trial of a study from Optuna (state, parameters, value) with its MLflow run
    id, and whether MLflow answered (the run ids are missing when it did not). JSON-ready:
    timestamps as ISO strings."""
    storage = svc.optuna_storage()
    try:
        study_id = storage.get_study_id_from_name(record.name)
    except KeyError:
        return [], True
    runs, mlflow_ok = _trial_runs(svc.settings.mlflow_tracking_uri, record)
    metrics = [o.metric for o in svc.spec_of(record).objectives]
    out = []
    # a warm start's trials inform the sampler; they are not the study's own
    for t in own_trials(storage.get_all_trials(study_id, deepcopy=False)):
        state = STATES[t.state]
        trial_id = t.user_attrs.get(TUNE_TRIAL_ID)
        run = runs.get(trial_id)
        values = values_of(t, metrics)
        out.append({"number": t.number, "trial_id": trial_id, "state": state.value,
                    "params": dict(t.params),
                    "value": None if values is None else values[metrics[0]],
                    "values": values,
                    "restarts": restarts_of(t), "started_at": _iso(t.datetime_start),
                    "completed_at": _iso(t.datetime_complete),
                    "mlflow_run_id": run.info.run_id if run is not None else None,
                    **_failure_of(run, state == TrialState.FAILED, mlflow_ok)})
    return out, mlflow_ok


def _iso(when: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset; a naive time is Optuna's, in local time."""
    return None if when is None else when.astimezone(dt.UTC).isoformat()


def read_records(svc: Services, record: StudyRecord) -> dict[str, Any]:
    """What the reads serve, computed from Optuna and MLflow (the sync stores it in the
    row): counts and best so far (``progress``, with the best run's id and metrics),
    ``best_value`` and ``trials``. Trials are left out while MLflow is down (the row
    keeps the last complete list)."""
    progress = read_progress(svc, svc.spec_of(record))
    if progress is None:
        return {}
    trials, mlflow_ok = live_trials(svc, record)
    best = progress["best"]
    fields: dict[str, Any] = {"progress": progress,
                              "best_value": None if best is None else best["value"]}
    if mlflow_ok:
        fields["trials"] = trials
    if best is not None:
        run_id = next((t["mlflow_run_id"] for t in trials
                       if t["trial_id"] == best["trial_id"]), None)
        best["run_id"] = run_id
        if run_id is None and record.progress:  # MLflow down: keep what was known
            old = (record.progress.get("best") or {})
            if old.get("trial_id") == best["trial_id"]:
                best["run_id"], best["metrics"] = old.get("run_id"), old.get("metrics")
        elif run_id is not None:
            try:
                best["metrics"] = dict(tracking.client(svc.settings.mlflow_tracking_uri)
                                       .get_run(run_id).data.metrics)
            except Exception as error:  # the value came from Optuna; metrics are extra
                log.warning("metrics of run %s unavailable: %s", run_id, error)
    return fields


def find_parent(svc: Services, record: StudyRecord) -> tuple[str | None, str | None]:
    """(experiment id, run id) of the study's MLflow parent run, or (None, None)."""
    run = study_runs.find_study_run(svc.settings.mlflow_tracking_uri,
                                    svc.spec_of(record).experiment_name, record.name)
    return (None, None) if run is None else (run.info.experiment_id, run.info.run_id)


def trial_links(svc: Services, record: StudyRecord,
                trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each trial with the link to its MLflow run."""
    return [{**t, "mlflow_url": svc.mlflow_link(record.experiment_id, t.get("mlflow_run_id"))}
            for t in trials]


def aware(when: dt.datetime) -> dt.datetime:
    """In UTC, with its offset (a naive time from the database is UTC)."""
    return (when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
