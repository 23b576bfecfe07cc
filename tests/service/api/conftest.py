"""Real servers for the API tests: ``mlflow server`` on loopback, and the API itself
(``credit serve`` in a subprocess, uvicorn on a free loopback port) against the
session's Ray cluster (``ray_cluster``, with its dashboard and token auth).

Two API servers share the cluster and the MLflow server:
- ``api``: the studies that run to their end (small ones), 4 at once at most;
- ``queue_api``: 20 studies at once, a small body limit; its studies are cancelled
  soon after they are submitted (the tests of many submissions and of bad input).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.api.local_stack import NODE_IP, MlflowServer, stop_session, wait_http

TOKEN = "test-token-0123456789"
OTHER_TOKEN = "second-token-abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """``credit serve`` as a subprocess; ``kill()`` it and ``start()`` it again at will."""

    def __init__(self, home: Path, env: dict[str, str], log: Path):
        self.home = home
        self.port = free_port()
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.home / "service.db"

    def start(self) -> ApiServer:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}/healthz", 90,
                  alive=lambda: self.proc is not None and self.proc.poll() is None)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, as a crash."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_session(self.proc.pid)
            self.proc.wait()
            self.proc = None

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def rows(self) -> list[tuple]:
        """The study table as stored (id, name, status, job_id)."""
        with sqlite3.connect(self.db_path, timeout=30) as con:
            return con.execute("select id, name, status, job_id from studies").fetchall()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts",
                          port=free_port(), log_file=root / "mlflow.log").start()
    yield server.url
    server.stop()


def _api_env(home: Path, dashboard: str, mlflow_url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDIT_")}
    env.update({
        "CREDIT_HOME": str(home),
        "CREDIT_API_TOKENS": f"{TOKEN},{OTHER_TOKEN}",
        "CREDIT_RAY_DASHBOARD_URL": dashboard,
        "CREDIT_RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"],
        "CREDIT_RAY_NODE_IP": NODE_IP,
        "CREDIT_MLFLOW_TRACKING_URI": mlflow_url,
        "CREDIT_SYNC_INTERVAL_S": "1",
        "CREDIT_LOST_JOB_GRACE_S": "600",
    })
    env.update({f"CREDIT_{k.upper()}": v for k, v in settings.items()})
    return env


@pytest.fixture(scope="session")
def api(ray_dashboard, mlflow_server, tmp_path_factory):
    """The API whose studies run, on the shared cluster and MLflow server."""
    home = tmp_path_factory.mktemp("api-home")
    server = ApiServer(home, _api_env(home, ray_dashboard, mlflow_server,
                                      max_concurrent_studies="4", max_trials_per_study="50"),
                       home / "serve.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def queue_api(ray_dashboard, mlflow_server, tmp_path_factory):
    """An API for many studies at once (cancelled soon after submission)."""
    home = tmp_path_factory.mktemp("queue-api-home")
    server = ApiServer(home, _api_env(home, ray_dashboard, mlflow_server,
                                      max_concurrent_studies="20", max_trials_per_study="50",
                                      max_body_bytes="8192"),
                       home / "serve.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_jobs(ray_dashboard):
    """A Jobs API client of the test cluster (to check what the service started)."""
    from service.jobs import RayJobs

    return RayJobs(ray_dashboard, token=os.environ["RAY_AUTH_TOKEN"])


TINY = {"epochs": 1, "batches_per_epoch": 5, "dataset": "mnist-5k"}


def wait_status(client: httpx.Client, study: str, statuses: tuple[str, ...],
                timeout_s: float = 240.0, predicate=None) -> dict:
    """Poll GET /studies/{study} until its status is one of ``statuses`` (and ``predicate``)."""
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/studies/{study}")
        if r.status_code == 200:
            body = r.json()
            if body["status"] in statuses and (predicate is None or predicate(body)):
                return body
        time.sleep(0.5)
    raise AssertionError(f"study {study} not {statuses} after {timeout_s} s: {body}")
