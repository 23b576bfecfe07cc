"""Reads of the study domain: a study by id or name, the list, its trials (Optuna +
MLflow), its best configuration so far, its report files."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from service import db, tracking
from service.api.errors import (
    StudyNotFound,
    StudyStateConflict,
)
from service.api.services import Services
from service.api.validation import _CREATE_FIELDS
from service.db import StudyRecord
from service.settings import TUNE_TRIAL_ID, optuna_state_names, trial_counts
from service.spec import StudySpec

log = logging.getLogger("credit.api")


# ------------------------------------------------------------------------- read
def get_study(svc: Services, ref: str) -> StudyRecord:
    """A study by id, or by name."""
    with svc.db.session() as session:
        record = db.get_study(session, ref) or db.get_study_by_name(session, ref)
    if record is None:
        raise StudyNotFound(f"no study with id or name {ref!r}")
    return record


def list_studies(svc: Services, statuses: list[str] | None, offset: int,
                 limit: int) -> tuple[list[StudyRecord], int]:
    with svc.db.session() as session:
        return db.list_studies(session, statuses, offset, limit)


def spec_of(record: StudyRecord) -> StudySpec:
    return StudySpec.model_validate(record.spec)


def public_spec(record: StudyRecord) -> dict[str, Any]:
    """The spec as the client sees it: what it sent, defaults filled in, no server paths."""
    return {k: v for k, v in record.spec.items() if k in _CREATE_FIELDS}


def read_progress(svc: Services, spec: StudySpec) -> dict[str, Any] | None:
    """Trial counts by state and the best COMPLETE trial so far, from Optuna storage."""
    import optuna

    storage = svc.optuna_storage()
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        return None
    states = optuna.trial.TrialState
    names = optuna_state_names()
    counts = trial_counts()
    best = None
    sign = 1.0 if spec.objective.mode == "min" else -1.0
    for t in storage.get_all_trials(study_id, deepcopy=False):
        counts[names[t.state]] += 1
        if t.state == states.COMPLETE and t.value is not None and math.isfinite(t.value):
            if best is None or sign * t.value < sign * best.value:
                best = t
    return {"counts": counts,
            "best": None if best is None else {
                "value": best.value, "params": dict(best.params),
                "trial_id": best.user_attrs.get(TUNE_TRIAL_ID), "number": best.number}}


def _trial_runs(svc: Services, record: StudyRecord) -> dict[str, Any]:
    """MLflow child runs of the study's trials, by Tune trial id."""
    if not record.experiment_id or not record.parent_run_id:
        return {}
    try:
        runs = tracking.child_runs(record.spec["tracking_uri"], record.experiment_id,
                                   record.parent_run_id)
    except Exception as error:  # MLflow down: answer without the run links
        log.warning("MLflow runs of study %s unavailable: %s", record.name, error)
        return {}
    return {r.data.tags.get(tracking.TRIAL_TAG): r for r in runs
            if r.data.tags.get(tracking.ROLE_TAG) == "trial"}


def _failure_of(run: Any, failed: bool) -> dict[str, Any]:
    """A failed trial's whole reason and its kind, as its MLflow run keeps them."""
    if not failed:
        return {}
    from service.failures import failure_kind

    reason = run.data.tags.get(tracking.FAILURE_TAG) if run is not None else None
    kind = run.data.tags.get("credit.failure_kind") if run is not None else None
    return {"failure": reason or "failed (no reason recorded: the trial never reached MLflow)",
            "failure_kind": kind or failure_kind(reason)}


def study_trials(svc: Services, ref: str) -> list[dict[str, Any]]:
    """Every trial of a study: Optuna's state, parameters and value, and its MLflow run."""
    import optuna

    record = with_parent(svc, get_study(svc, ref))
    storage = svc.optuna_storage()
    try:
        study_id = storage.get_study_id_from_name(record.name)
    except KeyError:
        return []
    runs = _trial_runs(svc, record)
    states = optuna.trial.TrialState
    names = {state: name.upper() for state, name in optuna_state_names().items()}
    out = []
    for t in storage.get_all_trials(study_id, deepcopy=False):
        trial_id = t.user_attrs.get(TUNE_TRIAL_ID)
        run = runs.get(trial_id)
        run_id = run.info.run_id if run is not None else None
        out.append({"number": t.number, "trial_id": trial_id, "state": names[t.state],
                    "params": dict(t.params),
                    "value": t.value if t.state == states.COMPLETE else None,
                    "started_at": t.datetime_start, "completed_at": t.datetime_complete,
                    "mlflow_run_id": run_id,
                    "mlflow_url": svc.mlflow_link(record.experiment_id, run_id),
                    **_failure_of(run, t.state == states.FAIL)})
    return out


def best_of(svc: Services, ref: str) -> dict[str, Any]:
    """The best configuration: the study's result once it ended, else the best trial so far,
    with the last metrics its MLflow run holds.

    ``StudyStateConflict`` while no trial has completed.
    """
    record = with_parent(svc, get_study(svc, ref))
    spec = spec_of(record)
    result = record.result or {}
    if result.get("best_params") is not None:
        best = {"value": result["best_value"], "params": result["best_params"],
                "config": result["best_config"], "trial_id": result.get("best_trial_id"),
                "run_id": result.get("best_run_id"), "final": result.get("final")}
    else:
        progress = read_progress(svc, spec)
        found = (progress or {}).get("best")
        if found is None:
            state = record.status if not record.active else \
                f"{record.status}, no trial completed yet"
            raise StudyStateConflict(f"study {record.name!r} has no completed trial ({state})")
        run = _trial_runs(svc, record).get(found["trial_id"])
        best = {"value": found["value"], "params": found["params"],
                "config": spec.trial_config(found["params"]).model_dump(),
                "trial_id": found["trial_id"], "run_id": run.info.run_id if run else None,
                "final": None}
    metrics: dict[str, float] = {}
    if best["run_id"]:
        try:
            metrics = dict(tracking.client(record.spec["tracking_uri"])
                           .get_run(best["run_id"]).data.metrics)
        except Exception as error:  # the value itself came from Optuna; metrics are extra
            log.warning("metrics of run %s unavailable: %s", best["run_id"], error)
    return {"study_id": record.id, "status": record.status, "final": not record.active,
            "metric": spec.objective.metric, "mode": spec.objective.mode,
            "value": best["value"], "params": best["params"], "config": best["config"],
            "metrics": metrics, "trial_id": best["trial_id"], "mlflow_run_id": best["run_id"],
            "mlflow_url": svc.mlflow_link(record.experiment_id, best["run_id"]),
            "final_evaluation": best["final"]}


# -------------------------------------------------------------------------- sync
def _find_parent(record: StudyRecord) -> tuple[str | None, str | None]:
    run = tracking.find_study_run(record.spec["tracking_uri"], record.spec["experiment_name"],
                                  record.name)
    return (None, None) if run is None else (run.info.experiment_id, run.info.run_id)


def with_parent(svc: Services, record: StudyRecord) -> StudyRecord:
    """The record, with its MLflow ids looked up (and stored) if still unknown."""
    if record.parent_run_id:
        return record
    try:
        experiment_id, parent = _find_parent(record)
    except Exception:
        return record
    if parent:
        with svc.db.session() as session:
            row = db.get_study(session, record.id)
            if row is not None:
                row.experiment_id, row.parent_run_id = experiment_id, parent
                session.commit()
        record.experiment_id, record.parent_run_id = experiment_id, parent
    return record


REPORT_FILES = re.compile(r"^(report\.html|[a-z0-9_]+\.png)$")


def study_report(svc: Services, ref: str, name: str = "report.html") -> Path:
    """A file of the study's report (the HTML page, or one figure), built once from its
    MLflow runs when the study has ended (``service.report``) and kept under CREDIT_HOME."""
    from service.report import build_report

    if not REPORT_FILES.match(name):
        raise StudyNotFound(f"no report file {name!r}")
    record = with_parent(svc, get_study(svc, ref))
    if record.status not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        raise StudyStateConflict(f"study {record.name!r} is {record.status}: its report is "
                                 "drawn once it has ended")
    if not record.parent_run_id:
        raise StudyStateConflict(f"study {record.name!r} has no MLflow runs to draw from")
    out = svc.settings.home / "reports" / record.id
    if not (out / "report.html").exists():
        build_report(record.parent_run_id, record.spec["tracking_uri"], out)
    path = out / name
    if not path.exists():
        raise StudyNotFound(f"study {record.name!r} has no report file {name!r}")
    return path


def aware(when):
    import datetime as dt

    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
