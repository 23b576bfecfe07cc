"""A study on a real two-host cluster: the head and the worker are separate network
namespaces, and the worker has its own mount namespace (it cannot see the head's
CREDIT_HOME). PostgreSQL, an MLflow server on it, the Ray head and ``credit serve``
run on the head host, with an S3 server (SeaweedFS) that holds Tune's checkpoints and
experiment state (``CREDIT_STORAGE=s3://...``); the trials are pinned to the worker host
by a custom resource."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import optuna
import pytest

from tests.service.api.helpers import wait_status
from tests.service.hosts import Cluster, unavailable, worker_raylet_pid

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
        c.start_s3()
        c.start_mlflow(wait=False)  # its first start on PostgreSQL migrates: meanwhile, Ray
        c.start_ray()
        c.wait_mlflow()
        c.start_api()
        yield c
    except Exception as error:
        logs = {n: c.log(n, 1500) for n in ("postgres", "s3", "mlflow", "ray-worker", "api")}
        pytest.fail(f"cluster set-up failed: {error}\n{logs}")
    finally:
        c.close()


def wait_ended(client: httpx.Client, study: str, timeout_s: float = 300.0) -> dict:
    return wait_status(client, study, ENDED, timeout_s)


def mlflow_runs(url: str, study: str) -> list[dict]:
    exp = httpx.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", timeout=60,
                    params={"experiment_name": "credit-search"}).json().get("experiment")
    if exp is None:
        return []
    page = httpx.post(f"{url}/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [exp["experiment_id"]], "max_results": 1000,
        "filter": f"tags.`credit.study` = '{study}'"}, timeout=60).json()
    return [{"info": r["info"],
             "tags": {t["key"]: t["value"] for t in r["data"].get("tags", [])},
             "metrics": {m["key"]: m["value"] for m in r["data"].get("metrics", [])}}
            for r in page.get("runs", [])]


def artifacts(url: str, run_id: str, path: str) -> list[str]:
    r = httpx.get(f"{url}/api/2.0/mlflow/artifacts/list",
                  params={"run_id": run_id, "path": path}, timeout=60).json()
    return [f["path"] for f in r.get("files", [])]


def s3_files(cluster: Cluster, under: str) -> list[str]:
    """Every file under ``under`` in the cluster's S3 storage (read over S3 from here)."""
    import pyarrow.fs as pafs

    fs, root = cluster.s3_fs()
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{under}", recursive=True,
                                               allow_not_found=True))
    return [i.path for i in infos if i.type == pafs.FileType.File]


def test_the_worker_host_has_its_own_disk_and_address(cluster):
    assert (cluster.home / "service.db").exists() is False  # the service DB is PostgreSQL
    marker = cluster.home / "head-only"
    marker.write_text("x")
    seen = subprocess.run(cluster.on("worker", ["ls", str(cluster.home)]), capture_output=True,
                          text=True)
    assert seen.returncode != 0 and "head-only" not in seen.stdout
    seen = subprocess.run(cluster.on("worker", ["ls", str(cluster.head_dir / "s3")]),  # S3 data
                          capture_output=True, text=True)
    assert seen.returncode != 0
    # ...which the worker reaches over S3 only
    probe = ("import sys; from service.records.tune_storage import tune_storage; "
             "fs, root = tune_storage().pyarrow_fs(); "
             "sys.stdout.write(fs.get_file_info(root.split('/')[0]).type.name)")
    r = subprocess.run(cluster.on("worker", [sys.executable, "-c", probe]),
                       env=cluster.api_env(), capture_output=True, text=True, timeout=60)
    assert r.stdout == "Directory", r.stderr[-2000:]
    addresses = subprocess.run(cluster.on("worker", ["ip", "-4", "-o", "addr"]),
                               capture_output=True, text=True).stdout
    assert cluster.worker_ip in addresses and cluster.head_ip not in addresses


def test_study_runs_its_trials_on_the_worker_host(cluster):
    """Over HTTP: a study whose trials are pinned to the worker succeeds; every child run,
    metric and plot is in MLflow (on PostgreSQL), every trial in Optuna on PostgreSQL,
    the checkpoints in the S3 storage, and each trial ran on the worker's address."""
    with cluster.client() as c:
        r = c.post("/studies", json={"name": "on-worker", "space": "mnist-fc-backprop",
                                     "max_trials": 2, "parallel_trials": 2,
                                     "resources": ON_WORKER, **TINY})
        assert r.status_code == 201, r.text
        final = wait_ended(c, r.json()["id"])
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
    # checkpoints went to the S3 server, written from the worker, one trial directory each
    checkpoints = {p.split("/checkpoint_")[0] for p in s3_files(cluster, "on-worker")
                   if "/checkpoint_" in p}
    assert len(checkpoints) == 2, s3_files(cluster, "on-worker")


def test_serve_refuses_a_cluster_it_sees_is_misconfigured(cluster):
    """Two hosts and a sqlite MLflow store: `credit serve` exits 2 with one line."""
    env = cluster.api_env(CREDIT_MLFLOW_TRACKING_URI=f"sqlite:///{cluster.home / 'm.db'}")
    args = cluster.serve_command()
    args[args.index("--port") + 1] = "8001"
    r = subprocess.run(cluster.on("head", args), env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "CREDIT_MLFLOW_TRACKING_URI" in lines[0] and "mlflow server" in lines[0]


def test_credit_search_with_unshared_storage_exits_2_before_any_trial(cluster):
    """`credit search` on the head host, storage on the head's own disk: the pre-flight
    finds the worker cannot see it; exit 2, one line naming the worker and the setting;
    no MLflow run, no Optuna study: the name stays free."""
    env = cluster.env(RAY_ADDRESS=f"{cluster.head_ip}:{cluster.ray_port}",
                      CREDIT_RAY_NODE_IP=cluster.head_ip)
    r = subprocess.run(cluster.on("head", [
        sys.executable, "-m", "service.cli", "search", "--space", "mnist-fc-backprop",
        "--name", "cli-unshared", "--trials", "1", "--epochs", "1", "--batches-per-epoch", "2",
        "--dataset", "mnist-5k", "--tracking-uri", cluster.mlflow_url,
        "--storage", cluster.pg_url("optuna"),
        "--storage-path", str(cluster.home / "ray_results"), "--quiet"]),
        env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-3000:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pre-flight" in lines[0] and cluster.worker_ip in lines[0], lines[0]
    assert "CREDIT_STORAGE" in lines[0] and "NFS" in lines[0], lines[0]
    assert mlflow_runs(cluster.mlflow_url, "cli-unshared") == []
    assert "cli-unshared" not in optuna.get_all_study_names(cluster.pg_url("optuna"))


def test_unshared_storage_over_http_fails_the_study_with_one_line(cluster):
    """A second API whose CREDIT_STORAGE is on the head's own disk: its study is FAILED
    by the pre-flight, with the one line as its message, before any trial."""
    cluster.start_api(name="api-unshared", port=8001,
                      CREDIT_STORAGE=str(cluster.home / "ray_results"),
                      CREDIT_DATABASE_URL=cluster.pg_url("postgres"))
    try:
        with cluster.client(port=8001) as c:
            r = c.post("/studies", json={"name": "http-unshared", "space": "mnist-fc-backprop",
                                         "max_trials": 1, "resources": ON_WORKER, **TINY})
            assert r.status_code == 201, r.text
            final = wait_ended(c, r.json()["id"])
            trials = c.get(f"/studies/{final['id']}/trials").json()
    finally:
        cluster.stop_proc("api-unshared")
    assert final["status"] == "FAILED"
    assert "pre-flight" in final["message"] and cluster.worker_ip in final["message"]
    assert "CREDIT_STORAGE" in final["message"] and "\n" not in final["message"]
    assert trials["count"] == 0
    assert mlflow_runs(cluster.mlflow_url, "http-unshared") == []


#: Epochs (of 20 batches) of the trials whose driver is killed: a warm trial runs several
#: of them a second, and the test must see both trials mid-way to kill the driver.
RESUMED_EPOCHS = 100


def _search(cluster: Cluster, name: str, *extra: str) -> list[str]:
    """`credit search` on the head host, its trials pinned to the worker host."""
    return cluster.on("head", [
        sys.executable, "-m", "service.cli", "search", "--space", "mnist-fc-backprop",
        "--name", name, "--trials", "2", "--concurrency", "2", "--epochs", str(RESUMED_EPOCHS),
        "--batches-per-epoch", "20", "--dataset", "mnist-5k", "--trial-resource",
        "worker_host=1", "--tracking-uri", cluster.mlflow_url,
        "--storage", cluster.pg_url("optuna"), "--quiet", *extra])


def _history(url: str, run_id: str, key: str) -> list[int]:
    r = httpx.get(f"{url}/api/2.0/mlflow/metrics/get-history",
                  params={"run_id": run_id, "metric_key": key, "max_results": 10000},
                  timeout=60).json()
    return sorted(int(m["step"]) for m in r.get("metrics", []))


@pytest.mark.slow  # ~3.5 min under load; run by .ci/run after the default suite
def test_driver_killed_and_resumed_continues_checkpointed_trials_on_the_worker(cluster):
    """The driver (`credit search` on the head) is SIGKILLed while its two trials train on
    the worker; `--resume` restores them from the S3 storage onto the worker: each
    trial keeps its one MLflow run, its epochs logged once each, nothing left RUNNING."""
    env = cluster.env(RAY_ADDRESS=f"{cluster.head_ip}:{cluster.ray_port}",
                      CREDIT_RAY_NODE_IP=cluster.head_ip,
                      CREDIT_STORAGE=cluster.s3_storage, CREDIT_S3_ENDPOINT=cluster.s3_endpoint)
    driver = subprocess.Popen(_search(cluster, "resumed"), env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            trials = [x for x in mlflow_runs(cluster.mlflow_url, "resumed")
                      if x["tags"].get("credit.role") == "trial"]
            if len(trials) == 2 and all(3 <= x["metrics"].get("epoch", 0) < RESUMED_EPOCHS - 20
                                         for x in trials):
                break
            time.sleep(0.3)
        else:
            if driver.poll() is None:  # its stderr ends only with it
                os.killpg(driver.pid, signal.SIGKILL)
            raise AssertionError(f"no checkpointed trials to kill: {driver.stderr.read()}")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = {x["tags"]["credit.trial_id"]: x["metrics"]["epoch"] for x in trials}
    r = subprocess.run(_search(cluster, "resumed", "--resume"), env=env, capture_output=True,
                       text=True, timeout=400)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"  # the study's line
    assert "study resumed: SUCCEEDED" in r.stdout
    runs = mlflow_runs(cluster.mlflow_url, "resumed")
    assert "RUNNING" not in {x["info"]["status"] for x in runs}
    trials = [x for x in runs if x["tags"].get("credit.role") == "trial"]
    assert sorted(x["tags"]["credit.trial_id"] for x in trials) == sorted(before)  # no dup
    for run in trials:
        assert run["info"]["status"] == "FINISHED"
        assert run["tags"]["credit.node_ip"] == cluster.worker_ip
        steps = _history(cluster.mlflow_url, run["info"]["run_id"], "epoch")
        # every epoch logged once: the epochs re-run from the checkpoint the restore
        # started from (bit-identically) are not logged a second time
        assert sorted(steps) == list(range(1, RESUMED_EPOCHS + 1)), (steps, before)
    study = optuna.load_study(study_name="resumed", storage=cluster.pg_url("optuna"))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_worker_raylet_killed_fails_the_study_with_an_infrastructure_reason(cluster):
    """With no restarts allowed (``max_trial_restarts: 0``), the worker host's raylet dies
    while its trials train: each trial ends FAILED with the whole reason (a dead
    actor/node: infrastructure), the study ends FAILED with it — never SUCCEEDED — and no
    MLflow run is left RUNNING. (With restarts, ``test_cluster_faults.py``.)"""
    with cluster.client() as c:
        r = c.post("/studies", json={"name": "raylet-killed", "space": "mnist-fc-backprop",
                                     "max_trials": 2, "parallel_trials": 2,
                                     "max_trial_restarts": 0,
                                     "resources": ON_WORKER, "epochs": 1000,
                                     "batches_per_epoch": 5, "dataset": "mnist-5k"})
        assert r.status_code == 201, r.text
        study = r.json()["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            runs = mlflow_runs(cluster.mlflow_url, "raylet-killed")
            training = [x for x in runs if x["tags"].get("credit.role") == "trial"
                        and x["metrics"].get("epoch", 0) >= 1]
            if len(training) == 2:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"trials never trained: {runs}")
        pid = worker_raylet_pid(cluster)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        final = wait_ended(c, study)
        trials = c.get(f"/studies/{study}/trials").json()["data"]
    cluster.stop_proc("ray-worker")
    assert final["status"] == "FAILED", final
    reasons = [t.get("failure") for t in trials]
    assert "infrastructure" in final["message"], (final["message"], reasons)
    assert [t["state"] for t in trials] == ["FAILED", "FAILED"]  # none left RUNNING
    dead = [t for t in trials if t["failure_kind"] == "infrastructure"
            and t["failure"].split(":")[0].endswith("Error")]  # e.g. ActorUnavailableError
    assert dead, reasons
    runs = mlflow_runs(cluster.mlflow_url, "raylet-killed")
    assert "RUNNING" not in {x["info"]["status"] for x in runs}
    children = [x for x in runs if x["tags"].get("credit.role") == "trial"]
    assert "infrastructure" in {x["tags"].get("credit.failure_kind") for x in children}
