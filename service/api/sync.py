"""The sync that follows each study's job to its end, and every write that brings a
study's row up to date with its records.

``sync_active`` (called every few seconds by the app) writes job state, counts, best,
trials and the final result into the rows (the reads of ``queries`` serve them from
there); since it starts from the rows, a restarted API picks up every study still
PENDING or RUNNING.

Where each fact comes from:
- the study's row (``service.records.db``): spec, status, Ray job id, final result;
- the Ray job (``service.jobs``): PENDING / RUNNING / finished / stopped;
- Optuna storage: trials by state and the best COMPLETE value, live;
- MLflow (at the service's own address, ``settings.mlflow_tracking_uri``): the parent
  run (link, ``result.json``) and each trial's run.

The truth after a crash comes from the durable records, not from Ray: a study whose
Ray job is unknown (the cluster was restarted) is settled by its MLflow parent run and
``result.json`` (it finished: SUCCEEDED/FAILED with its real counts and best) and,
while that run is still RUNNING, by whether its records still change (a driver alive
elsewhere) or have stood still for ``lost_job_grace_s`` (its driver died: FAILED, with
the reason). Records that could not be closed because MLflow was down are marked
``pending_close`` and closed by the sync as soon as MLflow answers again."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update

from service.api import queue
from service.api.queries import aware, find_parent, read_records
from service.api.services import Services
from service.api.trial_sync import FINISHED, sync_trials
from service.jobs import JOB_ENDED, JobError, JobNotFound
from service.records import db, study_runs, tags, tracking, trial_table
from service.records.db import StudyRecord
from service.tracebacks import exception_line

log = logging.getLogger("credit.api")

CANCEL_REQUESTED = "cancel requested"  # how a study's message marks a pending stop


# --------------------------------------------------------------- a row's own writes
def with_parent(svc: Services, record: StudyRecord) -> StudyRecord:
    """The record, with its MLflow ids looked up (and stored) if still unknown."""
    if record.parent_run_id:
        return record
    try:
        experiment_id, parent = find_parent(svc, record)
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


def ensure_trials(svc: Services, record: StudyRecord) -> StudyRecord:
    """The record (MLflow ids filled in), its trials in the ``trials`` table: for a study
    the sync has not reached yet, read now; for one that has ended, the run ids and
    failure reasons MLflow could not give before read again; a row stored before the
    table existed (its trials in its ``trials`` column) copied in once."""
    with svc.db.session() as session:
        present = trial_table.has_rows(session, record.id)
        if not present and record.trials:
            rows = [trial_table.row_of(t, t["state"] in FINISHED, None) for t in record.trials]
            trial_table.write(session, record.id, rows, {r["number"] for r in rows})
            return record
        reread = not present or (not record.active and bool(
            trial_table.cursor(session, record.id).open_rows))
    if reread:
        record = with_parent(svc, record)
        sync_trials(svc, record)
    return record


# ------------------------------------------------------------------- ending a study
def close_records(svc: Services, record: StudyRecord, status: str, reason: str) -> bool:
    """End what the study left open: RUNNING MLflow runs → ``status``, unfinished Optuna
    trials → FAIL. A cancelled study's parent run ends KILLED whatever its driver wrote
    on its way out (a driver stopped by SIGTERM may have ended it FAILED). Whether it
    could (False: a store is down; the caller marks the study ``pending_close``)."""
    spec = svc.spec_of(record)
    try:
        study_runs.close_study_records(spec, svc.settings.mlflow_tracking_uri, spec.storage,
                                       status=status, reason=reason)
        if status == "KILLED":
            _parent_killed(svc, record, reason)
        return True
    except Exception as error:  # the stores may be down: the sync tries again
        log.warning("could not close the records of study %s (retried once MLflow "
                    "answers): %s", record.name, error)
        return False


def end_study(svc: Services, record: StudyRecord, fields: dict[str, Any],
              close: tuple[str, str] | None = None) -> None:
    """Mark an active study ended with ``fields`` (status, message, result...): its
    records closed first if ``close`` = (MLflow status, reason) — or marked
    ``pending_close`` if a store is down — then its counts, best and trials read again,
    so the row tells what the records tell (no trial left counted RUNNING)."""
    if close is not None and not close_records(svc, record, *close):
        fields["pending_close"] = {"status": close[0], "reason": close[1]}
    for key, value in _reads(svc, record).items():
        fields.setdefault(key, value)  # the runner's own result (best_value) comes first
    with svc.db.session() as session:
        ended = db.update_active(session, record.id, **fields)
    if ended:
        queue.start_next(svc)  # its slot is free: the next queued study starts now


def close_pending(svc: Services) -> int:
    """Close the records of every ended study marked ``pending_close`` (MLflow was down
    when it ended), now that the stores may answer; how many were closed."""
    with svc.db.session() as session:
        records = db.pending_closes(session)
    closed = 0
    for record in records:
        mark = record.pending_close or {}
        if not close_records(svc, record, mark.get("status", "FAILED"),
                             mark.get("reason") or record.message or "ended"):
            break  # still down: the next round tries again
        fields: dict[str, Any] = {"pending_close": None, **_reads(svc, with_parent(svc, record))}
        with svc.db.session() as session:
            db.set_fields(session, record.id, **fields)
        log.info("records of study %s closed (%s)", record.name, mark.get("status"))
        closed += 1
    return closed


def _parent_killed(svc: Services, record: StudyRecord, reason: str) -> None:
    _, parent_id = find_parent(svc, record)
    if parent_id is None:
        return
    c = tracking.client(svc.settings.mlflow_tracking_uri)
    if c.get_run(parent_id).info.status != "KILLED":
        c.set_tag(parent_id, tags.FAILURE, reason)
        c.set_terminated(parent_id, status="KILLED")
    c.set_tag(parent_id, tags.STATUS, "CANCELLED")


def _reads(svc: Services, record: StudyRecord) -> dict[str, Any]:
    """Counts, best and trials as the reads serve them ({} if Optuna does not answer)."""
    try:
        return read_records(svc, record)
    except Exception as error:
        log.warning("records of study %s unreadable: %s", record.name, error)
        return {}


def _load_result(svc: Services, record: StudyRecord) -> dict[str, Any] | None:
    if not record.parent_run_id:
        return None
    c = tracking.client(svc.settings.mlflow_tracking_uri)
    with tempfile.TemporaryDirectory(prefix="credit-result-") as tmp:
        try:
            path = c.download_artifacts(record.parent_run_id, "result.json", tmp)
        except Exception:
            return None
        return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------- the sync
def sync_active(svc: Services) -> int:
    """Bring every PENDING/RUNNING study's row up to date, then close the records of
    ended studies that MLflow could not take before; how many studies were looked at."""
    try:
        svc.sync_mlflow_users()  # once; until it could (MLflow was down at the start)
    except Exception as error:
        log.warning("MLflow's users not brought in step yet: %s", error)
    with svc.db.session() as session:
        records = db.active_studies(session)
    for record in records:
        try:
            sync_study(svc, record)
        except Exception as error:  # one study's trouble must not stop the others
            log.warning("sync of study %s failed: %s", record.name, error)
    try:
        close_pending(svc)
    except Exception as error:
        log.warning("closing pending records failed: %s", error)
    queue.start_next(svc)  # slots freed otherwise (a limit raised at a restart)
    return len(records)


def sync_study(svc: Services, record: StudyRecord) -> None:
    """One study: job status → row; counts and best so far; the result once it ended."""
    try:
        info = svc.jobs.info(record.job_id) if record.job_id else None
    except JobNotFound:
        info = None
    except JobError:
        return  # the cluster is unreachable: try again next round
    if info is None and queue.submit_missing(svc, record):
        return  # taken from the queue, its job never submitted (the API died): now it is
    record = with_parent(svc, record)
    fields: dict[str, Any] = {"experiment_id": record.experiment_id,
                              "parent_run_id": record.parent_run_id}
    if info is None:
        _reconcile_lost(svc, record, fields)
        return
    if info.status in JOB_ENDED:
        fields.update(_outcome(svc, record, info))
        close = fields.pop("close", None)
        end_study(svc, record, fields, close)
        return
    fields.update(_reads(svc, record))
    if info.status == "RUNNING":
        fields["status"] = db.RUNNING
    with svc.db.session() as session:
        db.update_active(session, record.id, **fields)
    if "progress" in fields:
        waiting = (fields["progress"].get("waiting") or "") if info.status == "RUNNING" else ""
        follow_waiting(svc, record, waiting)


def follow_waiting(svc: Services, record: StudyRecord, waiting: str) -> bool:
    """The RUNNING study's message says why it waits (its driver's ``WAITING_ATTR``, e.g.
    "waiting for resources: ..."), and is cleared once it no longer does. Only a message
    the sync wrote itself (or none) is replaced: a pending cancel's stays. One
    compare-and-set, so a cancel written meanwhile is never overwritten. Whether the
    row changed."""
    before = (record.progress or {}).get("waiting") or ""
    if waiting == record.message:
        return False
    if waiting:
        mine = ["", before]
    elif before:
        mine = [before]
    else:
        return False
    with svc.db.session() as session:
        result = session.execute(
            update(StudyRecord).where(StudyRecord.id == record.id,
                                      StudyRecord.status == db.RUNNING,
                                      StudyRecord.message.in_(mine))
            .values(message=waiting))
        session.commit()
    return bool(result.rowcount)


def _reconcile_lost(svc: Services, record: StudyRecord, fields: dict[str, Any]) -> None:
    """A study whose Ray job is unknown (a restarted cluster or API): settled by its
    durable records. Its parent run ended → its result (or its failure); still RUNNING →
    left RUNNING while its records change, FAILED once they have stood still for
    ``lost_job_grace_s`` (its driver died); MLflow down → unchanged until it answers."""
    grace = svc.settings.lost_job_grace_s
    try:
        parent = study_runs.find_study_run(svc.settings.mlflow_tracking_uri,
                                           svc.spec_of(record).experiment_name, record.name)
    except Exception as error:
        log.warning("study %s: its Ray job is unknown and MLflow does not answer (%s); "
                    "its state is settled once it does", record.name, error)
        return
    if parent is not None and parent.info.status != "RUNNING":
        result = _load_result(svc, record)
        if result is not None:
            fields.update(_result_fields(result))
            end_study(svc, record, fields, close=("FAILED", "its driver ended"))
            return
        reason = (parent.data.tags.get(tags.FAILURE)
                  or f"its driver ended its MLflow run {parent.info.status} without a result")
        status = db.FAILED
        if parent.info.status == "KILLED":  # stopped: by a cancel, or with its stack
            status = db.CANCELLED if record.message.startswith(CANCEL_REQUESTED) else db.FAILED
            reason = f"its driver was stopped before it finished ({reason})"
        fields.update(status=status, message=reason)
        end_study(svc, record, fields, close=(parent.info.status, reason))
        return
    quiet = time.time() - _last_activity(svc, record, parent)
    if quiet <= grace:
        fields.update(_reads(svc, record))
        with svc.db.session() as session:
            db.update_active(session, record.id, **fields)
        return
    reason = (f"its driver is gone: its Ray job is unknown (the cluster or the API was "
              f"restarted) and its records have not changed for {int(quiet)} s")
    fields.update(status=db.FAILED, message=reason)
    end_study(svc, record, fields, close=("FAILED", reason))


def _last_activity(svc: Services, record: StudyRecord, parent) -> float:
    """When the study's records last changed (epoch seconds): its submission, its parent
    run's start, its Optuna trials' starts and ends (as its trials, brought up to date
    now, keep them)."""
    times = [aware(record.created_at).timestamp()]
    if parent is not None:
        times.append(parent.info.start_time / 1000)
    if sync_trials(svc, record) is not None:
        with svc.db.session() as session:
            changed = trial_table.summary(session, record.id, "min")["changed_at"]
        if changed is not None:
            times.append(changed)
    return max(times)


def _result_fields(result: dict[str, Any]) -> dict[str, Any]:
    status = db.SUCCEEDED if result.get("status") == "SUCCEEDED" else db.FAILED
    fields = {"status": status, "result": result, "message": result.get("message") or ""}
    if result.get("best_value") is not None:
        fields["best_value"] = result["best_value"]
    return fields


def _outcome(svc: Services, record: StudyRecord, info) -> dict[str, Any]:
    """Status, message and result of a study whose job has ended."""
    # cancel_study asked Ray to stop the job and could not wait for it
    requested = record.message.startswith(CANCEL_REQUESTED)
    if info.status == "STOPPED":
        return {"status": db.CANCELLED, "message": "cancelled" if requested
                else info.message or "the Ray job was stopped", "close": ("KILLED", "cancelled")}
    result = _load_result(svc, record)
    if result is not None:
        return _result_fields(result)
    if requested:  # it ended otherwise than by the stop, but was being cancelled
        return {"status": db.CANCELLED, "message": "cancelled", "close": ("KILLED", "cancelled")}
    # The driver died before recording a result: its own last error says why.
    try:
        logs = svc.jobs.logs(record.job_id)
    except JobError:
        logs = ""
    reason = exception_line(logs) or info.message or "the study failed"
    return {"status": db.FAILED, "message": reason, "close": ("FAILED", reason)}
