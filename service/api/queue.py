"""The fair queue of studies: which QUEUED study starts when a slot frees, each one's
place, and starting them as Ray jobs.

A server runs at most ``max_concurrent_studies`` studies (PENDING or RUNNING) and an
owner at most ``running_per_owner``; the rest wait QUEUED in the study table. When a
slot frees, the next study is the oldest queued one of the owner with the fewest
studies running, among owners under their own limit. Ties go to the owner whose last
study started longest ago (never: first), then to submission order: without that, on
a server of one slot the owner whose study just ended would tie at zero running with
the others and, submitting earlier, start all of theirs first.

The queue lives in the database: a restarted API continues it in the same order, and a
study is taken from it by one compare-and-set (QUEUED → PENDING), so no study starts
twice. A study taken from the queue whose job
could not be submitted (the API died in between) is submitted by the sync, under the
same job id (``submit_missing``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

from service.api.services import Services
from service.jobs import JobError, JobNotFound
from service.records import db
from service.records.db import StudyRecord

log = logging.getLogger("credit.api")


def fair_order(queued: Iterable[StudyRecord], running: dict[str, int], per_owner: int,
               last_start: dict[str, dt.datetime] | None = None) -> list[StudyRecord]:
    """The queued studies in the order they would start if no study ended meanwhile:
    each next one is the oldest of the owner with the fewest running (counting those
    started before it in this order), then whose last start (``last_start``) is
    oldest, then whose oldest queued study came first; owners at their own limit after
    every other owner."""
    by_owner: dict[str, list[StudyRecord]] = {}
    for record in queued:  # submission order
        by_owner.setdefault(record.owner or "", []).append(record)
    running = dict(running)
    # when each owner last started a study: never first, then by time, then this order's
    started: dict[str, tuple] = {o: (1, t) for o, t in (last_start or {}).items() if t}
    order: list[StudyRecord] = []
    while by_owner:
        def key(owner: str) -> tuple:
            head = by_owner[owner][0]
            return (running.get(owner, 0) >= per_owner, running.get(owner, 0),
                    started.get(owner, (0,)), head.created_at, head.id)

        owner = min(by_owner, key=key)
        order.append(by_owner[owner].pop(0))
        running[owner] = running.get(owner, 0) + 1
        started[owner] = (2, len(order))
        if not by_owner[owner]:
            del by_owner[owner]
    return order


def positions(svc: Services) -> dict[str, int]:
    """Study id → its place in the queue (1: starts next), for every QUEUED study."""
    with svc.db.session() as session:
        queued = db.queued_studies(session)
        if not queued:
            return {}
        running = db.active_by_owner(session)
        last_start = db.last_start_by_owner(session)
    order = fair_order(queued, running, svc.settings.running_per_owner, last_start)
    return {record.id: i for i, record in enumerate(order, 1)}


def waiting_reason(svc: Services, owner: str) -> str:
    """Why a study of ``owner`` waits (the message of a QUEUED study)."""
    settings = svc.settings
    with svc.db.session() as session:
        running = db.active_by_owner(session)
    mine = running.get(owner, 0)
    if sum(running.values()) < settings.max_concurrent_studies and \
            mine >= settings.running_per_owner:
        return (f"queued: its owner runs {mine} studies, the most one owner may run at "
                f"once (CREDIT_MAX_RUNNING_PER_OWNER={settings.running_per_owner})")
    return (f"queued: this server runs at most {settings.max_concurrent_studies} studies "
            "at once (CREDIT_MAX_CONCURRENT_STUDIES); it starts when a slot frees, the "
            "owner with the fewest running studies first")


def _next(svc: Services) -> StudyRecord | None:
    """The study to start now, or None (no room, or nothing queued that may start)."""
    settings = svc.settings
    with svc.db.session() as session:
        if db.count_active(session) >= settings.max_concurrent_studies:
            return None
        queued = db.queued_studies(session)
        running = db.active_by_owner(session)
        last_start = db.last_start_by_owner(session)
    order = fair_order(queued, running, settings.running_per_owner, last_start)
    # owners at their limit come last: if the first is at its limit, so is everyone after
    if order and running.get(order[0].owner or "", 0) < settings.running_per_owner:
        return order[0]
    return None


def submit_job(svc: Services, record: StudyRecord) -> None:
    """Submit the study's Ray job (its id is the study's: Ray refuses a second one) and
    mark it started; ``JobError`` if Ray did not take it."""
    spec = svc.spec_of(record)
    svc.jobs.submit(record.job_id, spec.model_dump_json(), svc.settings.job_env(),
                    metadata={"credit.study": record.name, "credit.study_id": record.id},
                    entrypoint_resources=svc.settings.job_entrypoint_resources)
    with svc.db.session() as session:
        db.set_fields(session, record.id, started_at=db.utcnow())
    log.info("study %s (%s) started as Ray job %s", record.name, record.id, record.job_id)


def start_next(svc: Services, keep: str | None = None) -> list[str]:
    """Start queued studies while there is room, fairest first; the ids started.

    A study whose job Ray refuses goes back to the queue (the next round tries again),
    except ``keep``'s: that one (just submitted, in the caller's request) is left
    PENDING without a job for the caller to settle, and ``JobError`` is raised.
    """
    started: list[str] = []
    with svc.submit_lock:
        while (record := _next(svc)) is not None:
            with svc.db.session() as session:
                if not db.take_from_queue(session, record.id):
                    continue  # taken by another process meanwhile
            try:
                submit_job(svc, record)
            except JobError as error:
                if record.id == keep:
                    raise
                try:  # Ray may have taken the job before the answer was lost
                    svc.jobs.stop(record.job_id)
                except JobError:
                    pass
                with svc.db.session() as session:
                    db.set_fields(session, record.id, status=db.QUEUED, message=(
                        f"queued: Ray did not take its job ({error}); tried again soon"))
                log.warning("study %s stays queued: %s", record.name, error)
                break
            started.append(record.id)
    return started


def submit_missing(svc: Services, record: StudyRecord) -> bool:
    """A study taken from the queue whose job was never submitted (the API died in
    between): submit it now. Under the submission lock, and only after Ray says it has
    no such job, so a submission under way in this process is never doubled. Whether
    the study has its job now."""
    if record.status != db.PENDING or record.started_at is not None:
        return False
    with svc.submit_lock:
        with svc.db.session() as session:
            fresh = db.get_study(session, record.id)
        if fresh is None or fresh.status != db.PENDING or fresh.started_at is not None:
            return fresh is not None and fresh.started_at is not None
        try:
            try:
                svc.jobs.info(fresh.job_id)
            except JobNotFound:
                submit_job(svc, fresh)
                return True
        except JobError as error:
            log.warning("study %s: its job could not be submitted yet: %s", fresh.name, error)
            return False
        with svc.db.session() as session:  # Ray has it: it was submitted after all
            db.set_fields(session, fresh.id, started_at=db.utcnow())
        return True
