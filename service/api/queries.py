"""Reads of the study domain: a study by id or name, the list, its counts and best
configuration, its trials. Nothing here writes.

Reads are served from the study's row and its rows of the ``trials`` table alone: the
sync (``service.api.sync``) keeps its counts, best and the best run's metrics in the row
(``read_records`` computes them after ``trial_sync.sync_trials`` has brought the trials
up to date from Optuna and MLflow), so a request never waits on Optuna, MLflow or Ray.
The trials are read a page (``trials_page``) or a chunk (``each_trial``) at a time. Every read
takes the caller's ``Principal``: a study it does not own is ``StudyNotFound``, as if it
did not exist. MLflow is read at the service's own address
(``settings.mlflow_tracking_uri``), never at the one stored with a study: that one goes
stale when MLflow moves (a local stack restarted on another port serves the same store)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

from service.api.errors import StudyNotFound, StudyStateConflict
from service.api.principals import ANYONE, Principal
from service.api.services import Services
from service.api.trial_sync import sync_trials
from service.api.validation import CREATE_FIELDS
from service.records import db, study_runs, tracking, trial_table
from service.records.db import StudyRecord
from service.records.links import optuna_study
from service.records.optuna_trials import WAITING_ATTR
from service.trials import COUNT_KEYS, TrialState, empty_counts

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


def optuna_link(svc: Services, name: str, principal: Principal = ANYONE) -> str | None:
    """The study's page in the service's optuna-dashboard, if it has one and
    ``principal`` may open it: where the API has named owners the dashboard (every
    owner's studies, and a delete button) is for admins only."""
    base = svc.settings.optuna_dashboard_url
    if not base or (svc.settings.owners and not principal.admin):
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
def read_records(svc: Services, record: StudyRecord) -> dict[str, Any]:
    """What the reads serve, from Optuna and MLflow (the sync stores it in the row): the
    study's trials brought up to date in the ``trials`` table, reading only those that
    changed (``trial_sync.sync_trials``), then counts and best so far (``progress``, with
    the best run's id and metrics), the trials' restarts in all, why the study waits ("" unless
    its driver says so: ``WAITING_ATTR``) and ``best_value`` from the table; {} while the
    study is not in Optuna yet. While MLflow is down the trials are still stored, their
    run ids and failure reasons filled in by a later sync."""
    if sync_trials(svc, record) is None:
        return {}
    spec = svc.spec_of(record)
    with svc.db.session() as session:
        summary = trial_table.summary(session, record.id, spec.objective.mode)
    counts = empty_counts()
    for state, n in summary["counts"].items():
        counts[TrialState(state).key] = n
    storage = svc.optuna_storage()
    waiting = storage.get_study_user_attrs(storage.get_study_id_from_name(record.name)) \
        .get(WAITING_ATTR)
    found = None if spec.multi_objective else summary["best"]  # several: see /pareto
    best = None if found is None else {
        "value": found["value"], "params": dict(found["params"]),
        "trial_id": found.get("trial_id"), "number": found["number"],
        "run_id": found.get("mlflow_run_id")}
    if best is not None:
        _best_metrics(svc, record, best)
    return {"progress": {"counts": counts, "best": best, "restarts": summary["restarts"],
                         "waiting": waiting if isinstance(waiting, str) else ""},
            "best_value": None if best is None else best["value"]}


def _best_metrics(svc: Services, record: StudyRecord, best: dict[str, Any]) -> None:
    """The best run's metrics: kept from the last read while it is the same COMPLETE run
    (its run has finished logging), read from MLflow otherwise."""
    old = (record.progress or {}).get("best") or {}
    same = old.get("trial_id") == best["trial_id"]
    if same and (best["run_id"] is None or old.get("run_id") == best["run_id"]) \
            and old.get("metrics") is not None:
        best["run_id"], best["metrics"] = best["run_id"] or old.get("run_id"), old["metrics"]
        return
    if best["run_id"] is None:
        if same:  # MLflow down: keep what was known
            best["run_id"], best["metrics"] = old.get("run_id"), old.get("metrics")
        return
    try:
        best["metrics"] = dict(tracking.client(svc.settings.mlflow_tracking_uri)
                               .get_run(best["run_id"]).data.metrics)
    except Exception as error:  # the value came from Optuna; metrics are extra
        log.warning("metrics of run %s unavailable: %s", best["run_id"], error)


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


def trials_page(svc: Services, record: StudyRecord, offset: int,
                limit: int) -> tuple[list[dict[str, Any]], int]:
    """Trials ``offset`` .. ``offset + limit`` by number, with their MLflow links, as the
    sync stored them, and how many the study has in all."""
    with svc.db.session() as session:
        rows = trial_table.page(session, record.id, offset, limit)
        total = trial_table.count(session, record.id)
    return trial_links(svc, record, rows), total


def each_trial(svc: Services, record: StudyRecord) -> Iterator[dict[str, Any]]:
    """Every trial by number, with its MLflow link, read a chunk at a time (an export of
    tens of thousands of trials never holds them all)."""
    with svc.db.session() as session:
        for t in trial_table.each(session, record.id):
            yield {**t, "mlflow_url": svc.mlflow_link(record.experiment_id,
                                                       t.get("mlflow_run_id"))}


def trial_count(svc: Services, record: StudyRecord) -> int:
    with svc.db.session() as session:
        return trial_table.count(session, record.id)


def aware(when: dt.datetime) -> dt.datetime:
    """In UTC, with its offset (a naive time from the database is UTC)."""
    return (when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
