"""A study's life on the service: submit, cancel, and the sync that follows each job to
its end.

Plain functions over ``Services`` (settings, the study records, the Ray Jobs client,
the Optuna and MLflow stores) with no HTTP in them: routes call them in a worker
thread, and they raise the errors of ``service.api.errors``, which the app turns into status codes.

Where each fact comes from:
- the study's row (``service.records.db``): spec, status, Ray job id, final result;
- the Ray job (``service.jobs``): PENDING / RUNNING / finished / stopped;
- Optuna storage: trials by state and the best COMPLETE value, live;
- MLflow: the parent run (link, ``result.json``) and each trial's run.

``sync_active`` (called every few seconds by the app) writes job state, counts, best,
trials and the final result into the rows (the reads serve them from there); since it
starts from the rows, a restarted API picks up every study still PENDING or RUNNING.

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
import uuid
from pathlib import Path
from typing import Any

from service.api.errors import (
    BackendUnavailable,
    NameTaken,
    StudyStateConflict,
    TooManyStudies,
)
from service.api.principals import ANYONE, Principal
from service.api.queries import (
    _find_parent,
    aware,
    get_study,
    live,
    read_records,
    spec_of,
    with_parent,
)
from service.api.services import Services
from service.api.validation import build_spec
from service.jobs import JOB_ENDED, JobError, JobNotFound, exception_line
from service.records import db, study_runs, tags, tracking
from service.records.db import StudyRecord
from service.runner.study import close_study_records
from trainables.errors import CreditError

log = logging.getLogger("credit.api")

CANCEL_REQUESTED = "cancel requested"  # how a study's message marks a pending stop


# ------------------------------------------------------------------------ submit
def _name_used_outside(svc: Services, name: str) -> str | None:
    """Where ``name`` is already used by a study the service did not start, if anywhere."""
    try:
        svc.optuna_storage().get_study_id_from_name(name)
        return "Optuna storage"
    except KeyError:
        pass
    uri = svc.settings.mlflow_tracking_uri
    try:
        if study_runs.find_study_run(uri, svc.settings.experiment_name, name) is not None:
            return "MLflow"
    except Exception as error:  # MLflow down: the runner would fail; say so now
        raise BackendUnavailable(f"MLflow ({uri}) unreachable: {error}") from None
    return None


def room_problem(svc: Services) -> str | None:
    """Why no study may be submitted now (the server runs its limit), or None: one count
    of the database, so it can run before anything else (``app.StudyLimit``)."""
    limit = svc.settings.max_concurrent_studies
    with svc.db.session() as session:
        active = db.count_active(session)
    if active >= limit:
        return (f"{active} studies are pending or running; this server runs at most "
                f"{limit} at once: retry when one has ended")
    return None


def _check_room(svc: Services) -> None:
    """``TooManyStudies`` if the server already runs its limit of studies."""
    problem = room_problem(svc)
    if problem is not None:
        raise TooManyStudies(problem)


def submit_study(svc: Services, body: Any, principal: Principal = ANYONE) -> StudyRecord:
    """Validate, store and start a study as a Ray job; a rejected one leaves nothing.

    The limit is checked first, before any expensive validation (MLflow and Optuna
    lookups), and again under the lock when the row is written. The row is written
    first (its UNIQUE name settles races between parallel submissions), then the job is
    submitted; if Ray refuses, the row is deleted again, so a failed submission leaves
    neither a row nor a job. The study belongs to ``principal``.
    """
    _check_room(svc)
    spec = build_spec(svc, body)
    where = _name_used_outside(svc, spec.name)
    if where is not None:
        raise NameTaken(f"study name {spec.name!r} is taken (by a study in {where})")
    study_id = str(uuid.uuid4())
    record = StudyRecord(id=study_id, name=spec.name, status=db.PENDING,
                         spec=json.loads(spec.model_dump_json()),
                         job_id=f"credit-{spec.name}-{study_id[:8]}", message="",
                         owner=principal.name)
    limit = svc.settings.max_concurrent_studies
    with svc.submit_lock, svc.db.session() as session:
        active = db.count_active(session)
        if active >= limit:
            raise TooManyStudies(f"{active} studies are pending or running; this server runs "
                                 f"at most {limit} at once: retry when one has ended")
        try:
            db.create_study(session, record)
        except db.NameTaken:
            raise NameTaken(f"study name {spec.name!r} is taken") from None
    try:
        svc.jobs.submit(record.job_id, record.spec, svc.settings.job_env(),
                        metadata={"credit.study": spec.name, "credit.study_id": study_id},
                        entrypoint_resources=svc.settings.job_entrypoint_resources)
    except JobError as error:
        try:  # Ray may have taken the job before the answer was lost: stop it
            svc.jobs.stop(record.job_id)
        except JobError:
            pass
        with svc.db.session() as session:
            db.delete_study(session, study_id)
        raise BackendUnavailable(f"the study was not started: {error}") from None
    log.info("study %s (%s) submitted as Ray job %s", spec.name, study_id, record.job_id)
    return record


# ------------------------------------------------------------------------ cancel
def cancel_study(svc: Services, ref: str, reason: str = "cancelled",
                 principal: Principal = ANYONE) -> tuple[StudyRecord, bool]:
    """Stop the study's Ray job, wait for it to end, close its MLflow runs (KILLED) and
    unfinished Optuna trials, and mark it CANCELLED: ``(study, True)``.

    ``(study, False)`` if Ray has not stopped the job within ``cancel_timeout_s`` (a
    driver still waiting for resources): the stop stays requested and the sync makes
    the study CANCELLED once the job has stopped. ``StudyStateConflict`` if the study
    had ended already (or ends on its own while being cancelled).
    """
    record = get_study(svc, ref, principal)
    if not record.active:
        raise StudyStateConflict(f"study {record.name!r} has ended already ({record.status})")
    info = None
    if record.job_id:
        try:
            svc.jobs.stop(record.job_id)
            info = svc.jobs.wait(record.job_id, svc.settings.cancel_timeout_s)
        except JobNotFound:
            info = None
        except JobError as error:
            raise BackendUnavailable(f"could not stop the study's Ray job: {error}") from None
    if info is not None and info.status in ("SUCCEEDED", "FAILED"):
        sync_study(svc, record)  # it ended on its own before the stop reached it
        ended = get_study(svc, record.id)
        raise StudyStateConflict(f"study {record.name!r} ended ({ended.status}) before it "
                                 "could be cancelled")
    if info is not None and info.status not in JOB_ENDED:
        with svc.db.session() as session:
            db.update_active(session, record.id, message=(
                f"{CANCEL_REQUESTED}: Ray has not stopped the job yet ({info.status}); "
                "the study becomes CANCELLED when it does"))
        return get_study(svc, record.id), False
    _end(svc, record, {"status": db.CANCELLED, "message": reason}, close=("KILLED", reason))
    log.info("study %s cancelled", record.name)
    return get_study(svc, record.id), True


def cancel_active(svc: Services, reason: str) -> int:
    """Cancel every PENDING or RUNNING study (the local stack is going down)."""
    with svc.db.session() as session:
        records = db.active_studies(session)
    for record in records:
        try:
            cancel_study(svc, record.id, reason)
        except CreditError as error:
            log.warning("could not cancel study %s: %s", record.name, error)
    return len(records)


def _close_records(record: StudyRecord, status: str, reason: str) -> bool:
    """End what the study left open: RUNNING MLflow runs → ``status``, unfinished Optuna
    trials → FAIL. A cancelled study's parent run ends KILLED whatever its driver wrote
    on its way out (a driver stopped by SIGTERM may have ended it FAILED). Whether it
    could (False: a store is down; the caller marks the study ``pending_close``)."""
    try:
        close_study_records(spec_of(record), status=status, reason=reason)
        if status == "KILLED":
            _parent_killed(record, reason)
        return True
    except Exception as error:  # the stores may be down: the sync tries again
        log.warning("could not close the records of study %s (retried once MLflow "
                    "answers): %s", record.name, error)
        return False


def _end(svc: Services, record: StudyRecord, fields: dict[str, Any],
         close: tuple[str, str] | None = None) -> None:
    """Mark an active study ended with ``fields`` (status, message, result...): its
    records closed first if ``close`` = (MLflow status, reason) — or marked
    ``pending_close`` if a store is down — then its counts, best and trials read again,
    so the row tells what the records tell (no trial left counted RUNNING)."""
    if close is not None and not _close_records(record, *close):
        fields["pending_close"] = {"status": close[0], "reason": close[1]}
    for key, value in _reads(svc, record).items():
        fields.setdefault(key, value)  # the runner's own result (best_value) comes first
    with svc.db.session() as session:
        db.update_active(session, record.id, **fields)


def close_pending(svc: Services) -> int:
    """Close the records of every ended study marked ``pending_close`` (MLflow was down
    when it ended), now that the stores may answer; how many were closed."""
    with svc.db.session() as session:
        records = [live(svc, r) for r in db.pending_closes(session)]
    closed = 0
    for record in records:
        mark = record.pending_close or {}
        if not _close_records(record, mark.get("status", "FAILED"),
                              mark.get("reason") or record.message or "ended"):
            break  # still down: the next round tries again
        fields: dict[str, Any] = {"pending_close": None, **_reads(svc, with_parent(svc, record))}
        with svc.db.session() as session:
            db.set_fields(session, record.id, **fields)
        log.info("records of study %s closed (%s)", record.name, mark.get("status"))
        closed += 1
    return closed


def _parent_killed(record: StudyRecord, reason: str) -> None:
    _, parent_id = _find_parent(record)
    if parent_id is None:
        return
    c = tracking.client(record.spec["tracking_uri"])
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


def _load_result(record: StudyRecord) -> dict[str, Any] | None:
    if not record.parent_run_id:
        return None
    c = tracking.client(record.spec["tracking_uri"])
    with tempfile.TemporaryDirectory(prefix="credit-result-") as tmp:
        try:
            path = c.download_artifacts(record.parent_run_id, "result.json", tmp)
        except Exception:
            return None
        return json.loads(Path(path).read_text())


def sync_active(svc: Services) -> int:
    """Bring every PENDING/RUNNING study's row up to date, then close the records of
    ended studies that MLflow could not take before; how many studies were looked at."""
    with svc.db.session() as session:
        records = [live(svc, r) for r in db.active_studies(session)]
    for record in records:
        try:
            sync_study(svc, record)
        except Exception as error:  # one study's trouble must not stop the others
            log.warning("sync of study %s failed: %s", record.name, error)
    try:
        close_pending(svc)
    except Exception as error:
        log.warning("closing pending records failed: %s", error)
    return len(records)


def sync_study(svc: Services, record: StudyRecord) -> None:
    """One study: job status → row; counts and best so far; the result once it ended."""
    try:
        info = svc.jobs.info(record.job_id) if record.job_id else None
    except JobNotFound:
        info = None
    except JobError:
        return  # the cluster is unreachable: try again next round
    record = with_parent(svc, record)
    fields: dict[str, Any] = {"experiment_id": record.experiment_id,
                              "parent_run_id": record.parent_run_id}
    if info is None:
        _reconcile_lost(svc, record, fields)
        return
    if info.status in JOB_ENDED:
        fields.update(_outcome(svc, record, info))
        close = fields.pop("close", None)
        _end(svc, record, fields, close)
        return
    fields.update(_reads(svc, record))
    if info.status == "RUNNING":
        fields["status"] = db.RUNNING
    with svc.db.session() as session:
        db.update_active(session, record.id, **fields)


def _reconcile_lost(svc: Services, record: StudyRecord, fields: dict[str, Any]) -> None:
    """A study whose Ray job is unknown (a restarted cluster or API): settled by its
    durable records. Its parent run ended → its result (or its failure); still RUNNING →
    left RUNNING while its records change, FAILED once they have stood still for
    ``lost_job_grace_s`` (its driver died); MLflow down → unchanged until it answers."""
    grace = svc.settings.lost_job_grace_s
    try:
        parent = study_runs.find_study_run(record.spec["tracking_uri"],
                                         record.spec["experiment_name"], record.name)
    except Exception as error:
        log.warning("study %s: its Ray job is unknown and MLflow does not answer (%s); "
                    "its state is settled once it does", record.name, error)
        return
    if parent is not None and parent.info.status != "RUNNING":
        result = _load_result(record)
        if result is not None:
            fields.update(_result_fields(result))
            _end(svc, record, fields, close=("FAILED", "its driver ended"))
            return
        reason = (parent.data.tags.get(tags.FAILURE)
                  or f"its driver ended its MLflow run {parent.info.status} without a result")
        status = db.FAILED
        if parent.info.status == "KILLED":  # stopped: by a cancel, or with its stack
            status = db.CANCELLED if record.message.startswith(CANCEL_REQUESTED) else db.FAILED
            reason = f"its driver was stopped before it finished ({reason})"
        fields.update(status=status, message=reason)
        _end(svc, record, fields, close=(parent.info.status, reason))
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
    _end(svc, record, fields, close=("FAILED", reason))


def _last_activity(svc: Services, record: StudyRecord, parent) -> float:
    """When the study's records last changed (epoch seconds): its submission, its parent
    run's start, its Optuna trials' starts and ends."""
    times = [aware(record.created_at).timestamp()]
    if parent is not None:
        times.append(parent.info.start_time / 1000)
    try:
        storage = svc.optuna_storage()
        study_id = storage.get_study_id_from_name(record.name)
        for t in storage.get_all_trials(study_id, deepcopy=False):
            # Optuna keeps naive local times: .timestamp() reads them as local, as written
            times.extend(w.timestamp() for w in (t.datetime_start, t.datetime_complete) if w)
    except KeyError:
        pass
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
    result = _load_result(record)
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
