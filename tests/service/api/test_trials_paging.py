"""Studies of many trials: ``GET /studies/{id}/trials`` a page at a time, the export
streamed, the page and ``credit studies trials`` paging on, and the sync that reads only
the trials that changed, with each trial's MLflow run id kept beside it.

Everything is real but Ray: uvicorn on loopback (in this process, with its background
sync), the service database, Optuna and MLflow in sqlite. The studies are made in
seconds (``bulk_trials``); the Ray cluster is a stand-in that reports each job RUNNING.
"""

from __future__ import annotations

import csv
import io
import json
import time

import httpx
import optuna
import pytest

from service.api import ApiSettings, create_app, lifecycle, queries, sync, trial_sync
from service.api.services import Services
from service.records import db, tags, trial_table
from service.records import tracking as T
from tests.service.api.bulk_trials import advance, make_study, trial_id
from tests.service.api.helpers import TOKEN, serve_app
from tests.service.api.test_restarts import RunningRay, _credit

N = 1205  # more than one page of 1000, and of the page's 200


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, the app's Services, the study of N trials it serves)."""
    home = tmp_path_factory.mktemp("paging-api")
    settings = ApiSettings(home=home, api_tokens=TOKEN, sync_interval_s=0.5,
                           mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                           mlflow_ui_url="http://127.0.0.1:9")
    app = create_app(settings)
    services = app.state.services
    services.jobs = RunningRay()
    services.prepare()
    made = make_study(services, "many", N, running=5, no_run=frozenset({7}))
    url, server, thread = serve_app(app)
    with _client(url) as c:  # the sync has stored every trial
        deadline = time.monotonic() + 120
        while c.get("/studies/many").json()["counts"]["complete"] != N - 5:
            assert time.monotonic() < deadline, c.get("/studies/many").json()
            time.sleep(0.2)
    yield url, services, made
    server.should_exit = True
    thread.join(30)


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=120)


def test_trials_come_a_page_at_a_time_with_their_runs(served):
    url, _, made = served
    with _client(url) as c:
        first = c.get("/studies/many/trials").json()
        last = c.get("/studies/many/trials", params={"offset": 1000, "limit": 500}).json()
        beyond = c.get("/studies/many/trials", params={"offset": N}).json()
        small = c.get("/studies/many/trials", params={"offset": 3, "limit": 2}).json()
    assert first["count"] == last["count"] == beyond["count"] == N
    assert [t["number"] for t in first["data"]] == list(range(1000))  # the default page
    assert [t["number"] for t in last["data"]] == list(range(1000, N))
    assert beyond["data"] == [] and [t["number"] for t in small["data"]] == [3, 4]
    trials = first["data"] + last["data"]
    assert [t["state"] for t in trials[-5:]] == ["RUNNING"] * 5
    assert all(t["state"] == "COMPLETE" for t in trials[:-5])
    assert trials[10]["value"] == pytest.approx(10 / N)
    # each trial's own MLflow run (trial 7 never reached MLflow)
    assert trials[7]["mlflow_run_id"] is None and trials[7]["mlflow_url"] is None
    assert all(t["mlflow_run_id"] == made.runs[t["trial_id"]] for t in trials if t["number"] != 7)
    assert all(t["mlflow_run_id"] in t["mlflow_url"] for t in trials if t["number"] != 7)


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": 0}, "limit"), ({"limit": 5001}, "limit"), ({"limit": "ten"}, "limit"),
    ({"offset": -1}, "offset"), ({"offset": 1.5}, "offset")])
def test_a_bad_page_is_422_naming_the_field(served, params, field):
    url, _, _ = served
    with _client(url) as c:
        r = c.get("/studies/many/trials", params=params)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [d["loc"] for d in detail] == [["query", field]], detail
    assert detail[0]["msg"]


def test_the_export_streams_every_trial(served):
    url, _, made = served
    with _client(url) as c:
        r = c.get("/studies/many/export", params={"format": "csv"})
        j = c.get("/studies/many/export", params={"format": "json"})
    assert r.status_code == 200 and "content-length" not in r.headers  # streamed: chunked
    assert r.headers["transfer-encoding"] == "chunked"
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(row["trial"]) for row in rows] == list(range(N))
    params = sorted(made.spec.search_space().params)
    assert [k for k in rows[0] if k.startswith("param.")] == [f"param.{p}" for p in params]
    assert rows[3]["mlflow_run_id"] == made.runs[trial_id("many", 3)]
    body = j.json()
    assert body["count"] == N and len(body["data"]) == N
    assert body["data"][N - 1]["state"] == "RUNNING" and body["objective"]["metric"]


def test_credit_studies_trials_follows_every_page(served, tmp_path):
    url, _, _ = served
    listed = _credit(url, "studies", "trials", "many", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["number"] for line in listed.stdout.splitlines()] == \
        list(range(N))
    out = tmp_path / "many.csv"
    exported = _credit(url, "studies", "export", "many", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert len(out.read_text().splitlines()) == N + 1
    missing = _credit(url, "studies", "trials", "no-such-study")
    assert missing.returncode == 2 and "404" in missing.stderr


def test_the_page_shows_a_page_of_trials(served):
    url, _, _ = served
    with _client(url) as c:
        first = c.get("/pages/studies/many").text
        last = c.get("/pages/studies/many", params={"offset": 1200}).text
        bad = c.get("/pages/studies/many", params={"offset": -3})
    assert f"trials 1–200 of {N}" in first and "offset=200" in first
    assert first.count("<tr><td class=\"num\">") == 200
    assert f"trials 1201–{N} of {N}" in last and "offset=1000" in last
    assert last.count("<tr><td class=\"num\">") == 5 and "next</a>" not in last
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "offset"]


# ------------------------------------------------------------- the incremental sync
@pytest.fixture()
def services(tmp_path):
    svc = Services.from_settings(ApiSettings(
        home=tmp_path, api_tokens="t", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"))
    svc.jobs = RunningRay()
    svc.prepare()
    yield svc
    svc.db.dispose()


def _sync(svc: Services, name: str) -> trial_sync.SyncStats:
    record = queries.get_study(svc, name)
    sync.sync_study(svc, record)
    return trial_sync.LAST_STATS[record.id]


def _rows(svc: Services, name: str) -> dict[int, dict]:
    record = queries.get_study(svc, name)
    with svc.db.session() as session:
        return {t["number"]: t for t in trial_table.each(session, record.id)}


def test_a_sync_reads_only_the_trials_that_changed(services):
    made = make_study(services, "inc", 300, running=4)
    first = _sync(services, "inc")
    assert first.optuna_trials_read == 300 and first.rows_written == 300
    assert queries.get_study(services, "inc").progress["counts"]["complete"] == 296

    idle = _sync(services, "inc")  # nothing changed: the 4 running trials are read, no row
    assert (idle.optuna_trials_read, idle.rows_written, idle.mlflow_searches,
            idle.mlflow_runs_read) == (4, 0, 0, 0)

    advance(services, made, finish=2, start=1)
    step = _sync(services, "inc")
    # the 3 still running, the 2 that finished; one search of the runs started since the
    # new trial began finds its run (and the study's parent run, if it began that late)
    assert (step.optuna_trials_read, step.rows_written) == (5, 3)
    assert step.mlflow_searches == 1 and step.mlflow_runs_read in (1, 2)
    rows = _rows(services, "inc")
    assert len(rows) == 301 and rows[300]["state"] == "RUNNING"
    assert rows[300]["mlflow_run_id"] == made.runs[trial_id("inc", 300)]
    assert [rows[n]["state"] for n in (296, 297, 298, 299)] == \
        ["COMPLETE", "COMPLETE", "RUNNING", "RUNNING"]
    progress = queries.get_study(services, "inc").progress
    assert progress["counts"] == {"complete": 298, "running": 3, "failed": 0, "pruned": 0,
                                  "pending": 0}
    assert progress["best"]["number"] == 0 and \
        progress["best"]["run_id"] == made.runs[trial_id("inc", 0)]


def test_a_failed_trial_gets_its_reason_from_its_own_run(services):
    made = make_study(services, "fails", 50, running=2, no_run=frozenset({49}))
    _sync(services, "fails")
    storage = services.optuna_storage()
    c = T.client(services.settings.mlflow_tracking_uri)
    c.set_tag(made.runs[trial_id("fails", 48)], tags.FAILURE, "ValueError: the loss diverged")
    for number in (48, 49):
        storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(
            made.optuna_id, number), optuna.trial.TrialState.FAIL)
    step = _sync(services, "fails")
    # 48's run is read by its id; 49 has none: one search of the runs since it started
    assert (step.optuna_trials_read, step.rows_written, step.mlflow_searches) == (2, 2, 1)
    rows = _rows(services, "fails")
    assert rows[48]["failure"] == "ValueError: the loss diverged"
    assert rows[49]["failure"].startswith("failed (no reason recorded")
    assert queries.get_study(services, "fails").progress["counts"]["failed"] == 2
    after = _sync(services, "fails")  # MLflow has answered for both: never read again
    assert (after.optuna_trials_read, after.mlflow_runs_read, after.rows_written) == (0, 0, 0)


def test_a_reason_that_reaches_the_run_late_is_read_again_until_there(services):
    """The driver records a failed trial's reason on its run as the study ends, after
    Optuna said FAIL: the sync reads that run again until the reason is there."""
    made = make_study(services, "late", 5, running=1)
    _sync(services, "late")
    storage = services.optuna_storage()
    storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(
        made.optuna_id, 4), optuna.trial.TrialState.FAIL)
    _sync(services, "late")
    assert _rows(services, "late")[4]["failure"].startswith("failed (no reason recorded")
    T.client(services.settings.mlflow_tracking_uri).set_tag(
        made.runs[trial_id("late", 4)], tags.FAILURE, "ActorDiedError: its node died")
    _sync(services, "late")
    assert _rows(services, "late")[4]["failure"] == "ActorDiedError: its node died"
    last = _sync(services, "late")  # now it has its reason: never read again
    assert (last.mlflow_runs_read, last.rows_written) == (0, 0)


def test_run_ids_and_reasons_missed_while_mlflow_is_down_come_later(services, monkeypatch):
    made = make_study(services, "outage", 20, running=2)
    _sync(services, "outage")
    advance(services, made, finish=0, start=1)  # trial 20 and its run
    storage = services.optuna_storage()
    c = T.client(services.settings.mlflow_tracking_uri)
    c.set_tag(made.runs[trial_id("outage", 18)], tags.FAILURE, "ValueError: the loss diverged")
    storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(
        made.optuna_id, 18), optuna.trial.TrialState.FAIL)
    # the same stores, MLflow at an address that does not answer
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = Services.from_settings(ApiSettings(
        home=services.settings.home, api_tokens="t", mlflow_tracking_uri="http://127.0.0.1:9"))
    stats = trial_sync.sync_trials(down, queries.get_study(services, "outage"))
    assert stats.mlflow_ok is False and stats.rows_written == 2
    rows = _rows(services, "outage")
    assert rows[20]["state"] == "RUNNING" and rows[20]["mlflow_run_id"] is None
    assert rows[18]["failure"] == "failed (its reason is in MLflow, which did not answer)"
    down.db.dispose()

    stats = trial_sync.sync_trials(services, queries.get_study(services, "outage"))
    assert stats.mlflow_ok is True and stats.rows_written == 2
    rows = _rows(services, "outage")
    assert rows[20]["mlflow_run_id"] == made.runs[trial_id("outage", 20)]
    assert rows[18]["failure"] == "ValueError: the loss diverged"


def test_trials_kept_in_the_row_before_the_table_are_served(services):
    """A study that ended before the ``trials`` table existed kept its trials in its row:
    they are copied into the table once, and served from it."""
    made = make_study(services, "old-row", 3)
    kept = [{"number": n, "trial_id": trial_id("old-row", n), "state": "COMPLETE",
             "params": {"lr": 0.1}, "value": n / 3, "restarts": 0, "started_at": None,
             "completed_at": None, "mlflow_run_id": made.runs[trial_id("old-row", n)]}
            for n in range(2)]  # what the old sync had stored: 2 of the 3
    with services.db.session() as session:
        db.set_fields(session, made.record_id, trials=kept, status=db.SUCCEEDED)
    served = lifecycle.study_trials(services, "old-row")
    assert [t["number"] for t in served] == [0, 1]
    assert [t["mlflow_run_id"] for t in served] == [t["mlflow_run_id"] for t in kept]
    assert len(_rows(services, "old-row")) == 2
