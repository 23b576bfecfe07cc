"""Studies over HTTP on real servers: a study runs as a Ray job to SUCCEEDED, its best
matches Optuna and MLflow; the API is killed mid-study and comes back; a study is
cancelled; parallel submissions are neither lost nor doubled."""

from __future__ import annotations

import datetime as dt
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import optuna
import pytest

from tests.service.api.helpers import TINY, wait_status

ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")


def mlflow_runs(mlflow_url: str, study: str) -> list[dict]:
    """A study's MLflow runs, through MLflow's REST API: [{info, tags, metrics, params}]."""
    exp = httpx.get(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
                    params={"experiment_name": "credit-search"}).json()["experiment"]
    runs, token = [], None
    while True:
        page = httpx.post(f"{mlflow_url}/api/2.0/mlflow/runs/search", json={
            "experiment_ids": [exp["experiment_id"]], "max_results": 1000,
            "filter": f"tags.`credit.study` = '{study}'", **({"page_token": token} if token
                                                            else {})}).json()
        for run in page.get("runs", []):
            data = run["data"]
            runs.append({"info": run["info"],
                         "tags": {t["key"]: t["value"] for t in data.get("tags", [])},
                         "metrics": {m["key"]: m["value"] for m in data.get("metrics", [])},
                         "params": {p["key"]: p["value"] for p in data.get("params", [])}})
        token = page.get("next_page_token")
        if not token:
            return runs


def parent_and_trials(runs: list[dict]) -> tuple[dict, list[dict]]:
    parents = [r for r in runs if r["tags"].get("credit.role") == "study"]
    assert len(parents) == 1, runs
    parent = parents[0]
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent["info"]["run_id"]
                and r["tags"].get("credit.role") == "trial"]
    return parent, children


@pytest.fixture(scope="module")
def finished(api):
    """A tiny study submitted over HTTP and polled to its end: (submit answer, final study)."""
    with api.client() as c:
        r = c.post("/studies", json={"name": "e2e", "space": "mnist-fc-node-perturbation",
                                     "max_trials": 3, "parallel_trials": 3, "seed": 3, **TINY})
        assert r.status_code == 201, r.text
        created = r.json()
        final = wait_status(c, created["id"], ENDED)
    return created, final


def test_submit_answers_201_with_id_status_and_links(finished):
    created, _ = finished
    assert created["status"] == "PENDING"
    assert created["name"] == "e2e"
    assert created["links"]["self"] == f"/studies/{created['id']}"
    assert created["spec"]["max_trials"] == 3 and created["spec"]["sampler"] == "random"
    assert "tracking_uri" not in created["spec"]  # server paths stay on the server


def test_study_succeeds_and_its_best_matches_optuna_and_mlflow(api, mlflow_server, finished,
                                                               ray_jobs):
    created, final = finished
    assert final["status"] == "SUCCEEDED", (final, ray_jobs.logs(final["job_id"])[-4000:])
    assert final["counts"] == {"complete": 3, "running": 0, "failed": 0, "pruned": 0,
                               "pending": 0}
    with api.client() as c:
        best = c.get(f"/studies/{created['id']}/best").json()
        trials = c.get(f"/studies/{created['id']}/trials").json()
    # Optuna: the study's storage under the API's CREDIT_HOME
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{api.home / 'optuna.db'}")
    assert best["value"] == study.best_value
    assert best["params"] == study.best_params
    assert best["trial_id"] == study.best_trial.user_attrs["tune_trial_id"]
    assert best["final"] is True and best["metric"] == "test_error" and best["mode"] == "min"
    assert best["config"]["rule"] == "node_perturbation"
    assert best["config"]["lr"] == pytest.approx(best["params"]["lr"])
    # MLflow, through its REST API: the parent and its three children, all FINISHED
    parent, children = parent_and_trials(mlflow_runs(mlflow_server, "e2e"))
    assert parent["info"]["status"] == "FINISHED"
    assert len(children) == 3
    assert {r["info"]["status"] for r in children} == {"FINISHED"}
    by_id = {r["info"]["run_id"]: r for r in children}
    assert best["mlflow_run_id"] in by_id
    assert by_id[best["mlflow_run_id"]]["metrics"]["test_error"] == best["value"]
    assert best["value"] == min(r["metrics"]["test_error"] for r in children)
    assert best["metrics"] == by_id[best["mlflow_run_id"]]["metrics"]
    assert {"test_error", "test_loss", "train_loss", "angle/fc2"} <= set(best["metrics"])
    assert parent["tags"]["credit.best_run_id"] == best["mlflow_run_id"]
    assert parent["metrics"]["best_test_error"] == best["value"]
    # links: the MLflow UI pages of the parent run and of the best run
    exp = parent["info"]["experiment_id"]
    from service.records.links import mlflow_runs as runs_table

    assert final["links"]["mlflow"] == runs_table(mlflow_server, exp, final["name"])
    assert final["links"]["mlflow"].endswith("/runs?viewStateShareKey=credit-e2e")
    assert final["links"]["mlflow_parent_run"] == \
        f"{mlflow_server}/#/experiments/{exp}/runs/{parent['info']['run_id']}"
    assert best["mlflow_url"] == f"{mlflow_server}/#/experiments/{exp}/runs/" \
                                 f"{best['mlflow_run_id']}"
    # trials: Optuna's three, each with its MLflow run
    assert trials["count"] == 3
    assert {t["state"] for t in trials["data"]} == {"COMPLETE"}
    assert {t["mlflow_run_id"] for t in trials["data"]} == set(by_id)
    assert sorted(t["value"] for t in trials["data"]) == \
        sorted(t.value for t in study.trials)


def test_timestamps_are_utc_with_an_offset(api, finished):
    """Trial times (Optuna's, naive local time) and study times come as ISO 8601 with
    ``Z`` (UTC), the same instants Optuna and the database keep."""
    created, final = finished
    with api.client() as c:
        trials = c.get(f"/studies/{created['id']}/trials").json()["data"]
        listed = c.get("/studies", params={"limit": 200}).json()["data"]
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{api.home / 'optuna.db'}")
    by_number = {t.number: t for t in study.trials}
    for trial in trials:
        for field, kept in (("started_at", by_number[trial["number"]].datetime_start),
                            ("completed_at", by_number[trial["number"]].datetime_complete)):
            assert trial[field].endswith("Z"), trial  # UTC, as pydantic writes it
            when = dt.datetime.fromisoformat(trial[field])
            assert when.utcoffset() == dt.timedelta(0)
            assert when == kept.astimezone(dt.UTC)  # naive: local time, as Optuna wrote it
    for study_body in [created, final, *listed]:
        for field in ("created_at", "updated_at"):
            assert study_body[field].endswith("Z"), study_body
            assert dt.datetime.fromisoformat(study_body[field]).utcoffset() == dt.timedelta(0)
    assert dt.datetime.fromisoformat(final["updated_at"]) >= \
        dt.datetime.fromisoformat(created["created_at"])


def test_list_pages_and_filters_by_status(api, finished):
    created, _ = finished
    with api.client() as c:
        listed = c.get("/studies", params={"status": "SUCCEEDED"}).json()
        assert created["id"] in [s["id"] for s in listed["data"]]
        assert listed["count"] == len([s for s in listed["data"]])
        assert all(s["status"] == "SUCCEEDED" for s in listed["data"])
        none = c.get("/studies", params={"status": ["PENDING", "CANCELLED"]}).json()
        assert created["id"] not in [s["id"] for s in none["data"]]
        page = c.get("/studies", params={"limit": 1, "offset": 0}).json()
        assert len(page["data"]) == 1 and page["count"] >= 1
        by_name = c.get("/studies/e2e").json()
        assert by_name["id"] == created["id"]


def test_report_of_a_finished_study_is_served(api, finished):
    created, final = finished
    assert final["status"] == "SUCCEEDED"
    with api.client() as c:
        r = c.get(f"/studies/{created['id']}/report")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert 'alt="fig1.png"' in r.text and r.text.count("data:image/png;base64,") == 1
        png = c.get(f"/studies/{created['id']}/report/fig1.png")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.headers["content-type"] == "image/png"
        assert c.get(f"/studies/{created['id']}/report/fig9.png").status_code == 404
        assert c.get(f"/studies/{created['id']}/report/x.html").status_code == 422


def _warm_log() -> str:
    folder = Path(os.environ["CREDIT_WARM_DIR"])
    return "".join(p.read_text() for p in sorted(folder.glob("driver-*.log")))


def test_a_later_study_is_forked_by_the_nodes_warm_driver(api, finished, ray_jobs):
    """The first study of a node starts its warm driver; once that is ready, a study's
    driver is one of its forks, and ends with its study."""
    assert finished[1]["status"] == "SUCCEEDED"
    deadline = time.monotonic() + 120
    while "ready" not in _warm_log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "ready" in _warm_log(), _warm_log()
    before = _warm_log().count(" started")
    with api.client() as c:
        r = c.post("/studies", json={"name": "forked", "space": "mnist-fc-node-perturbation",
                                     "max_trials": 2, "parallel_trials": 2, "seed": 1, **TINY})
        assert r.status_code == 201, r.text
        final = wait_status(c, r.json()["id"], ENDED)
    assert final["status"] == "SUCCEEDED", (final, ray_jobs.logs(final["job_id"])[-3000:])
    log = _warm_log()
    assert log.count(" started") == before + 1, log
    pid = log.split(" started")[-2].rsplit(" ", 1)[1]
    assert f"driver {pid} exited 0" in log
    assert ray_jobs.info(final["job_id"]).exit_code == 0


def test_api_restart_mid_study_keeps_tracking_it(api):
    body = {"name": "restarted", "space": "mnist-fc-backprop", "max_trials": 4,
            "parallel_trials": 2, "epochs": 2, "batches_per_epoch": 60, "dataset": "mnist-5k"}
    with api.client() as c:
        created = c.post("/studies", json=body).json()
        wait_status(c, created["id"], ("RUNNING",),
                    predicate=lambda s: s["counts"]["running"] > 0)
    api.kill()  # SIGKILL: no shutdown at all
    time.sleep(3)  # the study goes on without the API
    api.start()
    with api.client() as c:
        listed = c.get("/studies").json()
        assert "restarted" in [s["name"] for s in listed["data"]]
        final = wait_status(c, created["id"], ENDED)
        assert final["status"] == "SUCCEEDED", final
        assert final["counts"]["complete"] == 4
        best = c.get(f"/studies/{created['id']}/best")
        assert best.status_code == 200 and best.json()["final"] is True
    assert [r for r in api.rows() if r[1] == "restarted"][0][2] == "SUCCEEDED"


def test_cancel_stops_the_job_and_closes_every_run(api, ray_jobs, mlflow_server):
    from ray.util.state import list_actors

    body = {"name": "cancelled", "space": "mnist-fc-backprop", "max_trials": 6,
            "parallel_trials": 2, "epochs": 3, "batches_per_epoch": 2000,
            "dataset": "mnist-5k"}
    with api.client() as c:
        created = c.post("/studies", json=body).json()
        wait_status(c, created["id"], ("RUNNING",),
                    predicate=lambda s: s["counts"]["running"] > 0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until a trial has opened its MLflow run
            if [r for r in mlflow_runs(mlflow_server, "cancelled")
                    if r["tags"].get("credit.role") == "trial"
                    and r["info"]["status"] == "RUNNING"]:
                break
            time.sleep(0.5)
        r = c.post(f"/studies/{created['id']}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "CANCELLED"
        again = c.post(f"/studies/{created['id']}/cancel")
        assert again.status_code == 409
        assert again.json()["detail"][0]["loc"] == ["path", "study"]
        assert c.get(f"/studies/{created['id']}").json()["status"] == "CANCELLED"
    job = ray_jobs.info(created["job_id"])
    assert job.status == "STOPPED"
    # no trial left running: the job's actors are gone
    deadline = time.monotonic() + 30
    alive = None
    while time.monotonic() < deadline:
        alive = list_actors(address=ray_jobs.dashboard_url,
                            filters=[("job_id", "=", job.job_id), ("state", "=", "ALIVE")])
        if not alive:
            break
        time.sleep(1)
    assert not alive, alive
    study = optuna.load_study(study_name="cancelled",
                              storage=f"sqlite:///{api.home / 'optuna.db'}")
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    parent, children = parent_and_trials(mlflow_runs(mlflow_server, "cancelled"))
    assert parent["info"]["status"] == "KILLED"
    assert parent["tags"]["credit.status"] == "CANCELLED"
    assert children, "the trials had started"
    assert all(r["info"]["status"] in ("KILLED", "FINISHED") for r in children)
    assert any(r["info"]["status"] == "KILLED" for r in children)


# --------------------------------------------------------- many at once (queue_api)
def _cancel_all(client: httpx.Client, ids: list[str]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(ids) or 1) as pool:
        return list(pool.map(lambda i: client.post(f"/studies/{i}/cancel"), ids))


@pytest.mark.slow  # ~30 s: out of the default run (15-minute aim), CI runs it
def test_twenty_parallel_submissions_store_twenty_studies(queue_api, ray_jobs):
    names = [f"parallel-{i:02d}" for i in range(20)]
    before = {j.submission_id for j in ray_jobs.list()}
    with queue_api.client() as c:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda n: c.post("/studies", json={
                "name": n, "space": "mnist-fc-backprop", "max_trials": 1, **TINY}), names))
        assert [a.status_code for a in answers] == [201] * 20, [a.text for a in answers]
        ids = [a.json()["id"] for a in answers]
        assert len(set(ids)) == 20
        rows = [r for r in queue_api.rows() if r[1].startswith("parallel-")]
        assert sorted(r[1] for r in rows) == names  # each stored once
        jobs = {j.submission_id: j for j in ray_jobs.list()}
        new = set(jobs) - before
        assert new == {r[3] for r in rows}  # one Ray job each, none more
        assert c.get("/studies", params={"status": "PENDING"}).json()["count"] == 20
        # the server runs at most 20 at once: the 21st waits QUEUED, first in line, with
        # no Ray job, and is cancelled without ever starting
        over = c.post("/studies", json={"name": "one-too-many", "space": "mnist-fc-backprop"})
        assert over.status_code == 201, over.text
        assert over.json()["status"] == "QUEUED" and over.json()["queue_position"] == 1
        assert "at most 20" in over.json()["message"]
        assert over.json()["job_id"] not in {j.submission_id for j in ray_jobs.list()}
        r = c.post(f"/studies/{over.json()['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
        cancelled = _cancel_all(c, ids)
        # 200: stopped and CANCELLED; 202: Ray is slow to stop that job (a loaded
        # machine), and the study becomes CANCELLED as soon as it has
        assert {r.status_code for r in cancelled} <= {200, 202}, [r.text for r in cancelled]
        for study_id in ids:
            wait_status(c, study_id, ("CANCELLED",), timeout_s=180)
    assert {ray_jobs.info(r[3]).status for r in rows} == {"STOPPED"}


def test_one_name_submitted_twenty_times_is_stored_once(queue_api, ray_jobs):
    before = {j.submission_id for j in ray_jobs.list()}
    with queue_api.client() as c:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: c.post("/studies", json={
                "name": "same-name", "space": "mnist-fc-backprop", **TINY}), range(20)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [201] + [409] * 19, [a.text for a in answers]
        for a in answers:
            if a.status_code == 409:
                assert a.json()["detail"][0]["loc"] == ["body", "name"]
                assert "taken" in a.json()["detail"][0]["msg"]
        assert [r[1] for r in queue_api.rows()].count("same-name") == 1
        assert len({j.submission_id for j in ray_jobs.list()} - before) == 1
        created = next(a.json() for a in answers if a.status_code == 201)
        assert c.post(f"/studies/{created['id']}/cancel").json()["status"] == "CANCELLED"


def test_best_is_409_while_no_trial_has_finished(queue_api):
    with queue_api.client() as c:
        created = c.post("/studies", json={"name": "waiting", "space": "mnist-fc-backprop",
                                           **TINY}).json()
        r = c.get(f"/studies/{created['id']}/best")
        assert r.status_code == 409
        assert r.json()["detail"][0]["loc"] == ["path", "study"]
        assert "no completed trial" in r.json()["detail"][0]["msg"]
        assert c.get(f"/studies/{created['id']}/trials").json() == {"data": [], "count": 0}
        assert c.get(f"/studies/{created['id']}/report").status_code == 409
        c.post(f"/studies/{created['id']}/cancel")


def test_unknown_study_is_404_naming_it(api):
    with api.client() as c:
        for path in ("/studies/no-such-study", "/studies/no-such-study/best",
                     "/studies/no-such-study/trials"):
            r = c.get(path)
            assert r.status_code == 404
            assert r.json()["detail"][0]["loc"] == ["path", "study"]
            assert "no-such-study" in r.json()["detail"][0]["msg"]
        assert c.post("/studies/no-such-study/cancel").status_code == 404
