"""Node loss and server restarts on the namespace cluster of ``hosts.py``: a head host
and TWO worker hosts (one CPU each, so one trial runs on each at a time), PostgreSQL,
SeaweedFS S3, an MLflow server, Ray and ``credit serve``.

- a worker host crashes (every process of it SIGKILLed) while two trials train: Tune
  restarts its trial from the last checkpoint on the other worker; the study ends
  SUCCEEDED, the restart counted in Optuna and MLflow, every epoch logged once;
- the crashed host comes back: its Ray node takes trials again;
- PostgreSQL (the service's, Optuna's and MLflow's database) is crashed and started
  again 15 s later mid-study: the study succeeds, and the API answers 200 or a JSON 503
  meanwhile, never a 500;
- the S3 server (Tune's checkpoints) is crashed and started again 15 s later mid-study:
  the study succeeds, each trial one run with every epoch once.

The stores' waits are the product's defaults (``CREDIT_RESTART_WAIT_S`` 300 s,
``CREDIT_STORE_RETRY_S`` 120 s), longer than the outages. Every test is ``slow``.
"""

from __future__ import annotations

import threading
import time

import httpx
import optuna
import pytest

from tests.service.hosts import Cluster, unavailable
from tests.service.test_cluster import mlflow_runs, wait_ended

EPOCHS = 6
# ~3 s an epoch of mnist-fc on mnist-5k with one core of the loaded 2-core machine
BATCHES_PER_EPOCH = 2500
TRAINING = {"epochs": EPOCHS, "batches_per_epoch": BATCHES_PER_EPOCH, "dataset": "mnist-5k"}
ON_WORKERS = {"cpu": 1, "custom": {"worker_host": 1}}
STUDY_TIMEOUT_S = 900.0
OUTAGE_S = 15.0

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "")]


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(workers=2)
    try:
        c.make_hosts()
        c.start_postgres()
        c.start_s3()
        c.start_mlflow(wait=False)  # its first start on PostgreSQL migrates: meanwhile, Ray
        c.start_ray(worker_cpus=1)  # one trial at a time on each worker host
        c.wait_mlflow()
        c.start_api()
        yield c
    except Exception as error:
        names = ("postgres", "s3", "mlflow", "ray-worker", "ray-worker2", "api")
        logs = {n: c.log(n, 1500) for n in names}
        pytest.fail(f"cluster set-up failed: {error}\n{logs}")
    finally:
        c.close()


# ------------------------------------------------------------------------ helpers
def submit(c: httpx.Client, name: str, max_trials: int) -> dict:
    r = c.post("/studies", json={"name": name, "space": "mnist-fc-backprop",
                                 "max_trials": max_trials, "parallel_trials": 2,
                                 "resources": ON_WORKERS, **TRAINING})
    assert r.status_code == 201, r.text
    return r.json()


def trial_runs(cluster: Cluster, study: str) -> list[dict]:
    return [x for x in mlflow_runs(cluster.mlflow_url, study)
            if x["tags"].get("credit.role") == "trial"]


def wait_two_training(cluster: Cluster, study: str, timeout_s: float = 300.0) -> list[dict]:
    """Both trial runs of ``study`` have logged an epoch, and neither has finished: one on
    each worker host."""
    deadline = time.monotonic() + timeout_s
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = trial_runs(cluster, study)
        training = [x for x in runs if 1 <= x["metrics"].get("epoch", 0) < EPOCHS]
        if len(training) == 2:
            return training
        time.sleep(0.3)
    raise AssertionError(f"{study}: two trials never trained at once: {runs}\n"
                         f"{cluster.log('api')}")


def history(cluster: Cluster, run_id: str, key: str = "test_loss") -> list[dict]:
    """Every point of metric ``key`` of the run: ``{step, timestamp (ms), value}``."""
    r = httpx.get(f"{cluster.mlflow_url}/api/2.0/mlflow/metrics/get-history",
                  params={"run_id": run_id, "metric_key": key, "max_results": 10000},
                  timeout=60).json()
    return sorted(r.get("metrics", []), key=lambda m: (int(m["step"]), int(m["timestamp"])))


def job_log(cluster: Cluster, job_id: str | None) -> str:
    """The Ray job's log (the study driver's stdout and stderr), through the dashboard."""
    if not job_id:
        return "(no job id)"
    try:
        r = httpx.get(f"{cluster.dashboard_url}/api/jobs/{job_id}/logs", timeout=30,
                      headers={"Authorization": f"Bearer {cluster.ray_token}"})
        return r.json().get("logs", "") if r.status_code == 200 else f"{r.status_code} {r.text}"
    except Exception as error:  # evidence only
        return f"(job log unavailable: {error})"


def credit_lines(log: str) -> str:
    return "\n".join(ln for ln in log.splitlines() if ln.startswith("credit:"))


def evidence(cluster: Cluster, final: dict) -> str:
    """What a failed assertion shows: the study, the driver's log, the API's log."""
    log = job_log(cluster, final.get("job_id"))
    return (f"\nstudy: {final}\n--- Ray job log (tail) ---\n{log[-6000:]}"
            f"\n--- api log (tail) ---\n{cluster.log('api', 3000)}")


def optuna_trials(cluster: Cluster, study: str) -> list:
    return optuna.load_study(study_name=study, storage=cluster.pg_url("optuna")).trials


def assert_every_epoch_once(cluster: Cluster, runs: list[dict], why: str) -> None:
    for run in runs:
        assert run["info"]["status"] == "FINISHED", (run, why)
        steps = [int(m["step"]) for m in history(cluster, run["info"]["run_id"])]
        assert steps == list(range(1, EPOCHS + 1)), \
            (run["tags"].get("credit.trial_id"), steps, why)


def assert_succeeded(cluster: Cluster, final: dict, trials: int, why: str) -> None:
    assert final["status"] == "SUCCEEDED", why
    assert final["counts"]["complete"] == trials, why
    assert final["counts"]["failed"] == 0, why
    states = [t.state for t in optuna_trials(cluster, final["name"])]
    assert states == [optuna.trial.TrialState.COMPLETE] * trials, (states, why)


def workers_up(cluster: Cluster) -> None:
    """Every worker host's Ray node runs (a test before may have crashed one)."""
    for host in cluster.workers:
        if host not in cluster.up:
            cluster.start_worker(host)


class Poller(threading.Thread):
    """GET ``path`` every ``every`` s until stopped: (seconds since start, status code or
    the transport error, content type, whether the body is JSON)."""

    def __init__(self, cluster: Cluster, path: str, every: float = 0.5):
        super().__init__(daemon=True)
        self.cluster, self.path, self.every = cluster, path, every
        self.seen: list[tuple[float, int | str, str, bool]] = []
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        with self.cluster.client() as c:
            while not self.halt.is_set():
                start = time.monotonic()
                try:
                    r = c.get(self.path, timeout=15)
                    try:
                        r.json()
                        is_json = True
                    except ValueError:
                        is_json = False
                    self.seen.append((round(start - self.t0, 1), r.status_code,
                                      r.headers.get("content-type", ""), is_json))
                except httpx.HTTPError as error:
                    self.seen.append((round(start - self.t0, 1), type(error).__name__, "",
                                      False))
                self.halt.wait(max(0.0, self.every - (time.monotonic() - start)))

    def stop(self) -> list[tuple[float, int | str, str, bool]]:
        self.halt.set()
        self.join(timeout=30)
        return self.seen


# -------------------------------------------------------------------------- tests
def test_a_worker_host_crashes_and_its_trial_restarts_on_the_other(cluster):
    """``worker`` is crashed (every process SIGKILLed) while both trials train: its
    trial restarts from its last checkpoint on ``worker2``; the study of 4 trials ends
    SUCCEEDED, the restart counted (Optuna ``restarts``, MLflow ``credit.restarts``),
    each trial one run with every epoch once, the restarted one having run on both."""
    workers_up(cluster)
    name = "node-lost"
    with cluster.client() as c:
        study = submit(c, name, max_trials=4)
        training = wait_two_training(cluster, name)
        nodes = {x["tags"].get("credit.node_ip") for x in training}
        assert nodes == {cluster.ips["worker"], cluster.ips["worker2"]}, training
        victim = next(x for x in training
                      if x["tags"]["credit.node_ip"] == cluster.ips["worker"])
        victim_trial = victim["tags"]["credit.trial_id"]
        epoch_at_kill = int(victim["metrics"]["epoch"])
        killed_at = time.time()
        pids = cluster.kill_host("worker")
        print(f"\n[node-lost] killed worker ({cluster.ips['worker']}, {len(pids)} processes) "
              f"{time.time() - killed_at:.1f} s after; its trial {victim_trial} had logged "
              f"epoch {epoch_at_kill}", flush=True)
        final = wait_ended(c, study["id"], STUDY_TIMEOUT_S)
    why = evidence(cluster, final)
    runs = trial_runs(cluster, name)
    restarted = next((x for x in runs if x["tags"].get("credit.trial_id") == victim_trial),
                     None)
    assert restarted is not None, (runs, why)
    points = history(cluster, restarted["info"]["run_id"])
    after = [m for m in points if int(m["timestamp"]) / 1000 > killed_at]
    kill_to_epoch = (int(after[0]["timestamp"]) / 1000 - killed_at) if after else None
    measured = {"kill_to_next_epoch_s": None if kill_to_epoch is None
                else round(kill_to_epoch, 1),
                "next_epoch": int(after[0]["step"]) if after else None,
                "epoch_logged_at_kill": epoch_at_kill,
                "credit.restart_delay_s": restarted["tags"].get("credit.restart_delay_s"),
                "credit.epochs_redone": restarted["tags"].get("credit.epochs_redone"),
                "credit.restarts": restarted["tags"].get("credit.restarts"),
                "credit.nodes": restarted["tags"].get("credit.nodes"),
                "study restarts (API)": final.get("restarts")}
    print(f"[node-lost] {measured}\n[node-lost] driver: "
          f"{credit_lines(job_log(cluster, final.get('job_id')))}", flush=True)
    why = f"\nmeasured: {measured}{why}"

    assert_succeeded(cluster, final, 4, why)
    trials = optuna_trials(cluster, name)
    by_tune = {t.user_attrs.get("tune_trial_id"): t for t in trials}
    assert by_tune[victim_trial].user_attrs.get("restarts") == 1, \
        ([(t.number, t.user_attrs) for t in trials], why)
    others = [t.user_attrs.get("restarts", 0) for k, t in by_tune.items() if k != victim_trial]
    assert others == [0, 0, 0], ([(t.number, t.user_attrs) for t in trials], why)

    assert len(runs) == 4, (runs, why)
    assert sorted(x["tags"]["credit.trial_id"] for x in runs) == sorted(by_tune), (runs, why)
    assert_every_epoch_once(cluster, runs, why)
    assert restarted["tags"].get("credit.restarts") == "1", (restarted["tags"], why)
    ran_on = restarted["tags"].get("credit.nodes", "").split(",")
    assert set(ran_on) == {cluster.ips["worker"], cluster.ips["worker2"]}, (ran_on, why)
    assert float(restarted["tags"]["credit.restart_delay_s"]) > 0, why
    assert int(restarted["tags"]["credit.epochs_redone"]) >= 0, why
    assert kill_to_epoch is not None, (points, why)


def test_the_crashed_host_started_again_takes_trials_again(cluster):
    """After its crash, ``worker``'s Ray node is started again and rejoins: a study of
    two trials pinned to the worker hosts runs one on each."""
    if "worker" in cluster.up:  # run alone: crash it first
        cluster.kill_host("worker")
    started = time.monotonic()
    cluster.start_worker("worker")
    print(f"\n[node-back] worker's Ray node alive again after "
          f"{time.monotonic() - started:.1f} s", flush=True)
    workers_up(cluster)
    name = "node-back"
    with cluster.client() as c:
        study = submit(c, name, max_trials=2)
        final = wait_ended(c, study["id"], STUDY_TIMEOUT_S)
    why = evidence(cluster, final)
    assert_succeeded(cluster, final, 2, why)
    runs = trial_runs(cluster, name)
    assert len(runs) == 2, (runs, why)
    nodes = {x["tags"].get("credit.node_ip") for x in runs}
    assert nodes == {cluster.ips["worker"], cluster.ips["worker2"]}, (nodes, why)
    assert_every_epoch_once(cluster, runs, why)


def test_postgres_restarted_mid_study(cluster):
    """PostgreSQL (service records, Optuna, MLflow's backend) crashes while two trials
    train and is back 15 s later: the study succeeds, every trial COMPLETE; meanwhile
    GET /studies/{id} answers 200 or a JSON 503, never a 500 or plain text."""
    workers_up(cluster)
    name = "pg-restart"
    with cluster.client() as c:
        study = submit(c, name, max_trials=2)
        wait_two_training(cluster, name)
        poller = Poller(cluster, f"/studies/{study['id']}")
        poller.start()
        time.sleep(1.0)  # a few answers from before
        down = cluster.restart_postgres(OUTAGE_S)
        time.sleep(3.0)  # and after
        seen = poller.stop()
        final = wait_ended(c, study["id"], STUDY_TIMEOUT_S)
    codes: dict[int | str, int] = {}
    for _, code, _, _ in seen:
        codes[code] = codes.get(code, 0) + 1
    print(f"\n[pg-restart] PostgreSQL answered again {down:.1f} s after the kill; "
          f"GET /studies/{{id}} status codes: {codes}\n[pg-restart] driver: "
          f"{credit_lines(job_log(cluster, final.get('job_id')))}", flush=True)
    why = f"\ncodes: {codes}\nanswers: {seen}{evidence(cluster, final)}"
    bad = [s for s in seen if s[1] not in (200, 503) or not s[3]
           or "application/json" not in s[2]]
    assert not bad, (bad, why)
    assert_succeeded(cluster, final, 2, why)
    runs = trial_runs(cluster, name)
    assert len(runs) == 2, (runs, why)
    assert {x["info"]["status"] for x in runs} == {"FINISHED"}, (runs, why)


def test_s3_restarted_mid_study(cluster):
    """The S3 server holding Tune's checkpoints crashes while two trials train and is
    back 15 s later: the study succeeds, each trial one FINISHED run with every epoch
    logged once."""
    workers_up(cluster)
    name = "s3-restart"
    with cluster.client() as c:
        study = submit(c, name, max_trials=2)
        wait_two_training(cluster, name)
        down = cluster.restart_s3(OUTAGE_S)
        final = wait_ended(c, study["id"], STUDY_TIMEOUT_S)
    runs = trial_runs(cluster, name)
    restarts = {x["tags"].get("credit.trial_id"): x["tags"].get("credit.restarts", "0")
                for x in runs}
    print(f"\n[s3-restart] S3 writable again {down:.1f} s after the kill; restarts "
          f"{restarts}\n[s3-restart] driver: "
          f"{credit_lines(job_log(cluster, final.get('job_id')))}", flush=True)
    why = f"\nrestarts: {restarts}{evidence(cluster, final)}"
    assert_succeeded(cluster, final, 2, why)
    assert len(runs) == 2, (runs, why)
    assert_every_epoch_once(cluster, runs, why)
