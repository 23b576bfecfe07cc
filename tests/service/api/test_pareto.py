"""Several objectives, warm starts and enqueued configurations over real HTTP (``credit
serve`` on loopback, the session's Ray cluster and MLflow server): a two-objective study
runs to its end; ``/pareto`` holds exactly its non-dominated COMPLETE trials; ``/best`` is
a 409 pointing there; the plot is a PNG, on the page's endpoint and on the parent run;
the export has a column per objective; bad bodies are 422s naming the field; a warm start
from another owner's study is a 404."""

from __future__ import annotations

import httpx
import pytest

from service.trials import dominates
from tests.service.api.helpers import TINY, wait_status
from tests.service.api.test_studies import mlflow_runs, parent_and_trials

#: A real two-objective study of five trials runs first (minutes on two cores): slow.
pytestmark = pytest.mark.slow

ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
TWO = [{"metric": "test_error", "mode": "min"}, {"metric": "angle/fc2", "mode": "min"}]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_objectives(api):
    with api.client() as c:
        r = c.post("/studies", json={
            "name": "pareto-e2e", "space": "mnist-fc-node-perturbation", "max_trials": 5,
            "parallel_trials": 3, "seed": 2, "sampler": "nsga2", "objectives": TWO,
            "enqueue": [{"lr": 0.1, "noise_std": 0.01, "feedback_lr": 0.1}], **TINY})
        assert r.status_code == 201, r.text
        final = wait_status(c, r.json()["id"], ENDED)
    return final


def test_pareto_holds_exactly_the_non_dominated_complete_trials(api, mlflow_server,
                                                                  two_objectives):
    study = two_objectives
    assert study["status"] == "SUCCEEDED", study
    assert study["objectives"] == TWO and study["objective"] == TWO[0]
    with api.client() as c:
        trials = c.get(f"/studies/{study['id']}/trials").json()["data"]
        front = c.get(f"/studies/{study['id']}/pareto").json()
        best = c.get(f"/studies/{study['id']}/best")
        image = c.get(f"/studies/{study['id']}/pareto.png")
        export = c.get(f"/studies/{study['id']}/export", params={"format": "csv"}).text
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert len(trials) == 5 and len(complete) >= 2
    # the enqueued configuration was tried first
    first = min(trials, key=lambda t: t["number"])
    assert first["params"] == {"lr": 0.1, "noise_std": 0.01, "feedback_lr": 0.1}
    points = {t["number"]: [t["values"]["test_error"], t["values"]["angle/fc2"]]
              for t in complete}
    expected = {n for n, p in points.items()
                if not any(dominates(q, p, ["min", "min"]) for m, q in points.items() if m != n)}
    assert {t["number"] for t in front["data"]} == expected and front["count"] >= 1
    assert front["final"] and front["complete_trials"] == len(complete)
    for t in front["data"]:
        assert [t["values"]["test_error"], t["values"]["angle/fc2"]] == points[t["number"]]
        assert t["mlflow_run_id"] and t["mlflow_url"]
    assert best.status_code == 409 and f"/studies/{study['id']}/pareto" in best.text
    assert image.status_code == 200 and image.content.startswith(PNG)
    header = export.splitlines()[0].split(",")
    assert "test_error" in header and "angle/fc2" in header
    # the runner's result: the same front, and its plot on the parent run
    parent, _ = parent_and_trials(mlflow_runs(mlflow_server, "pareto-e2e"))
    artifacts = httpx.get(f"{mlflow_server}/api/2.0/mlflow/artifacts/list",
                          params={"run_id": parent["info"]["run_id"]}).json()["files"]
    assert "pareto.png" in {a["path"] for a in artifacts}


def test_the_study_page_says_where_the_results_are(api, two_objectives):
    """The page of the study of two objectives has no single best to show: it says so,
    points to its Pareto front below and to ``/pareto``, and never says "no complete
    trial yet" once trials completed. (The page's cases without a study run:
    ``test_pages_views.py``.)"""
    study = two_objectives
    with api.client() as c:
        page = c.get(f"/pages/studies/{study['id']}").text
        front = c.get(f"/studies/{study['id']}/pareto").json()
    assert "no complete trial yet" not in page
    assert "test_error (min), angle/fc2 (min): no single best configuration" in page
    assert f'<b id="front-size">{front["count"]}</b>' in page
    assert f'href="/studies/{study["id"]}/pareto"' in page and '<section id="pareto">' in page


@pytest.mark.parametrize("fields, loc, words", [
    ({"objectives": [TWO[0], TWO[0]]}, ["objectives", 1, "metric"], "named twice"),
    ({"objectives": [TWO[0], {"metric": "nope", "mode": "min"}]},
     ["objectives", 1, "metric"], "unknown metric 'nope'"),
    ({"objectives": TWO, "objective": TWO[0]}, ["objectives"], "not both"),
    ({"objectives": TWO, "sampler": "cmaes"}, ["sampler"], "optimises one objective"),
    ({"objectives": TWO, "early_stopping": True}, ["early_stopping"], "ASHA"),
    ({"enqueue": [{"lr": 7.0}]}, ["enqueue", 0, "lr"], "outside the space"),
    ({"enqueue": [{"width": 7}]}, ["enqueue", 0, "width"], "not a searched parameter"),
    ({"warm_start": ["no-such-study"]}, None, "warm_start[0]: no study"),
])
def test_bad_bodies_name_the_field(queue_api, fields, loc, words):
    with queue_api.client() as c:
        r = c.post("/studies", json={"name": "bad-objectives",
                                     "space": "mnist-fc-node-perturbation", **fields})
    if loc is None:  # a study the caller cannot see: as if it did not exist
        assert r.status_code == 404 and words in r.text, r.text
        return
    assert r.status_code == 422, r.text
    found = {tuple(d["loc"]): d["msg"] for d in r.json()["detail"]}
    assert words in found.get(("body", *loc), ""), found


def test_a_warm_start_whose_trials_do_not_fit_is_a_422(api, two_objectives):
    """The earlier study searched three parameters; a space with only lr does not fit."""
    space = {"name": "lr-only", "experiment": "mnist-fc", "rule": "node_perturbation",
             "fixed": {"batch_size": 32, "momentum": 0.9, "noise_std": 0.01,
                       "feedback_lr": 0.1},
             "params": {"lr": {"type": "float", "low": 3e-4, "high": 0.3, "log": True}}}
    with api.client() as c:
        r = c.post("/studies", json={"name": "warm-misfit", "space": space,
                                     "warm_start": [two_objectives["id"]]})
    assert r.status_code == 422, r.text
    reasons = [d["msg"] for d in r.json()["detail"] if d["loc"] == ["body", "warm_start", 0]]
    assert reasons and all("study 'pareto-e2e' trial" in m and "are not in the new space" in m
                           for m in reasons)
