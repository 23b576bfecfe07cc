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
from service.records import db, study_runs
from service.records.db import StudyRecord
from service.records.warm_start import warm_trials
from service.spec import StudyProblems, StudySpec
from trainables.errors import CreditError

log = logging.getLogger("credit.api")


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
    of the database, so it can run before anything else (``middleware.StudyLimit``)."""
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


def submit_study(svc: Services, body: Any, principal: Principal = ANYONE) -> StudyRecord:
    """Validate, store and start a study as a Ray job; a rejected one leaves nothing.

    The limit is checked first, before any expensive validation (MLflow and Optuna
    lookups), and again under the lock when the row is written. The row is written
    first (its UNIQUE name settles races between parallel submissions), then the job is
    submitted; if Ray refuses, the row is deleted again, so a failed submission leaves
    neither a row nor a job. The study belongs to ``principal``.
    """
    _check_room(svc)
    spec = _with_warm_start(svc, build_spec(svc, body), principal)
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
        svc.jobs.submit(record.job_id, spec.model_dump_json(), svc.settings.job_env(),
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
    end_study(svc, record, {"status": db.CANCELLED, "message": reason},
              close=("KILLED", reason))
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
