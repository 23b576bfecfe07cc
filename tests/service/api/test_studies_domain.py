"""The studies domain without HTTP, where Ray must misbehave on purpose: a submission
Ray refuses leaves nothing; a study whose job vanished ends FAILED. The database,
Optuna storage and MLflow store are real (sqlite in a temporary CREDIT_HOME)."""

from __future__ import annotations

import datetime as dt

import pytest

from service.api import errors, lifecycle, queries, queue, sync, validation
from service.api.config import ApiSettings
from service.api.schemas import StudyCreate
from service.api.services import Services
from service.jobs import JobError, JobNotFound, NodeResources, RayJobs
from service.records import db


class BrokenRay(RayJobs):
    """A cluster that lists its nodes but refuses or forgets every job."""

    def __init__(self):
        super().__init__("http://127.0.0.1:9")
        self.stopped: list[str] = []

    def nodes(self):
        return [NodeResources("node", True, {"CPU": 2.0})]

    def submit(self, submission_id, *args, **kwargs):
        raise JobError("Ray refused job: the cluster is full")

    def stop(self, submission_id):
        self.stopped.append(submission_id)
        raise JobNotFound(submission_id)

    def info(self, submission_id):
        raise JobNotFound(submission_id)


@pytest.fixture()
def services(tmp_path):
    settings = ApiSettings(home=tmp_path, api_tokens="t", lost_job_grace_s=1,
                           mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    svc = Services.from_settings(settings)
    svc.jobs = BrokenRay()
    svc.prepare()
    yield svc
    svc.db.dispose()


def _rows(svc):
    with svc.db.session() as session:
        return db.list_studies(session)[0]


def test_a_submission_ray_refuses_leaves_no_row(services):
    body = StudyCreate(name="refused", space="mnist-fc-backprop", epochs=1)
    with pytest.raises(errors.BackendUnavailable, match="the cluster is full"):
        lifecycle.submit_study(services, body)
    assert _rows(services) == []
    assert services.jobs.stopped and services.jobs.stopped[0].startswith("credit-refused-")
    # the name is free again
    with pytest.raises(errors.BackendUnavailable):
        lifecycle.submit_study(services, body)


def test_a_study_whose_job_vanished_ends_failed(services):
    old = db.utcnow() - dt.timedelta(seconds=5)
    spec = validation.build_spec(services, StudyCreate(name="lost", space="mnist-fc-backprop"))
    with services.db.session() as session:
        db.create_study(session, db.StudyRecord(
            id="lost-id", name="lost", status=db.RUNNING, job_id="credit-lost-x",
            spec=spec.model_dump(mode="json"), message="", created_at=old))
    sync.sync_active(services)
    record = queries.get_study(services, "lost")
    assert record.status == db.FAILED
    assert "driver is gone" in record.message and "Ray job is unknown" in record.message


def test_at_the_limit_a_study_is_queued_and_a_full_queue_is_refused(services):
    services.settings.max_concurrent_studies = 1
    spec = validation.build_spec(services, StudyCreate(name="busy", space="mnist-fc-backprop"))
    with services.db.session() as session:
        db.create_study(session, db.StudyRecord(
            id="busy-id", name="busy", status=db.PENDING, job_id="j",
            spec=spec.model_dump(mode="json"), message="", started_at=db.utcnow()))
    # no room: stored QUEUED, no job asked of Ray (this Ray would refuse it)
    queued = lifecycle.submit_study(services, StudyCreate(name="next", space="mnist-fc-backprop"))
    assert queued.status == db.QUEUED and queued.started_at is None
    assert "CREDIT_MAX_CONCURRENT_STUDIES" in queued.message
    assert queue.positions(services) == {queued.id: 1}
    services.settings.max_queued_per_owner = 1
    with pytest.raises(errors.TooManyStudies, match="CREDIT_MAX_QUEUED_PER_OWNER=1"):
        lifecycle.submit_study(services, StudyCreate(name="third", space="mnist-fc-backprop"))
    assert sorted(r.name for r in _rows(services)) == ["busy", "next"]
    # a queued study is cancelled at once, never started
    record, done = lifecycle.cancel_study(services, "next")
    assert done and record.status == db.CANCELLED and "never started" in record.message
    assert record.started_at is None and services.jobs.stopped == []


def test_status_written_by_one_writer_is_not_overwritten(services):
    spec = validation.build_spec(services, StudyCreate(name="raced", space="mnist-fc-backprop"))
    with services.db.session() as session:
        db.create_study(session, db.StudyRecord(
            id="raced-id", name="raced", status=db.RUNNING, job_id="j",
            spec=spec.model_dump(mode="json"), message=""))
        assert db.update_active(session, "raced-id", status=db.CANCELLED)
        # a sync round that read the row before the cancel must not bring it back
        assert not db.update_active(session, "raced-id", status=db.RUNNING)
    assert queries.get_study(services, "raced-id").status == db.CANCELLED


class SlowToStop(BrokenRay):
    """A cluster whose job ignores the stop for now (a driver waiting for resources)."""

    def __init__(self):
        super().__init__()
        self.status = "PENDING"

    def stop(self, submission_id):
        self.stopped.append(submission_id)
        return True

    def info(self, submission_id):
        from service.jobs import JobInfo

        return JobInfo(submission_id=submission_id, status=self.status)

    def wait(self, submission_id, timeout_s, poll_s=0.5):
        return self.info(submission_id)


def test_a_cancel_ray_has_not_carried_out_yet_ends_when_the_job_stops(services):
    services.jobs = jobs = SlowToStop()
    spec = validation.build_spec(services, StudyCreate(name="slow", space="mnist-fc-backprop"))
    with services.db.session() as session:
        db.create_study(session, db.StudyRecord(
            id="slow-id", name="slow", status=db.PENDING, job_id="credit-slow-x",
            spec=spec.model_dump(mode="json"), message=""))
    record, done = lifecycle.cancel_study(services, "slow")
    assert not done and record.status == db.PENDING
    assert record.message.startswith("cancel requested")
    assert jobs.stopped == ["credit-slow-x"]
    sync.sync_active(services)  # still pending: nothing changes
    assert queries.get_study(services, "slow").status == db.PENDING
    jobs.status = "STOPPED"
    sync.sync_active(services)
    record = queries.get_study(services, "slow")
    assert record.status == db.CANCELLED and record.message == "cancelled"
