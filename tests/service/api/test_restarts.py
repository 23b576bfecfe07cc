"""A study's trials restarted after infrastructure failures, and a study that waits for
resources, as clients see them: ``restarts`` per trial and in all (GET /studies/{id},
/trials, the export, the page, ``credit studies show``), and the waiting ``message``.

The API is real (uvicorn on loopback, in this process, with its background sync), and so
are its stores (the service database, Optuna and MLflow in sqlite). The Ray cluster is a
stand-in that accepts every job and reports it RUNNING: the test writes into Optuna what
a study's driver writes (``RESTARTS_ATTR`` per trial, ``WAITING_ATTR`` on the study).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import optuna
import pytest

from service.api import ApiSettings, create_app
from service.api.sync import CANCEL_REQUESTED
from service.jobs import JobInfo, NodeResources, RayJobs
from service.records import db
from service.records.optuna_trials import RESTARTS_ATTR, TUNE_TRIAL_ID, WAITING_ATTR
from tests.service.api.helpers import TOKEN, serve_app

REPO = Path(__file__).resolve().parents[3]
WAITING = "waiting for resources: no alive node has 1 CPU free for a trial"


class RunningRay(RayJobs):
    """A cluster that takes every job and runs it for ever (nothing reaches Ray)."""

    def __init__(self):
        super().__init__("http://127.0.0.1:9")

    def nodes(self):
        return [NodeResources("node", True, {"CPU": 2.0})]

    def submit(self, submission_id, spec_json, env_vars, metadata=None,
               entrypoint_resources=None):
        return submission_id

    def info(self, submission_id):
        return JobInfo(submission_id=submission_id, status="RUNNING")

    def logs(self, submission_id):
        return ""

    def version(self):
        return "stand-in"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, the app's Services): a real server on a free loopback port."""
    home = tmp_path_factory.mktemp("restarts-api")
    settings = ApiSettings(home=home, api_tokens=TOKEN, sync_interval_s=0.5,
                           mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    app = create_app(settings)
    services = app.state.services
    services.jobs = RunningRay()
    url, server, thread = serve_app(app)
    yield url, services
    server.should_exit = True
    thread.join(30)


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=60)


def _credit(url: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CREDIT_URL=url, CREDIT_TOKEN=TOKEN, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180)


def _until(c: httpx.Client, study: str, predicate, timeout_s: float = 30.0) -> dict:
    deadline, body = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        body = c.get(f"/studies/{study}").json()
        if predicate(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"study {study}: not as expected after {timeout_s} s: {body}")


def _trial(study: optuna.Study, number_restarts: int | None, value: float | None):
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 0.3, log=True)})
    trial.set_user_attr(TUNE_TRIAL_ID, f"t{trial.number}")
    if number_restarts is not None:
        trial.set_user_attr(RESTARTS_ATTR, number_restarts)
    if value is not None:
        study.tell(trial, value)


def _submit(url: str, name: str, *flags: str) -> None:
    proc = _credit(url, "studies", "submit", "--space", "mnist-fc-backprop", "--name", name,
                   "--trials", "4", "--epochs", "1", "--dataset", "mnist-5k", *flags)
    assert proc.returncode == 0, proc.stderr


def test_restarts_are_shown_per_trial_and_in_all(served):
    url, services = served
    _submit(url, "restarted", "--max-restarts", "5")
    with _client(url) as c:
        study = _until(c, "restarted", lambda s: s["status"] == "RUNNING")
        assert study["spec"]["max_trial_restarts"] == 5 and study["restarts"] == 0
        # what the driver writes: two trials restarted (2 and 1 times), one never
        optuna_study = optuna.create_study(study_name="restarted", direction="minimize",
                                           storage=services.optuna_storage())
        _trial(optuna_study, 2, 0.25)
        _trial(optuna_study, 1, None)  # still running, restarted once
        _trial(optuna_study, None, 0.5)  # no attribute: never restarted
        study = _until(c, "restarted", lambda s: s["restarts"] == 3
                       and s["counts"]["complete"] + s["counts"]["running"] == 3)
        trials = c.get("/studies/restarted/trials").json()["data"]
        assert {t["number"]: t["restarts"] for t in trials} == {0: 2, 1: 1, 2: 0}
        listed = c.get("/studies").json()["data"]
        assert {s["name"]: s["restarts"] for s in listed}["restarted"] == 3
        rows = list(csv.DictReader(io.StringIO(
            c.get("/studies/restarted/export", params={"format": "csv"}).text)))
        assert {r["trial"]: r["restarts"] for r in rows} == {"0": "2", "1": "1", "2": "0"}
        page = c.get("/pages/studies/restarted").text
        assert "<th>restarts</th>" in page and '<td class="num">2</td>' in page
        assert "infrastructure failures: 3</p>" in page
        assert "(3 restarts)" in c.get("/pages/studies").text
    shown = _credit(url, "studies", "show", "restarted")
    assert shown.returncode == 0, shown.stderr
    assert "restarts 3" in shown.stdout


def test_a_waiting_study_says_why_until_it_no_longer_waits(served):
    url, services = served
    _submit(url, "waits")
    with _client(url) as c:
        _until(c, "waits", lambda s: s["status"] == "RUNNING")
        optuna_study = optuna.create_study(study_name="waits", direction="minimize",
                                           storage=services.optuna_storage())
        optuna_study.set_user_attr(WAITING_ATTR, WAITING)
        study = _until(c, "waits", lambda s: s["message"] == WAITING)
        assert study["status"] == "RUNNING"
        shown = _credit(url, "studies", "show", "waits")
        assert f"RUNNING — {WAITING}" in shown.stdout, shown.stdout + shown.stderr
        later = WAITING.replace("1 CPU", "2 CPUs")
        optuna_study.set_user_attr(WAITING_ATTR, later)
        _until(c, "waits", lambda s: s["message"] == later)
        optuna_study.set_user_attr(WAITING_ATTR, "")
        study = _until(c, "waits", lambda s: s["message"] == "")
        assert study["status"] == "RUNNING"


def test_waiting_never_replaces_a_pending_cancel(served):
    url, services = served
    _submit(url, "cancelling")
    with _client(url) as c:
        study = _until(c, "cancelling", lambda s: s["status"] == "RUNNING")
        optuna_study = optuna.create_study(study_name="cancelling", direction="minimize",
                                           storage=services.optuna_storage())
        pending = f"{CANCEL_REQUESTED}: Ray has not stopped the job yet (RUNNING)"
        with services.db.session() as session:
            db.update_active(session, study["id"], message=pending)
        optuna_study.set_user_attr(WAITING_ATTR, WAITING)

        def synced() -> bool:  # the sync has read the waiting attribute since
            with services.db.session() as session:
                row = db.get_study(session, study["id"])
            return (row.progress or {}).get("waiting") == WAITING

        deadline = time.monotonic() + 30
        while not synced():
            assert time.monotonic() < deadline, "the sync never read the study"
            time.sleep(0.2)
        time.sleep(1.5)  # a few more rounds
        assert c.get("/studies/cancelling").json()["message"] == pending
        optuna_study.set_user_attr(WAITING_ATTR, "")
        time.sleep(1.5)
        assert c.get("/studies/cancelling").json()["message"] == pending


def test_max_trial_restarts_is_in_the_schema_and_checked(served):
    url, _ = served
    doc = httpx.get(url + "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    create = schemas["StudyCreate"]["properties"]["max_trial_restarts"]
    assert (create["type"], create["minimum"], create["maximum"], create["default"]) == \
        ("integer", 0, 100, 3)
    assert schemas["StudyPublic"]["properties"]["restarts"]["type"] == "integer"
    assert schemas["TrialPublic"]["properties"]["restarts"]["type"] == "integer"
    assert "restart" in schemas["TrialPublic"]["properties"]["restarts"]["description"]
    body = {"name": "bad-restarts", "space": "mnist-fc-backprop"}
    with _client(url) as c:
        for value, word in ((-1, ">= 0"), (101, "<= 100"), ("3", "integer")):
            r = c.post("/studies", json={**body, "max_trial_restarts": value})
            assert r.status_code == 422, r.text
            (detail,) = r.json()["detail"]
            assert detail["loc"] == ["body", "max_trial_restarts"] and word in detail["msg"]
    bad = _credit(url, "studies", "submit", "--space", "mnist-fc-backprop",
                  "--max-restarts", "-2")
    # the server names the field (the client sends the flags as they are)
    assert bad.returncode == 2 and "max_trial_restarts: must be >= 0" in bad.stderr, bad.stderr
