"""deploy/compose.yaml run for real: ``podman-compose -f deploy/compose.yaml up`` with
the file as it is (this machine's runtime flags through ``CONTAINERS_CONF`` only, and its
published ports moved to free ones by API_PORT, MLFLOW_PORT, RAY_DASHBOARD_PORT):

- every part ready (PostgreSQL, MLflow and the API by their own health checks, the API's
  /readyz on its published port) and the S3 buckets `credit` and `mlflow` made by the
  stack itself;
- a study submitted over HTTP with an owner's token SUCCEEDS, its trials on both worker
  containers; its MLflow link answers on the published port to the owner signed in
  with name and token (and 401 to nobody);
- a worker container killed mid-study (``podman kill``): the study still SUCCEEDS with
  every trial complete, the killed trial restarted on the other worker;
- ``down`` then ``up``: the studies, their trials and their MLflow runs are still there.

``slow``: minutes (the image build, the stack's start, three studies).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy import images

pytestmark = pytest.mark.slow

COMPOSE_FILE = images.ROOT / "deploy" / "compose.yaml"
READY_TIMEOUT_S = 600.0
STUDY_TIMEOUT_S = 900.0
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
# one trial per worker container at a time (each offers worker_host 2): the head (no
# worker_host) runs none, and a study of two at once runs one on each worker
ON_A_WORKER = {"cpu": 1, "custom": {"worker_host": 2}}
HEALTHCHECKED = ("postgres", "mlflow", "api")
SERVICES = ("postgres", "s3", "mlflow", "ray-head", "ray-worker-1", "ray-worker-2", "api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def podman_compose() -> str | None:
    found = shutil.which("podman-compose")
    beside = Path(sys.executable).parent / "podman-compose"
    return found or (str(beside) if beside.exists() else None)


class Stack:
    """One compose project of deploy/compose.yaml, its secrets and published ports."""

    def __init__(self, env: dict[str, str], project: str):
        self.project = project
        self.tokens = {name: secrets.token_hex(24) for name in ("alice", "bob", "root")}
        self.ports = {"API_PORT": free_port(), "MLFLOW_PORT": free_port(),
                      "RAY_DASHBOARD_PORT": free_port()}
        self.env = {k: v for k, v in env.items() if not k.startswith("CREDIT_")}
        self.env.update({
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "CREDIT_MLFLOW_PASSWORD": secrets.token_hex(24),
            "MLFLOW_SECRET_KEY": secrets.token_hex(32),
            "CREDIT_API_TOKENS": ",".join(
                f"{n}:{t}" + (":admin" if n == "root" else "") for n, t in self.tokens.items()),
            **{k: str(v) for k, v in self.ports.items()},
        })
        self.api = f"http://127.0.0.1:{self.ports['API_PORT']}"
        self.mlflow = f"http://localhost:{self.ports['MLFLOW_PORT']}"

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([podman_compose(), "-p", self.project, "-f", str(COMPOSE_FILE),
                               *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def ip(self, service: str) -> str:
        return self.podman("inspect", "--format",
                           "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                           self.container(service)).stdout.strip()

    def logs(self, tail: int = 30) -> str:
        return "\n".join(f"--- {s}\n" + self.podman("logs", "--tail", str(tail),
                                                     self.container(s)).stdout[-3000:]
                         for s in SERVICES)

    def client(self, owner: str) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=60,
                            headers={"Authorization": f"Bearer {self.tokens[owner]}"})

    def mlflow_get(self, owner: str | None, path: str, **params) -> httpx.Response:
        auth = (owner, self.tokens[owner]) if owner else None
        return httpx.get(f"{self.mlflow}{path}", params=params, auth=auth, timeout=60)

    def run_of(self, owner: str, run_id: str) -> dict:
        r = self.mlflow_get(owner, "/api/2.0/mlflow/runs/get", run_id=run_id)
        assert r.status_code == 200, r.text
        run = r.json()["run"]
        return {"status": run["info"]["status"],
                "tags": {t["key"]: t["value"] for t in run["data"].get("tags", [])},
                "metrics": {m["key"]: m["value"] for m in run["data"].get("metrics", [])}}

    def not_ready(self) -> list[str]:
        """The parts not ready yet (empty once every one is)."""
        waiting = []
        states = {s: self.podman("inspect", "--format", "{{.State.Status}}",
                                 self.container(s)).stdout.strip() for s in SERVICES}
        waiting += [f"{s}: {st or 'absent'}" for s, st in states.items() if st != "running"]
        for service in HEALTHCHECKED:  # podman runs no health check by itself here: ask
            check = self.podman("healthcheck", "run", self.container(service))
            if check.returncode != 0:
                waiting.append(f"{service}: health check {check.stdout.strip()}")
        try:
            ready = httpx.get(f"{self.api}/readyz", timeout=5)
            if ready.status_code != 200:
                waiting.append(f"api /readyz {ready.status_code}")
        except httpx.HTTPError as error:
            waiting.append(f"api /readyz {type(error).__name__}")
        return waiting

    def up(self) -> float:
        """``up -d``; the seconds until every part is ready."""
        start = time.monotonic()
        done = self.compose("up", "-d")
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
        waiting: list[str] = []
        while time.monotonic() - start < READY_TIMEOUT_S:
            waiting = self.not_ready()
            if not waiting:
                return time.monotonic() - start
            time.sleep(2)
        raise AssertionError(f"not ready after {READY_TIMEOUT_S} s: {waiting}\n{self.logs()}")

    def down(self, *args: str) -> None:
        done = self.compose("down", *args)
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])


@pytest.fixture(scope="module")
def stack(podman_env, app_image, registry, measured):
    if podman_compose() is None:
        pytest.skip("needs podman-compose (pip install podman-compose)")
    s = Stack(podman_env, f"cdt{secrets.token_hex(3)}")
    try:
        measured["compose_up_to_ready_s"] = round(s.up(), 1)
        yield s
    finally:
        s.compose("down", "-v")  # containers, network and volumes: nothing left behind
        leftovers = s.podman("ps", "-aq", "--filter",
                             f"label=io.podman.compose.project={s.project}").stdout.split()
        for container in leftovers:
            s.podman("rm", "-f", container)


def submit(stack: Stack, owner: str, name: str, **spec) -> dict:
    with stack.client(owner) as c:
        r = c.post("/studies", json={"name": name, "space": "mnist-fc-backprop",
                                     "dataset": "mnist-5k", "resources": ON_A_WORKER, **spec})
    assert r.status_code == 201, r.text
    return r.json()


def wait_study(stack: Stack, owner: str, study: str, done, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    with stack.client(owner) as c:
        while time.monotonic() < deadline:
            r = c.get(f"/studies/{study}")
            if r.status_code == 200:
                body = r.json()
                if done(body):
                    return body
            time.sleep(1)
    raise AssertionError(f"study {study}: {body}\n{stack.logs()}")


def trials(stack: Stack, owner: str, study: str) -> list[dict]:
    with stack.client(owner) as c:
        r = c.get(f"/studies/{study}/trials")
    assert r.status_code == 200, r.text
    return r.json()["data"]


# ---------------------------------------------------------------------------- tests
def test_every_part_is_ready_and_the_stack_made_its_buckets(stack):
    assert stack.not_ready() == []
    listing = stack.podman("exec", stack.container("api"), "python", "-c",
                           "import boto3; s3 = boto3.client('s3', endpoint_url='http://s3:8333',"
                           " region_name='us-east-1', aws_access_key_id='credit',"
                           " aws_secret_access_key='credit-secret');"
                           " print(sorted(b['Name'] for b in s3.list_buckets()['Buckets']))")
    assert listing.stdout.strip() == "['credit', 'mlflow']", listing.stderr[-2000:]
    workers = {stack.ip("ray-worker-1"), stack.ip("ray-worker-2")}
    assert len(workers) == 2 and "" not in workers


def test_a_study_over_http_succeeds_on_both_workers_and_its_mlflow_link_answers(
        stack, measured):
    start = time.monotonic()
    study = submit(stack, "alice", "compose-study", max_trials=4, parallel_trials=2,
                   epochs=2, batches_per_epoch=5)
    final = wait_study(stack, "alice", study["id"], lambda b: b["status"] in ENDED,
                       STUDY_TIMEOUT_S)
    measured["study_wall_s"] = round(time.monotonic() - start, 1)
    assert final["status"] == "SUCCEEDED", (final, stack.logs())
    assert final["counts"]["complete"] == 4
    rows = trials(stack, "alice", study["id"])
    assert [t["state"] for t in rows] == ["COMPLETE"] * 4
    runs = [stack.run_of("alice", t["mlflow_run_id"]) for t in rows]
    assert all(r["status"] == "FINISHED" for r in runs)
    nodes = {r["tags"]["credit.node_ip"] for r in runs}
    assert nodes == {stack.ip("ray-worker-1"), stack.ip("ray-worker-2")}, nodes

    # the link, on the published port, to the owner signed in with name + token
    link = final["links"]["mlflow"]
    assert link.startswith(f"{stack.mlflow}/#/experiments/"), link
    page = httpx.get(link, auth=("alice", stack.tokens["alice"]), timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(link, timeout=60).status_code == 401
    parent = final["links"]["mlflow_parent_run"].rsplit("/", 1)[-1]
    assert stack.run_of("alice", parent)["status"] == "FINISHED"
    files = stack.mlflow_get("alice", "/api/2.0/mlflow/artifacts/list", run_id=parent)
    assert files.status_code == 200 and files.json().get("files"), files.text  # over S3
    assert stack.mlflow_get(None, "/api/2.0/mlflow/runs/get",
                            run_id=parent).status_code == 401
    assert stack.mlflow_get("bob", "/api/2.0/mlflow/runs/get",
                            run_id=parent).status_code == 403  # not bob's


def test_a_worker_killed_mid_study_loses_no_trial(stack, measured):
    study = submit(stack, "bob", "compose-kill", max_trials=4, parallel_trials=2,
                   epochs=8, batches_per_epoch=5000)
    workers = {stack.ip("ray-worker-1"): "ray-worker-1", stack.ip("ray-worker-2"): "ray-worker-2"}

    def training_on_both(body: dict) -> bool:
        if body["status"] in ENDED:
            return True
        started = [stack.run_of("bob", t["mlflow_run_id"])
                   for t in trials(stack, "bob", body["id"]) if t["mlflow_run_id"]]
        on = {r["tags"].get("credit.node_ip") for r in started
              if r["status"] == "RUNNING" and r["metrics"].get("epoch", 0) >= 1}
        return set(workers) <= on

    running = wait_study(stack, "bob", study["id"], training_on_both, STUDY_TIMEOUT_S)
    assert running["status"] == "RUNNING", running
    victim = workers[next(iter(sorted(workers)))]
    killed = stack.podman("kill", stack.container(victim))
    assert killed.returncode == 0, killed.stderr
    killed_at = time.monotonic()
    final = wait_study(stack, "bob", study["id"], lambda b: b["status"] in ENDED,
                       STUDY_TIMEOUT_S)
    rows = trials(stack, "bob", study["id"])
    runs = [stack.run_of("bob", t["mlflow_run_id"]) for t in rows]
    measured["worker_kill"] = {
        "killed": victim, "study": final["status"], "counts": final["counts"],
        "restarts": final["restarts"], "kill_to_end_s": round(time.monotonic() - killed_at, 1),
        "nodes_per_trial": [r["tags"].get("credit.nodes") for r in runs]}
    assert final["status"] == "SUCCEEDED", (final, stack.logs())
    assert [t["state"] for t in rows] == ["COMPLETE"] * 4, rows
    assert final["counts"]["failed"] == 0 and final["restarts"] >= 1, final
    assert all(r["status"] == "FINISHED" for r in runs)
    moved = [r for r in runs if len(r["tags"].get("credit.nodes", "").split(",")) > 1]
    assert moved and set(moved[0]["tags"]["credit.nodes"].split(",")) == set(workers), runs


def test_down_then_up_keeps_studies_and_runs(stack, measured):
    with stack.client("root") as c:  # an admin: sees every owner's studies
        before = {s["name"]: s for s in c.get("/studies").json()["data"]}
    assert {"compose-study", "compose-kill"} <= set(before)
    run_ids = [t["mlflow_run_id"] for t in trials(stack, "alice", "compose-study")]

    start = time.monotonic()
    stack.down()
    measured["compose_down_s"] = round(time.monotonic() - start, 1)
    measured["compose_up_again_to_ready_s"] = round(stack.up(), 1)

    with stack.client("root") as c:
        after = {s["name"]: s for s in c.get("/studies").json()["data"]}
    for name in ("compose-study", "compose-kill"):
        assert (after[name]["status"], after[name]["counts"]) == \
            (before[name]["status"], before[name]["counts"]), name
    assert [t["mlflow_run_id"] for t in trials(stack, "alice", "compose-study")] == run_ids
    assert all(stack.run_of("alice", r)["status"] == "FINISHED" for r in run_ids)
