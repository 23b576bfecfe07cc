"""A population study over real HTTP: ``population`` in the body, each member a trial of
``/trials`` with its own value and MLflow run, a two-objective population told every
value; a bad ``population`` is a 422 naming it."""

from __future__ import annotations

import pytest

from tests.service.api.helpers import TINY, wait_status

ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")


def test_population_members_are_rows_with_their_runs(api, mlflow_server):
    with api.client() as c:
        r = c.post("/studies", json={
            "name": "pop-e2e", "space": "mnist-fc-node-perturbation", "max_trials": 5,
            "population": 5, "seed": 3, "sampler": "random",
            "objectives": [{"metric": "test_error", "mode": "min"},
                           {"metric": "angle/fc2", "mode": "min"}], **TINY})
        assert r.status_code == 201, r.text
        study = wait_status(c, r.json()["id"], ENDED)
        trials = c.get(f"/studies/{study['id']}/trials").json()
        front = c.get(f"/studies/{study['id']}/pareto").json()
    assert study["status"] == "SUCCEEDED", study
    assert study["population"] == 5
    assert trials["count"] == 5
    rows = trials["data"]
    assert sorted(t["number"] for t in rows) == [0, 1, 2, 3, 4]
    assert all(t["state"] == "COMPLETE" for t in rows)
    assert len({t["mlflow_run_id"] for t in rows}) == 5 and all(t["mlflow_run_id"] for t in rows)
    assert len({t["values"]["test_error"] for t in rows}) > 1  # each member its own value
    assert all(0 <= t["values"]["angle/fc2"] <= 180 for t in rows)
    assert 1 <= front["count"] <= 5


@pytest.mark.parametrize("value, reason", [(0, "from 1 to 4096"), ("some", "auto")])
def test_a_bad_population_is_a_422_naming_it(api, value, reason):
    with api.client() as c:
        r = c.post("/studies", json={"name": "pop-bad", "space": "mnist-fc-backprop",
                                     "population": value, **TINY})
    assert r.status_code == 422
    assert "population" in r.text and reason in r.text
