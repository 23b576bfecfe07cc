"""A study's life on the service: submit, cancel, and its trials as a client reads them.

Plain functions over ``Services`` (settings, the study records, the Ray Jobs client,
the Optuna and MLflow stores) with no HTTP in them: routes call them in a worker
thread, and they raise the errors of ``service.api.errors``, which the app turns into
status codes (``service.api.handlers``). The sync that follows each job to its end is
``service.api.sync``."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from service.api import queue
from service.api.errors import (
    BackendUnavailable,
    NameTaken,
    StudyNotFound,
    StudyRejected,
    StudyStateConflict,
    TooManyStudies,
)
from service.api.principals import ANYONE, Principal
from service.api.queries import each_trial, get_study, trials_page
from service.api.services import Services
from service.api.sync import CANCEL_REQUESTED, end_study, ensure_trials, sync_study
from service.api.validation import build_spec
from service.jobs import JOB_ENDED, JobError, JobNotFound
from service.records import db, mlflow_access, study_runs
from service.records.db import StudyRecord
from service.records.warm_start import warm_trials
from service.spec import StudyProblems, StudySpec
from trainables.errors import CreditError

log = logging.getLogger("credit.api")


# ------------------------------------------------------------------------ submit
def _name_used_outside(svc: Services, spec: StudySpec) -> str | None:
    """Where the study's name is already used by a study the service did not start, if
    anywhere."""
    try:
        svc.optuna_storage().get_study_id_from_name(spec.name)
        return "Optuna storage"
    except KeyError:
        pass
    uri = svc.settings.mlflow_tracking_uri
    try:
        if study_runs.find_study_run(uri, spec.experiment_name, spec.name) is not None:
            return "MLflow"
    except Exception as error:  # MLflow down: the runner would fail; say so now
        raise BackendUnavailable(f"MLflow ({uri}) unreachable: {error}") from None
    return None


def room_problem(svc: Services, principal: Principal = ANYONE) -> str | None:
    """Why ``principal`` may not submit a study now, or None: they have as many studies
    QUEUED as one owner may (``max_queued_per_owner``) and a new one would wait too. A
    few counts of the database, so it can run before anything else
    (``middleware.StudyLimit``)."""
    settings = svc.settings
    owner = principal.name
    with svc.db.session() as session:
        queued = db.count_queued(session, owner)
        if queued < settings.max_queued_per_owner:
            return None
        running = db.active_by_owner(session)
        waiting = db.count_queued(session) > 0
    if not waiting and sum(running.values()) < settings.max_concurrent_studies and \
            running.get(owner, 0) < settings.running_per_owner:
        return None  # it would start at once
    who = f"owner {owner!r}" if owner else "the studies of no owner"
    return (f"{who} has {queued} studies queued, the most one owner may queue "
            f"(CREDIT_MAX_QUEUED_PER_OWNER={settings.max_queued_per_owner}): retry when "
            "one of them has started")


def _check_room(svc: Services, principal: Principal) -> None:
    """``TooManyStudies`` if ``principal``'s queue is full (``room_problem``)."""
    problem = room_problem(svc, principal)
    if problem is not None:
        raise TooManyStudies(problem)


def _with_warm_start(svc: Services, spec: StudySpec, principal: Principal) -> StudySpec:
    """``spec`` with its warm-start studies named (a client may give ids), each one the
    caller owns (``StudyNotFound`` otherwise, as for any other study), and every COMPLETE
    trial of theirs fitting the new space (``StudyRejected`` naming each misfit)."""
    if not spec.warm_start:
        return spec
    names = []
    for i, ref in enumerate(spec.warm_start):
        try:
            names.append(get_study(svc, ref, principal).name)
        except StudyNotFound:
            raise StudyNotFound(f"warm_start[{i}]: no study with id or name {ref!r}") from None
    spec = spec.model_copy(update={"warm_start": names})
    try:
        warm_trials(spec, svc.optuna_storage())
    except StudyProblems as error:
        raise StudyRejected(error.problems) from None
    return spec


def _owners_experiment(svc: Services, spec: StudySpec, principal: Principal) -> StudySpec:
    """``spec`` writing to its owner's MLflow experiment; where MLflow asks who is there,
    that experiment made now, readable by its owner, before any run is written."""
    settings = svc.settings
    spec = spec.model_copy(update={"experiment_name": mlflow_access.owner_experiment(
        settings.experiment_name, principal.name)})
    if settings.mlflow_auth and principal.name:
        try:
            mlflow_access.open_owner_experiment(settings.mlflow_tracking_uri,
                                                settings.experiment_name, principal.name)
        except Exception as error:
            raise BackendUnavailable(f"MLflow ({settings.mlflow_tracking_uri}) did not give "
                                     f"owner {principal.name!r} their experiment: "
                                     f"{error}") from None
    return spec


def submit_study(svc: Services, body: Any, principal: Principal = ANYONE) -> StudyRecord:
    """Validate and store a study, and start it as a Ray job if the fair queue lets it
    start now (else it waits QUEUED: ``service.api.queue``); a rejected one leaves
    nothing.

    The owner's queue is checked first, before any expensive validation (MLflow and
    Optuna lookups), and again under the lock when the row is written. The row is written
    first (its UNIQUE name settles races between parallel submissions); if Ray refuses
    the job of a study started at once, the row is deleted again, so a failed submission
    leaves neither a row nor a job. The study belongs to ``principal``.
    """
    _check_room(svc, principal)
    spec = _with_warm_start(svc, build_spec(svc, body), principal)
    spec = _owners_experiment(svc, spec, principal)
    where = _name_used_outside(svc, spec)
    if where is not None:
        raise NameTaken(f"study name {spec.name!r} is taken (by a study in {where})")
    study_id = str(uuid.uuid4())
    record = StudyRecord(id=study_id, name=spec.name, status=db.QUEUED,
                         spec=json.loads(spec.model_dump_json()),
                         job_id=f"credit-{spec.name}-{study_id[:8]}",
                         message=queue.waiting_reason(svc, principal.name),
                         owner=principal.name)
    with svc.submit_lock, svc.db.session() as session:
        problem = room_problem(svc, principal)
        if problem is not None:
            raise TooManyStudies(problem)
        try:
            db.create_study(session, record)
        except db.NameTaken:
            raise NameTaken(f"study name {spec.name!r} is taken") from None
    try:
        queue.start_next(svc, keep=study_id)
    except JobError as error:
        try:  # Ray may have taken the job before the answer was lost
            svc.jobs.stop(record.job_id)
        except JobError:
            pass
        with svc.db.session() as session:
            db.delete_study(session, study_id)
        raise BackendUnavailable(f"the study was not started: {error}") from None
    record = get_study(svc, study_id)
    log.info("study %s (%s) submitted: %s", spec.name, study_id, record.status)
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
    if record.status == db.QUEUED:
        with svc.db.session() as session:
            if db.update_queued(session, record.id, status=db.CANCELLED,
                                message=f"{reason} while queued (it never started)"):
                log.info("queued study %s cancelled", record.name)
                return get_study(svc, record.id), True
        record = get_study(svc, record.id)  # it started meanwhile: stop it as any other
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
    end_study(svc, record, {"status": db.CANCELLED, "message": reason},
              close=("KILLED", reason))
    log.info("study %s cancelled", record.name)
    return get_study(svc, record.id), True


def cancel_active(svc: Services, reason: str) -> int:
    """Cancel every study that has not ended (the local stack is going down): the queued
    ones first, so that none starts while the running ones stop."""
    with svc.db.session() as session:
        records = db.queued_studies(session) + db.active_studies(session)
    for record in records:
        try:
            cancel_study(svc, record.id, reason)
        except CreditError as error:
            log.warning("could not cancel study %s: %s", record.name, error)
    return len(records)


# ------------------------------------------------------------------------ trials
def study_trials(svc: Services, ref: str, principal: Principal = ANYONE, offset: int = 0,
                 limit: int | None = None) -> list[dict[str, Any]]:
    """The study's trials by number (``limit`` of them from ``offset``; all if None)
    with the links to their MLflow runs, as the sync last stored them."""
    record = trials_record(svc, ref, principal)
    if limit is None:
        return list(each_trial(svc, record))
    return trials_page(svc, record, offset, limit)[0]


def trials_record(svc: Services, ref: str, principal: Principal = ANYONE) -> StudyRecord:
    """The study, its trials stored (read once now for a study the sync has not reached:
    ``sync.ensure_trials``)."""
    return ensure_trials(svc, get_study(svc, ref, principal))
