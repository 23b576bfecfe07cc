"""A study on a real two-host cluster: the head and the worker are separate network
namespaces, and the worker has its own mount namespace (it cannot see the head's
CREDIT_HOME). PostgreSQL, an MLflow server on it, the Ray head and ``credit serve``
run on the head host; the trials are pinned to the worker host by a custom resource;
Tune's checkpoints go to storage both hosts share at the same path."""

from __future__ import annotations

import subprocess
import time

import httpx
import optuna
import pytest

from tests.service.hosts import Cluster, unavailable

ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
TINY = {"epochs": 2, "batches_per_epoch": 5, "dataset": "mnist-5k"}
ON_WORKER = {"cpu": 1, "custom": {"worker_host": 1}}

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "")


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.make_hosts()
        c.start_postgres()
        c.start_mlflow()
        c.start_ray()
        c.start_api()
        yield c
    except Exception as error:
        logs = {n: c.log(n, 1500) for n in ("postgres", "mlflow", "ray-worker", "api")}
        pytest.fail(f"cluster set-up failed: {error}\n{logs}")
    finally:
        c.close()


def wait_status(client: httpx.Client, study: str, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/studies/{study}")
        if r.status_code == 200:
            body = r.json()
            if body["status"] in ENDED:
                return body
        time.sleep(0.5)
    raise AssertionError(f"study {study} has not ended after {timeout_s} s: {body}")


def mlflow_runs(url: str, study: str) -> list[dict]:
    exp = httpx.get(f"{url}/api/2.0/mlflow/experiments/get-by-name",
                    params={"experiment_name": "credit-search"}).json()["experiment"]
    page = httpx.post(f"{url}/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [exp["experiment_id"]], "max_results": 1000,
        "filter": f"tags.`credit.study` = '{study}'"}).json()
    return [{"info": r["info"],
             "tags": {t["key"]: t["value"] for t in r["data"].get("tags", [])},
             "metrics": {m["key"]: m["value"] for m in r["data"].get("metrics", [])}}
            for r in page.get("runs", [])]


def artifacts(url: str, run_id: str, path: str) -> list[str]:
    r = httpx.get(f"{url}/api/2.0/mlflow/artifacts/list",
                  params={"run_id": run_id, "path": path}).json()
    return [f["path"] for f in r.get("files", [])]


def test_the_worker_host_has_its_own_disk_and_address(cluster):
    assert (cluster.home / "service.db").exists() is False  # the service DB is PostgreSQL
    marker = cluster.home / "head-only"
    marker.write_text("x")
    seen = subprocess.run(cluster.on("worker", ["ls", str(cluster.home)]), capture_output=True,
                          text=True)
    assert seen.returncode != 0 and "head-only" not in seen.stdout
    shared = subprocess.run(cluster.on("worker", ["ls", str(cluster.shared)]),
                            capture_output=True, text=True)
    assert shared.returncode == 0
    addresses = subprocess.run(cluster.on("worker", ["ip", "-4", "-o", "addr"]),
                               capture_output=True, text=True).stdout
    assert cluster.worker_ip in addresses and cluster.head_ip not in addresses


def test_study_runs_its_trials_on_the_worker_host(cluster):
    """Over HTTP: a study whose trials are pinned to the worker succeeds; every child run,
    metric and plot is in MLflow (on PostgreSQL), every trial in Optuna on PostgreSQL,
    the checkpoints in the shared storage, and each trial ran on the worker's address."""
    with cluster.client() as c:
        r = c.post("/studies", json={"name": "on-worker", "space": "mnist-fc-backprop",
                                     "max_trials": 2, "parallel_trials": 2,
                                     "resources": ON_WORKER, **TINY})
        assert r.status_code == 201, r.text
        final = wait_status(c, r.json()["id"])
        trials = c.get(f"/studies/{final['id']}/trials").json()
    assert final["status"] == "SUCCEEDED", (final, cluster.log("api"))
    assert final["counts"]["complete"] == 2
    assert [t["state"] for t in trials["data"]] == ["COMPLETE", "COMPLETE"]
    assert all(t.get("failure") is None for t in trials["data"])

    runs = mlflow_runs(cluster.mlflow_url, "on-worker")
    parent = next(r for r in runs if r["tags"].get("credit.role") == "study")
    children = [r for r in runs if r["tags"].get("credit.role") == "trial"]
    assert parent["info"]["status"] == "FINISHED"
    assert len(children) == 2
    for run in children:
        assert run["info"]["status"] == "FINISHED"
        assert run["tags"]["mlflow.parentRunId"] == parent["info"]["run_id"]
        assert run["tags"]["credit.node_ip"] == cluster.worker_ip  # ran on the worker host
        assert {"test_error", "train_loss", "angle/fc2"} <= set(run["metrics"])
        assert any(p.endswith(".png") for p in artifacts(cluster.mlflow_url,
                                                        run["info"]["run_id"], "plots"))

    study = optuna.load_study(study_name="on-worker", storage=cluster.pg_url("optuna"))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert {t.user_attrs["tune_trial_id"] for t in study.trials} == \
        {t["trial_id"] for t in trials["data"]}
    # checkpoints went to the shared storage, written from the worker
    checkpoints = list((cluster.shared / "ray_results" / "on-worker").glob("*/checkpoint_*"))
    assert len(checkpoints) >= 2
