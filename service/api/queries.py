"""Reads of the study domain: a study by id or name, the list, its trials, its best
configuration so far, its report files.

Reads are served from the study's row alone: the sync (``lifecycle.sync_active``)
keeps its counts, best, trials and the best run's metrics there (``read_records``
computes them from Optuna and MLflow), so a request never waits on Optuna, MLflow or
Ray. Every read takes the caller's ``Principal``: a study it does not own is
``StudyNotFound``, as if it did not exist."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from service.api.errors import (
    BackendUnavailable,
    StudyNotFound,
    StudyStateConflict,
)
from service.api.principals import ANYONE, Principal
from service.api.services import Services
from service.api.validation import _CREATE_FIELDS
from service.records import db, study_runs, tags, tracking
from service.records.db import StudyRecord
from service.settings import TUNE_TRIAL_ID, optuna_state_names, trial_counts
from service.spec import StudySpec

log = logging.getLogger("credit.api")


# ------------------------------------------------------------------------- read
def get_study(svc: Services, ref: str, principal: Principal = ANYONE) -> StudyRecord:
    """A study by id, or by name, if ``principal`` may see it."""
    with svc.db.session() as session:
        record = db.get_study(session, ref) or db.get_study_by_name(session, ref)
    if record is None or not principal.owns(record.owner):
        raise StudyNotFound(f"no study with id or name {ref!r}")
    return live(svc, record)


def live(svc: Services, record: StudyRecord) -> StudyRecord:
    """The record (detached, not saved) with the MLflow address the service uses now:
    the address stored with a study goes stale when MLflow moves (a local stack
    restarted on another port serves the same store)."""
    uri = svc.settings.mlflow_tracking_uri
    if record.spec.get("tracking_uri") != uri:
        record.spec = {**record.spec, "tracking_uri": uri}
    return record


def list_studies(svc: Services, statuses: list[str] | None, offset: int, limit: int,
                 principal: Principal = ANYONE) -> tuple[list[StudyRecord], int]:
    with svc.db.session() as session:
        return db.list_studies(session, statuses, offset, limit, owner=principal.owner_filter)


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


def _trial_runs(svc: Services, record: StudyRecord) -> tuple[dict[str, Any], bool]:
    """MLflow child runs of the study's trials, by Tune trial id; whether MLflow answered."""
    if not record.experiment_id or not record.parent_run_id:
        return {}, True
    try:
        runs = tracking.child_runs(record.spec["tracking_uri"], record.experiment_id,
                                   record.parent_run_id)
    except Exception as error:  # MLflow down: answer without the run links
        log.warning("MLflow runs of study %s unavailable: %s", record.name, error)
        return {}, False
    return {r.data.tags.get(tags.TRIAL): r for r in runs
            if r.data.tags.get(tags.ROLE) == "trial"}, True


def _failure_of(run: Any, failed: bool, mlflow_ok: bool = True) -> dict[str, Any]:
    """A failed trial's whole reason and its kind, as its MLflow run keeps them."""
    if not failed:
        return {}
    from service.runner.failures import failure_kind

    reason = run.data.tags.get(tags.FAILURE) if run is not None else None
    kind = run.data.tags.get(tags.FAILURE_KIND) if run is not None else None
    unknown = "failed (no reason recorded: the trial never reached MLflow)" if mlflow_ok \
        else "failed (its reason is in MLflow, which did not answer)"
    return {"failure": reason or unknown, "failure_kind": kind or failure_kind(reason)}


def live_trials(svc: Services, record: StudyRecord) -> tuple[list[dict[str, Any]], bool]:
    """Every trial of a study from Optuna (state, parameters, value) with its MLflow run
    id, and whether MLflow answered (the run ids are missing when it did not). JSON-ready:
    timestamps as ISO strings."""
    import optuna

    storage = svc.optuna_storage()
    try:
        study_id = storage.get_study_id_from_name(record.name)
    except KeyError:
        return [], True
    runs, mlflow_ok = _trial_runs(svc, record)
    states = optuna.trial.TrialState
    names = {state: name.upper() for state, name in optuna_state_names().items()}
    out = []
    for t in storage.get_all_trials(study_id, deepcopy=False):
        trial_id = t.user_attrs.get(TUNE_TRIAL_ID)
        run = runs.get(trial_id)
        out.append({"number": t.number, "trial_id": trial_id, "state": names[t.state],
                    "params": dict(t.params),
                    "value": t.value if t.state == states.COMPLETE else None,
                    "started_at": _iso(t.datetime_start),
                    "completed_at": _iso(t.datetime_complete),
                    "mlflow_run_id": run.info.run_id if run is not None else None,
                    **_failure_of(run, t.state == states.FAIL, mlflow_ok)})
    return out, mlflow_ok


def _iso(when) -> str | None:
    """ISO 8601 in UTC with its offset; a naive time is Optuna's, in local time."""
    import datetime as dt

    return None if when is None else when.astimezone(dt.UTC).isoformat()


def read_records(svc: Services, record: StudyRecord) -> dict[str, Any]:
    """What the reads serve, computed from Optuna and MLflow (the sync stores it in the
    row): counts and best so far (``progress``, with the best run's id and metrics),
    ``best_value`` and ``trials``. Trials are left out while MLflow is down (the row
    keeps the last complete list)."""
    progress = read_progress(svc, spec_of(record))
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
                best["metrics"] = dict(tracking.client(record.spec["tracking_uri"])
                                       .get_run(run_id).data.metrics)
            except Exception as error:  # the value came from Optuna; metrics are extra
                log.warning("metrics of run %s unavailable: %s", run_id, error)
    return fields


def study_trials(svc: Services, ref: str, principal: Principal = ANYONE) -> list[dict[str, Any]]:
    """Every trial of a study, as the sync last stored it (computed once here for a study
    the sync has not reached yet)."""
    record = get_study(svc, ref, principal)
    trials = record.trials
    if trials is None:
        record = with_parent(svc, record)
        trials, mlflow_ok = live_trials(svc, record)
        if mlflow_ok and not record.active:
            with svc.db.session() as session:
                db.set_fields(session, record.id, trials=trials)
    return [{**t, "mlflow_url": svc.mlflow_link(record.experiment_id, t.get("mlflow_run_id"))}
            for t in trials]


def is_final(record: StudyRecord) -> bool:
    """Whether the study has really finished: it has ended, and its records agree (its
    runner recorded a result, or no trial of it is still counted RUNNING)."""
    if record.active:
        return False
    if record.result is not None:
        return True
    counts = (record.progress or {}).get("counts") or {}
    return not counts.get("running")


def best_of(svc: Services, ref: str, principal: Principal = ANYONE) -> dict[str, Any]:
    """The best configuration: the study's result once it ended, else the best trial so far,
    with the last metrics its MLflow run holds; from the row alone.

    ``StudyStateConflict`` while no trial has completed.
    """
    record = get_study(svc, ref, principal)
    spec = spec_of(record)
    result = record.result or {}
    found = (record.progress or {}).get("best")
    if result.get("best_params") is not None:
        best = {"value": result["best_value"], "params": result["best_params"],
                "config": result["best_config"], "trial_id": result.get("best_trial_id"),
                "run_id": result.get("best_run_id"), "final": result.get("final")}
    else:
        if found is None:
            state = record.status if not record.active else \
                f"{record.status}, no trial completed yet"
            raise StudyStateConflict(f"study {record.name!r} has no completed trial ({state})")
        best = {"value": found["value"], "params": found["params"],
                "config": spec.trial_config(found["params"]).model_dump(),
                "trial_id": found["trial_id"], "run_id": found.get("run_id"),
                "final": None}
    metrics: dict[str, float] = {}
    if found is not None and found.get("trial_id") == best["trial_id"]:
        metrics = dict(found.get("metrics") or {})
    return {"study_id": record.id, "status": record.status, "final": is_final(record),
            "metric": spec.objective.metric, "mode": spec.objective.mode,
            "value": best["value"], "params": best["params"], "config": best["config"],
            "metrics": metrics, "trial_id": best["trial_id"], "mlflow_run_id": best["run_id"],
            "mlflow_url": svc.mlflow_link(record.experiment_id, best["run_id"]),
            "final_evaluation": best["final"]}


# -------------------------------------------------------------------------- sync
def _find_parent(record: StudyRecord) -> tuple[str | None, str | None]:
    run = study_runs.find_study_run(record.spec["tracking_uri"], record.spec["experiment_name"],
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


def study_report(svc: Services, ref: str, name: str = "report.html",
                 principal: Principal = ANYONE) -> Path:
    """A file of the study's report (the HTML page, or one figure), built once from its
    MLflow runs when the study has ended (``service.paper.report``) and kept under CREDIT_HOME.
    ``BackendUnavailable`` naming MLflow while the service's MLflow does not answer."""
    from service.paper.report import build_report

    if not REPORT_FILES.match(name):
        raise StudyNotFound(f"no report file {name!r}")
    record = with_parent(svc, get_study(svc, ref, principal))
    if record.status not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        raise StudyStateConflict(f"study {record.name!r} is {record.status}: its report is "
                                 "drawn once it has ended")
    if not record.parent_run_id:
        raise StudyStateConflict(f"study {record.name!r} has no MLflow runs to draw from")
    out = svc.settings.home / "reports" / record.id
    if not (out / "report.html").exists():
        uri = svc.settings.mlflow_tracking_uri  # the live store (the study's may be stale)
        try:
            tracking.client(uri).get_run(record.parent_run_id)
        except Exception as error:
            raise BackendUnavailable(
                f"MLflow ({uri}) does not answer, the report is drawn from its runs: "
                f"{' '.join(str(error).split())[:200]}") from None
        try:
            build_report(record.parent_run_id, uri, out)
        except Exception as error:
            from service.paper.report import ReportError

            if isinstance(error, ReportError) and _mlflow_answers(uri):
                raise StudyStateConflict(f"study {record.name!r} has no report: {error}") \
                    from None
            raise BackendUnavailable(
                f"MLflow ({uri}) failed while the report was drawn: "
                f"{' '.join(str(error).split())[:200]}") from None
    path = out / name
    if not path.exists():
        raise StudyNotFound(f"study {record.name!r} has no report file {name!r}")
    return path


def _mlflow_answers(uri: str) -> bool:
    try:
        tracking.client(uri).search_experiments(max_results=1)
        return True
    except Exception:
        return False


def aware(when):
    import datetime as dt

    return (when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
