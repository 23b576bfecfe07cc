"""The truth after crashes and outages, without HTTP: a study's state is settled from
its durable records (the service database, Optuna, the MLflow parent run and its
``result.json``) when Ray no longer knows its job; records left open while MLflow was
down are closed once it answers again; reads come from the row the sync keeps.

Optuna (sqlite), the service database and MLflow are real: a sqlite store, or a real
``mlflow server`` that is stopped and started again. Ray is the one part made to
misbehave on purpose (a cluster that forgot the job, or reports it FAILED).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid

import optuna
import pytest

from service.api import errors, lifecycle, queries, reports, sync, validation
from service.api.config import ApiSettings
from service.api.principals import Principal
from service.api.schemas import StudyCreate
from service.api.services import Services
from service.jobs import JobInfo, JobNotFound, NodeResources, RayJobs
from service.local.stack import MlflowServer
from service.records import db, tags
from service.records import study_runs as R
from service.records import tracking as T
from tests.service.api.helpers import free_port


class ForgetfulRay(RayJobs):
    """A restarted cluster: it knows no job of before (``ended`` set: it reports that
    status for every job instead)."""

    def __init__(self, ended: str | None = None):
        super().__init__("http://127.0.0.1:9")
        self.ended = ended

    def nodes(self):
        return [NodeResources("node", True, {"CPU": 2.0})]

    def info(self, submission_id):
        if self.ended is None:
            raise JobNotFound(submission_id)
        return JobInfo(submission_id=submission_id, status=self.ended,
                       message="the driver exited with code 1")

    def logs(self, submission_id):
        return ""


def _services(tmp_path, tracking_uri: str, grace_s: float = 600.0) -> Services:
    settings = ApiSettings(home=tmp_path, api_tokens="t", lost_job_grace_s=grace_s,
                           mlflow_tracking_uri=tracking_uri)
    svc = Services.from_settings(settings)
    svc.jobs = ForgetfulRay()
    svc.prepare()
    return svc


@pytest.fixture()
def services(tmp_path):
    svc = _services(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield svc
    svc.db.dispose()


def _study(svc: Services, name: str, owner: str = "", age_s: float = 0.0):
    """A RUNNING study as a driver leaves it: row, MLflow parent run, Optuna study."""
    spec = validation.build_spec(svc, StudyCreate(name=name, space="mnist-fc-backprop",
                                                  max_trials=4))
    experiment_id = T.ensure_experiment(spec.tracking_uri, spec.experiment_name,
                                        (svc.settings.home / "mlartifacts").as_uri())
    parent = R.open_study_run(spec, spec.tracking_uri, experiment_id, resume=False)
    study = optuna.create_study(study_name=name, storage=svc.optuna_storage(),
                                direction="minimize")
    record = db.StudyRecord(id=str(uuid.uuid4()), name=name, status=db.RUNNING,
                            job_id=f"credit-{name}-x", spec=spec.model_dump(mode="json"),
                            message="", owner=owner,
                            created_at=db.utcnow() - dt.timedelta(seconds=age_s))
    with svc.db.session() as session:
        db.create_study(session, record)
    return spec, parent.info.run_id, study


def _trial(spec, study: optuna.Study, value: float | None):
    """One Optuna trial of the space (COMPLETE with ``value``, else left RUNNING)."""
    dists = {k: d.to_optuna() for k, d in spec.search_space().params.items()}
    trial = study.ask(dists)
    trial.set_user_attr("tune_trial_id", f"t{trial.number}")
    if value is not None:
        study.tell(trial, value)
    return trial


def _finish_like_the_driver(spec, parent_id: str, best: optuna.trial.FrozenTrial,
                            counts: dict[str, int]) -> None:
    c = T.client(spec.tracking_uri)
    result = {"name": spec.name, "status": "SUCCEEDED", "best_value": best.value,
              "best_params": best.params, "best_config": spec.trial_config(best.params)
              .model_dump(), "best_trial_id": "t0", "best_run_id": None,
              "counts": counts, "message": ""}
    c.log_dict(parent_id, result, "result.json")
    c.set_terminated(parent_id, status="FINISHED")


def test_a_study_that_finished_while_the_api_was_down_is_succeeded(services):
    """Before: FAILED "its Ray job is gone", counts {complete: 0, running: 2}, /best final."""
    spec, parent_id, study = _study(services, "done-offline", age_s=3600)
    for value in (0.5, 0.25):
        _trial(spec, study, value)
    counts = {"complete": 2, "running": 0, "failed": 0, "pruned": 0, "pending": 0}
    _finish_like_the_driver(spec, parent_id, study.best_trial, counts)
    # the MLflow address stored with the study has gone stale (a restarted local stack
    # serves the same store on another port): the service's own address is used
    with services.db.session() as session:
        row = db.get_study_by_name(session, "done-offline")
        row.spec = {**row.spec, "tracking_uri": "http://127.0.0.1:9"}
        session.commit()

    sync.sync_active(services)
    record = queries.get_study(services, "done-offline")
    assert record.status == db.SUCCEEDED, record.message
    assert record.progress["counts"]["complete"] == 2
    assert record.progress["counts"]["running"] == 0
    best = queries.best_of(services, "done-offline")
    assert best["final"] is True and best["value"] == 0.25


def test_a_study_whose_driver_died_is_failed_with_counts_that_add_up(tmp_path):
    svc = _services(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", grace_s=600)
    spec, parent_id, study = _study(svc, "orphan")
    _trial(spec, study, 0.5)
    _trial(spec, study, None)  # the trial the dead driver was running

    # its records are fresh: the driver may be alive elsewhere, so it stays RUNNING
    sync.sync_active(svc)
    record = queries.get_study(svc, "orphan")
    assert record.status == db.RUNNING
    assert record.progress["counts"] == {"complete": 1, "running": 1, "failed": 0,
                                         "pruned": 0, "pending": 0}
    assert queries.best_of(svc, "orphan")["final"] is False
    assert [t["state"] for t in lifecycle.study_trials(svc, "orphan")] == ["COMPLETE", "RUNNING"]

    # nothing changed for longer than the grace: the driver is dead
    svc.settings.lost_job_grace_s = 0.01
    sync.sync_active(svc)
    record = queries.get_study(svc, "orphan")
    assert record.status == db.FAILED
    assert "driver is gone" in record.message
    assert record.progress["counts"]["running"] == 0
    assert record.progress["counts"]["failed"] == 1
    assert T.client(spec.tracking_uri).get_run(parent_id).info.status == "FAILED"
    best = queries.best_of(svc, "orphan")
    assert best["final"] is True and best["status"] == "FAILED"
    svc.db.dispose()


def test_reads_come_from_the_row_not_from_optuna(services):
    """GET /trials and /best read what the sync stored: a trial Optuna gained since the
    last sync is not seen until the next one."""
    spec, _, study = _study(services, "cached")
    _trial(spec, study, 0.5)
    sync.sync_active(services)
    _trial(spec, study, 0.1)
    assert len(lifecycle.study_trials(services, "cached")) == 1
    assert queries.best_of(services, "cached")["value"] == 0.5
    sync.sync_active(services)
    assert len(lifecycle.study_trials(services, "cached")) == 2
    assert queries.best_of(services, "cached")["value"] == 0.1


def test_a_full_queue_is_checked_before_validation(services):
    """With the owner's queue full, even an invalid study is answered 429 (no validation
    work done)."""
    services.settings.max_concurrent_studies = 1
    services.settings.max_queued_per_owner = 0
    _study(services, "busy")
    with pytest.raises(errors.TooManyStudies):
        lifecycle.submit_study(services, StudyCreate(name="x", space="no-such-space"))


def test_an_old_database_is_migrated_without_losing_rows(tmp_path):
    path = tmp_path / "service.db"
    with sqlite3.connect(path) as con:  # the table as the first release made it
        con.execute("CREATE TABLE studies (id VARCHAR(36) PRIMARY KEY, name VARCHAR(64) "
                    "UNIQUE, status VARCHAR(16), spec JSON, job_id VARCHAR(128), "
                    "experiment_id VARCHAR(64), parent_run_id VARCHAR(64), progress JSON, "
                    "best_value FLOAT, result JSON, message TEXT, created_at DATETIME, "
                    "updated_at DATETIME)")
        con.execute("INSERT INTO studies VALUES ('i1', 'old', 'SUCCEEDED', '{}', NULL, NULL, "
                    "NULL, NULL, 0.5, NULL, '', '2026-01-01 00:00:00', "
                    "'2026-01-01 00:00:00')")
    database = db.Database(f"sqlite:///{path}")
    database.create_all()
    assert db.migrate(database.engine) == []  # idempotent
    with database.session() as session:
        rows, count = db.list_studies(session)
        assert count == 1 and rows[0].name == "old" and rows[0].owner == ""
        assert rows[0].best_value == 0.5 and rows[0].trials is None
        assert db.list_studies(session, owner="alice")[1] == 0
    database.dispose()


def test_owners_see_only_their_studies(services):
    alice, bob = Principal("alice"), Principal("bob")
    _study(services, "of-alice", owner="alice")
    _study(services, "of-bob", owner="bob")
    assert [r.name for r in queries.list_studies(services, None, 0, 10, alice)[0]] == \
        ["of-alice"]
    with pytest.raises(errors.StudyNotFound):
        queries.get_study(services, "of-bob", alice)
    with pytest.raises(errors.StudyNotFound):
        lifecycle.cancel_study(services, "of-bob", principal=alice)
    assert queries.get_study(services, "of-bob", bob).name == "of-bob"
    assert queries.list_studies(services, None, 0, 10, Principal("carol", admin=True))[1] == 2
    assert queries.list_studies(services, None, 0, 10, Principal())[1] == 2


@pytest.fixture()
def mlflow(tmp_path, monkeypatch):
    """A real ``mlflow server`` this test may stop and start again on the same port."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an outage fails fast
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts",
                          port=free_port(), log_file=root / "mlflow.log").start()
    yield server
    server.stop()


@pytest.mark.slow
def test_runs_left_running_in_an_outage_are_closed_when_mlflow_is_back(tmp_path, mlflow):
    """Before: the parent and trial runs stayed RUNNING forever; the report was a
    plain-text 500. After: FAILED with the reason; report 503 naming MLflow during the
    outage; every run closed once MLflow answers; the report is served after."""
    svc = _services(tmp_path, mlflow.url)
    spec, parent_id, study = _study(svc, "outage")
    _trial(spec, study, 0.5)
    child = T.client(mlflow.url).create_run(
        T.client(mlflow.url).get_run(parent_id).info.experiment_id,
        tags={tags.PARENT: parent_id, tags.ROLE: "trial", tags.TRIAL: "t1"})
    sync.sync_active(svc)
    port = mlflow.port
    mlflow.stop()

    svc.jobs.ended = "FAILED"  # the driver failed: MLflow was gone
    sync.sync_active(svc)
    record = queries.get_study(svc, "outage")
    assert record.status == db.FAILED and record.message
    assert record.pending_close == {"status": "FAILED", "reason": record.message}
    with pytest.raises(errors.BackendUnavailable, match="MLflow"):
        reports.study_report(svc, "outage")

    mlflow.port = port
    mlflow.start()
    sync.sync_active(svc)
    record = queries.get_study(svc, "outage")
    assert record.pending_close is None
    c = T.client(mlflow.url)
    assert c.get_run(parent_id).info.status == "FAILED"
    assert c.get_run(child.info.run_id).info.status == "KILLED"
    assert record.progress["counts"]["complete"] == 1
    svc.db.dispose()
